// Folio mapcounts and PageAnonExclusive (mm/rmap.c): adding and removing PTE and PMD
// mappings of a folio, and queueing partly unmapped large folios for deferred split.
//
// Counting, as Linux with CONFIG_PAGE_MAPCOUNT:
//   per-page mapcount   PTE mappings of that page
//   entire mapcount     PMD mappings of the whole folio (large folios)
//   large mapcount      all mappings of a large folio: sum of per-page mapcounts + entire
// Reference counts are the callers' business: one per PTE, one per PMD, one per cache slot.
//
// Differs from Linux: no anon_vma interval tree yet (rmap walks come with fork).

import { PG_anon, PG_anon_exclusive, PG_partially_mapped, SECTION_MASK } from "../phys/memmap.ts";
import type { Machine } from "./machine.ts";
import type { Mm } from "./mm.ts";
import { HPAGE_PMD_ORDER } from "./pgtable.ts";
import { AnonVma, VM_ACCESS_FLAGS, VM_SOFTDIRTY, type Vma } from "./vma.ts";
import { EV } from "./vmstat.ts";

/**
 * folio_add_new_anon_rmap: maps a freshly allocated anon folio for the first time, by `nr`
 * PTEs starting at its head (nr = folio size) or, when `pmd`, by one PMD. The pages become
 * PageAnonExclusive (all of them when PTE-mapped, the head when PMD-mapped, as Linux does).
 */
export function folioAddNewAnonRmap(m: Machine, head: number, order: number, pmd: boolean): void {
  const mm = m.memmap;
  m.stat.inc(EV.mapcount_update);
  if (order === 0 && !pmd) {
    const s = mm.sec(head);
    const i = head & SECTION_MASK;
    s.flags[i] |= PG_anon | PG_anon_exclusive;
    s.mapcount[i] = 1;
    return;
  }
  const nr = 1 << order;
  for (let i = 0; i < nr; i++) mm.set(head + i, PG_anon);
  if (pmd) {
    mm.addEntireMapcount(head, 1);
    mm.addLargeMapcount(head, 1);
    mm.set(head, PG_anon_exclusive);
  } else {
    for (let i = 0; i < nr; i++) {
      mm.setMapcount(head + i, 1);
      mm.set(head + i, PG_anon_exclusive);
    }
    mm.addLargeMapcount(head, nr);
  }
}

/**
 * folio_add_anon_rmap_ptes / folio_add_file_rmap_ptes: nr more PTE mappings of pages
 * [pfn, pfn + nr) of the folio at head; `exclusive` sets PageAnonExclusive on them.
 */
export function folioAddRmapPtes(
  m: Machine,
  head: number,
  pfn: number,
  nr: number,
  exclusive: boolean,
): void {
  const mm = m.memmap;
  for (let i = 0; i < nr; i++) {
    mm.addMapcount(pfn + i, 1);
    if (exclusive) mm.set(pfn + i, PG_anon_exclusive);
  }
  if (mm.order(head) > 0) mm.addLargeMapcount(head, nr);
  m.stat.inc(EV.mapcount_update);
}

/**
 * folio_remove_rmap_ptes: drops nr PTE mappings of pages [pfn, pfn + nr). A large anon folio
 * left partly mapped goes on the deferred split queue (__folio_remove_rmap).
 */
export function folioRemoveRmapPtes(m: Machine, head: number, pfn: number, nr: number): void {
  const mm = m.memmap;
  const order = mm.order(head);
  let unmapped = 0;
  for (let i = 0; i < nr; i++) {
    const left = mm.addMapcount(pfn + i, -1);
    if (left < 0) throw new Error(`folioRemoveRmapPtes: pfn ${pfn + i} mapcount went negative`);
    if (left === 0) unmapped++;
  }
  m.stat.inc(EV.mapcount_update);
  if (order === 0) return;
  mm.addLargeMapcount(head, -nr);
  const stillMapped = mm.largeMapcount(head) > 0;
  // Pages only count as unmapped when no PMD maps the whole folio.
  if (unmapped > 0 && stillMapped && mm.entireMapcount(head) === 0 && mm.test(head, PG_anon)) {
    deferredSplitFolio(m, head, order);
  }
}

/** folio_remove_rmap_pmd: drops one PMD mapping of a PMD-sized folio. */
export function folioRemoveRmapPmd(m: Machine, head: number): void {
  const mm = m.memmap;
  mm.addEntireMapcount(head, -1);
  mm.addLargeMapcount(head, -1);
  if (mm.entireMapcount(head) < 0)
    throw new Error(`folioRemoveRmapPmd: pfn ${head} entire mapcount negative`);
  m.stat.inc(EV.mapcount_update);
}

/**
 * deferred_split_folio: queue a large anon folio to be split later. A partly mapped one is
 * marked PG_partially_mapped and counted (thp_deferred_split_page for PMD size, split_deferred
 * per size); a new PMD THP is queued unmarked, for the underused-THP shrinker
 * (split_underused_thp), as map_anon_folio_pmd does.
 * Differs from Linux: nothing splits queued folios yet (the shrinker comes with reclaim); a
 * queued folio leaves the queue when it is freed.
 */
export function deferredSplitFolio(m: Machine, head: number, order: number, partiallyMapped = true): void {
  if (partiallyMapped && !m.memmap.test(head, PG_partially_mapped)) {
    m.memmap.set(head, PG_partially_mapped);
    // thp_deferred_split_page counts PMD-sized folios only; split_deferred counts every size.
    if (order >= HPAGE_PMD_ORDER) m.stat.inc(EV.thp_deferred_split_page);
    m.stat.incOrder("split_deferred", order);
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
 * reusing the next or previous VMA's when they are compatible (find_mergeable_anon_vma), so
 * that the two may still merge later.
 */
export function anonVmaPrepare(mm: Mm, vma: Vma): void {
  if (vma.anonVma !== null) return;
  const i = mm.findVmaIndex(vma.start);
  const prev = mm.vmas[i - 1];
  const next = mm.vmas[i + 1];
  let av: AnonVma | null = null;
  if (next?.anonVma && anonVmaCompatible(vma, next)) av = next.anonVma;
  else if (prev?.anonVma && anonVmaCompatible(prev, vma)) av = prev.anonVma;
  av ??= new AnonVma(mm.machine.newId());
  av.vmas++;
  vma.anonVma = av;
}
