// The prior of `vmlab calibrate`: a plausible ns per event for a ~3 GHz x86-64 server, from the
// usual orders of magnitude of kernel work (an atomic on a cached line ~5-10 ns, a 4 KiB clear
// ~400 ns at 10 GB/s, a syscall or exception entry with mitigations a few hundred ns, a buddy
// allocation a few hundred ns). It does two jobs:
//   - the fit is pulled gently toward it (fit.ts: a ridge term on the relative deviation), so
//     that events the calibration workloads cannot tell apart (the PTL lock and the fault entry
//     are always seen together, for example) split their time plausibly instead of one taking
//     all of it;
//   - events the workloads never produce (the COW page-table designs, pins, splits) are priced
//     from it, and the profile says so.
// Values are rough on purpose: where the live kernel can be measured, the data decides.

export const PRIOR_NS: Readonly<Record<string, number>> = {
  syscall: 300,
  pgfault: 1000,
  mmap_lock: 30,
  ptl_lock: 20,
  pte_read: 1,
  pte_write: 3,
  pmd_write: 3,
  pgtable_alloc: 400,
  pgtable_copy: 300,
  pgtable_free: 300,
  folio_alloc: 300,
  folio_free: 200,
  page_zero: 400,
  page_copy: 600,
  ref_update: 8,
  mapcount_update: 8,
  rmap_dup: 20,
  tlb_flush: 500,
  vma_split: 500,
  vma_merge: 500,
  cow_reuse: 100,
  cow_copy: 200,
  fork: 200_000,
  fork_page_copy: 0,
  gup_fast: 50,
  gup_slow: 300,
  gup_unshare: 100,
  pin: 20,
  unpin: 20,
  cow_pte_share: 50,
  cow_pte_break: 100,
  cow_pte_reuse: 20,
  cow_pte_drop: 50,
  cow_pte_enomem: 0,
  thp_fault_alloc: 500,
  thp_fault_fallback: 200,
  thp_split_pmd: 5000,
  thp_deferred_split_page: 100,
  thp_zero_page_alloc: 1000,
  // MADV_FREE, split and reclaim: a folio batch add and an LRU list move under the lruvec lock;
  // a vmstat add (pglazyfree counts pages, but is one add per folio); split_folio's fixed work
  // (rmap walk, refcount freeze, remap), its per-page work being the PTE and mapcount events.
  lru_move: 50,
  pglazyfree: 1,
  pglazyfreed: 1,
  folio_split: 2000,
  thp_split_page: 2000,
  thp_split_page_failed: 200,
};

/**
 * Events priced from the prior and not fitted. Each is a cheap step (a load or store to a line
 * the kernel just touched, an uncontended lock) that every calibration workload performs in a
 * fixed ratio to a costlier per-page step: a fit cannot tell them apart, and left free it hands
 * one of them the cost of the struct page cache miss, which would credit batching with work it
 * does not save (a fit left free gave pte_write 25 ns and mapcount_update 0, which made COW
 * page tables, which save one PTE write per page, look 22 % faster at fork; the v4 thread's
 * reviewer measured no gain; likewise a free fit priced a page-table allocation at 5.9 us, ten
 * page allocations). The miss is priced where the kernel pays it: mapcount_update, one per page
 * (CONFIG_PAGE_MAPCOUNT touches every page's _mapcount, batched or not).
 */
export const FIXED_FROM_PRIOR: ReadonlySet<string> = new Set([
  "pte_read",
  "pte_write",
  "pmd_write",
  "ptl_lock",
  "mmap_lock",
  "ref_update",
  "rmap_dup",
  "pgtable_alloc",
  "pgtable_free",
]);

/** The prior for an event, per-size mTHP stats included (priced like their global kin). */
export function priorNs(event: string): number | undefined {
  if (event in PRIOR_NS) return PRIOR_NS[event];
  if (event.endsWith("/anon_fault_alloc")) return PRIOR_NS.thp_fault_alloc;
  if (event.endsWith("/anon_fault_fallback")) return PRIOR_NS.thp_fault_fallback;
  if (event.endsWith("/split_deferred")) return PRIOR_NS.thp_deferred_split_page;
  if (event.endsWith("/split")) return PRIOR_NS.thp_split_page;
  if (event.endsWith("/split_failed")) return PRIOR_NS.thp_split_page_failed;
  return undefined;
}

/** How strongly the fit is pulled toward the prior: an event 300x off costs as much as one sample 100 % off. */
export const PRIOR_WEIGHT = 1e-5;
