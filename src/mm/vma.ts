// Virtual memory areas: vm_area_struct, its flags, its page protection, and the merge rules.

import { _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_PROTNONE, _PAGE_RW, _PAGE_USER } from "./pgtable.ts";
import type { ShmemObject } from "./shmem.ts";

export const VM_NONE = 0;
export const VM_READ = 0x1;
export const VM_WRITE = 0x2;
export const VM_EXEC = 0x4;
export const VM_SHARED = 0x8;
export const VM_MAYREAD = 0x10;
export const VM_MAYWRITE = 0x20;
export const VM_MAYEXEC = 0x40;
export const VM_MAYSHARE = 0x80;
export const VM_ACCOUNT = 0x00100000;
export const VM_NORESERVE = 0x00200000;
export const VM_SOFTDIRTY = 0x08000000;
export const VM_HUGEPAGE = 0x20000000;
export const VM_NOHUGEPAGE = 0x40000000;
export const VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC;
/** Flags that do not prevent a merge (VM_IGNORE_MERGE). */
export const VM_IGNORE_MERGE = VM_SOFTDIRTY;

/** The smaps VmFlags mnemonics vmlab can set, in show_smap_vma_flags order. */
const MNEMONICS: [number, string][] = [
  [VM_READ, "rd"],
  [VM_WRITE, "wr"],
  [VM_EXEC, "ex"],
  [VM_SHARED, "sh"],
  [VM_MAYREAD, "mr"],
  [VM_MAYWRITE, "mw"],
  [VM_MAYEXEC, "me"],
  [VM_MAYSHARE, "ms"],
  [VM_ACCOUNT, "ac"],
  [VM_NORESERVE, "nr"],
  [VM_SOFTDIRTY, "sd"],
  [VM_HUGEPAGE, "hg"],
  [VM_NOHUGEPAGE, "nh"],
];

/** The smaps "VmFlags:" value for vm_flags. */
export function vmFlagsString(flags: number): string {
  return MNEMONICS.filter(([bit]) => flags & bit)
    .map(([, s]) => s)
    .join(" ");
}

/**
 * The anon_vma of a VMA. Differs from Linux: no rmap tree yet (it comes with fork); the object
 * is kept so that merge rules, which compare anon_vmas, behave as Linux's do.
 */
export class AnonVma {
  /** Number of VMAs using this anon_vma (Linux: the anon_vma_chain entries). */
  vmas = 0;
  constructor(readonly id: number) {}
}

/** vm_area_struct. Invariant: start < end, both page aligned; VMAs of an mm never overlap. */
export class Vma {
  constructor(
    public start: number,
    public end: number,
    public flags: number,
    /** vm_pgoff: for anonymous VMAs start >> PAGE_SHIFT at creation; for shmem the file offset. */
    public pgoff: number,
    public anonVma: AnonVma | null,
    /** vm_file for MAP_SHARED|MAP_ANONYMOUS (shmem_zero_setup), null for private anon. */
    public shmem: ShmemObject | null,
  ) {}

  /** vma_is_anonymous(): no vm_ops, i.e. a private anonymous VMA. */
  isAnonymous(): boolean {
    return this.shmem === null;
  }
  pages(): number {
    return (this.end - this.start) / 4096;
  }
}

/** The low PTE bits of vm_get_page_prot(flags) on x86-64 (protection_map). */
export function vmPageProtLo(flags: number): number {
  if ((flags & VM_ACCESS_FLAGS) === 0) return _PAGE_PROTNONE | _PAGE_ACCESSED;
  // Private writable mappings map read-only (PAGE_COPY): writes fault and go through COW.
  const rw = (flags & (VM_WRITE | VM_SHARED)) === (VM_WRITE | VM_SHARED) ? _PAGE_RW : 0;
  return _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | rw;
}

/** The NX bit of vm_get_page_prot(flags). */
export function vmPageProtNx(flags: number): boolean {
  return (flags & VM_EXEC) === 0;
}

/** calc_vm_prot_bits: PROT_* to VM_* (PROT_READ/WRITE/EXEC map to VM_READ/WRITE/EXEC). */
export function calcVmProtBits(prot: number): number {
  return prot & VM_ACCESS_FLAGS;
}

/**
 * is_mergeable_anon_vma: two VMAs may merge when their anon_vmas are equal, or one side has
 * none and the VMA that would lose its identity is not already shared (Linux requires the
 * vma's anon_vma_chain to be singular; without fork it always is).
 */
export function isMergeableAnonVma(a: AnonVma | null, b: AnonVma | null): boolean {
  return a === null || b === null || a === b;
}

/**
 * can_vma_merge_before/after for VMAs `prev` and `next` that are adjacent (prev.end ===
 * next.start): the same flags (ignoring VM_SOFTDIRTY), the same file, mergeable anon_vmas and
 * contiguous pgoff.
 */
export function canMergeAdjacent(prev: Vma, next: Vma): boolean {
  return (
    prev.end === next.start &&
    ((prev.flags ^ next.flags) & ~VM_IGNORE_MERGE) === 0 &&
    prev.shmem === next.shmem &&
    isMergeableAnonVma(prev.anonVma, next.anonVma) &&
    prev.pgoff + prev.pages() === next.pgoff
  );
}
