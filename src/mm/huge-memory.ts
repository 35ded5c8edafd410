// Transparent huge pages (mm/huge_memory.c): which folio orders a VMA may use, PMD-mapped
// anonymous THP faults, the huge zero page, PMD split, zap and protection change.

import { PG_anon, PG_anon_exclusive, PG_dirty, PG_lru, PG_swapbacked } from "../phys/memmap.ts";
import { EAGAIN, ENOMEM, PMD_SIZE } from "../uapi.ts";
import { legacyCanReuse } from "./memory.ts";
import { MM_ANONPAGES, type Mm } from "./mm.ts";
import { isPmdLeaf, populate } from "./pgalloc.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_PRESENT,
  _PAGE_PROTNONE,
  _PAGE_PSE,
  _PAGE_RW,
  _PAGE_SPECIAL,
  entryPfn,
  HPAGE_PMD_NR,
  HPAGE_PMD_ORDER,
  mkHi,
  mkLo,
  type PageTable,
} from "./pgtable.ts";
import {
  anonVmaPrepare,
  deferredSplitFolio,
  folioAddNewAnonRmap,
  folioAddRmapPtes,
  folioMoveAnonRmap,
  folioRemoveRmapPmd,
  folioTryDupAnonRmapPmd,
} from "./rmap.ts";
import { VM_HUGEPAGE, VM_NOHUGEPAGE, VM_WRITE, type Vma, vmPageProtLo, vmPageProtNx } from "./vma.ts";
import { EV } from "./vmstat.ts";

export const VM_FAULT_OOM = 0x000001;
export const VM_FAULT_SIGBUS = 0x000002;
export const VM_FAULT_SIGSEGV = 0x000040;
export const VM_FAULT_FALLBACK = 0x000800;

/** All anon THP orders on x86-64 (THP_ORDERS_ALL_ANON): 2..9. */
export const THP_ORDERS_ALL_ANON = 0x3fc;

/**
 * thp_vma_allowable_orders for a page fault on an anonymous VMA: the subset of `orders` (a
 * bitmask) the sysfs policy allows, before alignment is checked. VM_NOHUGEPAGE allows none;
 * per size, "always" allows, "madvise" needs VM_HUGEPAGE, "inherit" follows the global setting
 * (always, or madvise with VM_HUGEPAGE). A per-size policy applies even when the global one is
 * "never", as in Linux 6.18.
 */
export function thpVmaAllowableOrders(mm: Mm, vma: Vma, orders: number): number {
  if (vma.shmem !== null || vma.flags & VM_NOHUGEPAGE) return 0;
  const m = mm.machine;
  const huge = (vma.flags & VM_HUGEPAGE) !== 0;
  const global = m.config.thp.enabled;
  let mask = m.hugeAnonOrdersAlways;
  if (huge) mask |= m.hugeAnonOrdersMadvise;
  if (global === "always" || (huge && global === "madvise")) mask |= m.hugeAnonOrdersInherit;
  return orders & mask & THP_ORDERS_ALL_ANON;
}

/** thp_vma_suitable_order: the aligned 2^order range around addr lies inside the VMA. */
export function thpVmaSuitableOrder(vma: Vma, addr: number, order: number): boolean {
  const size = 4096 * 2 ** order;
  const haddr = Math.floor(addr / size) * size;
  return haddr >= vma.start && haddr + size <= vma.end;
}

/** The PMD entry words mapping pfn with the VMA's protection (mk_huge_pmd). */
function mkHugePmd(vma: Vma, pfn: number, extra: number): [number, number] {
  return [mkLo(pfn, vmPageProtLo(vma.flags) | _PAGE_PSE | extra), mkHi(pfn, vmPageProtNx(vma.flags))];
}

/** vma_alloc_anon_folio_pmd: a zeroed order-9 anon folio, or -1 (counted as a fallback). */
function allocAnonFolioPmd(mm: Mm): number {
  const m = mm.machine;
  const pfn = m.allocFolio(HPAGE_PMD_ORDER, PG_swapbacked | PG_lru);
  if (pfn < 0) {
    m.stat.inc(EV.thp_fault_fallback);
    m.stat.incOrder("anon_fault_fallback", HPAGE_PMD_ORDER);
  }
  return pfn;
}

/**
 * map_anon_folio_pmd: maps a new PMD THP at PMD entry i, dirty always and writable if VM_WRITE
 * (maybe_pmd_mkwrite(pmd_mkdirty(entry))), and queues it for the underused-THP shrinker.
 */
function mapAnonFolioPmd(mm: Mm, vma: Vma, pmd: PageTable, i: number, pfn: number, haddr: number): void {
  const m = mm.machine;
  const w = vma.flags & VM_WRITE ? _PAGE_RW : 0;
  const [lo, hi] = mkHugePmd(vma, pfn, w | _PAGE_DIRTY);
  pmd.set(i, lo, hi);
  folioAddNewAnonRmap(mm, vma, pfn, HPAGE_PMD_ORDER, haddr, true);
  deferredSplitFolio(m, pfn, HPAGE_PMD_ORDER, false);
  mm.rss[MM_ANONPAGES] += HPAGE_PMD_NR;
  m.stat.inc(EV.pmd_write);
  m.stat.inc(EV.thp_fault_alloc);
  m.stat.incOrder("anon_fault_alloc", HPAGE_PMD_ORDER);
}

/**
 * do_huge_pmd_anonymous_page: a fault on an empty PMD entry i of a THP-eligible range. A read
 * fault maps the huge zero page when use_zero_page is set; otherwise an order-9 folio is
 * allocated. Either way a PTE table is deposited. Returns 0, VM_FAULT_OOM, or
 * VM_FAULT_FALLBACK when no order-9 block is free (the caller tries smaller orders).
 */
export function doHugePmdAnonymousPage(
  mm: Mm,
  vma: Vma,
  pmd: PageTable,
  i: number,
  addr: number,
  write: boolean,
): number {
  const m = mm.machine;
  if (!thpVmaSuitableOrder(vma, addr, HPAGE_PMD_ORDER)) return VM_FAULT_FALLBACK;
  anonVmaPrepare(mm, vma);
  let folio = -1;
  if (write || !m.config.thp.useZeroPage) {
    folio = allocAnonFolioPmd(mm);
    if (folio < 0) return VM_FAULT_FALLBACK;
  }
  const deposit = m.allocTable("pte");
  if (deposit === null) {
    if (folio >= 0) m.folioPut(folio);
    return VM_FAULT_OOM;
  }
  pmd.setChild(i, deposit); // pgtable_trans_huge_deposit
  mm.pgtablesBytes += 4096;
  if (folio < 0) {
    const [lo, hi] = mkHugePmd(vma, m.hugeZeroPfn, _PAGE_SPECIAL);
    pmd.set(i, lo, hi);
    m.stat.inc(EV.pmd_write);
    // get_huge_zero_folio counts thp_zero_page_alloc when it allocates the folio: here, once.
    if (m.stat.get("thp_zero_page_alloc") === 0) m.stat.inc(EV.thp_zero_page_alloc);
    return 0;
  }
  mapAnonFolioPmd(mm, vma, pmd, i, folio, Math.floor(addr / PMD_SIZE) * PMD_SIZE);
  return 0;
}

/**
 * do_huge_pmd_wp_page: a write fault (or an unshare fault) on a read-only huge PMD. On the huge
 * zero page a new THP replaces it (do_huge_zero_wp_pmd). An anon folio that is
 * PageAnonExclusive, or whose only reference is this PMD, is reused (an unshare stops after
 * marking it exclusive). Otherwise, or when no THP can be allocated, the PMD is split in this
 * mm only and VM_FAULT_FALLBACK sends the fault to the PTE level, which copies 4 KiB.
 */
export function doHugePmdWpPage(
  mm: Mm,
  vma: Vma,
  pmd: PageTable,
  i: number,
  addr: number,
  unshare: boolean,
): number {
  const m = mm.machine;
  const mem = m.memmap;
  const pfn = entryPfn(pmd.lo(i), pmd.hi(i));
  const haddr = Math.floor(addr / PMD_SIZE) * PMD_SIZE;
  if (pfn === m.hugeZeroPfn) {
    const folio = allocAnonFolioPmd(mm);
    if (folio >= 0) {
      pmd.clear(i); // pmdp_huge_clear_flush; the deposited table stays
      m.stat.inc(EV.tlb_flush);
      mapAnonFolioPmd(mm, vma, pmd, i, folio, haddr);
      return 0;
    }
  } else {
    let reuse: boolean;
    if (m.cow === "legacy") reuse = legacyCanReuse(m, pfn);
    else if (mem.test(pfn, PG_anon_exclusive)) reuse = true;
    else if (mem.ref(pfn) === 1) {
      folioMoveAnonRmap(m, pfn, vma);
      reuse = true;
    } else reuse = false;
    if (reuse) {
      mem.set(pfn, PG_anon_exclusive);
      if (unshare) return 0;
      const w = vma.flags & VM_WRITE ? _PAGE_RW : 0;
      pmd.set(i, (pmd.lo(i) | w | _PAGE_DIRTY | _PAGE_ACCESSED) >>> 0, pmd.hi(i));
      m.stat.inc(EV.pmd_write);
      m.stat.inc(EV.cow_reuse);
      return 0;
    }
  }
  splitHugePmd(mm, vma, pmd, i, haddr);
  return VM_FAULT_FALLBACK;
}

/**
 * __split_huge_pmd_locked: turns the huge PMD entry i (covering haddr) into a PTE table, the
 * deposited one, mapping the same pages with the same bits. For an anon folio the PMD reference
 * becomes 512 PTE references and PageAnonExclusive spreads to every page; a dirty PMD marks the
 * folio dirty. The huge zero page becomes 512 zero-page PTEs.
 */
export function splitHugePmd(mm: Mm, vma: Vma, pmd: PageTable, i: number, haddr: number): void {
  const m = mm.machine;
  const lo = pmd.lo(i);
  const hi = pmd.hi(i);
  const head = entryPfn(lo, hi);
  const pte = pmd.child(i);
  if (pte === undefined || !isPmdLeaf(pmd, i)) throw new Error(`splitHugePmd: no huge PMD at ${haddr}`);
  pmd.clear(i); // pmdp_invalidate
  m.stat.inc(EV.tlb_flush);
  const nx = (hi & 0x80000000) !== 0;
  if (head === m.hugeZeroPfn) {
    const zlo = mkLo(m.zeroPfn, vmPageProtLo(vma.flags) | _PAGE_SPECIAL);
    const zhi = mkHi(m.zeroPfn, nx);
    for (let j = 0; j < HPAGE_PMD_NR; j++) pte.set(j, zlo, zhi);
  } else {
    const mmap = m.memmap;
    const bits = lo & (_PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_PRESENT | _PAGE_PROTNONE);
    const base = vmPageProtLo(vma.flags) & ~(_PAGE_PRESENT | _PAGE_PROTNONE);
    const exclusive = mmap.test(head, PG_anon_exclusive);
    if (lo & _PAGE_DIRTY) mmap.set(head, PG_dirty);
    mmap.addRef(head, HPAGE_PMD_NR - 1);
    m.stat.inc(EV.ref_update);
    folioAddRmapPtes(mm, head, head, HPAGE_PMD_NR, exclusive);
    for (let j = 0; j < HPAGE_PMD_NR; j++) pte.set(j, mkLo(head + j, base | bits), mkHi(head + j, nx));
    folioRemoveRmapPmd(mm, head);
    if (!mmap.test(head, PG_anon)) throw new Error(`splitHugePmd: folio ${head} is not anon`);
  }
  m.stat.inc(EV.pte_write, HPAGE_PMD_NR);
  m.stat.inc(EV.thp_split_pmd);
  populate(pmd, i, pte); // pmd_populate with the withdrawn deposit, already counted in VmPTE
}

/**
 * zap_huge_pmd: unmaps the whole huge PMD entry i and frees its deposited table. The folio
 * loses its PMD reference; the huge zero page is not reference counted.
 */
export function zapHugePmd(mm: Mm, pmd: PageTable, i: number): void {
  const m = mm.machine;
  const head = pmd.pfnAt(i);
  const deposit = pmd.child(i);
  if (deposit === undefined) throw new Error("zapHugePmd: no deposited table");
  pmd.clear(i);
  pmd.setChild(i, undefined);
  m.stat.inc(EV.pmd_write);
  m.freeTable(deposit); // zap_deposited_table
  mm.pgtablesBytes -= 4096;
  if (head === m.hugeZeroPfn) return;
  folioRemoveRmapPmd(mm, head);
  mm.rss[MM_ANONPAGES] -= HPAGE_PMD_NR;
  m.folioPut(head);
}

/**
 * change_huge_pmd: applies the VMA's new protection to huge PMD entry i. Write permission is
 * kept only for an exclusive anon folio in a VM_WRITE VMA (can_change_pmd_writable).
 */
export function changeHugePmd(mm: Mm, vma: Vma, pmd: PageTable, i: number): void {
  const m = mm.machine;
  const lo = pmd.lo(i);
  const pfn = entryPfn(lo, pmd.hi(i));
  const keep = lo & (_PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_SPECIAL);
  let w = 0;
  if (vma.flags & VM_WRITE && pfn !== m.hugeZeroPfn && m.memmap.test(pfn, PG_anon_exclusive)) w = _PAGE_RW;
  const [nlo, nhi] = mkHugePmd(vma, pfn, keep | w);
  if (nlo !== lo || nhi !== pmd.hi(i)) {
    pmd.set(i, nlo, nhi);
    m.stat.inc(EV.pmd_write);
  }
}

/**
 * copy_huge_pmd: at fork, copies the huge PMD entry i of src (covering addr) into entry i of
 * dst, with a new deposited table for the child, both entries write-protected and the child's
 * old. The huge zero page is shared as it is. Returns 0, -ENOMEM, or -EAGAIN when the folio
 * may be pinned: the parent's PMD was then split and the caller copies its PTEs instead.
 */
export function copyHugePmd(
  dst: Mm,
  src: Mm,
  dpmd: PageTable,
  spmd: PageTable,
  i: number,
  srcVma: Vma,
  addr: number,
): number {
  const m = dst.machine;
  const deposit = m.allocTable("pte");
  if (deposit === null) return -ENOMEM;
  const lo = spmd.lo(i);
  const head = spmd.pfnAt(i);
  if (head !== m.hugeZeroPfn) {
    m.memmap.addRef(head, 1);
    if (!folioTryDupAnonRmapPmd(dst, src, head)) {
      m.memmap.addRef(head, -1);
      m.freeTable(deposit);
      splitHugePmd(src, srcVma, spmd, i, addr);
      return -EAGAIN;
    }
    dst.rss[MM_ANONPAGES] += HPAGE_PMD_NR;
  }
  dpmd.setChild(i, deposit); // pgtable_trans_huge_deposit
  dst.pgtablesBytes += 4096;
  const wp = (lo & ~_PAGE_RW) >>> 0;
  if (wp !== lo) spmd.set(i, wp, spmd.hi(i)); // pmdp_set_wrprotect
  dpmd.set(i, (wp & ~_PAGE_ACCESSED) >>> 0, spmd.hi(i)); // pmd_mkold
  m.stat.inc(EV.pmd_write, 2);
  return 0;
}
