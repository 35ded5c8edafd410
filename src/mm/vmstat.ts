// Event counters: /proc/vmstat names where Linux has one, and the mTHP per-size stats of
// /sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/stats. Every mechanism counts here;
// the cost model (later) multiplies these counts by a profile.

/** Anonymous mTHP orders Linux supports on x86-64: 2..9 (THP_ORDERS_ALL_ANON). */
export const ANON_ORDERS = [2, 3, 4, 5, 6, 7, 8, 9] as const;
export const orderSizeName = (order: number): string => `${4 << order}kB`;

const GLOBAL = [
  // vmstat
  "pgfault",
  "thp_fault_alloc",
  "thp_fault_fallback",
  "thp_split_pmd",
  "thp_split_page",
  "thp_split_page_failed",
  "thp_deferred_split_page",
  "pglazyfree",
  "pglazyfreed",
  "pswpin",
  "pswpout",
  "pgscan",
  "pgsteal",
  "pgactivate",
  "pgdeactivate",
  "pgrefill",
  "thp_zero_page_alloc",
  // model events (for the cost model)
  "syscall",
  "mmap_lock",
  "ptl_lock",
  "pte_read",
  "pte_write",
  "pmd_write",
  "pgtable_alloc",
  "pgtable_free",
  "pgtable_copy",
  "folio_alloc",
  "folio_free",
  "page_zero",
  "page_copy",
  "ref_update",
  "mapcount_update",
  "rmap_dup",
  "tlb_flush",
  "vma_split",
  "vma_merge",
  "cow_reuse",
  "cow_copy",
  "fork",
  "fork_page_copy",
  "cow_pte_share",
  "cow_pte_break",
  "cow_pte_reuse",
  "cow_pte_drop",
  "cow_pte_enomem",
  "gup_fast",
  "gup_slow",
  "gup_unshare",
  "pin",
  "unpin",
  "folio_split",
  "lru_move",
  "swap_slot_alloc",
  "oom",
] as const;
const PER_ORDER = [
  "anon_fault_alloc",
  "anon_fault_fallback",
  "split",
  "split_failed",
  "split_deferred",
  "nr_anon_partially_mapped",
  "swpout",
  "swpin",
] as const;

export type GlobalEvent = (typeof GLOBAL)[number];
export type OrderEvent = (typeof PER_ORDER)[number];

/** Index of each event in VmStat.count. */
export const EV: Readonly<Record<GlobalEvent, number>> = Object.fromEntries(
  GLOBAL.map((n, i) => [n, i]),
) as Record<GlobalEvent, number>;

export class VmStat {
  readonly count = new Float64Array(GLOBAL.length + PER_ORDER.length * 10);

  inc(ev: number, n = 1): void {
    this.count[ev] += n;
  }
  /** Counts an mTHP per-size stat for a folio of `order`. */
  incOrder(stat: OrderEvent, order: number, n = 1): void {
    this.count[GLOBAL.length + PER_ORDER.indexOf(stat) * 10 + order] += n;
  }
  get(name: GlobalEvent): number {
    return this.count[EV[name]];
  }
  getOrder(stat: OrderEvent, order: number): number {
    return this.count[GLOBAL.length + PER_ORDER.indexOf(stat) * 10 + order];
  }
  /** Non-zero counters by name, in a fixed order (vmstat names, then mTHP stats by size). */
  snapshot(): Record<string, number> {
    const out: Record<string, number> = {};
    GLOBAL.forEach((n, i) => {
      if (this.count[i] !== 0) out[n] = this.count[i];
    });
    for (const stat of PER_ORDER) {
      for (const order of ANON_ORDERS) {
        const v = this.getOrder(stat, order);
        if (v !== 0) out[`hugepages-${orderSizeName(order)}/${stat}`] = v;
      }
    }
    return out;
  }
}
