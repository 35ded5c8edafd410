// Compares vmlab's whole state with the reference model: the layout of every process (which
// pages are mapped, with which protection) and the content every page would read, found
// without faulting anything in.

import type { Kernel } from "../mm/kernel.ts";
import type { Mm } from "../mm/mm.ts";
import { _PAGE_PSE, pgdIndex, pmdIndex, pteIndex, pteMapped, pudIndex } from "../mm/pgtable.ts";
import { isSwapPte, swapEntryContent, swapPteSlot } from "../mm/swap.ts";
import { PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE } from "../uapi.ts";
import type { RefModel } from "./reference.ts";

/**
 * The content tag a read of addr would return, without side effects: the mapped page's tag, a
 * swapped-out page's (from the swap cache or its slot), else the shmem page cache's, else 0 (an
 * untouched private page reads zeros). Null outside every VMA.
 */
export function peekContent(mm: Mm, addr: number): number | null {
  const vma = mm.vmaLookup(addr);
  if (vma === undefined) return null;
  const m = mm.machine;
  const pmd = mm.pgd.child(pgdIndex(addr))?.child(pudIndex(addr));
  if (pmd !== undefined && !pmd.none(pmdIndex(addr))) {
    const i = pmdIndex(addr);
    if (pmd.lo(i) & _PAGE_PSE) return m.memmap.tag(pmd.pfnAt(i) + pteIndex(addr));
    const pte = pmd.child(i);
    const j = pteIndex(addr);
    if (pte !== undefined && pteMapped(pte.lo(j))) return m.memmap.tag(pte.pfnAt(j));
    if (pte !== undefined && isSwapPte(pte.lo(j), pte.hi(j)))
      return swapEntryContent(m, swapPteSlot(pte.lo(j), pte.hi(j)));
  }
  if (vma.shmem !== null) {
    const pfn = vma.shmem.pages.get(vma.pgoff + (addr - vma.start) / PAGE_SIZE);
    return pfn === undefined ? 0 : m.memmap.tag(pfn);
  }
  return 0;
}

/** Throws "reference: ..." when any process's layout or content differs from the model's. */
export function compareWithReference(k: Kernel, ref: RefModel): void {
  for (const pid of k.pids()) {
    const mm = k.mm(pid);
    const want = ref.layout(pid);
    let w = 0;
    for (const vma of mm.vmas) {
      for (let a = vma.start; a < vma.end; a += PAGE_SIZE, w++) {
        const vpn = a / PAGE_SIZE;
        const prot = vma.flags & (PROT_READ | PROT_WRITE | PROT_EXEC);
        if (w >= want.length || want[w][0] !== vpn) {
          throw new Error(`reference: pid ${pid} maps ${a.toString(16)}, the model does not`);
        }
        if (want[w][1] !== prot) {
          throw new Error(
            `reference: pid ${pid} page ${a.toString(16)} has prot ${prot}, the model ${want[w][1]}`,
          );
        }
        ref.observe(pid, a, peekContent(mm, a));
      }
    }
    if (w !== want.length) {
      throw new Error(
        `reference: pid ${pid}: the model maps page ${(want[w][0] * PAGE_SIZE).toString(16)}, vmlab does not`,
      );
    }
  }
}
