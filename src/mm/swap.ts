// Swap (mm/swapfile.c, mm/swap_state.c): one swap device, its slot counts (swap_map), the content
// written to each slot, and the swap cache that maps a slot to the folio holding its data.
//
// A slot's count (swap_count) is the number of swap PTEs that refer to it; SWAP_HAS_CACHE is
// kept apart, as the slot's presence in `cache`. A slot is free when its count is 0 and it is
// not cached. A folio in the swap cache has PG_swapcache, one extra reference per page, and its
// slot in `slotOf`.
// Differs from Linux: one device (type 0), no clusters, slots handed out lowest first; swap
// writeback completes at once.

/** The swap device of a machine: `nrSlots` 4 KiB slots (0: no swap, as on our machines). */
export class SwapInfo {
  /** swap_map: the number of swap PTEs referring to each slot. */
  readonly count: Int32Array;
  /** The content tag written to each slot at swap-out (swap_writepage). */
  readonly tag: Uint32Array;
  /** The swap cache: slot -> folio pfn (order 0: vmlab splits large folios before swap-out). */
  readonly cache = new Map<number, number>();
  /** folio->swap for folios in the swap cache: pfn -> slot. */
  readonly slotOf = new Map<number, number>();
  /** Slots in use (count > 0 or cached). */
  inuse = 0;
  /** The lowest slot that may be free (a search hint). */
  private hint = 0;

  constructor(readonly nrSlots: number) {
    this.count = new Int32Array(nrSlots);
    this.tag = new Uint32Array(nrSlots);
  }

  /** True when slot is neither referenced nor cached. */
  isFree(slot: number): boolean {
    return this.count[slot] === 0 && !this.cache.has(slot);
  }

  /**
   * folio_alloc_swap for an order-0 folio: the lowest free slot, now in use (the caller puts
   * it in the swap cache at once), or -1 when the device is full or absent.
   */
  allocSlot(): number {
    for (let s = this.hint; s < this.nrSlots; s++) {
      if (this.isFree(s)) {
        this.hint = s + 1;
        this.inuse++;
        return s;
      }
    }
    return -1;
  }

  /** Releases a slot whose count is 0 and that has just left the swap cache (swap_entries_free). */
  releaseSlot(slot: number): void {
    if (!this.isFree(slot)) throw new Error(`releaseSlot: slot ${slot} still in use`);
    this.inuse--;
    this.tag[slot] = 0;
    if (slot < this.hint) this.hint = slot;
  }

  /** Free slots (nr_swap_pages). */
  freeSlots(): number {
    return this.nrSlots - this.inuse;
  }
}
