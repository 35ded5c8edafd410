// The MMU's view: a hardware page walk, which either finds a mapping that allows the access
// (and sets the accessed and dirty bits, as x86 does) or leaves the access to the fault handler.

import type { Mm } from "./mm.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_PRESENT,
  _PAGE_PSE,
  _PAGE_RW,
  type PageTable,
  pgdIndex,
  pmdIndex,
  pteIndex,
  pudIndex,
} from "./pgtable.ts";

/**
 * Translates addr for a read or a write. Returns the pfn when a present entry with the needed
 * permission maps it, else -1 (the access faults). With `touch`, sets _PAGE_ACCESSED, and
 * _PAGE_DIRTY on a write, in the leaf entry.
 */
export function mmuTranslate(mm: Mm, addr: number, write: boolean, touch: boolean): number {
  const pmd = mm.pgd.child(pgdIndex(addr))?.child(pudIndex(addr));
  if (pmd === undefined) return -1;
  const i = pmdIndex(addr);
  let t = pmd;
  let j = i;
  let sub = 0;
  if ((pmd.lo(i) & _PAGE_PSE) !== 0) {
    sub = pteIndex(addr);
  } else {
    const pte = pmd.child(i);
    if (pte === undefined) return -1;
    if (write && (pmd.lo(i) & _PAGE_RW) === 0) return -1; // a shared PTE table (cow-pte.ts)
    t = pte;
    j = pteIndex(addr);
  }
  const lo = t.lo(j);
  if ((lo & _PAGE_PRESENT) === 0 || (write && (lo & _PAGE_RW) === 0)) return -1;
  if (touch) {
    const bits = _PAGE_ACCESSED | (write ? _PAGE_DIRTY : 0);
    if ((lo & bits) !== bits) t.set(j, (lo | bits) >>> 0, t.hi(j));
  }
  return t.pfnAt(j) + sub;
}

/** The PTE table mapping addr's 2 MiB range, if one is installed (not a huge PMD). */
export function pteTableOf(mm: Mm, addr: number): PageTable | undefined {
  const pmd = mm.pgd.child(pgdIndex(addr))?.child(pudIndex(addr));
  if (pmd === undefined) return undefined;
  const i = pmdIndex(addr);
  return pmd.lo(i) & _PAGE_PSE ? undefined : pmd.child(i);
}
