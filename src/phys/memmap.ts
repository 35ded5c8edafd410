// The memory map: per-frame state kept as structure of arrays, the way struct page is kept
// by the kernel but without an object per page.
//
// Frames are grouped in sections of 2^SECTION_SHIFT pages (as SPARSEMEM does). A section's
// arrays exist only once the buddy allocator has handed out a block inside it, so host memory
// grows with populated memory, not with configured RAM.
//
// Per frame (24 bytes):
//   refcount  Int32   folio reference count, kept on the head page; 0 for tails and free pages
//   mapcount  Int32   number of PTEs mapping this page (Linux keeps _mapcount = this - 1)
//   flags     Uint32  PG_* bits below, the folio order in bits 24..27 on every page of a folio,
//                     and bits 32..34 of folio->index in bits 28..30 of the head
//   tag       Uint32  content tag: 0 is zeroed memory, a write stores a fresh tag
//   mapping   Uint32  folio->mapping on the head: the anon_vma id (anon) or shmem object id
//   index     Uint32  folio->index on the head, bits 0..31: the page offset of the head in its
//                     anon_vma's linear space (vm_pgoff units) or in the shmem file
//
// Like struct folio, the folio-wide fields of a large folio (order >= 2) overlay fields of its
// tail pages, which are otherwise unused (a tail has no refcount, mapping or index):
//   refcount[head + 1]  entire (PMD) mapcount
//   refcount[head + 2]  large (total) mapcount: PTE mappings + PMD mappings
//   refcount[head + 3]  pincount (_pincount): FOLL_PIN references of a large folio
//   mapping[head + 1]   _mm_id[0], mapping[head + 2] _mm_id[1]: the two tracked mms (0 = none)
//   index[head + 1]     _mm_id_mapcount[0], index[head + 2] _mm_id_mapcount[1], as counts (Linux
//                       stores count - 1); PG_mm_ids_shared on the head is FOLIO_MM_IDS_SHARED_BIT
// Like struct page's lru list_head, a free buddy block's head links its free list through the
// mapcount (prev) and tag (next) fields; see buddy.ts.

export const SECTION_SHIFT = 15;
export const PAGES_PER_SECTION = 1 << SECTION_SHIFT;
export const SECTION_MASK = PAGES_PER_SECTION - 1;

export const PG_locked = 1 << 0;
export const PG_dirty = 1 << 1;
export const PG_lru = 1 << 2;
export const PG_active = 1 << 3;
export const PG_swapbacked = 1 << 4;
/** folio->mapping has PAGE_MAPPING_ANON: the folio is anonymous. */
export const PG_anon = 1 << 5;
export const PG_head = 1 << 6;
export const PG_tail = 1 << 7;
/** PageAnonExclusive: this anon page is mapped by exactly one mm and may be reused on write. */
export const PG_anon_exclusive = 1 << 8;
/** page_type PGTY_buddy: head of a free block on a buddy free list. */
export const PG_buddy = 1 << 9;
/** page_type PGTY_table: a page-table page (struct ptdesc). */
export const PG_table = 1 << 10;
export const PG_reserved = 1 << 11;
/** The large folio is partially mapped and sits on the deferred split queue. */
export const PG_partially_mapped = 1 << 12;
/** folio->mapping is a shmem inode: the folio is in a shmem page cache. */
export const PG_shmem = 1 << 13;
export const PG_referenced = 1 << 14;
/**
 * FOLIO_MM_IDS_SHARED_BIT (on the head of a large folio): the folio may be mapped by more than
 * one mm (folio_maybe_mapped_shared). Set when a second mm maps it, cleared when one tracked mm
 * holds every mapping again.
 */
export const PG_mm_ids_shared = 1 << 15;
/** PG_swapcache: the anon folio sits in the swap cache (folio->swap names its slot). */
export const PG_swapcache = 1 << 16;
/** PG_unevictable: on no reclaimable LRU list (vmlab puts shmem folios there, see lru.ts). */
export const PG_unevictable = 1 << 17;

const ORDER_SHIFT = 24;
const ORDER_MASK = 0xf << ORDER_SHIFT;

export class Section {
  readonly refcount = new Int32Array(PAGES_PER_SECTION);
  readonly mapcount = new Int32Array(PAGES_PER_SECTION);
  readonly flags = new Uint32Array(PAGES_PER_SECTION);
  readonly tag = new Uint32Array(PAGES_PER_SECTION);
  readonly mapping = new Uint32Array(PAGES_PER_SECTION);
  readonly index = new Uint32Array(PAGES_PER_SECTION);
}

const INDEX_HI_SHIFT = 28;
const INDEX_HI_MASK = 0x7 << INDEX_HI_SHIFT;

/** The per-frame arrays of the whole simulated machine. */
export class MemMap {
  /** Section slots for every pfn below maxPfn, filled so that V8 keeps the array packed. */
  private readonly sections: (Section | undefined)[];

  constructor(maxPfn: number) {
    this.sections = new Array<Section | undefined>(Math.ceil(maxPfn / PAGES_PER_SECTION) + 1).fill(undefined);
  }

  /** Makes the section holding pfn exist (zero-filled). Called by the allocator only. */
  online(pfn: number): void {
    const s = pfn >>> SECTION_SHIFT;
    if (s >= this.sections.length) throw new Error(`memmap: pfn ${pfn} is beyond the memory map`);
    if (this.sections[s] === undefined) this.sections[s] = new Section();
  }

  /** Number of sections with host memory behind them. */
  onlineSections(): number {
    let n = 0;
    for (const s of this.sections) if (s !== undefined) n++;
    return n;
  }

  isOnline(pfn: number): boolean {
    return this.sections[pfn >>> SECTION_SHIFT] !== undefined;
  }

  /**
   * The section of pfn. Precondition: online(pfn) was called. Unchecked because it is on every
   * hot path (a check here cost ~15 % of a fault): a bug that breaks the precondition fails
   * with a TypeError at the caller, and the audit checks every mapped pfn is online.
   */
  sec(pfn: number): Section {
    return this.sections[pfn >>> SECTION_SHIFT] as Section;
  }

  ref(pfn: number): number {
    return this.sec(pfn).refcount[pfn & SECTION_MASK];
  }
  setRef(pfn: number, v: number): void {
    this.sec(pfn).refcount[pfn & SECTION_MASK] = v;
  }
  addRef(pfn: number, d: number): number {
    const s = this.sec(pfn);
    const v = s.refcount[pfn & SECTION_MASK] + d;
    s.refcount[pfn & SECTION_MASK] = v;
    return v;
  }

  mapcount(pfn: number): number {
    return this.sec(pfn).mapcount[pfn & SECTION_MASK];
  }
  setMapcount(pfn: number, v: number): void {
    this.sec(pfn).mapcount[pfn & SECTION_MASK] = v;
  }
  addMapcount(pfn: number, d: number): number {
    const s = this.sec(pfn);
    const v = s.mapcount[pfn & SECTION_MASK] + d;
    s.mapcount[pfn & SECTION_MASK] = v;
    return v;
  }

  flags(pfn: number): number {
    return this.sec(pfn).flags[pfn & SECTION_MASK];
  }
  setFlags(pfn: number, v: number): void {
    this.sec(pfn).flags[pfn & SECTION_MASK] = v;
  }
  test(pfn: number, bit: number): boolean {
    return (this.sec(pfn).flags[pfn & SECTION_MASK] & bit) !== 0;
  }
  set(pfn: number, bit: number): void {
    this.sec(pfn).flags[pfn & SECTION_MASK] |= bit;
  }
  clear(pfn: number, bit: number): void {
    this.sec(pfn).flags[pfn & SECTION_MASK] &= ~bit;
  }

  tag(pfn: number): number {
    return this.sec(pfn).tag[pfn & SECTION_MASK];
  }
  setTag(pfn: number, v: number): void {
    this.sec(pfn).tag[pfn & SECTION_MASK] = v;
  }

  /** The folio order recorded on any page of a folio. */
  order(pfn: number): number {
    return (this.sec(pfn).flags[pfn & SECTION_MASK] & ORDER_MASK) >>> ORDER_SHIFT;
  }

  /** The head pfn of the folio containing pfn (folios are naturally aligned). */
  folioHead(pfn: number): number {
    // Bitwise, not %: a pfn read from a page-table entry may be a double, and a double modulo
    // is a slow library call. The low bits of ToInt32(pfn) are exact for any safe integer.
    return pfn - (pfn & ((1 << this.order(pfn)) - 1));
  }

  /**
   * Turns 2^order frames starting at pfn into one folio: flags set to `flags` on every page,
   * PG_head/PG_tail and the order recorded, per-page mapcounts and the folio counters zeroed,
   * refcount 1 on the head. Content tags are left as they are (callers zero when needed).
   */
  prepFolio(pfn: number, order: number, flags: number): void {
    const s = this.sec(pfn);
    const i0 = pfn & SECTION_MASK;
    s.mapping[i0] = 0;
    s.index[i0] = 0;
    if (order === 0) {
      s.flags[i0] = flags;
      s.refcount[i0] = 1;
      s.mapcount[i0] = 0;
      return;
    }
    const nr = 1 << order;
    const orderBits = order << ORDER_SHIFT;
    const headBits = nr > 1 ? PG_head : 0;
    s.flags[i0] = flags | orderBits | headBits;
    s.refcount[i0] = 1;
    s.mapcount[i0] = 0;
    for (let i = 1; i < nr; i++) {
      s.flags[i0 + i] = flags | orderBits | PG_tail;
      s.refcount[i0 + i] = 0;
      s.mapcount[i0 + i] = 0;
    }
    s.mapping.fill(0, i0 + 1, i0 + 4);
    s.index.fill(0, i0 + 1, i0 + 4);
  }

  /** Clears the state of 2^order frames being freed (refcount, mapcount, flags). */
  clearFolio(pfn: number, order: number): void {
    const s = this.sec(pfn);
    const i0 = pfn & SECTION_MASK;
    s.mapping[i0] = 0;
    s.index[i0] = 0;
    if (order === 0) {
      s.refcount[i0] = 0;
      s.mapcount[i0] = 0;
      s.flags[i0] = 0;
      return;
    }
    const nr = 1 << order;
    s.refcount.fill(0, i0, i0 + nr);
    s.mapcount.fill(0, i0, i0 + nr);
    s.flags.fill(0, i0, i0 + nr);
    s.mapping.fill(0, i0 + 1, i0 + 4);
    s.index.fill(0, i0 + 1, i0 + 4);
  }

  /** Sets the content tag of nr frames from pfn (0 = zeroed). */
  fillTag(pfn: number, nr: number, tag: number): void {
    const s = this.sec(pfn);
    const i0 = pfn & SECTION_MASK;
    if (nr === 1) s.tag[i0] = tag;
    else s.tag.fill(tag, i0, i0 + nr);
  }

  /** Like struct folio's _entire_mapcount: PMD mappings of a large folio. */
  entireMapcount(head: number): number {
    return this.sec(head).refcount[(head & SECTION_MASK) + 1];
  }
  addEntireMapcount(head: number, d: number): void {
    this.sec(head).refcount[(head & SECTION_MASK) + 1] += d;
  }
  /** Like struct folio's _large_mapcount: all PTE and PMD mappings of a large folio. */
  largeMapcount(head: number): number {
    return this.sec(head).refcount[(head & SECTION_MASK) + 2];
  }
  addLargeMapcount(head: number, d: number): void {
    this.sec(head).refcount[(head & SECTION_MASK) + 2] += d;
  }

  /** folio->mapping of the folio headed by head: an anon_vma id or a shmem object id. */
  folioMapping(head: number): number {
    return this.sec(head).mapping[head & SECTION_MASK];
  }
  /** folio->index (up to 35 bits: a user page number below 2^47 / 4096). */
  folioIndex(head: number): number {
    const s = this.sec(head);
    const i = head & SECTION_MASK;
    return s.index[i] + ((s.flags[i] & INDEX_HI_MASK) >>> INDEX_HI_SHIFT) * 2 ** 32;
  }
  /** Sets folio->mapping and folio->index of the folio headed by head. */
  setFolioMapping(head: number, mapping: number, index: number): void {
    const s = this.sec(head);
    const i = head & SECTION_MASK;
    s.mapping[i] = mapping;
    s.index[i] = index % 2 ** 32;
    s.flags[i] = ((s.flags[i] & ~INDEX_HI_MASK) | (Math.floor(index / 2 ** 32) << INDEX_HI_SHIFT)) >>> 0;
  }

  /** _pincount of a large folio (order >= 2). */
  pincount(head: number): number {
    return this.sec(head).refcount[(head & SECTION_MASK) + 3];
  }
  addPincount(head: number, d: number): void {
    this.sec(head).refcount[(head & SECTION_MASK) + 3] += d;
  }
  /** _mm_id[slot] of a large folio (0 = MM_ID_DUMMY, no mm). */
  mmId(head: number, slot: number): number {
    return this.sec(head).mapping[(head & SECTION_MASK) + 1 + slot];
  }
  /** _mm_id_mapcount[slot] of a large folio, as a count (Linux stores count - 1). */
  mmIdMapcount(head: number, slot: number): number {
    return this.sec(head).index[(head & SECTION_MASK) + 1 + slot];
  }
  setMmIdSlot(head: number, slot: number, id: number, mapcount: number): void {
    const s = this.sec(head);
    const i = (head & SECTION_MASK) + 1 + slot;
    s.mapping[i] = id;
    s.index[i] = mapcount;
  }
}
