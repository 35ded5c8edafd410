// Folio mapcounts, PageAnonExclusive and the anon reverse map (mm/rmap.c, include/linux/rmap.h):
// adding, duplicating and removing PTE and PMD mappings of a folio; the anon_vma hierarchy that
// fork builds; rmapWalk, which finds every mapping of an anon folio; and queueing partly
// unmapped large folios for deferred split.
//
// Counting, as Linux 6.18 with CONFIG_PAGE_MAPCOUNT and CONFIG_MM_ID:
//   per-page mapcount   PTE mappings of that page
//   entire mapcount     PMD mappings of the whole folio (large folios)
//   large mapcount      all mappings of a large folio: sum of per-page mapcounts + entire
//   mm id slots         two (mm id, mapcount) pairs per large folio and a "maybe mapped shared"
//                       bit: an exclusive large folio is told from a shared one without a walk
// Reference counts are the callers' business: one per PTE, one per PMD, one per cache slot,
// GUP_PIN_COUNTING_BIAS (small) or 1 plus _pincount (large) per FOLL_PIN.
//
// Lock order (for when concurrency arrives), as at the top of mm/rmap.c: mmap_lock >
// folio lock > anon_vma->rwsem > page-table lock.

import {
  PG_anon,
  PG_anon_exclusive,
  PG_mm_ids_shared,
  PG_partially_mapped,
  SECTION_MASK,
} from "../phys/memmap.ts";
import type { Machine } from "./machine.ts";
import type { Mm } from "./mm.ts";
import { isPmdLeaf, pmdOffset } from "./pgalloc.ts";
import { HPAGE_PMD_ORDER, pmdIndex, pteIndex, pteMapped } from "./pgtable.ts";
import { AnonVma, VM_ACCESS_FLAGS, VM_SOFTDIRTY, type Vma } from "./vma.ts";
import { EV } from "./vmstat.ts";

/** GUP_PIN_COUNTING_BIAS: what one FOLL_PIN adds to the refcount of a small folio. */
export const GUP_PIN_COUNTING_BIAS = 1024;

// ---------------------------------------------------------------------------------------------
// Large mapcount and the mm id slots (folio_add/sub_return_large_mapcount).

/** folio_set_large_mapcount: a new large folio mapped `mapcount` times by mm `id`. */
function folioSetLargeMapcount(m: Machine, head: number, mapcount: number, id: number): void {
  const mem = m.memmap;
  mem.addLargeMapcount(head, mapcount);
  mem.setMmIdSlot(head, 0, id, mapcount);
}

/**
 * folio_add_large_mapcount: diff more mappings of a large folio by mm `id`. The mm takes a free
 * slot if it has none; a second mm marks the folio maybe-mapped-shared.
 */
export function folioAddLargeMapcount(m: Machine, head: number, diff: number, id: number): void {
  const mem = m.memmap;
  mem.addLargeMapcount(head, diff);
  const total = mem.largeMapcount(head);
  if (mem.mmId(head, 0) === id) mem.setMmIdSlot(head, 0, id, mem.mmIdMapcount(head, 0) + diff);
  else if (mem.mmId(head, 1) === id) mem.setMmIdSlot(head, 1, id, mem.mmIdMapcount(head, 1) + diff);
  else if (mem.mmId(head, 0) === 0) {
    mem.setMmIdSlot(head, 0, id, diff);
    if (total !== diff) mem.set(head, PG_mm_ids_shared); // others mapped it already
  } else if (mem.mmId(head, 1) === 0) {
    mem.setMmIdSlot(head, 1, id, diff);
    mem.set(head, PG_mm_ids_shared); // slot 0 certainly has mappings too
  }
  // Differs from nothing: with both slots taken by other mms, Linux records nothing more; the
  // folio is marked shared already.
}

/**
 * folio_sub_large_mapcount: diff fewer mappings by mm `id`. A slot that drops to none is freed;
 * when one slot holds every remaining mapping, the folio is exclusive again.
 */
export function folioSubLargeMapcount(m: Machine, head: number, diff: number, id: number): void {
  const mem = m.memmap;
  mem.addLargeMapcount(head, -diff);
  const total = mem.largeMapcount(head);
  for (const slot of [0, 1]) {
    if (mem.mmId(head, slot) !== id) continue;
    const left = mem.mmIdMapcount(head, slot) - diff;
    if (left > 0) {
      mem.setMmIdSlot(head, slot, id, left);
      return;
    }
    mem.setMmIdSlot(head, slot, 0, 0);
    break;
  }
  if (mem.mmIdMapcount(head, 0) === total || mem.mmIdMapcount(head, 1) === total)
    mem.clear(head, PG_mm_ids_shared);
}

/** folio_maybe_mapped_shared for a large folio: the mm id slots say another mm may map it. */
export function folioMaybeMappedShared(m: Machine, head: number): boolean {
  return m.memmap.test(head, PG_mm_ids_shared);
}

/**
 * folio_maybe_dma_pinned: a large folio with a pincount, or a small one whose refcount reaches
 * GUP_PIN_COUNTING_BIAS (which 1024 plain references also do: a false positive Linux accepts).
 */
export function folioMaybeDmaPinned(m: Machine, head: number): boolean {
  const mem = m.memmap;
  return mem.order(head) > 0 ? mem.pincount(head) > 0 : mem.ref(head) >= GUP_PIN_COUNTING_BIAS;
}

// ---------------------------------------------------------------------------------------------
// Adding and removing mappings.

/**
 * folio_add_new_anon_rmap: maps a freshly allocated anon folio for the first time in vma, at
 * `addr` (the address of its first page), by all its PTEs or, when `pmd`, by one PMD. The folio
 * points at vma's anon_vma with its linear index; its pages become PageAnonExclusive (all of
 * them when PTE-mapped, the head when PMD-mapped, as Linux does).
 */
export function folioAddNewAnonRmap(
  mm: Mm,
  vma: Vma,
  head: number,
  order: number,
  addr: number,
  pmd: boolean,
): void {
  const m = mm.machine;
  const mem = m.memmap;
  // Non-null: callers run anonVmaPrepare first.
  mem.setFolioMapping(head, vma.anonVma!.id, vma.linearPageIndex(addr));
  m.stat.inc(EV.mapcount_update);
  if (order === 0 && !pmd) {
    const s = mem.sec(head);
    const i = head & SECTION_MASK;
    s.flags[i] |= PG_anon | PG_anon_exclusive;
    s.mapcount[i] = 1;
    return;
  }
  const nr = 1 << order;
  for (let i = 0; i < nr; i++) mem.set(head + i, PG_anon);
  if (pmd) {
    mem.addEntireMapcount(head, 1);
    folioSetLargeMapcount(m, head, 1, mm.id);
    mem.set(head, PG_anon_exclusive);
  } else {
    for (let i = 0; i < nr; i++) {
      mem.setMapcount(head + i, 1);
      mem.set(head + i, PG_anon_exclusive);
    }
    folioSetLargeMapcount(m, head, nr, mm.id);
  }
}

/**
 * folio_add_anon_rmap_ptes / folio_add_file_rmap_ptes: nr more PTE mappings by mm of pages
 * [pfn, pfn + nr) of the folio at head; `exclusive` sets PageAnonExclusive on them.
 */
export function folioAddRmapPtes(mm: Mm, head: number, pfn: number, nr: number, exclusive: boolean): void {
  const m = mm.machine;
  const mem = m.memmap;
  for (let i = 0; i < nr; i++) {
    mem.addMapcount(pfn + i, 1);
    if (exclusive) mem.set(pfn + i, PG_anon_exclusive);
  }
  if (mem.order(head) > 0) folioAddLargeMapcount(m, head, nr, mm.id);
  m.stat.inc(EV.mapcount_update, nr); // one atomic per page's _mapcount (CONFIG_PAGE_MAPCOUNT)
}

/**
 * folio_remove_rmap_ptes: drops nr PTE mappings by mm of pages [pfn, pfn + nr). A large anon
 * folio left partly mapped goes on the deferred split queue (__folio_remove_rmap).
 */
export function folioRemoveRmapPtes(mm: Mm, head: number, pfn: number, nr: number): void {
  const m = mm.machine;
  const mem = m.memmap;
  const order = mem.order(head);
  let unmapped = 0;
  for (let i = 0; i < nr; i++) {
    const left = mem.addMapcount(pfn + i, -1);
    if (left < 0) throw new Error(`folioRemoveRmapPtes: pfn ${pfn + i} mapcount went negative`);
    if (left === 0) unmapped++;
  }
  m.stat.inc(EV.mapcount_update, nr);
  if (order === 0) return;
  folioSubLargeMapcount(m, head, nr, mm.id);
  const stillMapped = mem.largeMapcount(head) > 0;
  // Pages only count as unmapped when no PMD maps the whole folio.
  if (unmapped > 0 && stillMapped && mem.entireMapcount(head) === 0 && mem.test(head, PG_anon)) {
    deferredSplitFolio(m, head, order);
  }
}

/**
 * folio_remove_rmap_pmd: drops one PMD mapping by mm of a PMD-sized folio. When the last PMD
 * mapping goes while other mms still map some, not all, of its pages by PTEs, the anon folio
 * is partly mapped and is queued for deferred split.
 */
export function folioRemoveRmapPmd(mm: Mm, head: number): void {
  const m = mm.machine;
  const mem = m.memmap;
  mem.addEntireMapcount(head, -1);
  folioSubLargeMapcount(m, head, 1, mm.id);
  if (mem.entireMapcount(head) < 0)
    throw new Error(`folioRemoveRmapPmd: pfn ${head} entire mapcount negative`);
  m.stat.inc(EV.mapcount_update);
  if (mem.entireMapcount(head) === 0 && mem.largeMapcount(head) > 0 && mem.test(head, PG_anon)) {
    const nr = 1 << mem.order(head);
    let mapped = 0; // _nr_pages_mapped
    for (let i = 0; i < nr; i++) if (mem.mapcount(head + i) > 0) mapped++;
    if (mapped < nr) deferredSplitFolio(m, head, mem.order(head));
  }
}

/**
 * folio_try_dup_anon_rmap_ptes: at fork, nr PTE mappings of pages [pfn, pfn + nr) are
 * duplicated into dst. Fails (Linux's -EBUSY) when a page is PageAnonExclusive and the folio may
 * be pinned in src (folio_needs_cow_for_dma): the caller must copy it for the child instead.
 * Otherwise PageAnonExclusive is cleared on the pages: from now on they are shared.
 * The legacy rule (before 5.8) knows no exclusive pages and never copies at fork.
 */
export function folioTryDupAnonRmapPtes(dst: Mm, src: Mm, head: number, pfn: number, nr: number): boolean {
  const m = dst.machine;
  const mem = m.memmap;
  if (m.cow === "modern" && src.hasPinned && folioMaybeDmaPinned(m, head)) {
    for (let i = 0; i < nr; i++) if (mem.test(pfn + i, PG_anon_exclusive)) return false;
  }
  for (let i = 0; i < nr; i++) {
    mem.clear(pfn + i, PG_anon_exclusive);
    mem.addMapcount(pfn + i, 1);
  }
  if (mem.order(head) > 0) folioAddLargeMapcount(m, head, nr, dst.id);
  m.stat.inc(EV.mapcount_update, nr);
  m.stat.inc(EV.rmap_dup);
  return true;
}

/** folio_try_dup_anon_rmap_pmd: as folioTryDupAnonRmapPtes for one PMD mapping of a THP. */
export function folioTryDupAnonRmapPmd(dst: Mm, src: Mm, head: number): boolean {
  const m = dst.machine;
  const mem = m.memmap;
  if (mem.test(head, PG_anon_exclusive)) {
    if (m.cow === "modern" && src.hasPinned && folioMaybeDmaPinned(m, head)) return false;
    mem.clear(head, PG_anon_exclusive);
  }
  mem.addEntireMapcount(head, 1);
  folioAddLargeMapcount(m, head, 1, dst.id);
  m.stat.inc(EV.mapcount_update);
  m.stat.inc(EV.rmap_dup);
  return true;
}

/** folio_move_anon_rmap: an anon folio now exclusive to vma moves to vma's own anon_vma. */
export function folioMoveAnonRmap(m: Machine, head: number, vma: Vma): void {
  // Non-null: a VMA mapping anon folios has an anon_vma.
  m.memmap.setFolioMapping(head, vma.anonVma!.id, m.memmap.folioIndex(head));
}

// ---------------------------------------------------------------------------------------------
// The reverse map.

/** One mapping of a folio found by rmapWalk. */
export interface RmapHit {
  mm: Mm;
  vma: Vma;
  /** The virtual address of the page mapped (the PMD's start for a PMD mapping). */
  addr: number;
  /** The page mapped (the head for a PMD mapping). */
  pfn: number;
  pmd: boolean;
}

/**
 * rmap_walk_anon: every mapping of the anon folio at head, across all processes. Looks up the
 * folio's anon_vma (folio->mapping), visits each VMA linked to it whose pgoff range covers the
 * folio's index range (vma_address), and checks that VMA's page tables
 * (page_vma_mapped_walk). Returns nothing for a folio that is not anon or not mapped.
 */
export function rmapWalk(m: Machine, head: number): RmapHit[] {
  const mem = m.memmap;
  const hits: RmapHit[] = [];
  if (!mem.test(head, PG_anon)) return hits;
  const av = m.anonVmas.get(mem.folioMapping(head));
  if (av === undefined) return hits;
  const index = mem.folioIndex(head);
  const nr = 1 << mem.order(head);
  for (const vma of av.vmas) {
    const mm = vma.mm;
    if (mm === null) continue;
    const first = Math.max(index, vma.pgoff);
    const last = Math.min(index + nr, vma.pgoff + vma.pages());
    for (let pg = first; pg < last; pg++) {
      const addr = vma.start + (pg - vma.pgoff) * 4096;
      const pmd = pmdOffset(mm, addr);
      if (pmd === undefined) continue;
      const i = pmdIndex(addr);
      if (isPmdLeaf(pmd, i)) {
        if (pmd.pfnAt(i) === head && addr % (512 * 4096) === 0)
          hits.push({ mm, vma, addr, pfn: head, pmd: true });
        continue;
      }
      const pte = pmd.child(i);
      const j = pteIndex(addr);
      if (pte === undefined || !pteMapped(pte.lo(j))) continue;
      // A table shared with deferred accounting maps its pages once, for its owner.
      if (pte.cow?.deferred && pte.cow.owner !== mm) continue;
      const pfn = pte.pfnAt(j);
      if (pfn === head + (pg - index)) hits.push({ mm, vma, addr, pfn, pmd: false });
    }
  }
  return hits;
}

// ---------------------------------------------------------------------------------------------
// The anon_vma hierarchy.

/** Links vma to anon_vma (anon_vma_chain_link), at the head of its chain. */
function anonVmaChainLink(vma: Vma, av: AnonVma): void {
  vma.anonVmaChain.unshift(av);
  av.vmas.add(vma);
}

/**
 * anon_vma_clone: links dst to every anon_vma src is linked to. dst.anonVma is already src's
 * (vm_area_dup copied it), except at fork, where it is null and dst may reuse one of the
 * anon_vmas that no VMA uses any more and that has at most one child.
 */
export function anonVmaClone(dst: Vma, src: Vma): void {
  dst.anonVmaChain = [];
  const reuse = dst.anonVma === null && src.anonVma !== null;
  if (!reuse) dst.anonVma = src.anonVma;
  // Root first, as list_for_each_entry_reverse walks the chain.
  for (let k = src.anonVmaChain.length - 1; k >= 0; k--) {
    const av = src.anonVmaChain[k];
    anonVmaChainLink(dst, av);
    if (dst.anonVma === null && av.numChildren < 2 && av.numActiveVmas === 0) dst.anonVma = av;
  }
  if (dst.anonVma !== null) dst.anonVma.numActiveVmas++;
}

/**
 * anon_vma_fork: gives the child's copy `vma` of the parent's `pvma` the parent's anon_vma
 * links and, unless one could be reused, a new anon_vma of its own under the parent's, where
 * the pages the child copies will go.
 */
export function anonVmaFork(m: Machine, vma: Vma, pvma: Vma): void {
  vma.anonVma = null;
  vma.anonVmaChain = [];
  if (pvma.anonVma === null) return;
  anonVmaClone(vma, pvma);
  if (vma.anonVma !== null) return;
  // Non-null: checked above.
  const av = new AnonVma(m.newId(), pvma.anonVma);
  m.anonVmas.set(av.id, av);
  av.numActiveVmas++;
  vma.anonVma = av;
  anonVmaChainLink(vma, av);
  av.parent.numChildren++;
}

/**
 * unlink_anon_vmas: removes vma from every anon_vma it is linked to; an anon_vma left with no
 * VMA is freed (its parent loses a child).
 */
export function unlinkAnonVmas(m: Machine, vma: Vma): void {
  for (const av of vma.anonVmaChain) {
    av.vmas.delete(vma);
    if (av.vmas.size === 0) {
      av.parent.numChildren--;
      m.anonVmas.delete(av.id);
    }
  }
  if (vma.anonVma !== null) vma.anonVma.numActiveVmas--;
  vma.anonVma = null;
  vma.anonVmaChain = [];
}

/**
 * deferred_split_folio: queue a large anon folio to be split later. A partly mapped one is
 * marked PG_partially_mapped and counted (thp_deferred_split_page for PMD size, split_deferred
 * per size); a new PMD THP is queued unmarked, for the underused-THP shrinker
 * (split_underused_thp), as map_anon_folio_pmd does.
 * The shrinker (split.ts deferredSplitScan) splits queued folios under memory pressure; a
 * queued folio leaves the queue when it is freed or split.
 */
export function deferredSplitFolio(m: Machine, head: number, order: number, partiallyMapped = true): void {
  if (partiallyMapped && !m.memmap.test(head, PG_partially_mapped)) {
    m.memmap.set(head, PG_partially_mapped);
    // thp_deferred_split_page counts PMD-sized folios only; split_deferred counts every size.
    if (order >= HPAGE_PMD_ORDER) m.stat.inc(EV.thp_deferred_split_page);
    m.stat.incOrder("split_deferred", order);
    m.stat.incOrder("nr_anon_partially_mapped", order);
  }
  m.deferredSplit.add(head); // list_add_tail only when not queued yet: a Set keeps the first place
}

/**
 * anon_vma_compatible: a and b are adjacent, with the same flags but for access bits and
 * VM_SOFTDIRTY, and contiguous pgoff.
 */
function anonVmaCompatible(a: Vma, b: Vma): boolean {
  return (
    a.end === b.start &&
    a.shmem === b.shmem &&
    ((a.flags ^ b.flags) & ~(VM_ACCESS_FLAGS | VM_SOFTDIRTY)) === 0 &&
    b.pgoff === a.pgoff + a.pages()
  );
}

/**
 * __anon_vma_prepare: gives the VMA an anon_vma before its first anonymous folio is mapped,
 * reusing the next or previous VMA's when they are compatible and were never forked
 * (find_mergeable_anon_vma), so that the two may still merge later; else a new root.
 */
export function anonVmaPrepare(mm: Mm, vma: Vma): void {
  if (vma.anonVma !== null) return;
  const m = mm.machine;
  const i = mm.findVmaIndex(vma.start);
  const prev = mm.vmas[i - 1];
  const next = mm.vmas[i + 1];
  let av: AnonVma | null = null;
  if (next?.anonVma && next.anonVmaChain.length === 1 && anonVmaCompatible(vma, next)) av = next.anonVma;
  else if (prev?.anonVma && prev.anonVmaChain.length === 1 && anonVmaCompatible(prev, vma)) av = prev.anonVma;
  if (av === null) {
    av = new AnonVma(m.newId(), null);
    av.numChildren++; // the self-parent link of a new root
    m.anonVmas.set(av.id, av);
  }
  av.numActiveVmas++;
  vma.anonVma = av;
  anonVmaChainLink(vma, av);
}
