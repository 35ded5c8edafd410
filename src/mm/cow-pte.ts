// COW page tables at fork (Chih-En Lin, "Introduce Copy-On-Write to Page Table", v4 of Feb 2023,
// and its RFC v2 / On-demand-fork ancestor): instead of copying a PTE table, fork points the
// child's PMD entry at the parent's table and write-protects both PMD entries. The table is then
// shared until one of its sharers needs to change an entry, which "breaks COW": the last sharer
// takes the table back (reuse); any other gets its own copy.
//
// Two designs share this module:
//   v4        fork still walks the PTEs of a shared table to do the per-page work (refcount,
//             mapcount, PageAnonExclusive, RSS) for the child, and write-protects them. A break
//             is then a plain copy of the 4 KiB table.
//   deferred  fork shares the table without walking it (RFC v2). The pages are accounted once,
//             to the table's owner; a break does the per-page work fork skipped, for the mm that
//             leaves. RSS: a process is charged for the pages of a shared table only while it is
//             the table's owner (the parent at fork), so a child's RssAnon grows as it breaks
//             COW. Once no table is shared, every design reports the same RSS.
//
// VmPTE (mm_pgtables_bytes): a shared table is charged to its owner only (v4 and deferred alike),
// so a child that shares everything shows the tables above the PTE level and nothing more.
//
// The rules a shared table keeps (the audit checks each):
//   - every sharer's PMD entry points at it, read-only, at the same address `addr`, and the
//     table's 2 MiB lies inside one private (COW) VMA of each sharer;
//   - only this module writes it while it is shared, and bumps `gen` when it does, so a walker
//     that forgot to break COW (the thread's concern 1) shows as a change under an unchanged gen;
//   - no page under it is pinned (pinning breaks COW first);
//   - it holds no swap entry: a table with one is copied at fork, and reclaim does not swap out
//     a page mapped through a shared table (swap.ts swapOutFolio);
//   - v4: its entries are read-only.
// A break that cannot allocate returns -ENOMEM before anything changed (concern 2): callers
// break every table an operation needs up front (cowPteBreakRange), after checking there are
// enough free frames for all of them.

import { PG_anon, PG_anon_exclusive } from "../phys/memmap.ts";
import { ENOMEM, PMD_SIZE } from "../uapi.ts";
import type { PteCopyDesign } from "./fork.ts";
import { batched } from "./fork-batched.ts";
import { isCowMapping, perPte } from "./fork-per-pte.ts";
import { MM_ANONPAGES, MM_SHMEMPAGES, MM_SWAPENTS, type Mm } from "./mm.ts";
import { isPmdLeaf, pmdOffset, populate } from "./pgalloc.ts";
import {
  _PAGE_RW,
  _PAGE_SPECIAL,
  folioRunLength,
  type PageTable,
  pmdAddrEnd,
  pmdIndex,
  pteMapped,
} from "./pgtable.ts";
import {
  folioAddLargeMapcount,
  folioAddRmapPtes,
  folioMaybeDmaPinned,
  folioRemoveRmapPtes,
  folioSubLargeMapcount,
  folioTryDupAnonRmapPtes,
} from "./rmap.ts";
import type { Vma } from "./vma.ts";
import { EV } from "./vmstat.ts";

export type CowPteMode = "v4" | "deferred";

/** The COW state of a shared PTE table (PageTable.cow). */
export interface CowPteState {
  /** Every mm whose PMD entry points at the table, at `addr` in each. At least two. */
  readonly sharers: Mm[];
  /**
   * The sharer charged with the table in VmPTE; in deferred mode also the one whose mapping of
   * the table's pages the refcounts, mapcounts, mm ids and RSS count.
   */
  owner: Mm;
  readonly deferred: boolean;
  /** The PMD-aligned address the table maps in every sharer. */
  readonly addr: number;
  /** Renewed whenever this module changes the table while it is shared (the audit's seal). */
  gen: number;
}

/**
 * Generations come from one counter, so that a table unshared and shared again never repeats
 * one (they mean nothing beyond "changed by this module").
 */
let nextGen = 1;

/** True when pfn's anon page is exclusive and its folio may be pinned: fork must copy it. */
function maybePinnedExclusive(src: Mm, pfn: number): boolean {
  const m = src.machine;
  const mem = m.memmap;
  if (m.cow !== "modern" || !src.hasPinned || !mem.test(pfn, PG_anon_exclusive)) return false;
  return folioMaybeDmaPinned(m, mem.folioHead(pfn));
}

/** How many entries of t map a page that fork would have to copy rather than share. */
function countMaybePinned(src: Mm, t: PageTable, countReads = true): number {
  let n = 0;
  for (let j = 0; j < 512; j++) {
    const lo = t.lo(j);
    if (lo === 0 && t.hi(j) === 0) continue;
    if (!(lo & _PAGE_SPECIAL) && maybePinnedExclusive(src, t.pfnAt(j))) n++;
  }
  if (countReads) src.machine.stat.inc(EV.pte_read, t.used);
  return n;
}

/**
 * Whether t holds a swap entry. Only an mm with swap entries (MM_SWAPENTS) can have one, so
 * only then is the table read.
 */
function holdsSwapEntry(mm: Mm, t: PageTable): boolean {
  if (mm.rss[MM_SWAPENTS] === 0) return false;
  for (let j = 0; j < 512; j++) {
    const lo = t.lo(j);
    if ((lo !== 0 || t.hi(j) !== 0) && !pteMapped(lo)) return true;
  }
  return false;
}

/**
 * Whether fork may share the PTE table behind src's PMD entry for [base, base + 2 MiB) of
 * srcVma: the VMA is a COW mapping that covers the whole table, no entry is a swap entry, and no
 * entry maps a page that may be pinned (which fork must copy).
 * Differs from the series, which does not say what a shared table does with swap entries: vmlab
 * keeps them out of shared tables, so that only copy_nonpresent_pte handles them; the read of the
 * table that looks for them is not counted. Only an mm that ever pinned a page (MMF_HAS_PINNED)
 * can have one, so only then are the entries read first (v4 folds this check into its
 * accounting walk; the model walks twice but counts the reads once).
 */
export function cowPteShareable(src: Mm, srcVma: Vma, t: PageTable, base: number): boolean {
  if (!isCowMapping(srcVma.flags) || base < srcVma.start || base + PMD_SIZE > srcVma.end) return false;
  if (t.cow === null && holdsSwapEntry(src, t)) return false;
  if (t.cow !== null || src.machine.cow !== "modern" || !src.hasPinned) return true;
  return countMaybePinned(src, t, src.machine.cowPte === "deferred") === 0;
}

/**
 * Per-page work for dst's mapping of every page of t, as copy_present_pte does it one entry at a
 * time (v4 is based on 6.2, before batching): a reference, an rmap dup (PageAnonExclusive
 * cleared), dst's RSS; writable entries become read-only in t. Precondition: no page needs a
 * copy (cowPteShareable said so).
 */
function accountShare(dst: Mm, src: Mm, t: PageTable): void {
  const m = dst.machine;
  const mem = m.memmap;
  for (let j = 0; j < 512; j++) {
    const lo = t.lo(j);
    if (lo === 0 && t.hi(j) === 0) continue;
    m.stat.inc(EV.pte_read);
    if (lo & _PAGE_RW) {
      t.set(j, (lo & ~_PAGE_RW) >>> 0, t.hi(j)); // ptep_set_wrprotect
      m.stat.inc(EV.pte_write);
    }
    if (lo & _PAGE_SPECIAL) continue;
    const pfn = t.pfnAt(j);
    const head = mem.folioHead(pfn);
    mem.addRef(head, 1);
    m.stat.inc(EV.ref_update);
    if (mem.test(head, PG_anon)) {
      if (!folioTryDupAnonRmapPtes(dst, src, head, pfn, 1))
        throw new Error(`cow-pte: page ${pfn} may be pinned but its table was shared`);
      dst.rss[MM_ANONPAGES]++;
    } else {
      folioAddRmapPtes(dst, head, pfn, 1, false);
      m.stat.inc(EV.rmap_dup);
      dst.rss[MM_SHMEMPAGES]++;
    }
  }
}

/**
 * Undoes mm's per-page accounting of t's pages (as zap_pte_range would, without clearing the
 * entries, which other sharers still use).
 */
function unaccount(mm: Mm, t: PageTable): void {
  const m = mm.machine;
  const mem = m.memmap;
  for (let j = 0; j < 512; ) {
    const lo = t.lo(j);
    if ((lo === 0 && t.hi(j) === 0) || lo & _PAGE_SPECIAL) {
      j++;
      continue;
    }
    const pfn = t.pfnAt(j);
    const head = mem.folioHead(pfn);
    const last = head + (1 << mem.order(head));
    const nr = folioRunLength(t, j, 512, pfn, last);
    m.stat.inc(EV.pte_read, nr);
    folioRemoveRmapPtes(mm, head, pfn, nr);
    mm.rss[mem.test(head, PG_anon) ? MM_ANONPAGES : MM_SHMEMPAGES] -= nr;
    m.folioPut(head, nr);
    j += nr;
  }
}

/**
 * Deferred mode: moves the accounting of t's pages from `from` to `to` (the owner leaves): mm
 * ids and RSS change hands; refcounts, mapcounts and PageAnonExclusive stay, since the pages are
 * still mapped once, through t.
 */
function transferOwner(from: Mm, to: Mm, t: PageTable): void {
  const m = from.machine;
  const mem = m.memmap;
  for (let j = 0; j < 512; j++) {
    const lo = t.lo(j);
    if ((lo === 0 && t.hi(j) === 0) || lo & _PAGE_SPECIAL) continue;
    m.stat.inc(EV.pte_read);
    const pfn = t.pfnAt(j);
    const head = mem.folioHead(pfn);
    if (mem.order(head) > 0) {
      folioAddLargeMapcount(m, head, 1, to.id);
      folioSubLargeMapcount(m, head, 1, from.id);
      m.stat.inc(EV.mapcount_update);
    }
    const c = mem.test(head, PG_anon) ? MM_ANONPAGES : MM_SHMEMPAGES;
    from.rss[c]--;
    to.rss[c]++;
  }
}

/** The VMA of mm that holds the shared table at addr (the rules say there is one). */
function vmaOf(mm: Mm, addr: number): Vma {
  const vma = mm.vmaLookup(addr);
  if (vma === undefined) throw new Error(`cow-pte: pid ${mm.pid} shares a table at ${addr} outside its VMAs`);
  return vma;
}

/**
 * Fork: dst's PMD entry i (in dpmd) points at src's table behind spmd[i], for [base, base +
 * 2 MiB); both PMD entries become read-only. v4 does dst's per-page work now; deferred does
 * none. Precondition: cowPteShareable.
 */
export function cowPteShare(
  dst: Mm,
  src: Mm,
  dpmd: PageTable,
  spmd: PageTable,
  i: number,
  base: number,
  mode: CowPteMode,
): void {
  const m = dst.machine;
  // Non-null: the caller found a present non-leaf entry.
  const t = spmd.child(i)!;
  if (t.cow === null) {
    if (holdsSwapEntry(src, t)) throw new Error(`cowPteShare: table at ${base} holds a swap entry`);
    t.cow = { sharers: [src], owner: src, deferred: mode === "deferred", addr: base, gen: nextGen++ };
    spmd.set(i, (spmd.lo(i) & ~_PAGE_RW) >>> 0, spmd.hi(i));
    m.stat.inc(EV.pmd_write);
  }
  const c = t.cow;
  c.sharers.push(dst);
  dpmd.set(i, spmd.lo(i), spmd.hi(i));
  dpmd.setChild(i, t);
  m.stat.inc(EV.pmd_write);
  m.stat.inc(EV.ptl_lock); // pmd_lock; v4's walk holds the table's lock as copy_pte_range does
  if (!c.deferred) accountShare(dst, src, t);
  c.gen = nextGen++;
  m.stat.inc(EV.cow_pte_share);
}

/** The table is no longer shared: its last sharer's PMD entry becomes writable again. */
function cowPteReuse(t: PageTable): void {
  // Non-null: called on a table that was shared.
  const c = t.cow!;
  const last = c.sharers[0];
  const pmd = pmdOffset(last, c.addr);
  const i = pmdIndex(c.addr);
  if (pmd === undefined || pmd.child(i) !== t)
    throw new Error(`cow-pte: pid ${last.pid} lost its shared table`);
  pmd.set(i, (pmd.lo(i) | _PAGE_RW) >>> 0, pmd.hi(i));
  t.cow = null;
  last.machine.stat.inc(EV.pmd_write);
  last.machine.stat.inc(EV.cow_pte_reuse);
}

/** Frames a break of t by mm needs: the new table, and a page for each entry fork must copy. */
function breakCost(mm: Mm, t: PageTable): number {
  // Non-null: t is shared.
  const c = t.cow!;
  if (!c.deferred) return 1;
  const from = c.owner === mm ? mm : c.owner;
  return 1 + (from.hasPinned && from.machine.cow === "modern" ? countMaybePinned(from, t) : 0);
}

/**
 * break_cow_pte: mm stops sharing the table behind its PMD entry i, taking its own copy (the
 * table then has one sharer fewer; the last one left takes it back). v4: a copy of the entries.
 * Deferred: the per-page work fork skipped is done now for whichever of mm and the owner stops
 * using the original. Returns 0, or -ENOMEM with nothing changed.
 */
export function breakCowPte(mm: Mm, pmd: PageTable, i: number): number {
  const m = mm.machine;
  // Non-null: the caller found a shared table here.
  const t = pmd.child(i)!;
  const c = t.cow!;
  if (m.buddy.freePages() < breakCost(mm, t)) {
    m.stat.inc(EV.cow_pte_enomem);
    return -ENOMEM;
  }
  // Non-null: free frames were checked above.
  const n = m.allocTable("pte")!;
  c.sharers.splice(c.sharers.indexOf(mm), 1);
  const end = c.addr + PMD_SIZE;
  if (!c.deferred || c.owner === mm) {
    n.e.set(t.e); // copy_pte_range of the table, entries as they are
    n.used = t.used;
    m.stat.inc(EV.pte_read, t.used);
    m.stat.inc(EV.pte_write, t.used);
  }
  if (c.owner !== mm) {
    mm.pgtablesBytes += 4096;
    if (
      c.deferred &&
      batched.copyPteRange(mm, c.owner, n, t, vmaOf(mm, c.addr), vmaOf(c.owner, c.addr), c.addr, end) < 0
    )
      throw new Error("cow-pte: break ran out of memory after its check");
  } else {
    const heir = c.sharers[0];
    c.owner = heir;
    heir.pgtablesBytes += 4096;
    // The heir's mapping through t is accounted as a fork from mm's new copy would do it.
    if (
      c.deferred &&
      batched.copyPteRange(heir, mm, t, n, vmaOf(heir, c.addr), vmaOf(mm, c.addr), c.addr, end) < 0
    )
      throw new Error("cow-pte: break ran out of memory after its check");
  }
  populate(pmd, i, n);
  m.stat.inc(EV.ptl_lock, 2);
  m.stat.inc(EV.pmd_write);
  m.stat.inc(EV.pgtable_copy);
  m.stat.inc(EV.cow_pte_break);
  if (c.sharers.length === 1) cowPteReuse(t);
  else c.gen = nextGen++;
  return 0;
}

/**
 * Zap of a whole shared table by mm (munmap, exit): mm's PMD entry is cleared and mm stops
 * sharing, without touching the entries. v4 drops mm's per-page accounting; deferred has none
 * to drop unless mm is the owner, whose accounting passes to another sharer. Never allocates.
 */
export function dropCowPte(mm: Mm, pmd: PageTable, i: number): void {
  const m = mm.machine;
  // Non-null: the caller found a shared table here.
  const t = pmd.child(i)!;
  const c = t.cow!;
  pmd.clear(i);
  pmd.setChild(i, undefined);
  m.stat.inc(EV.pmd_write);
  c.sharers.splice(c.sharers.indexOf(mm), 1);
  if (!c.deferred) unaccount(mm, t);
  if (c.owner === mm) {
    const heir = c.sharers[0];
    if (c.deferred) transferOwner(mm, heir, t);
    c.owner = heir;
    mm.pgtablesBytes -= 4096;
    heir.pgtablesBytes += 4096;
  }
  m.stat.inc(EV.cow_pte_drop);
  if (c.sharers.length === 1) cowPteReuse(t);
  else c.gen = nextGen++;
}

/** The shared tables of mm that [start, end) reaches (only those it covers in part, with partialOnly). */
function sharedTablesIn(mm: Mm, start: number, end: number, partialOnly: boolean): [PageTable, number][] {
  const found: [PageTable, number][] = [];
  for (let addr = start, next: number; addr < end; addr = next) {
    next = pmdAddrEnd(addr, end);
    const pmd = pmdOffset(mm, addr);
    if (pmd === undefined) continue;
    const i = pmdIndex(addr);
    if (pmd.none(i) || isPmdLeaf(pmd, i) || pmd.child(i)?.cow == null) continue;
    if (partialOnly && next - addr === PMD_SIZE) continue;
    found.push([pmd, i]);
  }
  return found;
}

/**
 * Breaks COW on every shared table of mm that [start, end) reaches, or, with partialOnly, on
 * those it covers only in part (munmap and madvise split VMAs there; a whole table is dropped
 * instead). All or nothing: returns -ENOMEM, with nothing broken, when free frames do not
 * suffice for all of them. A design without shared tables finds none and returns 0.
 */
export function cowPteBreakRange(mm: Mm, start: number, end: number, partialOnly: boolean): number {
  return cowPteBreakRanges(mm, [[start, end, partialOnly]]);
}

/** cowPteBreakRange over several ranges at once, all or nothing. */
export function cowPteBreakRanges(mm: Mm, ranges: readonly [number, number, boolean][]): number {
  const m = mm.machine;
  if (m.cowPte === null) return 0;
  const todo: [PageTable, number][] = [];
  for (const [start, end, partialOnly] of ranges)
    for (const hit of sharedTablesIn(mm, start, end, partialOnly))
      if (!todo.some(([p, i]) => p === hit[0] && i === hit[1])) todo.push(hit);
  let need = 0;
  for (const [pmd, i] of todo) need += breakCost(mm, pmd.child(i)!);
  if (m.buddy.freePages() < need) {
    m.stat.inc(EV.cow_pte_enomem);
    return -ENOMEM;
  }
  for (const [pmd, i] of todo)
    if (breakCowPte(mm, pmd, i) < 0) throw new Error("cow-pte: break failed after its check");
  return 0;
}

/** v4: tables shared at fork with the per-page work done then; other tables copied per PTE (6.2). */
export const cowPte: PteCopyDesign = {
  name: "cow-pte",
  sharePteTables: "v4",
  copyPteRange: perPte.copyPteRange,
};

/** RFC v2 / ODF: tables shared at fork without a walk; the per-page work happens at the break. */
export const cowPteDeferred: PteCopyDesign = {
  name: "cow-pte-deferred",
  sharePteTables: "deferred",
  copyPteRange: perPte.copyPteRange,
};
