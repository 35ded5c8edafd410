// madvise (mm/madvise.c): MADV_NORMAL, MADV_HUGEPAGE and MADV_NOHUGEPAGE. The other advice
// arrives with reclaim.

import {
  addU64,
  EAGAIN,
  EINVAL,
  ENOMEM,
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MADV_NORMAL,
  PAGE_SIZE,
  pageAlignU64,
} from "../uapi.ts";
import type { Mm } from "./mm.ts";
import { VM_HUGEPAGE, VM_NOHUGEPAGE } from "./vma.ts";
import { vmaModifyFlags } from "./vma-ops.ts";
import { EV } from "./vmstat.ts";

/** madvise_behavior_valid for the advice vmlab models. */
function behaviorValid(advice: number): boolean {
  return advice === MADV_NORMAL || advice === MADV_HUGEPAGE || advice === MADV_NOHUGEPAGE;
}

/**
 * do_madvise: applies advice to every VMA part of [start, start + len). Errors: EINVAL for an
 * unknown advice, an unaligned start or an overflowing range; ENOMEM when part of the range is
 * unmapped (reported after the mapped parts were advised), or when a split passes
 * vm.max_map_count. A zero length succeeds.
 */
export function sysMadvise(mm: Mm, start: number, len: number, advice: number): number {
  mm.machine.stat.inc(EV.syscall);
  if (!behaviorValid(advice)) return -EINVAL;
  if (start % PAGE_SIZE !== 0) return -EINVAL;
  const aligned = pageAlignU64(len);
  if (len !== 0 && aligned === 0) return -EINVAL;
  const end = addU64(start, aligned);
  if (end < start) return -EINVAL;
  if (end === start) return 0;
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
    let flags = vma.flags;
    if (advice === MADV_HUGEPAGE) flags = (flags & ~VM_NOHUGEPAGE) | VM_HUGEPAGE;
    else if (advice === MADV_NOHUGEPAGE) flags = (flags & ~VM_HUGEPAGE) | VM_NOHUGEPAGE;
    if (flags !== vma.flags) {
      // madvise_update_vma: a split failing at vm.max_map_count is reported as EAGAIN.
      const r = vmaModifyFlags(mm, vma, from, to, flags);
      if (typeof r === "number") return r === -ENOMEM ? -EAGAIN : r;
    }
    addr = to;
  }
  return unmapped ? -ENOMEM : 0;
}
