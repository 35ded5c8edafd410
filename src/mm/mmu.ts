// The MMU's view: a hardware page walk, which either finds a mapping that allows the access
// (and sets the accessed and dirty bits, as x86 does) or leaves the access to the fault handler.

import { PG_dirty } from "../phys/memmap.ts";
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

/**
 * FOLL_TOUCH on a page GUP found present (follow_huge_pmd's touch_pmd, follow_page_pte): a PMD
 * leaf gets its accessed bit, and on a write its dirty bit; a PTE is left as it is and, on a
 * write, the folio is marked dirty unless the PTE or the folio is dirty already
 * (folio_mark_dirty). Precondition: mmuTranslate(mm, addr, write, false) >= 0.
 */
export function follTouch(mm: Mm, addr: number, write: boolean): void {
  const pmd = mm.pgd.child(pgdIndex(addr))?.child(pudIndex(addr));
  if (pmd === undefined) throw new Error(`follTouch: nothing maps ${addr.toString(16)}`);
  const i = pmdIndex(addr);
  const lo = pmd.lo(i);
  if (lo & _PAGE_PSE) {
    const bits = _PAGE_ACCESSED | (write ? _PAGE_DIRTY : 0);
    if ((lo & bits) !== bits) pmd.set(i, (lo | bits) >>> 0, pmd.hi(i));
    return;
  }
  const pte = pmd.child(i);
  const j = pteIndex(addr);
  if (pte === undefined || !write || pte.lo(j) & _PAGE_DIRTY) return;
  const mem = mm.machine.memmap;
  const head = mem.folioHead(pte.pfnAt(j));
  if (!mem.test(head, PG_dirty)) mem.set(head, PG_dirty);
}

/** The PTE table mapping addr's 2 MiB range, if one is installed (not a huge PMD). */
export function pteTableOf(mm: Mm, addr: number): PageTable | undefined {
  const pmd = mm.pgd.child(pgdIndex(addr))?.child(pudIndex(addr));
  if (pmd === undefined) return undefined;
  const i = pmdIndex(addr);
  return pmd.lo(i) & _PAGE_PSE ? undefined : pmd.child(i);
}
