// The buddy allocator (mm/page_alloc.c): free lists per order 0..MAX_PAGE_ORDER, blocks
// naturally aligned, split on allocation (expand) and merged with their buddy on free.
//
// Free lists are doubly linked through the head page of each free block, as Linux links them
// through page->buddy_list: prev in the mapcount field, next in the tag field, stored as pfn + 1
// (0 = none). A free block's head has PG_buddy and its order in flags; its other pages have no
// flags. Invariant: every frame is either inside exactly one free block or allocated.
//
// Differs from Linux: one zone, one migratetype, no per-cpu page lists and no watermarks, so
// allocation succeeds while any block of a large enough order is free.
// Differs from Linux: memory that was never allocated ("pristine") sits at the tail of the
// MAX_PAGE_ORDER list without being materialised; it is handed out in ascending pfn order.

import { MemMap, PAGES_PER_SECTION, PG_buddy, SECTION_MASK } from "./memmap.ts";

export const MAX_PAGE_ORDER = 10;

export class BuddyAllocator {
  readonly memmap: MemMap;
  readonly nrPages: number;
  /** free_area[order].nr_free, counting pristine blocks at MAX_PAGE_ORDER. */
  readonly nrFree = new Float64Array(MAX_PAGE_ORDER + 1);
  private readonly head = new Int32Array(MAX_PAGE_ORDER + 1); // pfn + 1, 0 = empty
  private pristineNext = 0;
  private readonly pristineEnd: number;
  /** nr_free per order right after boot; the audit compares against it once all is freed. */
  readonly bootNrFree: Float64Array;

  /** Boots an allocator over nrPages frames [0, nrPages). */
  constructor(nrPages: number) {
    if (!Number.isSafeInteger(nrPages) || nrPages < 1 || nrPages > 2 ** 30) {
      throw new Error(`buddy: bad number of pages ${nrPages}`);
    }
    this.nrPages = nrPages;
    // Room for the reserved section the Machine puts after RAM (zero pages).
    this.memmap = new MemMap(nrPages + 2 * PAGES_PER_SECTION);
    const maxBlock = 1 << MAX_PAGE_ORDER;
    this.pristineEnd = Math.floor(nrPages / maxBlock) * maxBlock;
    this.nrFree[MAX_PAGE_ORDER] = this.pristineEnd / maxBlock;
    // The tail that does not fill a MAX_PAGE_ORDER block is freed as smaller aligned blocks.
    let pfn = this.pristineEnd;
    for (let order = MAX_PAGE_ORDER - 1; order >= 0; order--) {
      if (pfn + (1 << order) <= nrPages) {
        this.memmap.online(pfn);
        this.addToFreeList(pfn, order);
        pfn += 1 << order;
      }
    }
    this.bootNrFree = Float64Array.from(this.nrFree);
  }

  /** Number of free frames. */
  freePages(): number {
    let n = 0;
    for (let o = 0; o <= MAX_PAGE_ORDER; o++) n += this.nrFree[o] * (1 << o);
    return n;
  }

  /**
   * __rmqueue_smallest + expand: takes the smallest free block of order >= `order`, returns its
   * low part and frees the upper halves on the lower lists. Returns the pfn, or -1 when no block
   * is large enough (fragmentation or exhaustion). The frames' state is not initialised.
   */
  alloc(order: number): number {
    for (let cur = order; cur <= MAX_PAGE_ORDER; cur++) {
      let pfn: number;
      if (this.head[cur] !== 0) {
        pfn = this.head[cur] - 1;
        this.delFromFreeList(pfn, cur);
      } else if (cur === MAX_PAGE_ORDER && this.pristineNext < this.pristineEnd) {
        pfn = this.pristineNext;
        this.pristineNext += 1 << MAX_PAGE_ORDER;
        this.nrFree[MAX_PAGE_ORDER]--;
        this.memmap.online(pfn);
      } else {
        continue;
      }
      // expand(): give back the upper halves, largest first.
      for (let high = cur; high > order; ) {
        high--;
        this.addToFreeList(pfn + (1 << high), high);
      }
      return pfn;
    }
    return -1;
  }

  /**
   * __free_one_page: returns 2^order frames at pfn, merging with free buddies. Precondition: the
   * frames were allocated at this order (or split from such a block) and their state is cleared.
   */
  free(pfn: number, order: number): void {
    const mm = this.memmap;
    while (order < MAX_PAGE_ORDER) {
      const buddy = pfn ^ (1 << order);
      if (buddy + (1 << order) > this.nrPages || !mm.isOnline(buddy)) break;
      // The buddy's head must be free at the same order: PG_buddy with that order in flags.
      if (mm.sec(buddy).flags[buddy & SECTION_MASK] !== (PG_buddy | (order << 24))) break;
      this.delFromFreeList(buddy, order);
      pfn = Math.min(pfn, buddy);
      order++;
    }
    this.addToFreeList(pfn, order);
  }

  /** True when pfn is the head of a free block; its order is then memmap.order(pfn). */
  isFreeHead(pfn: number): boolean {
    return this.memmap.isOnline(pfn) && this.memmap.test(pfn, PG_buddy);
  }

  /** Calls fn for every free block on the lists (not the pristine ones), per order. */
  forEachFreeBlock(fn: (pfn: number, order: number) => void): void {
    for (let o = 0; o <= MAX_PAGE_ORDER; o++) {
      for (let p = this.head[o]; p !== 0; p = this.memmap.sec(p - 1).tag[(p - 1) & SECTION_MASK])
        fn(p - 1, o);
    }
  }

  /** Frames never handed out since boot: [pristineNext, pristineEnd). */
  pristineRange(): [number, number] {
    return [this.pristineNext, this.pristineEnd];
  }

  private addToFreeList(pfn: number, order: number): void {
    const mm = this.memmap;
    const s = mm.sec(pfn);
    const i = pfn & SECTION_MASK;
    s.flags[i] = PG_buddy | (order << 24);
    s.refcount[i] = 0;
    const first = this.head[order];
    s.tag[i] = first; // next
    s.mapcount[i] = 0; // prev
    if (first !== 0) mm.sec(first - 1).mapcount[(first - 1) & SECTION_MASK] = pfn + 1;
    this.head[order] = pfn + 1;
    this.nrFree[order]++;
  }

  private delFromFreeList(pfn: number, order: number): void {
    const mm = this.memmap;
    const s = mm.sec(pfn);
    const i = pfn & SECTION_MASK;
    const next = s.tag[i];
    const prev = s.mapcount[i];
    if (prev !== 0) mm.sec(prev - 1).tag[(prev - 1) & SECTION_MASK] = next;
    else this.head[order] = next;
    if (next !== 0) mm.sec(next - 1).mapcount[(next - 1) & SECTION_MASK] = prev;
    s.flags[i] = 0;
    s.tag[i] = 0;
    s.mapcount[i] = 0;
    this.nrFree[order]--;
  }
}
