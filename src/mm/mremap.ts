// mremap (mm/mremap.c): shrinking, growing and moving anonymous mappings, and moving their
// page tables (move_page_tables) without touching the folios they map.
//
// The order of the checks, as Linux 6.18 makes them (docs/errno.md, "mremap"):
//
//   do_mremap           PAGE_ALIGN both lengths
//   check_mremap_params flags, addr alignment, new_len zero or > TASK_SIZE; then, with
//                       MREMAP_FIXED or MREMAP_DONTUNMAP only: new_addr range, alignment,
//                       MAYMOVE, DONTUNMAP resize, overlap, map_count + 2 >= max - 3
//   move only?          FIXED and old_len == new_len: remap_move, VMA by VMA
//   check_prep_vma      no VMA at addr (EFAULT), private old_len 0 (EINVAL), range past the VMA
//   mremap_to           FIXED: unmap the target; shrink; get_unmapped_area; move_vma
//   mremap_at           no resize: addr; shrink: unmap the tail; grow in place, else move_vma
//   move_vma            map_count >= max - 3 (ENOMEM), VM_ACCOUNT charge (ENOMEM), copy_vma,
//                       move_page_tables, then unmap the source (or keep it: DONTUNMAP)
//
// Folios never notice a move: their refcount, mapcounts, PageAnonExclusive, folio->index and
// the RSS counters stay as they are; only page-table entries change place.

import {
  addU64,
  EFAULT,
  EINVAL,
  ENOMEM,
  isErr,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
  PMD_SIZE,
  PUD_SIZE,
  pageAlignU64,
  TASK_SIZE,
} from "../uapi.ts";
import { cowPteBreakRanges } from "./cow-pte.ts";
import { splitHugePmd } from "./huge-memory.ts";
import { MAX_MAP_COUNT, type Mm } from "./mm.ts";
import { getUnmappedArea, vmEnoughMemory } from "./mmap.ts";
import { isPmdLeaf, pmdAlloc, populate, pteAlloc, pudAlloc } from "./pgalloc.ts";
import { type PageTable, pgdIndex, pmdIndex, pteIndex, pteMapped, pudIndex } from "./pgtable.ts";
import { unlinkAnonVmas } from "./rmap.ts";
import { canMergeAdjacent, isMergeableAnonVma, VM_ACCOUNT, VM_MAYSHARE, VM_SHARED, Vma } from "./vma.ts";
import { cloneVma, doMunmap, dupAnonVma, mergeInto } from "./vma-ops.ts";
import { EV } from "./vmstat.ts";

/** The three flags mremap knows. They are its low bits, so any larger value has an unknown one. */
const MREMAP_VALID = MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP;

/** enum mremap_type, decided once the VMA is known. */
type RemapType = "noResize" | "shrink" | "expand";

/** struct vma_remap_struct: one remap as it goes; any field may change on the way. */
interface VmaRemap {
  addr: number;
  oldLen: number;
  newLen: number;
  readonly flags: number;
  newAddr: number;
  vma: Vma | undefined;
  /** |oldLen - newLen| as given (a FIXED shrink keeps it after oldLen shrinks). */
  delta: number;
  remapType: RemapType;
}

/**
 * mremap(2) on anonymous memory: resizes [addr, addr + oldLen) to newLen in place, or moves it
 * (MREMAP_MAYMOVE to an address of the kernel's choosing, MREMAP_FIXED to newAddr, replacing
 * what is there), or with MREMAP_DONTUNMAP moves the pages but leaves the old range mapped and
 * empty. Lengths are rounded up to pages. Returns the address of the mapping or -errno, in
 * Linux 6.18's order of checks (see the top of this file and docs/errno.md). As in Linux, a
 * failure after a first step leaves that step done: a FIXED target already unmapped, a tail
 * already shrunk, the first VMAs of a multi-VMA move already moved.
 * Differs from Linux: no mseal (EPERM), mlock (EAGAIN, populate), RLIMIT_AS, hugetlb,
 * userfaultfd or KSM; and no vm_committed_as counter, so the VM_ACCOUNT juggling of
 * unmap_source_vma (cleared, then set again on what is left) has nothing to do: the flags end as
 * they began.
 */
export function sysMremap(
  mm: Mm,
  addr: number,
  oldLen: number,
  newLen: number,
  flags: number,
  newAddr: number,
): number {
  mm.machine.stat.inc(EV.syscall);
  mm.machine.stat.inc(EV.mmap_lock);
  const vrm: VmaRemap = {
    addr,
    oldLen: pageAlignU64(oldLen),
    newLen: pageAlignU64(newLen),
    flags,
    newAddr,
    vma: undefined,
    delta: 0,
    remapType: "noResize",
  };
  const err = checkMremapParams(mm, vrm);
  if (err < 0) return err;
  // Moving or unmapping entries of a shared PTE table breaks COW on it first, all or nothing:
  // the whole source, and the target's tables that the unmap of MREMAP_FIXED cuts.
  const ranges: [number, number, boolean][] = [[vrm.addr, addU64(vrm.addr, vrm.oldLen), false]];
  if (vrmImpliesNewAddr(vrm)) ranges.push([vrm.newAddr, vrm.newAddr + vrm.newLen, true]);
  if (cowPteBreakRanges(mm, ranges) < 0) return -ENOMEM;
  if (vrmMoveOnly(vrm)) return remapMove(mm, vrm);
  vrm.vma = mm.vmaLookup(vrm.addr);
  const r = checkPrepVma(vrm);
  if (r < 0) return r;
  return vrmImpliesNewAddr(vrm) ? mremapTo(mm, vrm) : mremapAt(mm, vrm);
}

/** vrm_implies_new_addr: MREMAP_FIXED or MREMAP_DONTUNMAP always give the mapping a new place. */
function vrmImpliesNewAddr(vrm: VmaRemap): boolean {
  return (vrm.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) !== 0;
}

/** vrm_move_only: a MREMAP_FIXED move without resize, which may span several VMAs. */
function vrmMoveOnly(vrm: VmaRemap): boolean {
  return (vrm.flags & MREMAP_FIXED) !== 0 && vrm.oldLen === vrm.newLen;
}

/** vrm_overlaps: [addr, addr + oldLen) and [newAddr, newAddr + newLen) intersect. */
function vrmOverlaps(vrm: VmaRemap): boolean {
  return addU64(vrm.addr, vrm.oldLen) > vrm.newAddr && vrm.newAddr + vrm.newLen > vrm.addr;
}

/**
 * check_mremap_params: the checks that need no VMA. Returns 0 or -EINVAL, or -ENOMEM when a
 * FIXED or DONTUNMAP move might pass vm.max_map_count after unmapping (the map_count + 2 check
 * that keeps move_vma from failing once the target is gone).
 */
function checkMremapParams(mm: Mm, vrm: VmaRemap): number {
  const flags = vrm.flags;
  if (flags > MREMAP_VALID) return -EINVAL;
  if (vrm.addr % PAGE_SIZE !== 0) return -EINVAL;
  if (vrm.newLen === 0) return -EINVAL; // a zero old_len is allowed, for shared mappings
  if (vrm.newLen > TASK_SIZE) return -EINVAL;
  if (!vrmImpliesNewAddr(vrm)) return 0; // new_addr is ignored, whatever it holds
  if (vrm.newAddr > TASK_SIZE - vrm.newLen) return -EINVAL;
  if (vrm.newAddr % PAGE_SIZE !== 0) return -EINVAL;
  if (!(flags & MREMAP_MAYMOVE)) return -EINVAL;
  if (flags & MREMAP_DONTUNMAP && vrm.oldLen !== vrm.newLen) return -EINVAL;
  if (vrmOverlaps(vrm)) return -EINVAL;
  if (mm.mapCount + 2 >= MAX_MAP_COUNT - 3) return -ENOMEM;
  return 0;
}

/**
 * remap_move: a FIXED move of every VMA part in [addr, addr + oldLen), each moved as its own
 * remap in address order. The gaps between the source VMAs are kept at the target, and what
 * the target held there stays mapped. Returns the first part's new address, or -EFAULT when
 * the range starts in a hole or holds no VMA, or the first error (the parts before it stay
 * moved).
 * Differs from Linux: none here; vma_multi_allowed refuses only userfaultfd VMAs and files with
 * their own get_unmapped_area, and anonymous and shmem VMAs are neither.
 */
function remapMove(mm: Mm, vrm: VmaRemap): number {
  const start = vrm.addr;
  const end = addU64(start, vrm.oldLen);
  let target = vrm.newAddr;
  let res = -EFAULT;
  let seen = false;
  let lastEnd = 0;
  for (let vma = mm.findVma(start); vma !== undefined && vma.start < end; vma = mm.findVma(lastEnd)) {
    if (!seen && start < vma.start) return -EFAULT; // no gap permitted at the start
    const addr = Math.max(vma.start, start);
    const len = Math.min(end, vma.end) - addr;
    const offset = seen ? vma.start - lastEnd : 0;
    // The iterator resumes after this VMA as it was before the move (vma_iter_invalidate).
    lastEnd = vma.end;
    const part: VmaRemap = {
      addr,
      oldLen: len,
      newLen: len,
      flags: vrm.flags,
      newAddr: target + offset,
      vma,
      delta: 0,
      remapType: "noResize",
    };
    let r = checkPrepVma(part);
    if (r === 0) r = mremapTo(mm, part);
    if (isErr(r)) return r;
    if (!seen) res = r;
    seen = true;
    target = r + len;
  }
  return res;
}

/**
 * check_prep_vma: the checks against the VMA at addr, after which vrm knows its delta and type.
 * Returns 0, -EFAULT (no VMA at addr, or a range that grows or moves past the VMA's end) or
 * -EINVAL (growing a private mapping from a zero old_len, which would only duplicate nothing).
 * A shrink or a no-op without a new address is not checked against the VMA at all.
 */
function checkPrepVma(vrm: VmaRemap): number {
  const vma = vrm.vma;
  if (vma === undefined) return -EFAULT;
  vrm.delta = Math.abs(vrm.oldLen - vrm.newLen);
  vrm.remapType = vrm.delta === 0 ? "noResize" : vrm.oldLen > vrm.newLen ? "shrink" : "expand";
  if (!vrmImpliesNewAddr(vrm)) vrm.newAddr = vrm.addr;
  if (vrm.remapType !== "expand" && !vrmImpliesNewAddr(vrm)) return 0; // vrm_will_map_new
  if (vrm.oldLen === 0 && !(vma.flags & (VM_SHARED | VM_MAYSHARE))) return -EINVAL;
  // A shrink may unmap past the VMA; only what stays must lie inside it.
  const oldLen = vrm.remapType === "shrink" ? vrm.newLen : vrm.oldLen;
  if (oldLen > vma.end - vrm.addr) return -EFAULT;
  // Differs from Linux: the pgoff overflow, VM_DONTEXPAND/VM_PFNMAP, mlock (EAGAIN) and
  // may_expand_vm (RLIMIT_AS, RLIMIT_DATA; unlimited by default) checks cannot fail here.
  return 0;
}

/** mremap_at: resize without a new address: nothing, unmap the tail, or grow (maybe moving). */
function mremapAt(mm: Mm, vrm: VmaRemap): number {
  if (vrm.remapType === "noResize") return vrm.addr;
  if (vrm.remapType === "shrink") {
    const err = doVmiMunmap(mm, vrm.addr + vrm.newLen, vrm.delta);
    return err < 0 ? err : vrm.addr;
  }
  return expandVma(mm, vrm);
}

/**
 * mremap_to: MREMAP_FIXED unmaps the target first; a shrink unmaps the tail next (so a later
 * error leaves both done, as in Linux); then a new area is found and the mapping moved.
 */
function mremapTo(mm: Mm, vrm: VmaRemap): number {
  if (vrm.flags & MREMAP_FIXED) {
    const err = doVmiMunmap(mm, vrm.newAddr, vrm.newLen);
    if (err < 0) return err;
    // Unmapping the target may have split the source's VMA.
    vrm.vma = mm.vmaLookup(vrm.addr);
    if (vrm.vma === undefined) return -EFAULT;
  }
  if (vrm.remapType === "shrink") {
    const err = doVmiMunmap(mm, vrm.addr + vrm.newLen, vrm.delta);
    if (err < 0) return err;
    vrm.vma = mm.vmaLookup(vrm.addr);
    if (vrm.vma === undefined) return -EFAULT;
    vrm.oldLen = vrm.newLen;
  }
  const err = vrmSetNewAddr(mm, vrm);
  if (err < 0) return err;
  return moveVma(mm, vrm);
}

/**
 * expand_vma: grows in place when the range ends at the VMA's end and the space after it is
 * free, else moves with MREMAP_MAYMOVE, else fails with -ENOMEM.
 */
function expandVma(mm: Mm, vrm: VmaRemap): number {
  // Non-null: checkPrepVma found the VMA.
  const vma = vrm.vma!;
  if (vma.end - vrm.addr === vrm.oldLen && vmaExpandable(mm, vma, vrm.delta)) {
    if (!vrmCalcCharge(mm, vrm)) return -ENOMEM;
    vmaMergeExtend(mm, vma, vrm.delta);
    return vrm.addr;
  }
  if (!(vrm.flags & MREMAP_MAYMOVE)) return -ENOMEM;
  const err = vrmSetNewAddr(mm, vrm);
  if (err < 0) return err;
  return moveVma(mm, vrm);
}

/**
 * vma_expandable: no VMA in [vma.end, vma.end + delta), and the grown range passes
 * get_unmapped_area with MAP_FIXED (it ends below TASK_SIZE and starts above mmap_min_addr).
 */
function vmaExpandable(mm: Mm, vma: Vma, delta: number): boolean {
  const end = vma.end + delta;
  const next = mm.findVma(vma.end);
  if (next !== undefined && next.start < end) return false;
  return !isErr(getUnmappedArea(mm, vma.start, end - vma.start, MAP_FIXED));
}

/**
 * vma_merge_extend: grows vma by delta bytes (always a merge of the new range into vma) and
 * absorbs the next VMA when the grown one now touches it and may merge with it (vma_expand).
 */
function vmaMergeExtend(mm: Mm, vma: Vma, delta: number): void {
  const next = mm.vmas[mm.findVmaIndex(vma.start) + 1];
  vma.end += delta;
  if (next !== undefined && canMergeAdjacent(vma, next)) mergeInto(mm, vma, next);
  else mm.machine.stat.inc(EV.vma_merge);
}

/**
 * vrm_calc_charge: a VM_ACCOUNT mapping is charged for its growth (the whole new length with
 * DONTUNMAP, which keeps the old one); false when __vm_enough_memory refuses. A move keeps the
 * charge it has.
 */
function vrmCalcCharge(mm: Mm, vrm: VmaRemap): boolean {
  // Non-null: only called with the VMA found.
  if (!(vrm.vma!.flags & VM_ACCOUNT)) return true;
  const charged = vrm.flags & MREMAP_DONTUNMAP ? vrm.newLen : vrm.delta;
  return vmEnoughMemory(mm, charged / PAGE_SIZE);
}

/**
 * vrm_set_new_addr: the target from get_unmapped_area: newAddr itself with MREMAP_FIXED, a hint
 * with DONTUNMAP alone, else the kernel's choice. Returns 0 or -errno (ENOMEM: no room; EPERM:
 * below mmap_min_addr).
 * Linux passes no map type for a private VMA and finds it has no file, so a length that is a
 * multiple of 2 MiB gets a 2 MiB aligned area (thp_get_unmapped_area); vmlab's getUnmappedArea
 * keys that on MAP_PRIVATE. A shared VMA goes through shmem_get_unmapped_area, which does not
 * align with shmem THP off.
 */
function vrmSetNewAddr(mm: Mm, vrm: VmaRemap): number {
  // Non-null: only called with the VMA found.
  const shared = (vrm.vma!.flags & VM_MAYSHARE) !== 0;
  const flags = (shared ? MAP_SHARED : MAP_PRIVATE) | (vrm.flags & MREMAP_FIXED ? MAP_FIXED : 0);
  const hint = vrmImpliesNewAddr(vrm) ? vrm.newAddr : 0;
  const r = getUnmappedArea(mm, hint, vrm.newLen, flags);
  if (r < 0) return r;
  vrm.newAddr = r;
  return 0;
}

/**
 * move_vma: makes the VMA at the target (copy_vma), moves the page tables of the old range
 * there, and unmaps the old range (or, with DONTUNMAP, keeps it empty). Returns the new address,
 * -ENOMEM at vm.max_map_count - 3 VMAs or when the charge fails (nothing done), or -ENOMEM when
 * page tables ran out mid-move: the entries moved so far go back and the new VMA is unmapped.
 */
function moveVma(mm: Mm, vrm: VmaRemap): number {
  if (mm.mapCount >= MAX_MAP_COUNT - 3) return -ENOMEM; // prep_move_vma
  if (!vrmCalcCharge(mm, vrm)) return -ENOMEM;
  // Non-null: the callers found the VMA.
  let vma = vrm.vma!;
  const pgoff = vma.pgoff + (vrm.addr - vma.start) / PAGE_SIZE;
  const copied = copyVma(mm, vma, vrm.newAddr, vrm.newLen, pgoff);
  vma = copied.vma;
  const newVma = copied.newVma;
  const moved = movePageTables(mm, vma, newVma, vrm.addr, vrm.newAddr, vrm.oldLen);
  if (moved < vrm.oldLen) {
    const back = movePageTables(mm, newVma, vma, vrm.newAddr, vrm.addr, moved);
    if (back < moved) throw new Error("moveVma: page tables could not move back");
    unmapSourceVma(mm, vrm.newAddr, vrm.newLen);
    return -ENOMEM;
  }
  if (vrm.flags & MREMAP_DONTUNMAP) dontunmapComplete(mm, vma, newVma, vrm.addr, vrm.oldLen);
  else unmapSourceVma(mm, vrm.addr, vrm.oldLen);
  return vrm.newAddr;
}

/**
 * copy_vma: the VMA for [addr, addr + len) at the target, with vma's flags, anon_vmas and file
 * and page offset pgoff, so that folio->index still finds every page. A VMA never faulted
 * (private, no anon_vma) takes pgoff = addr / PAGE_SIZE instead, as a new mapping there would,
 * so that it may merge. Merges with the target's neighbours as vma_merge_new_range does;
 * returns the new VMA and the source VMA, which is the merged one when the source itself was a
 * neighbour it merged with.
 */
function copyVma(mm: Mm, vma: Vma, addr: number, len: number, pgoff: number): { vma: Vma; newVma: Vma } {
  const faulted = !(vma.isAnonymous() && vma.anonVma === null);
  if (!faulted) pgoff = addr / PAGE_SIZE;
  const end = addr + len;
  const vmaStart = vma.start;
  const i = mm.findVmaIndex(addr);
  const prev = mm.vmas[i - 1];
  const next = mm.vmas[i];
  if (next !== undefined && next.start < end) throw new Error(`copyVma: target ${addr} is not free`);
  const probe = new Vma(addr, end, vma.flags, pgoff, vma.anonVma, vma.shmem);
  probe.anonVmaChain = vma.anonVmaChain; // read only: the merge rules look at its length
  const withPrev = prev !== undefined && canMergeAdjacent(prev, probe);
  const withNext = next !== undefined && canMergeAdjacent(probe, next);
  let target: Vma;
  if (withPrev && withNext && isMergeableAnonVma(prev, next)) {
    prev.end = end;
    dupAnonVma(prev, vma);
    mergeInto(mm, prev, next);
    target = prev;
  } else if (withPrev) {
    prev.end = end;
    dupAnonVma(prev, vma);
    mm.machine.stat.inc(EV.vma_merge);
    target = prev;
  } else if (withNext) {
    next.start = addr;
    next.pgoff = pgoff;
    dupAnonVma(next, vma);
    mm.machine.stat.inc(EV.vma_merge);
    target = next;
  } else {
    const n = cloneVma(vma, addr, end);
    n.pgoff = pgoff;
    mm.insertVma(n);
    return { vma, newVma: n };
  }
  // The source merged into the target: only a never-faulted VMA, whose pgoff was reset, can.
  if (vmaStart >= target.start && vmaStart < target.end) {
    if (faulted) throw new Error(`copyVma: faulted VMA at ${vmaStart} merged with its own copy`);
    return { vma: target, newVma: target };
  }
  return { vma, newVma: target };
}

/**
 * unmap_source_vma: unmaps the old range once its entries are gone; its page tables go by the
 * free_pgtables rules. A failure is ignored as in Linux: it can only be the zero-length unmap
 * of a shared mapping "duplicated" from old_len 0, which keeps its old range.
 */
function unmapSourceVma(mm: Mm, addr: number, len: number): void {
  doVmiMunmap(mm, addr, len);
}

/**
 * dontunmap_complete: the old VMA stays, empty, with its flags (6.18 clears only VM_LOCKED,
 * which vmlab does not have); when all of it moved, it drops its anon_vma links.
 */
function dontunmapComplete(mm: Mm, vma: Vma, newVma: Vma, addr: number, len: number): void {
  if (newVma !== vma && addr === vma.start && addr + len === vma.end) unlinkAnonVmas(mm.machine, vma);
}

/** do_vmi_munmap: 0, -EINVAL for a bad or empty range, or -ENOMEM at vm.max_map_count. */
function doVmiMunmap(mm: Mm, start: number, len: number): number {
  if (start % PAGE_SIZE !== 0 || start > TASK_SIZE || len > TASK_SIZE - start) return -EINVAL;
  const end = start + pageAlignU64(len);
  if (end === start) return -EINVAL;
  return doMunmap(mm, start, end);
}

// ---------------------------------------------------------------------------------------------
// move_page_tables: the entries of [oldAddr, oldAddr + len) go to newAddr, level by level:
//
//   PUD entry   both sides 1 GiB aligned over a whole 1 GiB: the PMD table moves (move_normal_pud)
//   PMD entry   huge, whole 2 MiB on both sides: the PMD moves with its deposit (move_huge_pmd);
//               huge otherwise: split, then its PTEs move;
//               a table, whole 2 MiB on both sides: the PTE table moves (move_normal_pmd)
//   PTE         one by one, with their bits (move_ptes)
//
// x86-64 has CONFIG_HAVE_MOVE_PMD and CONFIG_HAVE_MOVE_PUD. Tables are allocated at the target
// for every source entry that exists, even an empty PTE table; the source's go when it is
// unmapped. Every allocation here can fail, and then the move stops where it is.

/**
 * move_page_tables: moves the entries of [oldAddr, oldAddr + len) of old to newAddr in nw.
 * Returns how many bytes of the range moved: len, or less when a page table could not be
 * allocated.
 */
function movePageTables(mm: Mm, old: Vma, nw: Vma, oldAddr: number, newAddr: number, len: number): number {
  if (len === 0) return 0;
  const oldEnd = oldAddr + len;
  const origOld = oldAddr;
  if (canRealignAddr(mm, old, nw, oldAddr, newAddr, len)) {
    // try_realign_addr: start at the PMD boundary below, so a whole PTE table can move.
    oldAddr = Math.floor(oldAddr / PMD_SIZE) * PMD_SIZE;
    newAddr = Math.floor(newAddr / PMD_SIZE) * PMD_SIZE;
  }
  for (let extent = 0; oldAddr < oldEnd; oldAddr += extent, newAddr += extent) {
    extent = getExtent(oldAddr, oldEnd, newAddr, PUD_SIZE);
    const oldPud = mm.pgd.child(pgdIndex(oldAddr));
    const k = pudIndex(oldAddr);
    if (oldPud === undefined || oldPud.none(k)) continue;
    const newPud = pudAlloc(mm, newAddr);
    if (newPud === null) break;
    if (extent === PUD_SIZE && moveNormalEntry(mm, oldPud, k, newPud, pudIndex(newAddr))) continue;
    extent = getExtent(oldAddr, oldEnd, newAddr, PMD_SIZE);
    // Non-null: a present PUD entry has its PMD table.
    const oldPmd = oldPud.child(k)!;
    const i = pmdIndex(oldAddr);
    if (oldPmd.none(i)) continue;
    const newPmd = pmdAlloc(mm, newPud, newAddr);
    if (newPmd === null) break;
    const j = pmdIndex(newAddr);
    if (isPmdLeaf(oldPmd, i)) {
      if (extent === PMD_SIZE && moveHugePmd(mm, oldPmd, i, newPmd, j)) continue;
      splitHugePmd(mm, old, oldPmd, i, Math.floor(oldAddr / PMD_SIZE) * PMD_SIZE);
    } else if (extent === PMD_SIZE && moveNormalEntry(mm, oldPmd, i, newPmd, j)) {
      continue;
    }
    const newPte = pteAlloc(mm, newPmd, j);
    if (newPte === null) break;
    // Non-null: a present PMD entry that is not huge has its PTE table.
    movePtes(mm, oldPmd.child(i)!, newPte, oldAddr, newAddr, extent);
  }
  return oldAddr < origOld ? 0 : oldAddr - origOld; // pmc_progress
}

/** get_extent: the bytes from oldAddr to the next `size` boundary on either side, or to oldEnd. */
function getExtent(oldAddr: number, oldEnd: number, newAddr: number, size: number): number {
  const toOld = (Math.floor(oldAddr / size) + 1) * size - oldAddr;
  const toNew = (Math.floor(newAddr / size) + 1) * size - newAddr;
  return Math.min(toOld, oldEnd - oldAddr, toNew);
}

/**
 * can_realign_addr: the range reaches the next PMD boundary, both addresses sit at the same
 * offset in their 2 MiB, and on each side the VMA starts at the address with no VMA below it in
 * that 2 MiB (can_align_down).
 */
function canRealignAddr(mm: Mm, old: Vma, nw: Vma, oldAddr: number, newAddr: number, len: number): boolean {
  const oldAlign = oldAddr % PMD_SIZE;
  if (len < PMD_SIZE - oldAlign) return false;
  if (oldAlign === 0 || oldAlign !== newAddr % PMD_SIZE) return false;
  return canAlignDown(mm, old, oldAddr) && canAlignDown(mm, nw, newAddr);
}

/** can_align_down: vma starts at addr and no VMA intersects [addr aligned down to 2 MiB, addr). */
function canAlignDown(mm: Mm, vma: Vma, addr: number): boolean {
  if (vma.start !== addr) return false;
  const v = mm.findVma(Math.floor(addr / PMD_SIZE) * PMD_SIZE);
  return v === undefined || v.start >= vma.start;
}

/**
 * move_normal_pmd / move_normal_pud: moves the table behind entry i of `from` to the empty
 * entry j of `to`, entries untouched. False (nothing done) when entry j is in use.
 * Differs from Linux: a PUD entry moved is counted as a pmd_write (vmstat has no pud_write).
 */
function moveNormalEntry(mm: Mm, from: PageTable, i: number, to: PageTable, j: number): boolean {
  if (!to.none(j)) return false;
  // Non-null: callers pass a present entry that is not a huge leaf.
  const table = from.child(i)!;
  from.clear(i);
  from.setChild(i, undefined);
  populate(to, j, table);
  mm.machine.stat.inc(EV.pmd_write);
  mm.machine.stat.inc(EV.tlb_flush); // flush_tlb_range over the old PMD or PUD range
  return true;
}

/**
 * move_huge_pmd: moves the huge PMD entry i of `from` (a PMD-mapped THP or the huge zero page)
 * with its deposited table to the empty entry j of `to`. False when entry j is in use.
 */
function moveHugePmd(mm: Mm, from: PageTable, i: number, to: PageTable, j: number): boolean {
  if (!to.none(j)) return false;
  const deposit = from.child(i);
  to.set(j, from.lo(i), from.hi(i));
  to.setChild(j, deposit); // pgtable_trans_huge_withdraw + deposit
  from.clear(i);
  from.setChild(i, undefined);
  mm.machine.stat.inc(EV.pmd_write);
  mm.machine.stat.inc(EV.tlb_flush); // the entry was present: flush_pmd_tlb_range
  return true;
}

/**
 * move_ptes: moves the PTEs of [oldAddr, oldAddr + extent) (one table on each side) with their
 * bits unchanged, and flushes the old range once if any was present. The target PTEs are none.
 * Swap entries move as they are: their slot, its count and MM_SWAPENTS stay (one mm).
 * Linux batches the PTEs of one large folio (mremap_folio_pte_batch), which writes the same
 * entries; the soft-dirty bit it would set is not configured on our machines.
 */
function movePtes(
  mm: Mm,
  from: PageTable,
  to: PageTable,
  oldAddr: number,
  newAddr: number,
  extent: number,
): void {
  const m = mm.machine;
  const nr = extent / PAGE_SIZE;
  const j0 = pteIndex(oldAddr);
  const k0 = pteIndex(newAddr);
  let moved = 0;
  let flush = false;
  for (let n = 0; n < nr; n++) {
    const lo = from.lo(j0 + n);
    const hi = from.hi(j0 + n);
    if (lo === 0 && hi === 0) continue;
    if (!to.none(k0 + n)) throw new Error(`movePtes: target PTE at ${newAddr + n * PAGE_SIZE} in use`);
    if (pteMapped(lo)) flush = true;
    from.clear(j0 + n);
    to.set(k0 + n, lo, hi);
    moved++;
  }
  m.stat.inc(EV.pte_write, moved);
  if (flush) m.stat.inc(EV.tlb_flush);
}
