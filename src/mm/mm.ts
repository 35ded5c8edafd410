// struct mm_struct: the address space of one process: its VMAs (sorted, searched in O(log n)),
// its page-table root, its RSS counters and page-table bytes.

import type { Machine } from "./machine.ts";
import type { PageTable } from "./pgtable.ts";
import type { Vma } from "./vma.ts";

export const MM_FILEPAGES = 0;
export const MM_ANONPAGES = 1;
export const MM_SHMEMPAGES = 2;
/** MM_SWAPENTS: swap entries in this mm's page tables (VmSwap, smaps Swap). */
export const MM_SWAPENTS = 3;

/** vm.max_map_count default (DEFAULT_MAX_MAP_COUNT). */
export const MAX_MAP_COUNT = 65530;

export class Mm {
  /**
   * VMAs sorted by start. Differs from Linux: a sorted array searched by bisection stands in
   * for the maple tree; lookups are O(log n), inserts O(n).
   * Invariant: sorted, non-overlapping, page aligned.
   */
  readonly vmas: Vma[] = [];
  /** rss_stat: MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES, MM_SWAPENTS, in pages. */
  readonly rss = [0, 0, 0, 0];
  /**
   * mm_pgtables_bytes: PTE, PMD and PUD tables (deposited PTE tables included), as VmPTE shows.
   * Invariant: equals 4096 x the number of such tables reachable from pgd (plus deposits).
   */
  pgtablesBytes = 0;
  /** Highest mmap address + 1 for top-down allocation (mmap_base), fixed for determinism. */
  readonly mmapBase: number;
  /**
   * MMF_HAS_PINNED: a FOLL_PIN was ever taken on this mm. From then on fork copies anon pages
   * that may be pinned instead of sharing them (folio_needs_cow_for_dma). Never cleared.
   */
  hasPinned = false;
  /** mm->mm_id, which large folios record to tell exclusive from shared (CONFIG_MM_ID). */
  get id(): number {
    return this.pid;
  }

  constructor(
    readonly machine: Machine,
    readonly pid: number,
    readonly pgd: PageTable,
    mmapBase: number,
  ) {
    this.mmapBase = mmapBase;
  }

  /** Index of the first VMA with end > addr (find_vma), or vmas.length when none. */
  findVmaIndex(addr: number): number {
    const v = this.vmas;
    let lo = 0;
    let hi = v.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (v[mid].end > addr) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** find_vma: the first VMA with end > addr, which may start above addr. */
  findVma(addr: number): Vma | undefined {
    return this.vmas[this.findVmaIndex(addr)];
  }

  /** vma_lookup: the VMA containing addr, if any. */
  vmaLookup(addr: number): Vma | undefined {
    const v = this.vmas[this.findVmaIndex(addr)];
    return v !== undefined && v.start <= addr ? v : undefined;
  }

  /** Inserts a VMA that overlaps none. */
  insertVma(vma: Vma): void {
    const i = this.findVmaIndex(vma.start);
    const next = this.vmas[i];
    if (next !== undefined && next.start < vma.end) {
      throw new Error(`insertVma: [${vma.start}, ${vma.end}) overlaps [${next.start}, ${next.end})`);
    }
    this.vmas.splice(i, 0, vma);
    vma.mm = this;
  }

  /** Removes the given VMA. */
  removeVma(vma: Vma): void {
    const i = this.findVmaIndex(vma.start);
    if (this.vmas[i] !== vma) throw new Error(`removeVma: VMA at ${vma.start} is not in the tree`);
    this.vmas.splice(i, 1);
  }

  get mapCount(): number {
    return this.vmas.length;
  }
}
