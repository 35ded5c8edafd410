// madvise (mm/madvise.c): the advice that only changes VMA flags (MADV_NORMAL, MADV_HUGEPAGE,
// MADV_NOHUGEPAGE, MADV_DONTFORK/DOFORK, MADV_WIPEONFORK/KEEPONFORK); MADV_DONTNEED, which zaps;
// MADV_FREE, which makes anon folios lazyfree, under two designs (madvise.free: "split" as
// before 6.10, "batched" as 6.10 and later); MADV_COLD and MADV_PAGEOUT, which deactivate or
// reclaim folios; MADV_POPULATE_READ/WRITE, which fault the range in.

import {
  PG_active,
  PG_anon,
  PG_dirty,
  PG_lru,
  PG_referenced,
  PG_swapbacked,
  PG_swapcache,
  PG_unevictable,
} from "../phys/memmap.ts";
import {
  addU64,
  EAGAIN,
  EFAULT,
  EINVAL,
  ENOMEM,
  MADV_COLD,
  MADV_DOFORK,
  MADV_DONTFORK,
  MADV_DONTNEED,
  MADV_FREE,
  MADV_HUGEPAGE,
  MADV_KEEPONFORK,
  MADV_NOHUGEPAGE,
  MADV_NORMAL,
  MADV_PAGEOUT,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MADV_WIPEONFORK,
  PAGE_SIZE,
  PMD_SIZE,
  pageAlignU64,
} from "../uapi.ts";
import { cowPteBreakRange } from "./cow-pte.ts";
import { VM_FAULT_OOM, VM_FAULT_SIGBUS } from "./huge-memory.ts";
import { lruMove } from "./lru.ts";
import type { Machine } from "./machine.ts";
import { FAULT_FLAG_WRITE, handleMmFault, unmapPageRange } from "./memory.ts";
import { MM_SWAPENTS, type Mm } from "./mm.ts";
import { follTouch, mmuTranslate } from "./mmu.ts";
import { forEachPmd, isPmdLeaf } from "./pgalloc.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_SPECIAL,
  entryPfn,
  folioRunLength,
  type PageTable,
  pteIndex,
  pteMapped,
} from "./pgtable.ts";
import { folioMaybeMappedShared } from "./rmap.ts";
import { splitFolio } from "./split.ts";
import { folioFreeSwap, freeSwapAndCache, isSwapPte, swapPteSlot } from "./swap.ts";
import {
  VM_DONTCOPY,
  VM_HUGEPAGE,
  VM_NOHUGEPAGE,
  VM_READ,
  VM_SHARED,
  VM_WIPEONFORK,
  VM_WRITE,
  type Vma,
} from "./vma.ts";
import { vmaModifyFlags } from "./vma-ops.ts";
import { shrinkFolioList } from "./vmscan.ts";
import { EV } from "./vmstat.ts";

/** madvise_behavior_valid for the advice vmlab models. */
function behaviorValid(advice: number): boolean {
  return [
    MADV_NORMAL,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MADV_DONTFORK,
    MADV_DOFORK,
    MADV_WIPEONFORK,
    MADV_KEEPONFORK,
    MADV_FREE,
    MADV_COLD,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
  ].includes(advice);
}

/**
 * madvise_vma_behavior's flag change for one VMA: the new vm_flags, or -EINVAL
 * (MADV_WIPEONFORK on a shared or file mapping).
 */
function newVmFlags(vma: Vma, advice: number): number {
  const f = vma.flags;
  switch (advice) {
    case MADV_HUGEPAGE:
      return (f & ~VM_NOHUGEPAGE) | VM_HUGEPAGE;
    case MADV_NOHUGEPAGE:
      return (f & ~VM_HUGEPAGE) | VM_NOHUGEPAGE;
    case MADV_DONTFORK:
      return f | VM_DONTCOPY;
    case MADV_DOFORK:
      return f & ~VM_DONTCOPY;
    case MADV_WIPEONFORK:
      // Only supported on anonymous memory.
      if (vma.shmem !== null || f & VM_SHARED) return -EINVAL;
      return f | VM_WIPEONFORK;
    case MADV_KEEPONFORK:
      return f & ~VM_WIPEONFORK;
    default:
      return f;
  }
}

/**
 * madvise_dontneed_single_vma: zaps [start, end) of vma with zap_details.reclaim_pt
 * (CONFIG_PT_RECLAIM, set on our 6.18 machines): a large folio the range covers in part loses
 * those PTEs and waits on the deferred split queue, a PMD THP covered in part has its PMD split
 * and keeps its folio, and a PTE table the range covers whole is freed once empty. Private
 * pages read zero afterwards; shared ones keep their page-cache content.
 */
function madviseDontneedSingleVma(mm: Mm, vma: Vma, start: number, end: number): void {
  unmapPageRange(mm, vma, start, end, true);
}

/**
 * do_madvise: applies advice to every VMA part of [start, start + len). Errors: EINVAL for an
 * unknown advice, an unaligned start or an overflowing range, or MADV_WIPEONFORK reaching a
 * shared VMA (returned at once, the VMAs before it changed); ENOMEM when part of the range is
 * unmapped (reported after the mapped parts were advised), or when a split passes
 * vm.max_map_count. A zero length succeeds.
 */
export function sysMadvise(mm: Mm, start: number, len: number, advice: number): number {
  mm.machine.stat.inc(EV.syscall);
  mm.machine.stat.inc(EV.mmap_lock);
  if (!behaviorValid(advice)) return -EINVAL;
  if (start % PAGE_SIZE !== 0) return -EINVAL;
  const aligned = pageAlignU64(len);
  if (len !== 0 && aligned === 0) return -EINVAL;
  const end = addU64(start, aligned);
  if (end < start) return -EINVAL;
  if (end === start) return 0;
  if (advice === MADV_POPULATE_READ || advice === MADV_POPULATE_WRITE)
    return madvisePopulate(mm, start, end, advice === MADV_POPULATE_WRITE);
  // A VMA split at either end must not cut a shared PTE table (cow-pte.ts); advice that
  // changes entries needs every shared table of the range broken.
  const changesPtes = advice === MADV_FREE || advice === MADV_COLD || advice === MADV_PAGEOUT;
  if (cowPteBreakRange(mm, start, end, !changesPtes) < 0) return -ENOMEM;
  let unmapped = false;
  let addr = start;
  while (addr < end) {
    const vma = mm.findVma(addr);
    if (vma === undefined || vma.start >= end) {
      unmapped = true;
      break;
    }
    if (vma.start > addr) unmapped = true;
    const from = Math.max(addr, vma.start);
    const to = Math.min(end, vma.end);
    if (advice === MADV_DONTNEED) {
      madviseDontneedSingleVma(mm, vma, from, to);
      addr = to;
      continue;
    }
    if (advice === MADV_FREE) {
      // MADV_FREE works for anon VMAs only (madvise_free_single_vma).
      if (!vma.isAnonymous()) return -EINVAL;
      madviseFreeRange(mm, from, to);
      addr = to;
      continue;
    }
    if (advice === MADV_COLD || advice === MADV_PAGEOUT) {
      madviseColdOrPageout(mm, from, to, advice === MADV_PAGEOUT);
      addr = to;
      continue;
    }
    const flags = newVmFlags(vma, advice);
    if (flags < 0) return flags;
    if (flags !== vma.flags) {
      // madvise_update_vma: a split failing at vm.max_map_count is reported as EAGAIN.
      const r = vmaModifyFlags(mm, vma, from, to, flags);
      if (typeof r === "number") return r === -ENOMEM ? -EAGAIN : r;
    }
    addr = to;
  }
  return unmapped ? -ENOMEM : 0;
}

// ---------------------------------------------------------------------------------------------
// MADV_FREE.

/**
 * folio_mark_lazyfree (lru_lazyfree): a swap-backed anon folio on the LRU, not in the swap cache,
 * becomes lazyfree: not swap-backed, inactive, unreferenced, at the head of the inactive file
 * list, where reclaim discards it unless it is written again. Counts pglazyfree per page.
 */
export function folioMarkLazyfree(m: Machine, head: number): void {
  const mem = m.memmap;
  const f = mem.flags(head);
  if ((f & (PG_anon | PG_swapbacked | PG_lru)) !== (PG_anon | PG_swapbacked | PG_lru)) return;
  if (f & (PG_swapcache | PG_unevictable)) return;
  lruMove(m, head, f & ~(PG_active | PG_referenced | PG_swapbacked));
  m.stat.inc(EV.pglazyfree, 1 << mem.order(head));
}

/** folio_mapcount: the mappings of a folio (PTEs of every page plus PMDs). */
function folioMapcount(m: Machine, head: number): number {
  return m.memmap.order(head) > 0 ? m.memmap.largeMapcount(head) : m.memmap.mapcount(head);
}

/**
 * madvise_free_huge_pmd: MADV_FREE over a PMD-mapped THP at entry i of pmd, for [addr, next).
 * The huge zero page and a folio that may be mapped by another mm are left alone. A range that
 * covers part of the THP splits the folio (the PTE walk then frees those pages). A whole THP
 * loses its young and dirty bits and becomes lazyfree. Returns true when it handled the range.
 */
function madviseFreeHugePmd(mm: Mm, pmd: PageTable, i: number, addr: number, next: number): boolean {
  const m = mm.machine;
  const mem = m.memmap;
  const lo = pmd.lo(i);
  const head = entryPfn(lo, pmd.hi(i));
  if (head === m.hugeZeroPfn) return false;
  if (folioMaybeMappedShared(m, head)) return false;
  if (next - addr !== PMD_SIZE) {
    splitFolio(m, head);
    return false;
  }
  mem.clear(head, PG_dirty);
  if (lo & (_PAGE_ACCESSED | _PAGE_DIRTY)) {
    pmd.set(i, (lo & ~(_PAGE_ACCESSED | _PAGE_DIRTY)) >>> 0, pmd.hi(i)); // pmdp_invalidate + set_pmd_at
    m.stat.inc(EV.pmd_write);
    m.stat.inc(EV.tlb_flush);
  }
  folioMarkLazyfree(m, head);
  return true;
}

/**
 * madvise_free_pte_range over [addr, end) of one PTE table, as Linux 6.18 (design "batched") or
 * 6.9 (design "split") does it:
 * - a swap entry is dropped and its slot freed (a swap-in would cost more than a fresh page);
 * - batched: a large folio is taken as the run of PTEs mapping it from addr on
 *   (folio_pte_batch, blind to the dirty, young, write and soft-dirty bits). A run shorter than
 *   the folio (the range covers part of it, or part of it is unmapped or mapped elsewhere) splits
 *   the folio and looks again, unless the folio may be mapped by another mm: then the run is
 *   skipped. A whole folio is handled at once, without a split;
 * - split: every large folio is split first; one that may be mapped by another mm (or cannot
 *   be split) ends the walk of this table (6.9's `break`);
 * - a dirty or swap-cached folio is cleaned only when this mm's mappings are all it has
 *   (folio_mapcount == nr pages), else skipped; its PTEs lose young and dirty; it becomes
 *   lazyfree.
 */
function madviseFreePteRange(mm: Mm, pte: PageTable, addr: number, end: number): boolean {
  const m = mm.machine;
  const mem = m.memmap;
  const split = m.madviseFree === "split";
  const j0 = pteIndex(addr);
  const jEnd = j0 + (end - addr) / PAGE_SIZE;
  m.stat.inc(EV.ptl_lock);
  let flushed = false;
  for (let j = j0, nr = 1; j < jEnd; j += nr) {
    nr = 1;
    const lo = pte.lo(j);
    const hi = pte.hi(j);
    m.stat.inc(EV.pte_read);
    if (lo === 0 && hi === 0) continue;
    if (!pteMapped(lo)) {
      if (isSwapPte(lo, hi)) {
        freeSwapAndCache(m, swapPteSlot(lo, hi));
        pte.clear(j);
        mm.rss[MM_SWAPENTS]--;
        m.stat.inc(EV.pte_write);
      }
      continue;
    }
    if (lo & _PAGE_SPECIAL) continue;
    const pfn = pte.pfnAt(j);
    const head = mem.folioHead(pfn);
    const order = mem.order(head);
    const folioNr = 1 << order;
    let dirty = (lo & _PAGE_DIRTY) !== 0;
    let young = (lo & _PAGE_ACCESSED) !== 0;
    if (order > 0) {
      if (split) {
        if (folioMaybeMappedShared(m, head) || splitFolio(m, head) !== 0) return flushed;
        nr = 0; // look at this PTE again: it maps an order-0 folio now
        continue;
      }
      nr = folioRunLength(pte, j, jEnd, pfn, head + folioNr);
      m.stat.inc(EV.pte_read, nr - 1);
      if (nr < folioNr) {
        if (folioMaybeMappedShared(m, head)) continue;
        if (splitFolio(m, head) === 0) nr = 0;
        continue;
      }
      for (let k = 1; k < nr; k++) {
        const l = pte.lo(j + k);
        if (l & _PAGE_DIRTY) dirty = true;
        if (l & _PAGE_ACCESSED) young = true;
      }
    }
    if (mem.test(head, PG_swapcache) || mem.test(head, PG_dirty)) {
      if (folioMapcount(m, head) !== folioNr) continue;
      if (mem.test(head, PG_swapcache) && !folioFreeSwap(m, head)) continue;
      mem.clear(head, PG_dirty);
    }
    if (young || dirty) {
      // clear_young_dirty_ptes
      for (let k = 0; k < nr; k++) {
        const l = pte.lo(j + k);
        const c = (l & ~(_PAGE_ACCESSED | _PAGE_DIRTY)) >>> 0;
        if (c !== l) {
          pte.set(j + k, c, pte.hi(j + k));
          m.stat.inc(EV.pte_write);
        }
      }
      flushed = true;
    }
    folioMarkLazyfree(m, head);
  }
  return flushed;
}

/**
 * madvise_free_single_vma: the MADV_FREE page walk over [start, end) of an anon VMA. The PTEs it
 * cleans go into one mmu_gather (tlb_remove_tlb_entries), flushed once at tlb_finish_mmu.
 */
function madviseFreeRange(mm: Mm, start: number, end: number): void {
  let flush = false;
  forEachPmd(mm, start, end, (pmd, i, addr, next) => {
    if (isPmdLeaf(pmd, i)) {
      madviseFreeHugePmd(mm, pmd, i, addr, next); // false: the huge zero page, or a shared THP
      if (isPmdLeaf(pmd, i)) return; // not split: nothing for the PTE walk
    }
    // Non-null: a present non-leaf PMD entry has its table.
    if (madviseFreePteRange(mm, pmd.child(i)!, addr, next)) flush = true;
  });
  if (flush) mm.machine.stat.inc(EV.tlb_flush);
}

// ---------------------------------------------------------------------------------------------
// MADV_COLD and MADV_PAGEOUT.

/**
 * The common step of madvise_cold_or_pageout_pte_range for one folio that this mm maps whole
 * and alone: its reference bits go (a cold hint also clears the young bits, `clearYoung`),
 * and it is deactivated (COLD) or collected for reclaim (PAGEOUT).
 */
function coldOrPageoutFolio(m: Machine, head: number, pageout: boolean, list: number[]): void {
  const mem = m.memmap;
  mem.clear(head, PG_referenced);
  if (pageout) {
    if (mem.test(head, PG_lru) && !mem.test(head, PG_unevictable)) list.push(head);
    return;
  }
  // folio_deactivate (lru_deactivate): only an active folio moves.
  if (mem.test(head, PG_active) && mem.test(head, PG_lru) && !mem.test(head, PG_unevictable)) {
    lruMove(m, head, mem.flags(head) & ~(PG_active | PG_referenced));
    m.stat.inc(EV.pgdeactivate, 1 << mem.order(head));
  }
}

/**
 * madvise_cold / madvise_pageout over [start, end) of a VMA: for each folio this mm maps whole
 * and alone (folio_mapcount == nr pages; a large folio the range covers in part is split unless
 * it may be mapped by another mm), MADV_COLD clears the young bits and moves it to the inactive
 * list; MADV_PAGEOUT reclaims it at once, young or not (reclaim_pages), swapping anon folios out
 * when there is swap, and putting back what it could not reclaim.
 */
function madviseColdOrPageout(mm: Mm, start: number, end: number, pageout: boolean): void {
  const m = mm.machine;
  const mem = m.memmap;
  const list: number[] = [];
  forEachPmd(mm, start, end, (pmd, i, addr, next) => {
    if (isPmdLeaf(pmd, i)) {
      const lo = pmd.lo(i);
      const head = entryPfn(lo, pmd.hi(i));
      if (head === m.hugeZeroPfn || folioMaybeMappedShared(m, head)) return;
      if (next - addr !== PMD_SIZE) {
        splitFolio(m, head);
        if (isPmdLeaf(pmd, i)) return;
      } else {
        if (!pageout && lo & _PAGE_ACCESSED) {
          pmd.set(i, (lo & ~_PAGE_ACCESSED) >>> 0, pmd.hi(i));
          m.stat.inc(EV.pmd_write);
          m.stat.inc(EV.tlb_flush);
        }
        coldOrPageoutFolio(m, head, pageout, list);
        return;
      }
    }
    // Non-null: a present non-leaf PMD entry has its table.
    const pte = pmd.child(i)!;
    const jEnd = pteIndex(addr) + (next - addr) / PAGE_SIZE;
    m.stat.inc(EV.ptl_lock);
    for (let j = pteIndex(addr), nr = 1; j < jEnd; j += nr) {
      nr = 1;
      const lo = pte.lo(j);
      m.stat.inc(EV.pte_read);
      if (!pteMapped(lo) || lo & _PAGE_SPECIAL) continue;
      const pfn = pte.pfnAt(j);
      const head = mem.folioHead(pfn);
      const folioNr = 1 << mem.order(head);
      let young = (lo & _PAGE_ACCESSED) !== 0;
      if (folioNr > 1) {
        nr = folioRunLength(pte, j, jEnd, pfn, head + folioNr);
        if (nr < folioNr) {
          if (folioMaybeMappedShared(m, head)) continue;
          if (splitFolio(m, head) === 0) nr = 0;
          continue;
        }
        for (let k = 1; k < nr; k++) if (pte.lo(j + k) & _PAGE_ACCESSED) young = true;
      }
      if (!mem.test(head, PG_lru) || folioMapcount(m, head) !== folioNr) continue;
      if (!pageout && young) {
        for (let k = 0; k < nr; k++) {
          const l = pte.lo(j + k);
          if (l & _PAGE_ACCESSED) {
            pte.set(j + k, (l & ~_PAGE_ACCESSED) >>> 0, pte.hi(j + k));
            m.stat.inc(EV.pte_write);
          }
        }
        m.stat.inc(EV.tlb_flush);
      }
      coldOrPageoutFolio(m, head, pageout, list);
    }
  });
  if (pageout && list.length > 0) shrinkFolioList(m, list, true);
}

// ---------------------------------------------------------------------------------------------
// MADV_POPULATE_READ / MADV_POPULATE_WRITE.

/**
 * madvise_populate: faults in every page of [start, end) as a read (POPULATE_READ: the zero page
 * where nothing is mapped) or a write (POPULATE_WRITE: COW broken, pages writable), as GUP does
 * without taking references. Errors: ENOMEM for an unmapped page (the pages before it are
 * populated), EINVAL when the VMA does not allow the access (__get_user_pages with
 * FOLL_MADV_POPULATE turns check_vma_flags' failure into -EINVAL; seen on Linux 6.18 with
 * `vmlab diff`), EFAULT when a shmem page lies past the end of its object (VM_FAULT_SIGBUS),
 * ENOMEM when memory runs out.
 */
function madvisePopulate(mm: Mm, start: number, end: number, write: boolean): number {
  for (let addr = start; addr < end; addr += PAGE_SIZE) {
    const vma = mm.vmaLookup(addr);
    if (vma === undefined) return -ENOMEM;
    // check_vma_flags: a write needs VM_WRITE, a read VM_READ.
    if (write ? !(vma.flags & VM_WRITE) : !(vma.flags & VM_READ)) return -EINVAL;
    // FOLL_TOUCH (follTouch) once the page is there: a write marks the folio dirty, not the PTE
    // (follow_page_pte's folio_mark_dirty), so a lazyfree folio populated for writing leaves
    // LazyFree whole and is not discarded; seen on Linux 6.18 with `vmlab diff`.
    for (let tries = 0; mmuTranslate(mm, addr, write, false) < 0; tries++) {
      if (tries > 3) throw new Error(`madvisePopulate: fault at ${addr} did not map the page`);
      const r = handleMmFault(mm, vma, addr, write ? FAULT_FLAG_WRITE : 0);
      if (r & VM_FAULT_OOM) return -ENOMEM;
      if (r & VM_FAULT_SIGBUS) return -EFAULT;
    }
    follTouch(mm, addr, write);
  }
  return 0;
}
