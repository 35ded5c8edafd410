// Page reclaim (mm/vmscan.c): the watermarks, shrink_folio_list for one folio (reference check,
// lazyfree discard, split and swap-out of anon folios), the inactive and active list scans, and
// try_to_free_pages, which runs them by falling priority with the deferred split shrinker.
//
// Differs from Linux: no kswapd, only direct reclaim, run when a fault starts below the low
// watermark and again when a fault runs out of memory, before the fault is retried
// (memory.ts handleMmFault); one node, no memcg, no dirty file pages or writeback to wait for;
// the buddy allocator hands out pages down to zero rather than stopping at the min watermark.
// Reclaim never touches a PTE table shared by COW page tables (cow-pte.ts): the series never
// said how try_to_unmap breaks one, so such folios are kept.

import {
  PG_active,
  PG_anon,
  PG_dirty,
  PG_lru,
  PG_referenced,
  PG_swapbacked,
  PG_swapcache,
} from "../phys/memmap.ts";
import { PAGE_SIZE, PMD_SIZE } from "../uapi.ts";
import { splitHugePmd } from "./huge-memory.ts";
import { LRU_ACTIVE_ANON, LRU_ACTIVE_FILE, LRU_INACTIVE_ANON, LRU_INACTIVE_FILE, lruMove } from "./lru.ts";
import type { Machine } from "./machine.ts";
import { MM_ANONPAGES } from "./mm.ts";
import { isPmdLeaf, pmdOffset } from "./pgalloc.ts";
import { _PAGE_ACCESSED, _PAGE_DIRTY, pmdIndex, pteIndex } from "./pgtable.ts";
import { folioRemoveRmapPtes, type RmapHit, rmapWalk } from "./rmap.ts";
import { canSplitFolio, deferredSplitScan, splitFolio } from "./split.ts";
import { swapOutFolio } from "./swap.ts";
import { EV } from "./vmstat.ts";

export const SWAP_CLUSTER_MAX = 32;
/**
 * MAX_RECLAIM_RETRIES: kswapd gives up after this many passes in a row that freed nothing
 * (pgdat->kswapd_failures), until some reclaim frees pages again; and vmlab retries one fault
 * at most this many times after direct reclaim (should_reclaim_retry's bound on futile loops).
 */
export const MAX_RECLAIM_RETRIES = 16;
const DEF_PRIORITY = 12;

/**
 * The zone watermarks in pages, as __setup_per_zone_wmarks sets them for one zone:
 * min_free_kbytes = sqrt(16 x lowmem KiB) clamped to [128, 262144] KiB, and
 * low/high = min + 1x/2x max(min / 4, managed x watermark_scale_factor (10) / 10000).
 */
export function watermarks(ramPages: number): { min: number; low: number; high: number } {
  const minKiB = Math.min(262144, Math.max(128, Math.floor(Math.sqrt(ramPages * 4 * 16))));
  const min = Math.floor(minKiB / 4);
  const tmp = Math.max(Math.floor(min / 4), Math.floor((ramPages * 10) / 10000));
  return { min, low: min + tmp, high: min + 2 * tmp };
}

/** The PTE table and index, or the PMD table and index, of a mapping rmapWalk found. */
function locate(hit: RmapHit) {
  // Non-null: rmapWalk found the mapping through this PMD table.
  const pmd = pmdOffset(hit.mm, hit.addr)!;
  const i = pmdIndex(hit.addr);
  if (hit.pmd) return { t: pmd, j: i, shared: false };
  // Non-null: the mapping is a PTE in this table.
  const pte = pmd.child(i)!;
  return { t: pte, j: pteIndex(hit.addr), shared: pte.cow !== null };
}

/**
 * folio_referenced: how many of the mappings `hits` of a folio have the accessed bit set,
 * clearing it (ptep_clear_flush_young). A mapping under a shared COW PTE table counts as
 * referenced and keeps its bit.
 */
export function folioReferenced(m: Machine, hits: RmapHit[]): number {
  let referenced = 0;
  for (const hit of hits) {
    const { t, j, shared } = locate(hit);
    const lo = t.lo(j);
    if (shared) {
      referenced++;
      continue;
    }
    if (lo & _PAGE_ACCESSED) {
      t.set(j, (lo & ~_PAGE_ACCESSED) >>> 0, t.hi(j));
      m.stat.inc(EV.pte_write);
      m.stat.inc(EV.tlb_flush);
      referenced++;
    }
  }
  m.stat.inc(EV.pte_read, hits.length);
  return referenced;
}

type FolioRef = "activate" | "keep" | "reclaim";

/** folio_check_references: what the reference bits say about an inactive folio. */
function folioCheckReferences(m: Machine, head: number, hits: RmapHit[]): FolioRef {
  const mem = m.memmap;
  const referencedPtes = folioReferenced(m, hits);
  const referencedFolio = mem.test(head, PG_referenced);
  mem.clear(head, PG_referenced);
  if (referencedPtes > 0) {
    // All mapped folios start out referenced by their fault: look twice before activating.
    mem.set(head, PG_referenced);
    if (referencedFolio || referencedPtes > 1) return "activate";
    return "keep";
  }
  return "reclaim";
}

/**
 * try_to_unmap for a lazyfree (MADV_FREE'd, not swap-backed) anon folio, as try_to_unmap_one's
 * "MADV_FREE page check" in Linux 6.18. The mappings are taken in rmap order, a PTE-mapped large
 * folio in batches (folio_unmap_pte_batch: consecutive PTEs of one table and VMA mapping
 * consecutive pages). A batch with a dirty PTE, or a dirty folio, was written since MADV_FREE:
 * its PTEs are put back with the batch's merged dirty and young bits (set_ptes of the gathered
 * pteval), the folio is swap-backed again and the walk stops (walk_abort). A reference other
 * than the mappings (a pin, a pipe) stops it too. A clean batch is dropped (discard).
 * A PMD mapping is split first (TTU_SPLIT_HUGE_PMD) and its 512 PTEs taken as batches: Linux
 * 6.18 tries unmap_huge_pmd_locked (__discard_anon_folio_pmd_locked) first, but on the machines
 * `vmlab diff` runs on that discard never happens, clean or dirty (thp_split_pmd counts one, the
 * PTE table stays, a later read maps 4 KiB zero pages), and try_to_unmap_one falls through to
 * the split; vmlab follows the live kernel (docs/kernel-diff.md).
 * Returns true when no mapping is left.
 */
function tryToUnmapLazyfree(m: Machine, head: number, rmapHits: RmapHit[]): boolean {
  const mem = m.memmap;
  for (const hit of rmapHits) {
    if (locate(hit).shared) return false;
  }
  const hits = [...rmapHits];
  for (let h = 0, nr = 1; h < hits.length; h += nr) {
    if (hits[h].pmd) {
      // split_huge_pmd_locked, then restart the walk on the PTE-mapped folio.
      const { mm, vma, addr } = hits[h];
      const pmd = pmdOffset(mm, addr);
      if (pmd !== undefined && isPmdLeaf(pmd, pmdIndex(addr)))
        splitHugePmd(mm, vma, pmd, pmdIndex(addr), addr);
      const ptes = rmapWalk(m, head).filter(
        (x) => x.mm === mm && x.vma === vma && !x.pmd && x.addr >= addr && x.addr < addr + PMD_SIZE,
      );
      hits.splice(h, 1, ...ptes);
      nr = 0;
      continue;
    }
    const hit = hits[h];
    const { t, j } = locate(hit);
    nr = 1;
    if (!hit.pmd) {
      // folio_unmap_pte_batch: the run of PTEs in this table and VMA mapping the next pages.
      while (h + nr < hits.length) {
        const n = hits[h + nr];
        if (n.pmd || n.mm !== hit.mm || n.vma !== hit.vma || n.pfn !== hit.pfn + nr) break;
        if (n.addr !== hit.addr + nr * PAGE_SIZE || pteIndex(n.addr) !== j + nr) break;
        nr++;
      }
    }
    let bits = 0;
    for (let k = 0; k < nr; k++) bits |= t.lo(j + k) & (_PAGE_DIRTY | _PAGE_ACCESSED);
    m.stat.inc(EV.pte_read, nr);
    if (bits & _PAGE_DIRTY) mem.set(head, PG_dirty);
    if (mem.test(head, PG_dirty)) {
      for (let k = 0; k < nr; k++) {
        const lo = t.lo(j + k);
        if ((lo | bits) !== lo) {
          t.set(j + k, (lo | bits) >>> 0, t.hi(j + k));
          m.stat.inc(EV.pte_write);
        }
      }
      lruMove(m, head, mem.flags(head) | PG_swapbacked); // folio_set_swapbacked: written again
      return false;
    }
    const mapcount = mem.order(head) > 0 ? mem.largeMapcount(head) : mem.mapcount(head);
    if (mem.ref(head) !== mapcount) return false;
    for (let k = 0; k < nr; k++) t.clear(j + k);
    m.stat.inc(EV.pte_write, nr);
    folioRemoveRmapPtes(hit.mm, head, hit.pfn, nr);
    hit.mm.rss[MM_ANONPAGES] -= nr;
    for (let k = 0; k < nr; k++) m.folioPut(head);
    m.stat.inc(EV.tlb_flush);
  }
  return true;
}

/**
 * shrink_folio_list for one isolated folio: "freed" when its pages went back to the allocator,
 * "activate" or "keep" for where putback puts it. `split` collects the order-0 folios a split
 * made of it, which the caller reclaims in the same pass (split_folio_to_list).
 */
function shrinkFolio(
  m: Machine,
  head: number,
  ignoreReferences: boolean,
  split: number[],
): FolioRef | "freed" {
  const mem = m.memmap;
  const hits = rmapWalk(m, head);
  if (!ignoreReferences) {
    const ref = folioCheckReferences(m, head, hits);
    if (ref !== "reclaim") return ref;
  }
  if (!mem.test(head, PG_anon)) return "keep";
  const nr = 1 << mem.order(head);
  if (!mem.test(head, PG_swapbacked)) {
    // Lazyfree: discard it if nobody wrote it since MADV_FREE.
    if (!tryToUnmapLazyfree(m, head, hits)) return "activate";
    if (mem.ref(head) === 0) {
      m.stat.inc(EV.pglazyfreed, nr);
      return "freed";
    }
    return "keep";
  }
  if (!mem.test(head, PG_swapcache) && nr > 1) {
    // vmlab swaps order 0 only (no THP_SWAP): a large folio is split first, so is one that no
    // slot could take (the fallback split of shrink_folio_list).
    if (!canSplitFolio(m, head)) return "activate";
    if (splitFolio(m, head) !== 0) return "activate";
    for (let i = 1; i < nr; i++)
      if (mem.ref(head + i) > 0 && mem.test(head + i, PG_lru)) split.push(head + i);
    if (mem.ref(head) === 0) return "freed"; // the head page was not mapped: the split freed it
  }
  if (m.swap.freeSlots() === 0 && !mem.test(head, PG_swapcache)) return "activate";
  const r = swapOutFolio(m, head);
  if (r === "swapped") return "freed";
  return r === "nospace" ? "activate" : "keep";
}

/** putback_folio_list for one folio: to the head of the active or inactive list. */
function putback(m: Machine, head: number, where: FolioRef): void {
  const mem = m.memmap;
  if (!mem.test(head, PG_lru) || mem.ref(head) === 0) return;
  const f = mem.flags(head);
  if (where === "activate") {
    lruMove(m, head, f | PG_active);
    m.stat.inc(EV.pgactivate, 1 << mem.order(head));
  } else lruMove(m, head, f);
}

/**
 * reclaim_folio_list / shrink_folio_list over `folios`: tries to reclaim each, puts back the
 * rest. With ignoreReferences (MADV_PAGEOUT's reclaim_pages) young bits do not save a folio.
 * Returns the pages freed.
 */
export function shrinkFolioList(m: Machine, folios: number[], ignoreReferences: boolean): number {
  const before = m.buddy.freePages();
  const todo = [...folios];
  for (let k = 0; k < todo.length; k++) {
    const head = todo[k];
    const mem = m.memmap;
    if (mem.ref(head) === 0 || !mem.test(head, PG_lru)) continue;
    const nr = 1 << mem.order(head);
    m.stat.inc(EV.pgscan, nr);
    const split: number[] = [];
    const r = shrinkFolio(m, head, ignoreReferences, split);
    todo.push(...split);
    if (r === "freed") continue;
    putback(m, head, r);
  }
  const freed = m.buddy.freePages() - before;
  if (freed > 0) m.stat.inc(EV.pgsteal, freed);
  return Math.max(0, freed);
}

/** shrink_inactive_list: reclaims from the tail (oldest) of an inactive list. */
function shrinkInactiveList(m: Machine, lru: number, nrToScan: number): number {
  const folios: number[] = [];
  for (let p = m.lru.last[lru], n = 0; p !== -1 && n < nrToScan; p = m.lru.prev(p)) {
    folios.push(p);
    n += 1 << m.memmap.order(p);
  }
  return shrinkFolioList(m, folios, false);
}

/**
 * shrink_active_list: moves folios from the tail of an active list to the inactive list,
 * clearing their young bits; referenced or not, anon folios are deactivated (Linux keeps only
 * referenced executable file folios active).
 */
function shrinkActiveList(m: Machine, lru: number, nrToScan: number): void {
  const mem = m.memmap;
  const folios: number[] = [];
  for (let p = m.lru.last[lru], n = 0; p !== -1 && n < nrToScan; p = m.lru.prev(p)) {
    folios.push(p);
    n += 1 << mem.order(p);
  }
  for (const head of folios) {
    m.stat.inc(EV.pgrefill, 1 << mem.order(head));
    folioReferenced(m, rmapWalk(m, head));
    lruMove(m, head, mem.flags(head) & ~(PG_active | PG_referenced));
    m.stat.inc(EV.pgdeactivate, 1 << mem.order(head));
  }
}

/**
 * try_to_free_pages: reclaims at least nrToReclaim pages if it can. By falling priority (12 to
 * 0), scans 1/2^priority of each evictable list (at least SWAP_CLUSTER_MAX pages): the file
 * lists always (lazyfree folios live there), the anon lists only when swap has a free slot
 * (can_reclaim_anon_pages). An inactive list smaller than its active list is refilled first
 * (inactive_is_low, ratio 1 below 1 GiB). Then the deferred split shrinker runs (shrink_slab).
 * Returns the pages freed.
 */
export function tryToFreePages(m: Machine, nrToReclaim: number): number {
  const before = m.buddy.freePages();
  const lru = m.lru;
  for (let priority = DEF_PRIORITY; priority >= 0; priority--) {
    const anon = m.swap.freeSlots() > 0;
    for (const [inactive, active] of anon
      ? [
          [LRU_INACTIVE_ANON, LRU_ACTIVE_ANON],
          [LRU_INACTIVE_FILE, LRU_ACTIVE_FILE],
        ]
      : [[LRU_INACTIVE_FILE, LRU_ACTIVE_FILE]]) {
      const size = lru.nrPages[inactive] + lru.nrPages[active];
      const scan = Math.max(Math.floor(size / 2 ** priority), Math.min(size, SWAP_CLUSTER_MAX));
      if (lru.nrPages[inactive] < lru.nrPages[active]) shrinkActiveList(m, active, scan);
      shrinkInactiveList(m, inactive, scan);
      if (m.buddy.freePages() - before >= nrToReclaim) {
        m.kswapdFailures = 0;
        return m.buddy.freePages() - before;
      }
    }
    if (m.deferredSplit.size > 0) deferredSplitScan(m);
    if (m.buddy.freePages() - before >= nrToReclaim) break;
  }
  const freed = Math.max(0, m.buddy.freePages() - before);
  if (freed > 0) m.kswapdFailures = 0;
  return freed;
}

/**
 * wakeup_kswapd, with kswapd's work done in line: below the low watermark, reclaims up to the
 * high one (balance_pgdat), unless kswapd has failed MAX_RECLAIM_RETRIES times in a row.
 */
export function wakeupKswapd(m: Machine): void {
  const free = m.buddy.freePages();
  if (free >= m.wmark.low || m.kswapdFailures >= MAX_RECLAIM_RETRIES) return;
  if (tryToFreePages(m, m.wmark.high - free) === 0) m.kswapdFailures++;
}
