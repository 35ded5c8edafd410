// Allocating and freeing page tables of an mm (pud_alloc, pmd_alloc, __pte_alloc,
// free_pgd_range), with mm_pgtables_bytes kept in step (the VmPTE of /proc/PID/status).

import { PMD_SIZE, PUD_SIZE } from "../uapi.ts";
import type { Mm } from "./mm.ts";
import {
  _PAGE_PSE,
  _PAGE_TABLE,
  mkHi,
  mkLo,
  type PageTable,
  PGDIR_SIZE,
  pgdAddrEnd,
  pgdIndex,
  pmdAddrEnd,
  pmdIndex,
  pudAddrEnd,
  pudIndex,
} from "./pgtable.ts";

/** Installs `child` as the table behind entry i of `parent` (pgd_populate, pmd_populate...). */
export function populate(parent: PageTable, i: number, child: PageTable): void {
  parent.set(i, mkLo(child.pfn, _PAGE_TABLE), mkHi(child.pfn, false));
  parent.setChild(i, child);
}

/** The PUD table covering addr, allocated if missing (pud_alloc). Null when memory is out. */
export function pudAlloc(mm: Mm, addr: number): PageTable | null {
  const i = pgdIndex(addr);
  let pud = mm.pgd.child(i);
  if (pud === undefined) {
    const t = mm.machine.allocTable("pud");
    if (t === null) return null;
    populate(mm.pgd, i, t);
    mm.pgtablesBytes += 4096;
    pud = t;
  }
  return pud;
}

/** The PMD table covering addr under `pud`, allocated if missing (pmd_alloc). */
export function pmdAlloc(mm: Mm, pud: PageTable, addr: number): PageTable | null {
  const i = pudIndex(addr);
  let pmd = pud.child(i);
  if (pmd === undefined) {
    const t = mm.machine.allocTable("pmd");
    if (t === null) return null;
    populate(pud, i, t);
    mm.pgtablesBytes += 4096;
    pmd = t;
  }
  return pmd;
}

/**
 * __pte_alloc: the PTE table behind PMD entry i, allocated if the entry is none. Returns null
 * when memory is out. Precondition: entry i is not a huge (PSE) leaf.
 */
export function pteAlloc(mm: Mm, pmd: PageTable, i: number): PageTable | null {
  const pte = pmd.child(i);
  if (pte !== undefined && !isPmdLeaf(pmd, i)) return pte;
  if (!pmd.none(i)) throw new Error("pteAlloc: PMD entry is a huge leaf");
  const t = mm.machine.allocTable("pte");
  if (t === null) return null;
  populate(pmd, i, t);
  mm.pgtablesBytes += 4096;
  return t;
}

/** True when PMD entry i is a huge leaf (pmd_trans_huge / PROT_NONE huge). */
export function isPmdLeaf(pmd: PageTable, i: number): boolean {
  return (pmd.lo(i) & _PAGE_PSE) !== 0;
}

/** The PMD table covering addr, if the walk reaches one (pmd_offset without allocating). */
export function pmdOffset(mm: Mm, addr: number): PageTable | undefined {
  return mm.pgd.child(pgdIndex(addr))?.child(pudIndex(addr));
}

/**
 * walk_pmd_range's skeleton: calls fn for each PMD entry of [start, end) that is not none, with
 * the part [addr, next) of the range it covers. A missing PMD table skips its whole 1 GiB.
 */
export function forEachPmd(
  mm: Mm,
  start: number,
  end: number,
  fn: (pmd: PageTable, i: number, addr: number, next: number) => void,
): void {
  for (let addr = start, next: number; addr < end; addr = next) {
    next = pmdAddrEnd(addr, end);
    const pmd = pmdOffset(mm, addr);
    if (pmd === undefined) {
      next = Math.min(end, (Math.floor(addr / PUD_SIZE) + 1) * PUD_SIZE);
      continue;
    }
    const i = pmdIndex(addr);
    if (!pmd.none(i)) fn(pmd, i, addr, next);
  }
}

/** a - 1 > b - 1 in unsigned long arithmetic, where 0 stands for 2^64 (USER_PGTABLES_CEILING). */
function pastCeiling(end: number, ceiling: number): boolean {
  return ceiling !== 0 && end - 1 > ceiling - 1;
}

/**
 * free_pgd_range: frees the page tables covering [addr, end) that lie entirely between floor
 * and ceiling (0 = no ceiling), level by level as mm/memory.c does. The range must hold no
 * mappings any more (unmap first).
 */
export function freePgdRange(mm: Mm, addr: number, end: number, floor: number, ceiling: number): void {
  addr = Math.floor(addr / PMD_SIZE) * PMD_SIZE;
  if (addr < floor) addr += PMD_SIZE;
  if (ceiling !== 0) {
    ceiling = Math.floor(ceiling / PMD_SIZE) * PMD_SIZE;
    if (ceiling === 0) return;
  }
  if (pastCeiling(end, ceiling)) end -= PMD_SIZE;
  if (addr > end - 1) return;
  for (let next: number; addr !== end; addr = next) {
    next = pgdAddrEnd(addr, end);
    const i = pgdIndex(addr);
    const pud = mm.pgd.child(i);
    if (pud === undefined) continue;
    freePudRange(mm, pud, addr, next, floor, ceiling);
    // free_p4d_range with the p4d folded: the PUD table goes when its PGDIR range is clear.
    const start = Math.floor(addr / PGDIR_SIZE) * PGDIR_SIZE;
    if (start < floor) continue;
    if (ceiling !== 0 && Math.floor(ceiling / PGDIR_SIZE) * PGDIR_SIZE === 0) continue;
    if (pastCeiling(next, ceiling === 0 ? 0 : Math.floor(ceiling / PGDIR_SIZE) * PGDIR_SIZE)) continue;
    freeTableAt(mm, mm.pgd, i);
  }
}

function freePudRange(
  mm: Mm,
  pud: PageTable,
  addr: number,
  end: number,
  floor: number,
  ceiling: number,
): void {
  for (let next: number; addr !== end; addr = next) {
    next = pudAddrEnd(addr, end);
    const i = pudIndex(addr);
    const pmd = pud.child(i);
    if (pmd === undefined) continue;
    freePmdRange(mm, pmd, addr, next);
    // The PMD table goes when its whole PUD range lies within [floor, ceiling).
    const start = Math.floor(addr / PUD_SIZE) * PUD_SIZE;
    if (start < floor) continue;
    const ceil = ceiling === 0 ? 0 : Math.floor(ceiling / PUD_SIZE) * PUD_SIZE;
    if (ceiling !== 0 && ceil === 0) continue;
    if (pastCeiling(next, ceil)) continue;
    freeTableAt(mm, pud, i);
  }
}

/** free_pmd_range's loop: frees every PTE table in [addr, end) (free_pte_range). */
function freePmdRange(mm: Mm, pmd: PageTable, addr: number, end: number): void {
  for (let next: number; addr !== end; addr = next) {
    next = pmdAddrEnd(addr, end);
    const i = pmdIndex(addr);
    if (pmd.none(i)) continue;
    if (isPmdLeaf(pmd, i)) throw new Error(`freePmdRange: huge PMD still mapped at ${addr}`);
    freeTableAt(mm, pmd, i);
  }
}

/**
 * Frees the PTE table behind PMD entry i when it maps nothing: the table a fault allocated up
 * front that Linux would never have installed (a shmem fault that fails only preallocates one,
 * __do_fault's prealloc_pte). Returns whether it was freed.
 */
export function pteFreeIfEmpty(mm: Mm, pmd: PageTable, i: number): boolean {
  const t = pmd.child(i);
  if (t === undefined || isPmdLeaf(pmd, i) || t.used !== 0 || t.cow !== null) return false;
  freeTableAt(mm, pmd, i);
  return true;
}

/** Clears entry i of parent and frees the table behind it. */
function freeTableAt(mm: Mm, parent: PageTable, i: number): void {
  const t = parent.child(i);
  if (t === undefined) throw new Error(`freeTableAt: no table behind entry ${i}`);
  if (t.cow !== null) throw new Error(`freeTableAt: table pfn ${t.pfn} is shared (zap drops it first)`);
  parent.clear(i);
  parent.setChild(i, undefined);
  mm.machine.freeTable(t);
  mm.pgtablesBytes -= 4096;
}
