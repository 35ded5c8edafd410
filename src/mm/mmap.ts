// mmap and munmap for anonymous memory (mm/mmap.c, mm/vma.c, arch/x86/kernel/sys_x86_64.c).

import {
  EEXIST,
  EINVAL,
  ENOMEM,
  EPERM,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_GROWSDOWN,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MAP_TYPE,
  PAGE_SIZE,
  PMD_SIZE,
  pageAlignU64,
  TASK_SIZE,
} from "../uapi.ts";
import { VM_FAULT_OOM } from "./huge-memory.ts";
import { FAULT_FLAG_WRITE, handleMmFault } from "./memory.ts";
import { MAX_MAP_COUNT, type Mm } from "./mm.ts";
import { mmuTranslate } from "./mmu.ts";
import { ShmemObject } from "./shmem.ts";
import {
  calcVmProtBits,
  canMergeAdjacent,
  isMergeableAnonVma,
  VM_ACCESS_FLAGS,
  VM_ACCOUNT,
  VM_MAYEXEC,
  VM_MAYREAD,
  VM_MAYSHARE,
  VM_MAYWRITE,
  VM_NORESERVE,
  VM_SHARED,
  VM_WRITE,
  Vma,
} from "./vma.ts";
import { completeMunmap, doMunmap, gatherMunmap, mergeInto } from "./vma-ops.ts";
import { EV } from "./vmstat.ts";

/** vm.mmap_min_addr default (CONFIG_DEFAULT_MMAP_MIN_ADDR on x86). */
export const MMAP_MIN_ADDR = 65536;

/**
 * unmapped_area_topdown: the highest address below mmap_base where `len` bytes fit between
 * VMAs, aligned down to `align` (a power of two >= PAGE_SIZE); the gap searched must hold
 * len + pad bytes. Returns -ENOMEM when nothing fits.
 */
function unmappedAreaTopdown(mm: Mm, len: number, pad: number, align: number): number {
  const v = mm.vmas;
  let gapEnd = mm.mmapBase;
  let k = mm.findVmaIndex(gapEnd); // the first VMA ending above mmap_base may start below it
  if (k < v.length && v[k].start < gapEnd) gapEnd = v[k].start;
  for (k--; ; k--) {
    const gapStart = k >= 0 ? Math.max(v[k].end, MMAP_MIN_ADDR) : MMAP_MIN_ADDR;
    if (gapEnd - gapStart >= len + pad) return Math.floor((gapEnd - len) / align) * align;
    if (k < 0) return -ENOMEM;
    gapEnd = v[k].start;
  }
}

/**
 * __get_unmapped_area for anonymous mappings: MAP_FIXED takes addr as given; a free hint is
 * honoured as it is; otherwise search top-down, 2 MiB aligned for private mappings whose length
 * is a multiple of 2 MiB (thp_get_unmapped_area), falling back to an unaligned search. The
 * result is checked against TASK_SIZE, alignment and mmap_min_addr (security_mmap_addr).
 */
export function getUnmappedArea(mm: Mm, addr: number, len: number, flags: number): number {
  if (len > TASK_SIZE) return -ENOMEM;
  if (!(flags & MAP_FIXED)) {
    addr = findArea(mm, addr, len, flags);
    if (addr < 0) return addr;
  }
  if (addr > TASK_SIZE - len) return -ENOMEM;
  if (addr % PAGE_SIZE !== 0) return -EINVAL;
  if (addr < MMAP_MIN_ADDR) return -EPERM; // cap_mmap_addr: the process lacks CAP_SYS_RAWIO
  return addr;
}

/** arch_get_unmapped_area_topdown (and thp_get_unmapped_area) for a non-fixed mapping. */
function findArea(mm: Mm, hint: number, len: number, flags: number): number {
  if (hint !== 0) {
    const vma = mm.findVma(hint);
    if (TASK_SIZE - len >= hint && (vma === undefined || hint + len <= vma.start)) return hint;
  }
  if (hint === 0 && (flags & MAP_TYPE) === MAP_PRIVATE && len % PMD_SIZE === 0) {
    const a = unmappedAreaTopdown(mm, len, PMD_SIZE, PMD_SIZE);
    if (a >= 0) return a;
  }
  const a = unmappedAreaTopdown(mm, len, 0, PAGE_SIZE);
  // arch_get_unmapped_area_topdown falls back to the bottom-up search of the legacy layout.
  return a >= 0 ? a : unmappedArea(mm, len, TASK_UNMAPPED_BASE, TASK_SIZE);
}

/** TASK_UNMAPPED_BASE on x86-64: where the legacy bottom-up layout starts (no randomisation). */
const TASK_UNMAPPED_BASE = Math.ceil(TASK_SIZE / 3 / PAGE_SIZE) * PAGE_SIZE;

/** unmapped_area: the lowest address in [low, high) where len bytes fit between VMAs. */
function unmappedArea(mm: Mm, len: number, low: number, high: number): number {
  const v = mm.vmas;
  let gapStart = low;
  for (let k = mm.findVmaIndex(low); ; k++) {
    const gapEnd = k < v.length ? Math.min(v[k].start, high) : high;
    if (gapEnd - gapStart >= len) return gapStart;
    if (k >= v.length || gapEnd >= high) return -ENOMEM;
    gapStart = Math.max(gapStart, v[k].end);
  }
}

/** round_hint_to_min: a hint is page aligned down, and raised to mmap_min_addr. */
function roundHintToMin(hint: number): number {
  hint = Math.floor(hint / PAGE_SIZE) * PAGE_SIZE;
  return hint !== 0 && hint < MMAP_MIN_ADDR ? MMAP_MIN_ADDR : hint;
}

/**
 * __vm_enough_memory with vm.overcommit_memory = 0 (OVERCOMMIT_GUESS): a single request may not
 * exceed total RAM plus swap.
 */
export function vmEnoughMemory(mm: Mm, pages: number): boolean {
  return pages <= mm.machine.buddy.nrPages + mm.machine.swap.nrSlots;
}

/**
 * do_mmap for MAP_ANONYMOUS: checks the arguments in Linux's order, picks the address, then
 * mmap_region. Returns the address or -errno (docs/errno.md lists every case).
 * Differs from Linux: only anonymous memory, so MAP_ANONYMOUS is implied; MAP_DROPPABLE is
 * not modelled and fails with EINVAL.
 */
export function doMmap(mm: Mm, addr: number, len: number, prot: number, flags: number): number {
  mm.machine.stat.inc(EV.syscall);
  mm.machine.stat.inc(EV.mmap_lock);
  if (len === 0) return -EINVAL;
  if (flags & MAP_FIXED_NOREPLACE) flags |= MAP_FIXED; // force MAP_FIXED handling
  if (!(flags & MAP_FIXED)) addr = roundHintToMin(addr);
  len = pageAlignU64(len);
  if (len === 0) return -ENOMEM;
  if (mm.mapCount > MAX_MAP_COUNT) return -ENOMEM;
  addr = getUnmappedArea(mm, addr, len, flags);
  if (addr < 0) return addr;
  const end = addr + len;
  if (flags & MAP_FIXED_NOREPLACE) {
    const v = mm.findVma(addr);
    if (v !== undefined && v.start < end) return -EEXIST;
  }
  const type = flags & MAP_TYPE;
  if (type === MAP_SHARED) {
    if (flags & MAP_GROWSDOWN) return -EINVAL;
  } else if (type !== MAP_PRIVATE) {
    return -EINVAL; // MAP_SHARED_VALIDATE has no meaning without a file
  }
  const shared = type === MAP_SHARED;
  // VM_SOFTDIRTY is not set: the kernels on our machines lack CONFIG_MEM_SOFT_DIRTY (no "sd"
  // in smaps), so vmlab shows the same VmFlags.
  let vmFlags = calcVmProtBits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC;
  if (shared) vmFlags |= VM_SHARED | VM_MAYSHARE;
  if (flags & MAP_NORESERVE) vmFlags |= VM_NORESERVE; // the overcommit heuristic honours it
  const err = mmapRegion(mm, addr, end, vmFlags);
  if (err < 0) return err;
  if (flags & MAP_POPULATE) mmPopulate(mm, addr, end);
  return addr;
}

/**
 * mmap_region: gathers (splits) what MAP_FIXED covers, charges commit for a private writable
 * mapping (VM_ACCOUNT), unmaps the old range, charges a shared one (shmem_acct_size), then
 * extends a mergeable neighbour (vma_merge_new_range) or inserts a new VMA. As in Linux, a
 * failed charge leaves the old range split (private) or unmapped (shared).
 */
function mmapRegion(mm: Mm, addr: number, end: number, vmFlags: number): number {
  const m = mm.machine;
  const pages = (end - addr) / PAGE_SIZE;
  const doomed = gatherMunmap(mm, addr, end);
  if (typeof doomed === "number") return doomed;
  const shared = (vmFlags & VM_SHARED) !== 0;
  if (!shared && (vmFlags & (VM_WRITE | VM_NORESERVE)) === VM_WRITE) {
    // Only the pages not already charged to the VMAs being replaced are charged again.
    let accounted = 0;
    for (const v of doomed) if (v.flags & VM_ACCOUNT) accounted += v.pages();
    if (!vmEnoughMemory(mm, pages - accounted)) return -ENOMEM;
    vmFlags |= VM_ACCOUNT;
  }
  completeMunmap(mm, doomed);
  if (shared) {
    if (!(vmFlags & VM_NORESERVE) && !vmEnoughMemory(mm, pages)) return -ENOMEM;
    const obj = new ShmemObject(m.newId(), pages);
    m.shmemObjects.set(obj.id, obj);
    obj.users = 1;
    mm.insertVma(new Vma(addr, end, vmFlags, 0, null, obj));
    return 0;
  }
  const vma = new Vma(addr, end, vmFlags, addr / PAGE_SIZE, null, null);
  const i = mm.findVmaIndex(addr);
  const prev = mm.vmas[i - 1];
  const next = mm.vmas[i];
  const withPrev = prev !== undefined && canMergeAdjacent(prev, vma);
  const withNext = next !== undefined && canMergeAdjacent(vma, next);
  if (withPrev && withNext && isMergeableAnonVma(prev, next)) {
    prev.end = end; // prev grows over the new range, then absorbs next
    mergeInto(mm, prev, next);
    return 0;
  }
  if (withPrev) {
    prev.end = end;
    m.stat.inc(EV.vma_merge);
    return 0;
  }
  if (withNext) {
    next.start = addr;
    next.pgoff = vma.pgoff;
    m.stat.inc(EV.vma_merge);
    return 0;
  }
  mm.insertVma(vma);
  return 0;
}

/**
 * __mm_populate / populate_vma_page_range: faults in every page of [start, end) as GUP does,
 * with write faults for private writable VMAs and read faults otherwise. Stops quietly at a
 * hole, an inaccessible VMA or VM_FAULT_OOM, as MAP_POPULATE ignores errors.
 */
export function mmPopulate(mm: Mm, start: number, end: number): void {
  for (let addr = start; addr < end; ) {
    const vma = mm.vmaLookup(addr);
    if (vma === undefined || (vma.flags & VM_ACCESS_FLAGS) === 0) return;
    const write = (vma.flags & (VM_WRITE | VM_SHARED)) === VM_WRITE;
    const stop = Math.min(end, vma.end);
    for (; addr < stop; addr += PAGE_SIZE) {
      if (mmuTranslate(mm, addr, write, false) >= 0) continue;
      if (handleMmFault(mm, vma, addr, write ? FAULT_FLAG_WRITE : 0) & VM_FAULT_OOM) return;
    }
  }
}

/**
 * munmap: unmaps [addr, addr + len). Errors: EINVAL for an unaligned addr, a zero length or a
 * range past TASK_SIZE; ENOMEM when splitting would pass vm.max_map_count.
 */
export function sysMunmap(mm: Mm, addr: number, len: number): number {
  mm.machine.stat.inc(EV.syscall);
  mm.machine.stat.inc(EV.mmap_lock);
  if (addr % PAGE_SIZE !== 0 || addr > TASK_SIZE || len > TASK_SIZE - addr) return -EINVAL;
  len = pageAlignU64(len);
  if (len === 0) return -EINVAL;
  return doMunmap(mm, addr, addr + len);
}
