// Swap (mm/swapfile.c, mm/swap_state.c, mm/page_io.c, and the anon path of shrink_folio_list in
// mm/vmscan.c): one swap device, its slot counts (swap_map), the content written to each slot,
// the swap cache that maps a slot to the folio holding its data, the swap PTE, and reclaim's
// swap-out of one order-0 anon folio.
//
// A slot's count (swap_count) is the number of swap PTEs that refer to it; SWAP_HAS_CACHE is
// kept apart, as the slot's presence in `cache`. A slot is free when its count is 0 and it is
// not cached. A folio in the swap cache has PG_swapcache, one extra reference, and its slot in
// `slotOf`.
// Differs from Linux: one device (type 0), no clusters, slots handed out lowest first, counts
// without a limit (no swap count continuation); swap I/O completes at once, and a swap-in reads
// the faulting slot only (no readahead: page-cluster 0). The device is a plain block device
// (not SWP_SYNCHRONOUS_IO like zram), so every swap-in goes through the swap cache.
//
// A swap PTE (x86-64, arch/x86/include/asm/pgtable_64.h; the low word is bits 0..31):
//
//   63          52 51                      12 11  10  9   8   7   6   5   4   3   2   1   0
//  +--------------+--------------------------+---+---+---+---+---+---+---+---+---+---+---+---+
//  |      0       |         slot + 1         | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | E | 0 |SD | 0 |
//  +--------------+--------------------------+---+---+---+---+---+---+---+---+---+---+---+---+
//   P (0) clear: not present;  PN (8) clear: not a PROT_NONE mapping;
//   E  (3) _PAGE_SWP_EXCLUSIVE (_PAGE_PWT): the page was PageAnonExclusive when it was unmapped;
//   SD (1) _PAGE_SWP_SOFT_DIRTY (_PAGE_RW): the soft-dirty bit of the PTE it replaced.
// Differs from Linux: the slot is kept + 1 in the pfn bits (so that the entry is never none),
// where x86 keeps the offset inverted from bit 9 and the device type in bits 59..63.

import { PG_anon, PG_anon_exclusive, PG_dirty, PG_lru, PG_swapbacked, PG_swapcache } from "../phys/memmap.ts";
import type { Machine } from "./machine.ts";
import { MM_ANONPAGES, MM_SWAPENTS, type Mm } from "./mm.ts";
import { pmdOffset } from "./pgalloc.ts";
import {
  _PAGE_DIRTY,
  _PAGE_PRESENT,
  _PAGE_PROTNONE,
  _PAGE_SOFT_DIRTY,
  entryPfn,
  mkHi,
  mkLo,
  type PageTable,
  pmdIndex,
  pteIndex,
} from "./pgtable.ts";
import { folioMaybeDmaPinned, folioRemoveRmapPtes, rmapWalk } from "./rmap.ts";
import { EV, type OrderEvent } from "./vmstat.ts";

/** _PAGE_SWP_EXCLUSIVE: x86 keeps PageAnonExclusive of a swapped-out page in _PAGE_PWT. */
export const _PAGE_SWP_EXCLUSIVE = 1 << 3;
/** _PAGE_SWP_SOFT_DIRTY: x86 keeps the soft-dirty bit of a swap PTE in _PAGE_RW. */
export const _PAGE_SWP_SOFT_DIRTY = 1 << 1;

// ---------------------------------------------------------------------------------------------
// Swap PTEs.

/**
 * swp_entry_to_pte (+ pte_swp_mkexclusive, pte_swp_mksoft_dirty): the two words of a swap PTE
 * for `slot`. Differs from Linux: slot + 1 in the pfn bits, not the inverted offset from bit 9.
 */
export function mkSwapPte(slot: number, exclusive: boolean, softDirty: boolean): [number, number] {
  const bits = (exclusive ? _PAGE_SWP_EXCLUSIVE : 0) | (softDirty ? _PAGE_SWP_SOFT_DIRTY : 0);
  return [mkLo(slot + 1, bits), mkHi(slot + 1, false)];
}

/** is_swap_pte: the entry is not none, not present and not a PROT_NONE mapping. */
export function isSwapPte(lo: number, hi: number): boolean {
  return (lo !== 0 || hi !== 0) && (lo & (_PAGE_PRESENT | _PAGE_PROTNONE)) === 0;
}

/** swp_offset(pte_to_swp_entry()): the slot a swap PTE refers to. Precondition: isSwapPte. */
export function swapPteSlot(lo: number, hi: number): number {
  return entryPfn(lo, hi) - 1;
}

/** pte_swp_exclusive: the page was exclusive to this mm when it was swapped out. */
export function pteSwpExclusive(lo: number): boolean {
  return (lo & _PAGE_SWP_EXCLUSIVE) !== 0;
}

/** pte_swp_clear_exclusive: the low word without the exclusive bit (fork shares the entry). */
export function pteSwpClearExclusive(lo: number): number {
  return (lo & ~_PAGE_SWP_EXCLUSIVE) >>> 0;
}

/** pte_swp_soft_dirty. */
export function pteSwpSoftDirty(lo: number): boolean {
  return (lo & _PAGE_SWP_SOFT_DIRTY) !== 0;
}

// ---------------------------------------------------------------------------------------------
// The device.

/** The swap device of a machine: `nrSlots` 4 KiB slots (0: no swap, as on our machines). */
export class SwapInfo {
  /**
   * swap_map: the number of swap PTEs referring to each slot.
   * Invariant: equals the swap PTEs naming the slot across all mms (the audit counts them).
   */
  readonly count: Int32Array;
  /**
   * The content tag written to each slot at swap-out (swap_writepage).
   * Invariant: 0 for a free slot; equals the cached folio's tag while that folio is clean and
   * no dirty PTE maps it.
   */
  readonly tag: Uint32Array;
  /** The swap cache: slot -> folio pfn (order 0: vmlab splits large folios before swap-out). */
  readonly cache = new Map<number, number>();
  /** folio->swap for folios in the swap cache: pfn -> slot. Invariant: the inverse of `cache`. */
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

  /** vm_swap_full (what mem_cgroup_swap_full reduces to without memcg): over half the slots used. */
  full(): boolean {
    return this.freeSlots() * 2 < this.nrSlots;
  }
}

/** count_mthp_stat: the per-size stats count large folios only (order 0 has no hugepages-4kB). */
function countMthpStat(m: Machine, stat: OrderEvent, order: number): void {
  if (order > 0) m.stat.incOrder(stat, order);
}

/** The content a read of slot's page would see: the cached folio's, else the slot's. */
export function swapEntryContent(m: Machine, slot: number): number {
  const pfn = m.swap.cache.get(slot);
  return pfn === undefined ? m.swap.tag[slot] : m.memmap.tag(pfn);
}

// ---------------------------------------------------------------------------------------------
// Slot counts.

/**
 * swap_duplicate: one more swap PTE refers to slot (fork copying one, try_to_unmap making one).
 * Throws for a free slot (Linux's "Bad swap entry": a bug).
 */
export function swapDuplicate(m: Machine, slot: number): void {
  const swap = m.swap;
  if (slot < 0 || slot >= swap.nrSlots || swap.isFree(slot))
    throw new Error(`swapDuplicate: slot ${slot} is not in use`);
  swap.count[slot]++;
}

/**
 * swap_free_nr for one entry: one swap PTE fewer refers to slot. A slot left unreferenced and
 * uncached is released; a cached one stays with its folio (SWAP_HAS_CACHE).
 */
export function swapFree(m: Machine, slot: number): void {
  const swap = m.swap;
  if (--swap.count[slot] < 0) throw new Error(`swapFree: slot ${slot} count went negative`);
  if (swap.isFree(slot)) swap.releaseSlot(slot);
}

/**
 * free_swap_and_cache_nr for one entry (zap, MADV_FREE): one swap PTE fewer refers to slot.
 * When none is left, a cached folio leaves the swap cache if it is unmapped, or if swap is
 * over half full (__try_to_reclaim_swap with TTRS_UNMAPPED | TTRS_FULL), and is freed if that
 * was its last reference; an uncached slot is released.
 */
export function freeSwapAndCache(m: Machine, slot: number): void {
  const swap = m.swap;
  if (--swap.count[slot] < 0) throw new Error(`freeSwapAndCache: slot ${slot} count went negative`);
  if (swap.count[slot] > 0) return;
  const pfn = swap.cache.get(slot);
  if (pfn === undefined) {
    swap.releaseSlot(slot);
    return;
  }
  if (m.memmap.mapcount(pfn) === 0 || swap.full()) {
    m.memmap.set(pfn, PG_dirty); // the data now lives only in memory
    deleteFromSwapCache(m, pfn);
  }
}

// ---------------------------------------------------------------------------------------------
// The swap cache.

/** add_to_swap_cache: pfn holds slot's data now (PG_swapcache, one reference for the cache). */
function addToSwapCache(m: Machine, pfn: number, slot: number): void {
  const swap = m.swap;
  if (swap.cache.has(slot)) throw new Error(`addToSwapCache: slot ${slot} is cached already`);
  swap.cache.set(slot, pfn);
  swap.slotOf.set(pfn, slot);
  m.memmap.set(pfn, PG_swapcache);
  m.memmap.addRef(pfn, 1);
  m.stat.inc(EV.ref_update);
}

/**
 * folio_alloc_swap + add_to_swap_cache for an order-0 anon, swap-backed folio not yet in the
 * swap cache: a slot is allocated and the folio cached under it (PG_swapcache, one more
 * reference) and marked dirty (its data is in memory only). False, with nothing changed, when
 * no slot is free.
 */
export function addToSwap(m: Machine, pfn: number): boolean {
  const mem = m.memmap;
  const f = mem.flags(pfn);
  if (mem.order(pfn) !== 0 || (f & (PG_anon | PG_swapbacked | PG_swapcache)) !== (PG_anon | PG_swapbacked))
    throw new Error(`addToSwap: pfn ${pfn} is not an order-0 anon swap-backed folio outside the swap cache`);
  const slot = m.swap.allocSlot();
  if (slot < 0) return false;
  m.stat.inc(EV.swap_slot_alloc);
  addToSwapCache(m, pfn, slot);
  // A MADV_FREE'd PTE may have been clean while the folio is still swap-backed: write it anyway.
  mem.set(pfn, PG_dirty);
  return true;
}

/**
 * __delete_from_swap_cache + put_swap_folio: the folio leaves the swap cache (PG_swapcache
 * cleared, the cache's reference dropped with folio_put, which frees it if that was the last),
 * and its slot is released when no swap PTE refers to it. Do not use pfn afterwards unless the
 * caller holds a reference of its own.
 */
export function deleteFromSwapCache(m: Machine, pfn: number): void {
  const swap = m.swap;
  const slot = swap.slotOf.get(pfn);
  if (slot === undefined) throw new Error(`deleteFromSwapCache: pfn ${pfn} is not in the swap cache`);
  swap.cache.delete(slot);
  swap.slotOf.delete(pfn);
  m.memmap.clear(pfn, PG_swapcache);
  if (swap.count[slot] === 0) swap.releaseSlot(slot);
  m.folioPut(pfn);
}

/**
 * folio_free_swap: a folio in the swap cache whose slot no swap PTE refers to any more
 * (!folio_swapped) leaves the cache, dirty (its slot is gone). Returns whether it did. Do not
 * use pfn afterwards unless the caller holds a reference of its own.
 */
export function folioFreeSwap(m: Machine, pfn: number): boolean {
  const mem = m.memmap;
  if (!mem.test(pfn, PG_swapcache)) return false;
  // Non-null: PG_swapcache folios are in slotOf (the audit checks it).
  if (m.swap.count[m.swap.slotOf.get(pfn)!] > 0) return false;
  mem.set(pfn, PG_dirty);
  deleteFromSwapCache(m, pfn);
  return true;
}

/**
 * free_swap_cache (zap's free_pages_and_swap_cache, wp_page_copy): a swap-cache folio that no
 * PTE maps any more leaves the cache if no swap PTE needs its slot either. The caller still
 * holds a reference.
 */
export function freeSwapCache(m: Machine, pfn: number): void {
  if (m.memmap.test(pfn, PG_swapcache) && m.memmap.mapcount(pfn) === 0) folioFreeSwap(m, pfn);
}

/**
 * swap_writepage (after pageout's folio_clear_dirty_for_io): writes the folio's content to its
 * slot and cleans it, counting pswpout (and the per-size swpout of a large folio). When no swap
 * PTE refers to the slot any more it frees the swap instead (folio_free_swap) and returns false:
 * the folio left the cache, dirty. Writeback completes at once.
 */
export function swapWritepage(m: Machine, pfn: number): boolean {
  const mem = m.memmap;
  if (folioFreeSwap(m, pfn)) return false;
  const slot = m.swap.slotOf.get(pfn);
  if (slot === undefined) throw new Error(`swapWritepage: pfn ${pfn} is not in the swap cache`);
  mem.clear(pfn, PG_dirty);
  m.swap.tag[slot] = mem.tag(pfn);
  m.stat.inc(EV.pswpout);
  countMthpStat(m, "swpout", mem.order(pfn));
  return true;
}

/**
 * swapin_readahead (-> __read_swap_cache_async + swap_read_folio) for a slot that is in use and
 * not cached: a new order-0 swap-backed folio on the LRU, in the swap cache under slot, holding
 * the slot's content; counts pswpin (and swpin per size for a large folio). Returns its pfn with
 * two references (the caller's and the cache's), or -1 with nothing changed when memory is out.
 */
export function swapinReadahead(m: Machine, slot: number): number {
  const pfn = m.allocFolio(0, PG_swapbacked | PG_lru, false);
  if (pfn < 0) return -1;
  addToSwapCache(m, pfn, slot);
  m.memmap.setTag(pfn, m.swap.tag[slot]);
  m.stat.inc(EV.pswpin);
  countMthpStat(m, "swpin", 0);
  return pfn;
}

// ---------------------------------------------------------------------------------------------
// Swap-out.

/** What swapOutFolio did: freed the folio, found no slot, or kept it (see swapOutFolio). */
export type SwapOutResult = "swapped" | "nospace" | "busy";

/** A PTE of some mm that try_to_unmap will replace by a swap entry. */
interface UnmapTarget {
  mm: Mm;
  pte: PageTable;
  j: number;
}

/**
 * The PTEs mapping order-0 folio pfn (rmapWalk), or null when one cannot be unmapped: it sits in
 * a PTE table shared by COW page tables, or the page is exclusive and the folio may be pinned
 * (folio_try_share_anon_rmap_pte would fail and try_to_unmap_one abort).
 */
function unmapTargets(m: Machine, pfn: number): UnmapTarget[] | null {
  const targets: UnmapTarget[] = [];
  for (const hit of rmapWalk(m, pfn)) {
    if (hit.pmd) throw new Error(`swapOutFolio: order-0 folio ${pfn} is PMD-mapped`);
    // Non-null: rmapWalk found the PTE through these tables.
    const pte = pmdOffset(hit.mm, hit.addr)!.child(pmdIndex(hit.addr))!;
    // Differs from Linux (which has no COW page tables): a shared table is never written by
    // reclaim, so its folios stay.
    if (pte.cow !== null) return null;
    targets.push({ mm: hit.mm, pte, j: pteIndex(hit.addr) });
  }
  if (targets.length > 0 && m.memmap.test(pfn, PG_anon_exclusive) && folioMaybeDmaPinned(m, pfn)) return null;
  return targets;
}

/**
 * try_to_unmap_one for each target of a folio in the swap cache under `slot`: the PTE becomes a
 * swap entry (exclusive when the page was PageAnonExclusive, which is cleared, as
 * folio_try_share_anon_rmap_pte does; soft-dirty kept), a dirty PTE dirties the folio, the slot
 * gains a reference (swap_duplicate), the mm counts one anon page fewer and one swap entry more,
 * and the mapping and its reference go. One batched TLB flush (try_to_unmap_flush).
 */
function tryToUnmap(m: Machine, pfn: number, slot: number, targets: UnmapTarget[]): void {
  const mem = m.memmap;
  for (const { mm, pte, j } of targets) {
    m.stat.inc(EV.ptl_lock);
    m.stat.inc(EV.pte_read);
    const lo = pte.lo(j);
    if (lo & _PAGE_DIRTY) mem.set(pfn, PG_dirty); // folio_mark_dirty
    swapDuplicate(m, slot);
    const exclusive = mem.test(pfn, PG_anon_exclusive);
    if (exclusive) mem.clear(pfn, PG_anon_exclusive);
    mm.rss[MM_ANONPAGES]--;
    mm.rss[MM_SWAPENTS]++;
    const [slo, shi] = mkSwapPte(slot, exclusive, (lo & _PAGE_SOFT_DIRTY) !== 0);
    pte.set(j, slo, shi);
    m.stat.inc(EV.pte_write);
    folioRemoveRmapPtes(mm, pfn, pfn, 1);
    m.folioPut(pfn); // the cache's reference keeps it
  }
  if (targets.length > 0) m.stat.inc(EV.tlb_flush);
  if (mem.mapcount(pfn) !== 0)
    throw new Error(
      `swapOutFolio: folio ${pfn} is still mapped ${mem.mapcount(pfn)} times after try_to_unmap`,
    );
}

/**
 * Reclaim's path for one order-0 anon swap-backed folio (shrink_folio_list: folio_alloc_swap,
 * try_to_unmap, pageout, __remove_mapping). The caller holds no reference of its own. Returns
 *   "swapped"  every PTE mapping it is a swap entry now, its content is in its slot, and the
 *              folio is freed;
 *   "nospace"  no free slot: nothing changed;
 *   "busy"     kept. Nothing changed when it may be DMA-pinned and is not in the swap cache yet
 *              (shrink_folio_list's check), when a mapping sits in a PTE table shared by COW
 *              page tables, or when an exclusive page may be pinned (try_to_unmap_one would
 *              abort): these are checked before anything is done, so no folio is left half
 *              unmapped. Otherwise it was unmapped but something else still holds it (a pin
 *              taken while unmapped, a pipe buffer): it stays in the swap cache, mapped by no one,
 *              written if it was dirty, as __remove_mapping's failed refcount freeze leaves it;
 *              a later fault maps it again from there.
 * Large folios never get here: the caller splits them first.
 */
export function swapOutFolio(m: Machine, pfn: number): SwapOutResult {
  const mem = m.memmap;
  const f = mem.flags(pfn);
  if (
    mem.order(pfn) !== 0 ||
    (f & (PG_anon | PG_swapbacked)) !== (PG_anon | PG_swapbacked) ||
    mem.ref(pfn) <= 0
  )
    throw new Error(`swapOutFolio: pfn ${pfn} is not an allocated order-0 anon swap-backed folio`);
  const cached = (f & PG_swapcache) !== 0;
  if (!cached && folioMaybeDmaPinned(m, pfn)) return "busy"; // keep_locked
  const targets = unmapTargets(m, pfn);
  if (targets === null) return "busy";
  if (!cached && !addToSwap(m, pfn)) return "nospace";
  // Non-null: the folio is in the swap cache now.
  tryToUnmap(m, pfn, m.swap.slotOf.get(pfn)!, targets);
  // Unmapped, it can no longer be newly pinned; one that may be pinned is not reclaimed
  // (activate_locked, which frees the swap of a folio no swap PTE needs when swap is full).
  if (folioMaybeDmaPinned(m, pfn)) {
    if (m.swap.full()) folioFreeSwap(m, pfn);
    return "busy";
  }
  if (mem.test(pfn, PG_dirty) && !swapWritepage(m, pfn)) return "busy";
  // __remove_mapping: the folio goes only when the swap cache holds its last reference.
  if (mem.ref(pfn) !== 1) return "busy";
  deleteFromSwapCache(m, pfn);
  return "swapped";
}
