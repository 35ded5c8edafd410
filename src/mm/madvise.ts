// madvise (mm/madvise.c): the advice that only changes VMA flags (MADV_NORMAL, MADV_HUGEPAGE,
// MADV_NOHUGEPAGE, MADV_DONTFORK/DOFORK, MADV_WIPEONFORK/KEEPONFORK) and MADV_DONTNEED, which
// zaps. MADV_FREE, COLD, PAGEOUT and POPULATE arrive with reclaim (issue #5).

import {
  addU64,
  EAGAIN,
  EINVAL,
  ENOMEM,
  MADV_DOFORK,
  MADV_DONTFORK,
  MADV_DONTNEED,
  MADV_HUGEPAGE,
  MADV_KEEPONFORK,
  MADV_NOHUGEPAGE,
  MADV_NORMAL,
  MADV_WIPEONFORK,
  PAGE_SIZE,
  pageAlignU64,
} from "../uapi.ts";
import { cowPteBreakRange } from "./cow-pte.ts";
import { unmapPageRange } from "./memory.ts";
import type { Mm } from "./mm.ts";
import { VM_DONTCOPY, VM_HUGEPAGE, VM_NOHUGEPAGE, VM_SHARED, VM_WIPEONFORK, type Vma } from "./vma.ts";
import { vmaModifyFlags } from "./vma-ops.ts";
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
  // A VMA split at either end must not cut a shared PTE table (cow-pte.ts).
  if (cowPteBreakRange(mm, start, end, true) < 0) return -ENOMEM;
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
