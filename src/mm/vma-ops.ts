// Changing the VMA tree (mm/vma.c): splitting a VMA, merging neighbours, modifying flags of a
// range (vma_modify), and unmapping a range of VMAs (do_vmi_align_munmap).

import { ENOMEM, PMD_SIZE } from "../uapi.ts";
import { cowPteBreakRange } from "./cow-pte.ts";
import { splitHugePmd } from "./huge-memory.ts";
import { freePgtables, unmapPageRange } from "./memory.ts";
import { MAX_MAP_COUNT, type Mm } from "./mm.ts";
import { isPmdLeaf, pmdOffset } from "./pgalloc.ts";
import { pmdIndex } from "./pgtable.ts";
import { anonVmaClone, unlinkAnonVmas } from "./rmap.ts";
import { shmemPut } from "./shmem.ts";
import { canMergeAdjacent, Vma } from "./vma.ts";
import { EV } from "./vmstat.ts";

/**
 * split_huge_pmd_if_needed: when a VMA boundary is about to be placed at addr inside a huge
 * PMD mapping, split that PMD first (vma_adjust_trans_huge).
 */
export function splitHugePmdAt(mm: Mm, addr: number): void {
  if (addr % PMD_SIZE === 0) return;
  const pmd = pmdOffset(mm, addr);
  if (pmd === undefined) return;
  const i = pmdIndex(addr);
  if (!isPmdLeaf(pmd, i)) return;
  const vma = mm.vmaLookup(addr);
  if (vma === undefined) throw new Error(`splitHugePmdAt: huge PMD at ${addr} outside any VMA`);
  splitHugePmd(mm, vma, pmd, i, Math.floor(addr / PMD_SIZE) * PMD_SIZE);
}

/**
 * vm_area_dup + anon_vma_clone + get_file: a new VMA (not yet in any mm) with vma's flags,
 * linked to every anon_vma vma is linked to, sharing its file, covering [start, end) with
 * matching pgoff.
 */
export function cloneVma(vma: Vma, start: number, end: number): Vma {
  const n = new Vma(start, end, vma.flags, vma.pgoff + (start - vma.start) / 4096, vma.anonVma, vma.shmem);
  anonVmaClone(n, vma);
  if (n.shmem) n.shmem.users++; // get_file
  return n;
}

/** Releases a VMA that has left the tree: its anon_vma links and file reference. */
export function releaseVma(mm: Mm, vma: Vma): void {
  unlinkAnonVmas(mm.machine, vma);
  if (vma.shmem) shmemPut(mm.machine, vma.shmem);
}

/**
 * split_vma: splits vma at addr (page aligned, strictly inside) into two VMAs and returns the
 * upper one, or -ENOMEM at vm.max_map_count. A huge PMD across addr is split.
 */
export function splitVma(mm: Mm, vma: Vma, addr: number): Vma | number {
  if (mm.mapCount >= MAX_MAP_COUNT) return -ENOMEM;
  return __splitVma(mm, vma, addr);
}

/** __split_vma: split_vma without the map-count check (callers checked already). */
function __splitVma(mm: Mm, vma: Vma, addr: number): Vma {
  if (addr <= vma.start || addr >= vma.end) throw new Error(`splitVma: ${addr} not inside VMA`);
  splitHugePmdAt(mm, addr);
  const upper = cloneVma(vma, addr, vma.end);
  vma.end = addr;
  mm.insertVma(upper);
  mm.machine.stat.inc(EV.vma_split);
  return upper;
}

/** dup_anon_vma: a VMA without an anon_vma that absorbs pages of `src` takes src's anon_vmas. */
export function dupAnonVma(dst: Vma, src: Vma): void {
  if (dst.anonVma === null && src.anonVma !== null) {
    dst.anonVma = src.anonVma;
    anonVmaClone(dst, src);
  }
}

/** Removes `next` by extending `prev` over it (the two are adjacent and mergeable). */
export function mergeInto(mm: Mm, prev: Vma, next: Vma): void {
  mm.removeVma(next);
  prev.end = next.end;
  dupAnonVma(prev, next);
  releaseVma(mm, next);
  mm.machine.stat.inc(EV.vma_merge);
}

/**
 * vma_modify_flags: gives [start, end) (inside vma) the flags `newFlags`, merging with the
 * neighbours when Linux would and splitting vma otherwise. Returns the VMA now covering
 * [start, end), or -ENOMEM when a split would pass vm.max_map_count (nothing changed then).
 */
export function vmaModifyFlags(mm: Mm, vma: Vma, start: number, end: number, newFlags: number): Vma | number {
  const idx = mm.findVmaIndex(vma.start);
  const prev = mm.vmas[idx - 1];
  const next = mm.vmas[idx + 1];
  const probe = new Vma(start, end, newFlags, vma.pgoff + (start - vma.start) / 4096, vma.anonVma, vma.shmem);
  probe.anonVmaChain = vma.anonVmaChain; // read only: the merge rules look at its length
  const mergePrev = start === vma.start && prev !== undefined && canMergeAdjacent(prev, probe);
  const mergeNext = end === vma.end && next !== undefined && canMergeAdjacent(probe, next);
  if (mergePrev) {
    splitHugePmdAt(mm, end);
    if (end === vma.end) {
      mergeInto(mm, prev, vma);
      if (mergeNext && canMergeAdjacent(prev, next)) mergeInto(mm, prev, next);
    } else {
      prev.end = end;
      vma.pgoff += (end - vma.start) / 4096;
      vma.start = end;
      dupAnonVma(prev, vma);
      mm.machine.stat.inc(EV.vma_merge);
    }
    return prev;
  }
  if (mergeNext) {
    splitHugePmdAt(mm, start);
    if (start === vma.start) {
      vma.flags = newFlags;
      mergeInto(mm, vma, next);
      return vma;
    }
    next.start = start;
    next.pgoff -= (vma.end - start) / 4096;
    vma.end = start;
    dupAnonVma(next, vma);
    mm.machine.stat.inc(EV.vma_merge);
    return next;
  }
  // Split off the parts outside [start, end). As in Linux, a failure of the second split
  // leaves the first one done.
  let mid = vma;
  if (start > vma.start) {
    const upper = splitVma(mm, vma, start);
    if (typeof upper === "number") return upper;
    mid = upper;
  }
  if (end < mid.end) {
    const r = splitVma(mm, mid, end);
    if (typeof r === "number") return r;
  }
  mid.flags = newFlags;
  return mid;
}

/**
 * vms_gather_munmap_vmas: splits the VMAs at the ends of the page-aligned [start, end) and
 * returns the VMAs inside it, still in the tree. Fails with -ENOMEM (nothing changed) when
 * unmapping from the middle of one VMA would pass vm.max_map_count, or when a shared PTE table
 * the range cuts cannot be broken (cow-pte.ts).
 */
export function gatherMunmap(mm: Mm, start: number, end: number): Vma[] | number {
  // The tables the range cuts are zapped in part: break COW on them first, all or nothing.
  if (cowPteBreakRange(mm, start, end, true) < 0) return -ENOMEM;
  let i = mm.findVmaIndex(start);
  let first = mm.vmas[i];
  if (first === undefined || first.start >= end) return [];
  if (first.start < start) {
    // Unmapping from the middle of one VMA makes one more VMA.
    if (end < first.end && mm.mapCount >= MAX_MAP_COUNT) return -ENOMEM;
    first = __splitVma(mm, first, start);
    i++;
  }
  const last = mm.vmaLookup(end - 1);
  if (last !== undefined && end < last.end) __splitVma(mm, last, end);
  const doomed: Vma[] = [];
  while (i < mm.vmas.length && mm.vmas[i].start < end) doomed.push(mm.vmas[i++]);
  return doomed;
}

/**
 * vms_complete_munmap_vmas: zaps the gathered VMAs, frees the page tables no VMA needs any
 * more (between the neighbours' ends, free_pgtables) and drops the VMAs.
 */
export function completeMunmap(mm: Mm, doomed: Vma[]): void {
  if (doomed.length === 0) return;
  for (const v of doomed) unmapPageRange(mm, v, v.start, v.end);
  const firstIdx = mm.findVmaIndex(doomed[0].start);
  const floor = firstIdx > 0 ? mm.vmas[firstIdx - 1].end : 0;
  const after = mm.vmas[firstIdx + doomed.length];
  const ceiling = after !== undefined ? after.start : 0;
  for (const v of doomed) mm.removeVma(v);
  freePgtables(
    mm,
    doomed.map((v) => [v.start, v.end]),
    floor,
    ceiling,
  );
  for (const v of doomed) releaseVma(mm, v);
}

/** do_vmi_munmap for a page-aligned range. Returns 0 or -ENOMEM (see gatherMunmap). */
export function doMunmap(mm: Mm, start: number, end: number): number {
  const doomed = gatherMunmap(mm, start, end);
  if (typeof doomed === "number") return doomed;
  completeMunmap(mm, doomed);
  return 0;
}
