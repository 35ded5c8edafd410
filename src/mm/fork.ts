// fork (kernel/fork.c dup_mmap, mm/memory.c copy_page_range): the child's address space as a
// copy of the parent's. VMAs are duplicated with their anon_vma links (anon_vma_fork); the
// page tables of VMAs that hold anonymous pages are copied, write-protecting private pages in
// both processes so that the first write to them faults and copies (or reuses).
//
// How the PTEs of one table are copied is a design choice: one file per design implements
// PteCopyDesign (fork-per-pte.ts is Linux before 6.9, fork-batched.ts 6.9 and later).

import { ENOMEM, PMD_SIZE, PUD_SIZE } from "../uapi.ts";
import { type CowPteMode, cowPteShare, cowPteShareable } from "./cow-pte.ts";
import { copyHugePmd } from "./huge-memory.ts";
import type { Mm } from "./mm.ts";
import { vmEnoughMemory } from "./mmap.ts";
import { isPmdLeaf, pmdAlloc, pmdOffset, pteAlloc, pudAlloc } from "./pgalloc.ts";
import { type PageTable, pmdAddrEnd, pmdIndex } from "./pgtable.ts";
import { anonVmaFork } from "./rmap.ts";
import { VM_ACCOUNT, VM_DONTCOPY, VM_WIPEONFORK, Vma } from "./vma.ts";
import { EV } from "./vmstat.ts";

/** A way of copying the PTEs of one page table at fork (copy_pte_range). */
export interface PteCopyDesign {
  readonly name: string;
  /**
   * Set for the COW page-table designs (cow-pte.ts): fork shares each PTE table it may share
   * instead of copying it, and copyPteRange copies only the others.
   */
  readonly sharePteTables?: CowPteMode;
  /**
   * Copies the entries of src's table `spte` for [addr, end) (inside one table and one VMA)
   * into dst's table `dpte`, doing the rmap, refcount and RSS work of copy_present_ptes.
   * Returns 0, or -ENOMEM when a page that had to be copied could not be allocated (entries
   * before it stay copied; the caller tears the child down).
   */
  copyPteRange(
    dst: Mm,
    src: Mm,
    dpte: PageTable,
    spte: PageTable,
    dstVma: Vma,
    srcVma: Vma,
    addr: number,
    end: number,
  ): number;
}

/**
 * vma_needs_copy: only VMAs that may hold anonymous pages (they have an anon_vma) are copied;
 * for the others a fault in the child fills the page tables correctly (shared mappings from the
 * page cache, untouched private ones with zeros).
 */
export function vmaNeedsCopy(srcVma: Vma): boolean {
  return srcVma.anonVma !== null;
}

/**
 * copy_page_range: copies the page tables of srcVma (in src) into dstVma (in dst), PMD by PMD.
 * A huge PMD is copied whole (copyHugePmd) unless its folio may be pinned, in which case it was
 * split and its PTEs are copied. Returns 0 or -ENOMEM.
 */
export function copyPageRange(dst: Mm, src: Mm, dstVma: Vma, srcVma: Vma, design: PteCopyDesign): number {
  if (!vmaNeedsCopy(srcVma)) return 0;
  const end = srcVma.end;
  for (let addr = srcVma.start, next: number; addr < end; addr = next) {
    next = pmdAddrEnd(addr, end);
    const spmd = pmdOffset(src, addr);
    if (spmd === undefined) {
      next = Math.min(end, (Math.floor(addr / PUD_SIZE) + 1) * PUD_SIZE);
      continue;
    }
    const i = pmdIndex(addr);
    if (spmd.none(i)) continue;
    const pud = pudAlloc(dst, addr);
    if (pud === null) return -ENOMEM;
    const dpmd = pmdAlloc(dst, pud, addr);
    if (dpmd === null) return -ENOMEM;
    if (isPmdLeaf(spmd, i)) {
      const r = copyHugePmd(dst, src, dpmd, spmd, i, srcVma, Math.floor(addr / PMD_SIZE) * PMD_SIZE);
      if (r === -ENOMEM) return r;
      if (r === 0) continue;
      // -EAGAIN: the PMD was split because its folio may be pinned; copy the PTEs.
    }
    const base = Math.floor(addr / PMD_SIZE) * PMD_SIZE;
    // Non-null: a present non-leaf PMD entry always has its table.
    const spte = spmd.child(i)!;
    const mode = design.sharePteTables;
    if (mode !== undefined && cowPteShareable(src, srcVma, spte, base)) {
      cowPteShare(dst, src, dpmd, spmd, i, base, mode);
      continue;
    }
    if (spte.cow !== null) throw new Error(`copyPageRange: shared table at ${base} cannot be shared again`);
    const dpte = pteAlloc(dst, dpmd, i);
    if (dpte === null) return -ENOMEM;
    src.machine.stat.inc(EV.ptl_lock, 2); // the source's and the destination's
    const r = design.copyPteRange(dst, src, dpte, spte, dstVma, srcVma, addr, next);
    if (r < 0) return r;
  }
  return 0;
}

/**
 * dup_mmap: fills the empty mm `dst` with copies of src's VMAs and their page tables. A
 * VM_DONTCOPY VMA is left out; a VM_WIPEONFORK VMA is copied empty, with no anon_vma. Each
 * VM_ACCOUNT VMA is charged again. The parent's TLB is flushed once, for the entries made
 * read-only. Returns 0 or -ENOMEM; on failure dst is left for the caller to tear down.
 */
export function dupMmap(dst: Mm, src: Mm, design: PteCopyDesign): number {
  const m = src.machine;
  m.stat.inc(EV.fork);
  let ret = 0;
  for (const vma of src.vmas) {
    if (vma.flags & VM_DONTCOPY) continue;
    if (vma.flags & VM_ACCOUNT && !vmEnoughMemory(src, vma.pages())) {
      ret = -ENOMEM;
      break;
    }
    const tmp = new Vma(vma.start, vma.end, vma.flags, vma.pgoff, null, vma.shmem);
    if (tmp.shmem) tmp.shmem.users++; // get_file
    if (!(vma.flags & VM_WIPEONFORK)) anonVmaFork(m, tmp, vma);
    dst.vmas.push(tmp); // src.vmas is sorted, so appending keeps dst sorted
    tmp.mm = dst;
    if (!(tmp.flags & VM_WIPEONFORK)) {
      ret = copyPageRange(dst, src, tmp, vma, design);
      if (ret < 0) break;
    }
  }
  m.stat.inc(EV.tlb_flush); // flush_tlb_mm(oldmm)
  return ret;
}
