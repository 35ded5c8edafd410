// Page faults and unmapping (mm/memory.c): handleMmFault and its anonymous, shared and
// write-protect paths; zapping a range; freeing page tables behind unmapped VMAs.
//
// Lock order (for when concurrency arrives): mmap_lock > vma lock > page-table lock (PTL).
// Differs from Linux: faults run to completion one at a time, so no lock is taken yet.

import { PG_anon, PG_anon_exclusive, PG_lru, PG_swapbacked, PG_swapcache } from "../phys/memmap.ts";
import { PMD_SIZE } from "../uapi.ts";
import { breakCowPte, dropCowPte } from "./cow-pte.ts";
import {
  doHugePmdAnonymousPage,
  doHugePmdWpPage,
  splitHugePmd,
  THP_ORDERS_ALL_ANON,
  thpVmaAllowableOrders,
  thpVmaSuitableOrder,
  VM_FAULT_FALLBACK,
  VM_FAULT_OOM,
  VM_FAULT_SIGBUS,
  zapHugePmd,
} from "./huge-memory.ts";
import type { Machine } from "./machine.ts";
import { MM_ANONPAGES, MM_SHMEMPAGES, MM_SWAPENTS, type Mm } from "./mm.ts";
import {
  freePgdRange,
  isPmdLeaf,
  pmdAlloc,
  pmdOffset,
  pteAlloc,
  pteFreeIfEmpty,
  pudAlloc,
} from "./pgalloc.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_RW,
  _PAGE_SOFT_DIRTY,
  _PAGE_SPECIAL,
  folioRunLength,
  HPAGE_PMD_ORDER,
  mkHi,
  mkLo,
  type PageTable,
  pmdAddrEnd,
  pmdIndex,
  pteIndex,
  pteMapped,
} from "./pgtable.ts";
import {
  anonVmaPrepare,
  folioAddNewAnonRmap,
  folioAddRmapPtes,
  folioMaybeMappedShared,
  folioMoveAnonRmap,
  folioRemoveRmapPtes,
} from "./rmap.ts";
import { shmemGetFolio } from "./shmem.ts";
import {
  folioFreeSwap,
  freeSwapAndCache,
  freeSwapCache,
  isSwapPte,
  pteSwpExclusive,
  pteSwpSoftDirty,
  swapFree,
  swapinReadahead,
  swapPteSlot,
} from "./swap.ts";
import { VM_MAYSHARE, VM_SHARED, VM_WRITE, type Vma, vmPageProtLo, vmPageProtNx } from "./vma.ts";
import { MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX, tryToFreePages, wakeupKswapd } from "./vmscan.ts";
import { EV } from "./vmstat.ts";

export const FAULT_FLAG_WRITE = 0x01;
/**
 * FAULT_FLAG_UNSHARE: GUP found a shared anon page (or the zero page) under a R/O pin; the
 * fault must make the page exclusive without making it writable.
 */
export const FAULT_FLAG_UNSHARE = 0x400;

/** fault_around_bytes default: read faults on file/shmem mappings map up to 64 KiB around. */
const FAULT_AROUND_PAGES = 16;

/**
 * handle_mm_fault: resolves a fault at addr in vma, which the caller has found and checked for
 * access rights (the arch fault handler's access_error). Allocates page tables on the way.
 * Returns 0, VM_FAULT_SIGBUS, or VM_FAULT_OOM (nothing left half done) when memory ran out and
 * reclaim could free nothing more.
 *
 * Memory pressure, as vmlab models it (vmscan.ts): a fault that starts with free memory below
 * the low watermark first does kswapd's work in line (wakeupKswapd); a fault that runs out of
 * memory unwinds, reclaims SWAP_CLUSTER_MAX pages (direct reclaim,
 * __alloc_pages_direct_reclaim) and is retried while reclaim makes progress, at most
 * MAX_RECLAIM_RETRIES times. Reclaim runs only here, between faults, never while a walker holds
 * a page table.
 */
export function handleMmFault(mm: Mm, vma: Vma, addr: number, flags: number): number {
  const m = mm.machine;
  wakeupKswapd(m);
  let ret = handleMmFaultOnce(mm, vma, addr, flags);
  for (let tries = 0; ret & VM_FAULT_OOM && tries < MAX_RECLAIM_RETRIES; tries++) {
    if (tryToFreePages(m, SWAP_CLUSTER_MAX) === 0) break;
    ret = handleMmFaultOnce(mm, vma, addr, flags);
  }
  if (ret & VM_FAULT_OOM) m.stat.inc(EV.oom);
  return ret;
}

/** __handle_mm_fault: one try at the fault, without reclaim. */
function handleMmFaultOnce(mm: Mm, vma: Vma, addr: number, flags: number): number {
  const m = mm.machine;
  m.stat.inc(EV.pgfault);
  const write = (flags & FAULT_FLAG_WRITE) !== 0;
  const unshare = (flags & FAULT_FLAG_UNSHARE) !== 0;
  const pud = pudAlloc(mm, addr);
  if (pud === null) return VM_FAULT_OOM;
  const pmd = pmdAlloc(mm, pud, addr);
  if (pmd === null) return VM_FAULT_OOM;
  const i = pmdIndex(addr);
  if (pmd.none(i) && thpVmaAllowableOrders(mm, vma, 1 << HPAGE_PMD_ORDER) !== 0) {
    const ret = doHugePmdAnonymousPage(mm, vma, pmd, i, addr, write);
    if (!(ret & VM_FAULT_FALLBACK)) return ret;
  } else if (isPmdLeaf(pmd, i)) {
    if ((write || unshare) && !(pmd.lo(i) & _PAGE_RW)) {
      const ret = doHugePmdWpPage(mm, vma, pmd, i, addr, unshare);
      if (!(ret & VM_FAULT_FALLBACK)) return ret;
    } else {
      pmd.set(i, (pmd.lo(i) | _PAGE_ACCESSED) >>> 0, pmd.hi(i)); // huge_pmd_set_accessed
      return 0;
    }
  }
  // Anything below changes an entry: a shared PTE table is broken first (break_cow_pte).
  if (pmd.child(i)?.cow != null && !isPmdLeaf(pmd, i) && breakCowPte(mm, pmd, i) < 0) return VM_FAULT_OOM;
  return handlePteFault(mm, vma, pmd, i, addr, flags);
}

/** handle_pte_fault: the PTE-level part of a fault, with the PTE table allocated if needed. */
function handlePteFault(mm: Mm, vma: Vma, pmd: PageTable, i: number, addr: number, flags: number): number {
  const write = (flags & FAULT_FLAG_WRITE) !== 0;
  const hadTable = !pmd.none(i);
  const pte = pteAlloc(mm, pmd, i);
  if (pte === null) return VM_FAULT_OOM;
  mm.machine.stat.inc(EV.ptl_lock);
  mm.machine.stat.inc(EV.pte_read);
  const j = pteIndex(addr);
  const lo = pte.lo(j);
  if (lo === 0 && pte.hi(j) === 0) {
    if (vma.isAnonymous()) return doAnonymousPage(mm, vma, pte, addr, write);
    const ret = doShmemFault(mm, vma, pte, addr, write);
    // A failed shmem fault installs no table (__do_fault only preallocates one), unless
    // fault-around mapped something into it (filemap_map_pmd); seen with `vmlab diff`.
    if (ret & (VM_FAULT_SIGBUS | VM_FAULT_OOM) && !hadTable) pteFreeIfEmpty(mm, pmd, i);
    return ret;
  }
  if (!pteMapped(lo)) return doSwapPage(mm, vma, pte, j, addr, flags);
  if (flags & (FAULT_FLAG_WRITE | FAULT_FLAG_UNSHARE) && !(lo & _PAGE_RW))
    return doWpPage(mm, vma, pte, j, addr, !write);
  pte.set(j, (lo | _PAGE_ACCESSED | (write ? _PAGE_DIRTY : 0)) >>> 0, pte.hi(j));
  return 0;
}

/** The PTE words mapping pfn in vma, writable and dirty when `writable`. */
function mkPte(vma: Vma, pfn: number, writable: boolean): [number, number] {
  const bits = vmPageProtLo(vma.flags) | (writable ? _PAGE_RW | _PAGE_DIRTY : 0);
  return [mkLo(pfn, bits), mkHi(pfn, vmPageProtNx(vma.flags))];
}

/**
 * do_anonymous_page: a fault on an empty PTE of a private anonymous VMA. A read maps the
 * shared zero page. A write allocates a folio of the largest allowed order (alloc_anon_folio)
 * and maps all of it, writable and dirty if VM_WRITE, exclusive to this mm.
 */
export function doAnonymousPage(mm: Mm, vma: Vma, pte: PageTable, addr: number, write: boolean): number {
  const m = mm.machine;
  if (!write) {
    const lo = mkLo(m.zeroPfn, vmPageProtLo(vma.flags) | _PAGE_SPECIAL);
    pte.set(pteIndex(addr), lo, mkHi(m.zeroPfn, vmPageProtNx(vma.flags)));
    m.stat.inc(EV.pte_write);
    return 0;
  }
  anonVmaPrepare(mm, vma);
  const pfn = allocAnonFolio(mm, vma, pte, addr);
  if (pfn < 0) return VM_FAULT_OOM;
  const order = m.memmap.order(pfn);
  const nr = 1 << order;
  if (nr > 1) m.memmap.addRef(pfn, nr - 1);
  const j0 = pteIndex(addr) & ~(nr - 1);
  folioAddNewAnonRmap(mm, vma, pfn, order, addr - (pteIndex(addr) - j0) * 4096, false);
  mm.rss[MM_ANONPAGES] += nr;
  if (order > 0) m.stat.incOrder("anon_fault_alloc", order);
  const writable = (vma.flags & VM_WRITE) !== 0;
  const bits = vmPageProtLo(vma.flags) | (writable ? _PAGE_RW | _PAGE_DIRTY : 0);
  const nx = vmPageProtNx(vma.flags);
  for (let k = 0; k < nr; k++) pte.set(j0 + k, mkLo(pfn + k, bits), mkHi(pfn + k, nx));
  m.stat.inc(EV.pte_write, nr);
  return 0;
}

/**
 * alloc_anon_folio: picks the highest order that the policy allows, that fits naturally
 * aligned in the VMA and whose PTEs are all none, and allocates it zeroed, falling back to
 * lower orders when the buddy allocator cannot supply one. Returns the head pfn (its order is
 * in the memmap), or -1 when not even an order-0 page is free.
 */
function allocAnonFolio(mm: Mm, vma: Vma, pte: PageTable, addr: number): number {
  const m = mm.machine;
  let orders = thpVmaAllowableOrders(mm, vma, THP_ORDERS_ALL_ANON & ((1 << HPAGE_PMD_ORDER) - 1));
  if (orders === 0) return m.allocFolio(0, PG_swapbacked | PG_lru); // folio_prealloc
  for (let order = HPAGE_PMD_ORDER - 1; order >= 2; order--) {
    if (!(orders & (1 << order))) continue;
    if (!thpVmaSuitableOrder(vma, addr, order) || !pteRangeNone(pte, addr, order)) orders &= ~(1 << order);
  }
  for (let order = HPAGE_PMD_ORDER - 1; order >= 0; order--) {
    if (order > 0 && !(orders & (1 << order))) continue;
    const pfn = m.allocFolio(order, PG_swapbacked | PG_lru); // zeroed: folio_zero_user
    if (pfn >= 0) return pfn;
    if (order > 0) m.stat.incOrder("anon_fault_fallback", order);
  }
  return -1;
}

/** pte_range_none: the 2^order PTEs of the aligned block around addr are all none. */
function pteRangeNone(pte: PageTable, addr: number, order: number): boolean {
  const nr = 1 << order;
  const j0 = pteIndex(addr) & ~(nr - 1);
  for (let k = 0; k < nr; k++) if (!pte.none(j0 + k)) return false;
  return true;
}

/**
 * do_swap_page (Linux 6.18) for a swap entry at pte[j] of a private anon VMA: the page comes from
 * the swap cache, or is read into a new folio added to it (VM_FAULT_OOM, nothing changed, when
 * no page is free). The entry's slot reference goes (swap_free), and the folio leaves the swap
 * cache when swap is over half full, or on a write fault when the cache and this fault hold its
 * only references (should_try_to_free_swap + folio_free_swap). The page is mapped exclusive when
 * the entry was exclusive or no one else holds the folio any more (refcount 1); exclusive in a
 * VM_WRITE VMA it is mapped writable, and dirty on a write fault. A write fault that could only
 * map it read-only goes on to do_wp_page. A folio mapped for the first time gets a new anon rmap
 * (at the root anon_vma when not exclusive, as __folio_set_anon does), else one more mapping.
 */
function doSwapPage(mm: Mm, vma: Vma, pte: PageTable, j: number, addr: number, flags: number): number {
  const m = mm.machine;
  const mem = m.memmap;
  const swap = m.swap;
  const lo = pte.lo(j);
  const slot = swapPteSlot(lo, pte.hi(j));
  const av = vma.anonVma;
  if (!isSwapPte(lo, pte.hi(j)) || !vma.isAnonymous() || av === null)
    throw new Error(`doSwapPage: entry ${lo} at ${addr} is not a swap entry of a private anon VMA`);
  if (slot >= swap.nrSlots || swap.count[slot] <= 0)
    throw new Error(`doSwapPage: swap entry at ${addr} names slot ${slot}, which no entry holds`);
  const write = (flags & FAULT_FLAG_WRITE) !== 0;
  let pfn = swap.cache.get(slot);
  if (pfn === undefined) {
    pfn = swapinReadahead(m, slot); // a major fault
    if (pfn < 0) return VM_FAULT_OOM;
  } else {
    mem.addRef(pfn, 1); // swap_cache_get_folio's reference, which becomes the PTE's
    m.stat.inc(EV.ref_update);
  }
  let exclusive = pteSwpExclusive(lo);
  swapFree(m, slot);
  // should_try_to_free_swap: a full device, or a write fault that may then reuse the page.
  if (swap.full() || (write && mem.ref(pfn) === 2)) folioFreeSwap(m, pfn);
  mm.rss[MM_ANONPAGES]++;
  mm.rss[MM_SWAPENTS]--;
  let bits = vmPageProtLo(vma.flags) | (pteSwpSoftDirty(lo) ? _PAGE_SOFT_DIRTY : 0);
  let done = !write;
  if (exclusive || mem.ref(pfn) === 1) {
    exclusive = true;
    if (vma.flags & VM_WRITE) {
      bits |= _PAGE_RW;
      if (write) {
        bits |= _PAGE_DIRTY;
        done = true;
      }
    }
  }
  if (!mem.test(pfn, PG_anon)) {
    folioAddNewAnonRmap(mm, vma, pfn, 0, addr, false);
    if (!exclusive) {
      // __folio_set_anon: a folio that may be shared points at the oldest anon_vma.
      mem.clear(pfn, PG_anon_exclusive);
      mem.setFolioMapping(pfn, av.root.id, vma.linearPageIndex(addr));
    }
  } else {
    folioAddRmapPtes(mm, pfn, pfn, 1, exclusive);
  }
  pte.set(j, mkLo(pfn, bits), mkHi(pfn, vmPageProtNx(vma.flags)));
  m.stat.inc(EV.pte_write);
  if (!done) return doWpPage(mm, vma, pte, j, addr, false);
  // Differs from Linux: an unshare fault (a R/O pin) that mapped the page shared goes on to
  // unshare it here; Linux returns, and GUP's retry faults again. In between, vmlab's reclaim
  // (which runs at the start of every fault under pressure) could swap the page out again, and
  // so forever.
  if (flags & FAULT_FLAG_UNSHARE && !exclusive) return doWpPage(mm, vma, pte, j, addr, true);
  return 0;
}

/**
 * do_wp_page: a write fault (or, with `unshare`, an unshare fault for a R/O pin) on a present
 * read-only PTE. A shared mapping's page is made writable in place (wp_page_shared). A private
 * anon page is reused when it is PageAnonExclusive or provably owned by this mm alone
 * (wp_can_reuse_anon_folio), and becomes exclusive; an unshare stops there, a write makes the
 * PTE writable (wp_page_reuse). Anything else, the zero page included, is copied (wp_page_copy).
 * Under the legacy rule a page that one PTE maps is reused, whatever else references it.
 */
export function doWpPage(
  mm: Mm,
  vma: Vma,
  pte: PageTable,
  j: number,
  addr: number,
  unshare: boolean,
): number {
  const m = mm.machine;
  const lo = pte.lo(j);
  const pfn = pte.pfnAt(j);
  if (vma.flags & (VM_SHARED | VM_MAYSHARE)) {
    pte.set(j, (lo | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED) >>> 0, pte.hi(j)); // wp_page_shared
    m.stat.inc(EV.pte_write);
    return 0;
  }
  if (!(lo & _PAGE_SPECIAL)) {
    const mem = m.memmap;
    const head = mem.folioHead(pfn);
    if (mem.test(head, PG_anon)) {
      const reuse =
        m.cow === "legacy"
          ? legacyCanReuse(m, head)
          : mem.test(pfn, PG_anon_exclusive) || wpCanReuseAnonFolio(m, head, vma);
      if (reuse) {
        mem.set(pfn, PG_anon_exclusive);
        if (unshare) return 0;
        // wp_page_reuse
        pte.set(j, (lo | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED) >>> 0, pte.hi(j));
        m.stat.inc(EV.pte_write);
        m.stat.inc(EV.cow_reuse);
        return 0;
      }
    }
  }
  return wpPageCopy(mm, vma, pte, j, addr, unshare);
}

/**
 * wp_can_reuse_anon_folio (Linux 6.18): may a write fault reuse this anon folio that is not
 * marked exclusive? A small folio: only when its refcount is 1 (this mapping is the only
 * reference: no other mapping, pin, pipe or cache holds it; a folio in the swap cache leaves it
 * first if no swap entry needs it, folio_free_swap), after which the folio moves to vma's
 * anon_vma. A large folio (__wp_can_reuse_large_anon_folio): when it is mapped more than
 * once, not maybe-mapped-shared by the mm id slots, and every reference is a mapping
 * (large mapcount == refcount).
 */
export function wpCanReuseAnonFolio(m: Machine, head: number, vma: Vma): boolean {
  const mem = m.memmap;
  if (mem.order(head) > 0) {
    const mapcount = mem.largeMapcount(head);
    if (mapcount <= 1) return false; // let a folio with one mapped page go instead
    if (folioMaybeMappedShared(m, head)) return false;
    return mapcount === mem.ref(head);
  }
  const cached = mem.test(head, PG_swapcache);
  if (mem.ref(head) > 1 + (cached ? 1 : 0)) return false;
  if (cached) folioFreeSwap(m, head); // drops the swap cache's reference when no entry needs it
  if (mem.ref(head) !== 1) return false;
  folioMoveAnonRmap(m, head, vma);
  return true;
}

/**
 * The legacy reuse rule (reuse_swap_page before 5.8): reuse when the page is mapped once,
 * counted as page_trans_huge_mapcount does: the largest per-page mapcount of the folio plus its
 * PMD mappings, plus the swap entries of a swap-cache folio's slot. References from pins and
 * pipes are not looked at, which is the bug.
 */
export function legacyCanReuse(m: Machine, head: number): boolean {
  const mem = m.memmap;
  const nr = 1 << mem.order(head);
  let max = 0;
  for (let i = 0; i < nr; i++) max = Math.max(max, mem.mapcount(head + i));
  let count = max + (nr > 1 ? mem.entireMapcount(head) : 0);
  if (mem.test(head, PG_swapcache)) {
    // reuse_swap_page counted the swap entries too, and dropped the swap cache when it reused.
    // Non-null: PG_swapcache folios are in slotOf.
    count += m.swap.count[m.swap.slotOf.get(head)!];
    if (count === 1) folioFreeSwap(m, head);
  }
  return count <= 1;
}

/**
 * wp_page_copy: maps a new exclusive order-0 anon page in place of the old one: zeroed when
 * replacing the zero page, else a copy of the old page's 4 KiB. A write maps it writable and
 * dirty; an unshare maps it read-only and clean. Drops the old mapping.
 */
function wpPageCopy(mm: Mm, vma: Vma, pte: PageTable, j: number, addr: number, unshare: boolean): number {
  const m = mm.machine;
  const oldPfn = pte.pfnAt(j);
  const wasZero = (pte.lo(j) & _PAGE_SPECIAL) !== 0;
  anonVmaPrepare(mm, vma);
  const pfn = m.allocFolio(0, PG_swapbacked | PG_lru, wasZero);
  if (pfn < 0) return VM_FAULT_OOM;
  if (!wasZero) {
    m.memmap.setTag(pfn, m.memmap.tag(oldPfn)); // copy_user_highpage
    m.stat.inc(EV.page_copy);
  }
  folioAddNewAnonRmap(mm, vma, pfn, 0, addr, false);
  let nlo: number;
  let nhi: number;
  if (unshare) {
    const soft = pte.lo(j) & _PAGE_SOFT_DIRTY;
    nlo = mkLo(pfn, vmPageProtLo(vma.flags) | soft);
    nhi = mkHi(pfn, vmPageProtNx(vma.flags));
  } else {
    [nlo, nhi] = mkPte(vma, pfn, (vma.flags & VM_WRITE) !== 0);
  }
  pte.set(j, nlo, nhi); // ptep_clear_flush + set_pte_at
  m.stat.inc(EV.pte_write);
  m.stat.inc(EV.tlb_flush);
  m.stat.inc(EV.cow_copy);
  if (wasZero) {
    mm.rss[MM_ANONPAGES]++;
  } else {
    const head = m.memmap.folioHead(oldPfn);
    folioRemoveRmapPtes(mm, head, oldPfn, 1);
    freeSwapCache(m, head);
    m.folioPut(head);
  }
  return 0;
}

/**
 * do_read_fault / do_shared_fault on shmem: finds or allocates the page-cache folio and maps
 * it. A read fault first maps the cached pages around addr (do_fault_around). The PTE is
 * writable when the VMA is shared and writable (shmem needs no write notification), and dirty
 * only on a write fault.
 */
function doShmemFault(mm: Mm, vma: Vma, pte: PageTable, addr: number, write: boolean): number {
  const m = mm.machine;
  // Non-null: only called for VMAs with a shmem object.
  const obj = vma.shmem!;
  if (!write) doFaultAround(mm, vma, pte, addr);
  const j = pteIndex(addr);
  if (!pte.none(j)) return 0;
  const index = vma.linearPageIndex(addr);
  if (index >= obj.size) return VM_FAULT_SIGBUS; // beyond i_size, after mremap grew the mapping
  const pfn = shmemGetFolio(m, obj, index);
  if (pfn < 0) return VM_FAULT_OOM;
  mapShmemPage(mm, vma, pte, j, pfn, write);
  return 0;
}

function mapShmemPage(mm: Mm, vma: Vma, pte: PageTable, j: number, pfn: number, dirty: boolean): void {
  const m = mm.machine;
  const w = vma.flags & VM_SHARED && vma.flags & VM_WRITE ? _PAGE_RW : 0;
  const bits = vmPageProtLo(vma.flags) | w | (dirty ? _PAGE_DIRTY : 0);
  pte.set(j, mkLo(pfn, bits), mkHi(pfn, vmPageProtNx(vma.flags)));
  m.memmap.addRef(pfn, 1);
  folioAddRmapPtes(mm, pfn, pfn, 1, false);
  mm.rss[MM_SHMEMPAGES]++;
  m.stat.inc(EV.pte_write);
  m.stat.inc(EV.ref_update);
}

/**
 * do_fault_around / filemap_map_pages: maps the pages already in the page cache inside the
 * fault_around_bytes-aligned window around addr, clipped to the VMA and the PTE table, into
 * empty PTEs. Mapped read-only clean, as filemap_map_pages does, unless the VMA is shared
 * writable.
 */
function doFaultAround(mm: Mm, vma: Vma, pte: PageTable, addr: number): void {
  // Non-null: only called for VMAs with a shmem object.
  const obj = vma.shmem!;
  // do_fault_around: from_pte = max(ALIGN_DOWN(pte_off, nr), pte_off - vma_off), then
  // to_pte = min3(from_pte + nr, PTRS_PER_PTE, end of the VMA), all within one PTE table.
  const pteOff = pteIndex(addr);
  const vmaOff = (addr - vma.start) / 4096;
  const fromPte = Math.max(pteOff & ~(FAULT_AROUND_PAGES - 1), pteOff - Math.min(pteOff, vmaOff));
  const toPte = Math.min(fromPte + FAULT_AROUND_PAGES, 512, pteOff + vma.pages() - vmaOff);
  const base = addr - pteOff * 4096;
  const from = base + fromPte * 4096;
  const to = base + toPte * 4096;
  for (let a = from; a < to; a += 4096) {
    const j = pteIndex(a);
    if (a === addr || !pte.none(j)) continue;
    const pfn = obj.pages.get(vma.pgoff + (a - vma.start) / 4096);
    if (pfn !== undefined) mapShmemPage(mm, vma, pte, j, pfn, false);
  }
}

/**
 * unmap_page_range: zaps every mapping in [start, end) of vma: PTEs, and huge PMDs (split
 * first when the range covers only part of one). Page tables stay (see freePgtables), except
 * with `reclaimPt` (zap_details.reclaim_pt, MADV_DONTNEED under CONFIG_PT_RECLAIM): a PTE table
 * the range covers whole is freed once it is empty (try_to_free_pte).
 */
export function unmapPageRange(mm: Mm, vma: Vma, start: number, end: number, reclaimPt = false): void {
  const m = mm.machine;
  let flushed = false;
  for (let addr = start, next: number; addr < end; addr = next) {
    next = pmdAddrEnd(addr, end);
    const pmd = pmdOffset(mm, addr);
    if (pmd === undefined) {
      next = Math.min(end, (Math.floor(addr / 2 ** 30) + 1) * 2 ** 30);
      continue;
    }
    const i = pmdIndex(addr);
    if (pmd.none(i)) continue;
    if (isPmdLeaf(pmd, i)) {
      if (next - addr === PMD_SIZE) {
        zapHugePmd(mm, pmd, i);
        flushed = true;
        continue;
      }
      splitHugePmd(mm, vma, pmd, i, Math.floor(addr / PMD_SIZE) * PMD_SIZE);
    }
    // Non-null: a present non-leaf PMD entry always has its table.
    const pte = pmd.child(i)!;
    if (pte.cow !== null) {
      // A shared table goes whole; callers break the ones a range covers in part.
      if (next - addr !== PMD_SIZE) throw new Error(`unmapPageRange: part of a shared table at ${addr}`);
      dropCowPte(mm, pmd, i);
      flushed = true;
      continue;
    }
    if (zapPteRange(mm, pte, addr, next)) flushed = true;
    if (reclaimPt && next - addr === PMD_SIZE && pte.used === 0) {
      pmd.clear(i);
      pmd.setChild(i, undefined);
      m.freeTable(pte); // free_pte
      mm.pgtablesBytes -= 4096;
      m.stat.inc(EV.pmd_write);
    }
  }
  if (flushed) m.stat.inc(EV.tlb_flush);
}

/**
 * zap_pte_range: clears the PTEs of [addr, end) in one table. Runs of PTEs mapping consecutive
 * pages of one folio are unmapped as a batch (zap_present_ptes), so a folio unmapped whole is
 * never seen as partly mapped; a folio left unmapped in the swap cache leaves it when no swap
 * entry needs its slot (free_swap_cache). A swap entry drops its slot reference
 * (free_swap_and_cache_nr). Returns true when a present entry was unmapped (a TLB flush is due).
 */
function zapPteRange(mm: Mm, pte: PageTable, addr: number, end: number): boolean {
  const m = mm.machine;
  const mmap = m.memmap;
  let any = false;
  const jEnd = pteIndex(addr) + (end - addr) / 4096;
  m.stat.inc(EV.ptl_lock);
  m.stat.inc(EV.pte_read, jEnd - pteIndex(addr));
  for (let j = pteIndex(addr); j < jEnd; ) {
    const lo = pte.lo(j);
    if (lo === 0 && pte.hi(j) === 0) {
      j++;
      continue;
    }
    if (!pteMapped(lo)) {
      // zap_nonpresent_ptes: a swap entry goes with its slot reference (no TLB entry to flush).
      if (!isSwapPte(lo, pte.hi(j))) throw new Error(`zapPteRange: unknown non-present PTE ${lo}`);
      const slot = swapPteSlot(lo, pte.hi(j));
      pte.clear(j++);
      m.stat.inc(EV.pte_write);
      mm.rss[MM_SWAPENTS]--;
      freeSwapAndCache(m, slot);
      continue;
    }
    any = true;
    if (lo & _PAGE_SPECIAL) {
      pte.clear(j++);
      m.stat.inc(EV.pte_write);
      continue;
    }
    const pfn = pte.pfnAt(j);
    const head = mmap.folioHead(pfn);
    const last = head + (1 << mmap.order(head));
    const nr = folioRunLength(pte, j, jEnd, pfn, last);
    for (let k = 0; k < nr; k++) pte.clear(j + k);
    m.stat.inc(EV.pte_write, nr);
    folioRemoveRmapPtes(mm, head, pfn, nr);
    mm.rss[mmap.test(head, PG_anon) ? MM_ANONPAGES : MM_SHMEMPAGES] -= nr;
    freeSwapCache(m, head); // free_pages_and_swap_cache
    m.folioPut(head, nr);
    j += nr;
  }
  return any;
}

/**
 * free_pgtables: frees the page tables behind the unmapped ranges (sorted, non-overlapping),
 * gathering ranges less than a PMD apart into one free_pgd_range call, between floor (the end
 * of the VMA below, or 0) and ceiling (the start of the VMA above, or 0 for none).
 */
export function freePgtables(mm: Mm, ranges: [number, number][], floor: number, ceiling: number): void {
  for (let k = 0; k < ranges.length; ) {
    const start = ranges[k][0];
    let end = ranges[k][1];
    k++;
    while (k < ranges.length && ranges[k][0] <= end + PMD_SIZE) end = ranges[k++][1];
    freePgdRange(mm, start, end, floor, k < ranges.length ? ranges[k][0] : ceiling);
  }
}
