// mprotect (mm/mprotect.c): change the protection of a range, VMA by VMA, then the entries.

import { PG_anon_exclusive } from "../phys/memmap.ts";
import {
  addU64,
  EACCES,
  EINVAL,
  ENOMEM,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_EXEC,
  PROT_GROWSDOWN,
  PROT_GROWSUP,
  PROT_READ,
  PROT_SEM,
  PROT_WRITE,
  pageAlignU64,
} from "../uapi.ts";
import { cowPteBreakRange } from "./cow-pte.ts";
import { changeHugePmd, splitHugePmd } from "./huge-memory.ts";
import type { Mm } from "./mm.ts";
import { vmEnoughMemory } from "./mmap.ts";
import { isPmdLeaf, pmdOffset } from "./pgalloc.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_NX_HI,
  _PAGE_PRESENT,
  _PAGE_PROTNONE,
  _PAGE_RW,
  _PAGE_SOFT_DIRTY,
  _PAGE_SPECIAL,
  _PAGE_USER,
  type PageTable,
  pmdAddrEnd,
  pmdIndex,
  pteIndex,
  pteMapped,
} from "./pgtable.ts";
import {
  calcVmProtBits,
  VM_ACCESS_FLAGS,
  VM_ACCOUNT,
  VM_NORESERVE,
  VM_SHARED,
  VM_WRITE,
  type Vma,
  vmPageProtLo,
  vmPageProtNx,
} from "./vma.ts";
import { vmaModifyFlags } from "./vma-ops.ts";
import { EV } from "./vmstat.ts";

/**
 * do_mprotect_pkey: applies prot to every VMA of [start, start + len), in order. Errors, in
 * Linux's order: EINVAL (both GROWS flags, unaligned start, unknown prot bits), ENOMEM (overflow,
 * or a hole in the range, found after the VMAs before it were already changed), EACCES (no
 * VM_MAY* right). A zero length succeeds.
 */
export function sysMprotect(mm: Mm, start: number, len: number, prot: number): number {
  mm.machine.stat.inc(EV.syscall);
  mm.machine.stat.inc(EV.mmap_lock);
  const grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP);
  prot &= ~(PROT_GROWSDOWN | PROT_GROWSUP);
  if (grows === (PROT_GROWSDOWN | PROT_GROWSUP)) return -EINVAL;
  if (start % PAGE_SIZE !== 0) return -EINVAL;
  if (len === 0) return 0;
  len = pageAlignU64(len);
  const end = addU64(start, len);
  if (end <= start) return -ENOMEM;
  if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM)) return -EINVAL;
  let vma = mm.findVma(start);
  if (vma === undefined || vma.start >= end) return -ENOMEM;
  // No VMA here has VM_GROWSDOWN or VM_GROWSUP, so either GROWS flag is refused.
  if (grows & PROT_GROWSDOWN) return -EINVAL;
  if (vma.start > start) return -ENOMEM;
  if (grows & PROT_GROWSUP) return -EINVAL;
  // change_pte_range rewrites entries: break COW on every shared table first, all or nothing.
  if (cowPteBreakRange(mm, start, end, false) < 0) return -ENOMEM;
  for (let tmp = start; tmp < end; ) {
    if (vma === undefined || vma.start >= end) return -ENOMEM;
    if (vma.start > tmp) return -ENOMEM;
    const newFlags = calcVmProtBits(prot) | (vma.flags & ~VM_ACCESS_FLAGS);
    if (newFlags & ~(newFlags >> 4) & VM_ACCESS_FLAGS) return -EACCES;
    const stop = Math.min(vma.end, end);
    const r = mprotectFixup(mm, vma, tmp, stop, newFlags);
    if (r < 0) return r;
    tmp = stop;
    vma = mm.findVma(tmp);
  }
  return 0;
}

/**
 * mprotect_fixup: gives [start, end) of vma the flags newFlags: VM_ACCOUNT is gained when a
 * private mapping first becomes writable and dropped when a never-faulted anonymous one stops
 * being writable; the VMA is merged or split; then the page-table entries follow.
 */
function mprotectFixup(mm: Mm, vma: Vma, start: number, end: number, newFlags: number): number {
  const old = vma.flags;
  if (newFlags === old) return 0;
  if (newFlags & VM_WRITE) {
    if (!(old & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE))) {
      if (!vmEnoughMemory(mm, (end - start) / PAGE_SIZE)) return -ENOMEM;
      newFlags |= VM_ACCOUNT;
    }
  } else if (old & VM_ACCOUNT && vma.isAnonymous() && vma.anonVma === null) {
    newFlags &= ~VM_ACCOUNT;
  }
  const r = vmaModifyFlags(mm, vma, start, end, newFlags);
  if (typeof r === "number") return r;
  changeProtection(mm, r, start, end);
  return 0;
}

/**
 * change_protection: rewrites the entries of [start, end) for vma's current protection,
 * keeping pfn, accessed, dirty and special bits (pte_modify). Where the VMA is writable, a
 * private page becomes writable at once only when it is PageAnonExclusive
 * (can_change_pte_writable); a shared mapping's prot is writable already.
 */
export function changeProtection(mm: Mm, vma: Vma, start: number, end: number): void {
  const m = mm.machine;
  let changed = 0;
  for (let addr = start, next: number; addr < end; addr = next) {
    next = pmdAddrEnd(addr, end);
    const pmd = pmdOffset(mm, addr);
    if (pmd === undefined) continue;
    const i = pmdIndex(addr);
    if (pmd.none(i)) continue;
    if (isPmdLeaf(pmd, i)) {
      if (next - addr === PMD_SIZE) {
        changeHugePmd(mm, vma, pmd, i);
        changed++;
        continue;
      }
      splitHugePmd(mm, vma, pmd, i, Math.floor(addr / PMD_SIZE) * PMD_SIZE);
    }
    const pte = pmd.child(i);
    if (pte !== undefined) changed += changePteRange(mm, vma, pte, addr, next);
  }
  if (changed > 0) m.stat.inc(EV.tlb_flush);
}

const PROT_BITS = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_PROTNONE;
const KEEP_BITS = _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_SPECIAL | _PAGE_SOFT_DIRTY;

/**
 * change_pte_range: returns the number of entries rewritten. A swap entry stays as it is (Linux
 * rewrites only migration, device-private and uffd-wp entries).
 */
function changePteRange(mm: Mm, vma: Vma, pte: PageTable, addr: number, end: number): number {
  const m = mm.machine;
  const prot = vmPageProtLo(vma.flags) & PROT_BITS;
  const nx = vmPageProtNx(vma.flags) ? _PAGE_NX_HI : 0;
  const tryWrite = (vma.flags & (VM_WRITE | VM_SHARED)) === VM_WRITE;
  let n = 0;
  m.stat.inc(EV.ptl_lock);
  m.stat.inc(EV.pte_read, (end - addr) / PAGE_SIZE);
  for (let j = pteIndex(addr), jEnd = j + (end - addr) / PAGE_SIZE; j < jEnd; j++) {
    const lo = pte.lo(j);
    if (lo === 0 && pte.hi(j) === 0) continue;
    // A swap entry keeps its bits: the protection applies when a fault maps the page again.
    if (!pteMapped(lo)) continue;
    let nlo = ((lo & ~0xfff) | (lo & KEEP_BITS) | prot) >>> 0;
    if (tryWrite && !(lo & _PAGE_SPECIAL) && m.memmap.test(pte.pfnAt(j), PG_anon_exclusive)) {
      nlo = (nlo | _PAGE_RW) >>> 0;
    }
    const nhi = ((pte.hi(j) & ~_PAGE_NX_HI) | nx) >>> 0;
    if (nlo !== lo || nhi !== pte.hi(j)) {
      pte.set(j, nlo, nhi);
      m.stat.inc(EV.pte_write);
      n++;
    }
  }
  return n;
}
