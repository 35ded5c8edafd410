// Splitting large anon folios (mm/huge_memory.c): split_folio, which turns a large folio into
// order-0 folios wherever it is mapped, and the deferred split shrinker (deferred_split_scan),
// which splits partly unmapped folios from the deferred split queue and so frees their unmapped
// pages.
//
// Linux unmaps the folio (try_to_migrate: every PTE becomes a migration entry, a PMD mapping is
// split first), freezes the refcount, rewrites struct page of every subpage, and remaps each
// migration entry to the same page with the same bits (remove_migration_ptes). vmlab does the
// same state change: PMD mappings are split (splitHugePmd), and since a remapped PTE maps the
// same pfn with the same bits, the PTEs are left as they are; the events of the unmap and remap
// are counted as Linux pays them.

import {
  PG_active,
  PG_anon,
  PG_anon_exclusive,
  PG_dirty,
  PG_lru,
  PG_partially_mapped,
  PG_referenced,
  PG_swapbacked,
  PG_swapcache,
  PG_unevictable,
} from "../phys/memmap.ts";
import { EAGAIN, EBUSY, PMD_SIZE } from "../uapi.ts";
import { splitHugePmd } from "./huge-memory.ts";
import { folioLruList } from "./lru.ts";
import type { Machine } from "./machine.ts";
import { MM_ANONPAGES } from "./mm.ts";
import { pteTableOf } from "./mmu.ts";
import { isPmdLeaf, pmdOffset } from "./pgalloc.ts";
import { _PAGE_SPECIAL, HPAGE_PMD_ORDER, mkHi, mkLo, pmdIndex, pteIndex } from "./pgtable.ts";
import { folioRemoveRmapPtes, rmapWalk } from "./rmap.ts";
import { vmPageProtLo, vmPageProtNx } from "./vma.ts";
import { EV } from "./vmstat.ts";

/** The PG_* flags a subpage inherits from the head at a split (__split_folio_to_order). */
const INHERITED = PG_anon | PG_swapbacked | PG_dirty | PG_lru | PG_active | PG_referenced | PG_unevictable;

/**
 * can_split_folio: every reference to the folio is a mapping (one per PTE, one per PMD), so no
 * pin, pipe or cache holds it. The caller's own reference is not modelled.
 */
export function canSplitFolio(m: Machine, head: number): boolean {
  const mem = m.memmap;
  return mem.ref(head) === mem.largeMapcount(head);
}

/**
 * split_folio: splits the large anon folio at head into order-0 folios. Every PMD mapping of it,
 * in any mm, is split first (TTU_SPLIT_HUGE_PMD); each subpage keeps its PTEs, its
 * PageAnonExclusive and the folio's flags (dirty, lazyfree, LRU list), and takes one reference
 * per PTE that maps it; a subpage no PTE maps is freed. The folio leaves the deferred split
 * queue. Returns 0; -EAGAIN when a reference other than a mapping holds the folio (a pin, a
 * pipe); -EBUSY for a folio in the swap cache (vmlab does not swap large folios). Counts
 * thp_split_page (PMD size) and the per-size split / split_failed stats.
 */
export function splitFolio(m: Machine, head: number): number {
  const mem = m.memmap;
  const order = mem.order(head);
  if (order === 0) return 0;
  if (!mem.test(head, PG_anon)) throw new Error(`splitFolio: folio ${head} is not anon`);
  let err = 0;
  if (mem.test(head, PG_swapcache)) err = -EBUSY;
  else if (!canSplitFolio(m, head)) err = -EAGAIN;
  if (err !== 0) {
    if (order === HPAGE_PMD_ORDER) m.stat.inc(EV.thp_split_page_failed);
    m.stat.incOrder("split_failed", order);
    return err;
  }
  const nr = 1 << order;
  // unmap_folio: PMD mappings become PTE mappings of the same folio, in every mm.
  if (mem.entireMapcount(head) > 0) {
    for (const hit of rmapWalk(m, head)) {
      if (!hit.pmd) continue;
      // Non-null: rmapWalk found a PMD mapping there.
      const pmd = pmdOffset(hit.mm, hit.addr)!;
      const i = pmdIndex(hit.addr);
      if (isPmdLeaf(pmd, i))
        splitHugePmd(hit.mm, hit.vma, pmd, i, Math.floor(hit.addr / PMD_SIZE) * PMD_SIZE);
    }
  }
  const flags = mem.flags(head);
  const inherit = flags & INHERITED;
  const mapping = mem.folioMapping(head);
  const index = mem.folioIndex(head);
  const mapcounts: number[] = [];
  const exclusive: boolean[] = [];
  let mapped = 0;
  for (let i = 0; i < nr; i++) {
    const mc = mem.mapcount(head + i);
    mapcounts.push(mc);
    exclusive.push(mem.test(head + i, PG_anon_exclusive));
    mapped += mc;
  }
  // Off the deferred split queue (the split folio is gone) and off its LRU list for a moment.
  if (m.deferredSplit.delete(head) && flags & PG_partially_mapped)
    m.stat.incOrder("nr_anon_partially_mapped", order, -1);
  const lru = folioLruList(flags);
  const onLru = (flags & PG_lru) !== 0;
  if (onLru) m.lru.remove(lru, head, nr);
  // __split_folio_to_order: each subpage becomes an order-0 folio. The folio-wide fields that
  // overlay the first tails (large mapcount, pincount, mm ids) are rewritten as plain fields.
  mem.clearFolio(head, order);
  let prev = -1;
  for (let i = 0; i < nr; i++) {
    const pfn = head + i;
    const mc = mapcounts[i];
    mem.prepFolio(pfn, 0, inherit | (exclusive[i] ? PG_anon_exclusive : 0));
    mem.setFolioMapping(pfn, mapping, index + i);
    mem.setMapcount(pfn, mc);
    mem.setRef(pfn, mc);
    if (mc === 0) {
      // Nobody maps this page: it goes back to the allocator (free_folio_and_swap_cache).
      mem.clear(pfn, PG_lru);
      m.memmap.setRef(pfn, 1);
      m.folioPut(pfn);
      continue;
    }
    if (onLru) {
      // lru_add_split_folio: each new folio goes right after the previous one on the list.
      if (prev < 0) m.lru.addFirst(lru, pfn, 1);
      else m.lru.addAfter(lru, prev, pfn, 1);
      prev = pfn;
    }
  }
  mapUnusedToZeropage(m, head, nr);
  m.stat.inc(EV.folio_split);
  m.stat.inc(EV.pte_write, 2 * mapped); // migration entries installed, then removed
  m.stat.inc(EV.mapcount_update, 2 * mapped);
  m.stat.inc(EV.ref_update, nr);
  m.stat.inc(EV.tlb_flush, mapped); // try_to_migrate_one: ptep_clear_flush per PTE (no batching)
  if (order === HPAGE_PMD_ORDER) m.stat.inc(EV.thp_split_page);
  m.stat.incOrder("split", order);
  return 0;
}

/**
 * remap_page with RMP_USE_SHARED_ZEROPAGE, which __folio_split asks for after every anon split
 * (remove_migration_pte -> try_to_map_unused_to_zeropage): each PTE that maps one of the new
 * order-0 folios whose content is all zero (tag 0: never written) maps the shared zero page
 * instead (a special, read-only PTE with the VMA's protection), the mm's MM_ANONPAGES drops, and
 * the page is freed once nothing maps it. Seen on Linux 6.18 with `vmlab diff`: one written page
 * in a 64 KiB folio leaves RssAnon at 4 kB after the split.
 */
function mapUnusedToZeropage(m: Machine, head: number, nr: number): void {
  const mem = m.memmap;
  for (let pfn = head; pfn < head + nr; pfn++) {
    if (mem.ref(pfn) === 0 || mem.mapcount(pfn) === 0 || mem.tag(pfn) !== 0) continue;
    for (const hit of rmapWalk(m, pfn)) {
      const pte = pteTableOf(hit.mm, hit.addr);
      if (hit.pmd || pte === undefined) throw new Error(`mapUnusedToZeropage: no PTE maps ${pfn}`);
      const j = pteIndex(hit.addr);
      pte.set(
        j,
        mkLo(m.zeroPfn, vmPageProtLo(hit.vma.flags) | _PAGE_SPECIAL),
        mkHi(m.zeroPfn, vmPageProtNx(hit.vma.flags)),
      );
      folioRemoveRmapPtes(hit.mm, pfn, pfn, 1);
      hit.mm.rss[MM_ANONPAGES]--;
      m.folioPut(pfn);
    }
  }
}

/**
 * deferred_split_scan: the shrinker of the deferred split queue. Splits up to `nrToScan` queued
 * folios that are partly mapped, oldest first, freeing their unmapped pages; a queued folio that
 * is not partly mapped (a new PMD THP queued for the underused-THP check) leaves the queue
 * unsplit, since thp_underused never holds with khugepaged's default max_ptes_none (511). A
 * folio that cannot be split now (pinned) stays queued. Returns the number of folios split.
 */
export function deferredSplitScan(m: Machine, nrToScan = Number.POSITIVE_INFINITY): number {
  let split = 0;
  let scanned = 0;
  for (const head of [...m.deferredSplit]) {
    if (scanned++ >= nrToScan) break;
    if (!m.memmap.test(head, PG_partially_mapped)) {
      m.deferredSplit.delete(head);
      continue;
    }
    if (splitFolio(m, head) === 0) split++;
  }
  return split;
}
