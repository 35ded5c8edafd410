// Virtual memory areas: vm_area_struct, its flags, its page protection, and the merge rules.

import type { Mm } from "./mm.ts";
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
/** MADV_DONTFORK: the VMA is not copied at fork. */
export const VM_DONTCOPY = 0x00020000;
export const VM_ACCOUNT = 0x00100000;
export const VM_NORESERVE = 0x00200000;
/** MADV_WIPEONFORK: the child gets this VMA empty (zero-filled on fault). */
export const VM_WIPEONFORK = 0x02000000;
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
  [VM_DONTCOPY, "dc"],
  [VM_ACCOUNT, "ac"],
  [VM_NORESERVE, "nr"],
  [VM_WIPEONFORK, "wf"],
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
 * struct anon_vma: a node of the reverse-map hierarchy of anonymous memory (mm/rmap.c). A new
 * anonymous VMA gets a root anon_vma; at fork each child VMA is linked to every anon_vma of its
 * parent VMA (so rmap finds pages the child still shares) and gets a child anon_vma of its own,
 * where the pages it copies go. A folio points at the anon_vma it was first mapped through
 * (folio->mapping); walking that anon_vma's VMAs finds every mapping of the folio.
 */
export class AnonVma {
  /** The root of this hierarchy (itself for a root). */
  root: AnonVma;
  /** The anon_vma this one was forked from (itself for a root). */
  parent: AnonVma;
  /** Number of anon_vmas whose parent is this one (num_children). */
  numChildren = 0;
  /** Number of VMAs whose vma->anon_vma is this one (num_active_vmas). */
  numActiveVmas = 0;
  /**
   * The VMAs linked to this anon_vma through an anon_vma_chain (the interval tree rb_root).
   * Invariant: exactly the VMAs whose anonVmaChain contains this anon_vma.
   */
  readonly vmas = new Set<Vma>();
  constructor(
    readonly id: number,
    parent: AnonVma | null,
  ) {
    this.parent = parent ?? this;
    this.root = parent === null ? this : parent.root;
  }
}

/** vm_area_struct. Invariant: start < end, both page aligned; VMAs of an mm never overlap. */
export class Vma {
  /** The mm this VMA belongs to (vm_mm), set when it is inserted. */
  mm: Mm | null = null;
  /**
   * The anon_vma_chain list: every anon_vma this VMA is linked to, newest first.
   * Invariant: empty exactly when anonVma is null; contains anonVma and every ancestor of each
   * anon_vma in it.
   */
  anonVmaChain: AnonVma[] = [];
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
  /** linear_page_index: the page offset of addr in the VMA's object (anon_vma or file). */
  linearPageIndex(addr: number): number {
    return this.pgoff + (addr - this.start) / 4096;
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
 * vma_had_uncowed_parents: the VMA has an anon_vma and is linked to more than its own (it was
 * forked and may still share pages with its parent's VMA).
 */
export function vmaHadUncowedParents(vma: Vma): boolean {
  return vma.anonVma !== null && vma.anonVmaChain.length > 1;
}

/**
 * is_mergeable_anon_vma: two VMAs may merge when their anon_vmas are equal, or when one side
 * has none and the side that has one was never forked (its chain is singular), so that its
 * anon_vma can be shared with the other.
 */
export function isMergeableAnonVma(a: Vma, b: Vma): boolean {
  if (a.anonVma === b.anonVma) return true;
  if (a.anonVma === null) return !vmaHadUncowedParents(b);
  if (b.anonVma === null) return !vmaHadUncowedParents(a);
  return false;
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
    isMergeableAnonVma(prev, next) &&
    prev.pgoff + prev.pages() === next.pgoff
  );
}
