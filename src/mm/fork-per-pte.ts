// The per-PTE fork design: copy_pte_range as Linux did it before 6.9 (before folio_pte_batch),
// one entry at a time, each with its own refcount and mapcount update.

import { PG_anon, PG_lru, PG_swapbacked } from "../phys/memmap.ts";
import { ENOMEM } from "../uapi.ts";
import type { PteCopyDesign } from "./fork.ts";
import { MM_ANONPAGES, MM_SHMEMPAGES, type Mm } from "./mm.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_RW,
  _PAGE_SPECIAL,
  mkHi,
  mkLo,
  type PageTable,
  pteIndex,
  pteMapped,
} from "./pgtable.ts";
import { folioAddNewAnonRmap, folioAddRmapPtes, folioTryDupAnonRmapPtes } from "./rmap.ts";
import { VM_MAYWRITE, VM_SHARED, VM_WRITE, type Vma, vmPageProtLo, vmPageProtNx } from "./vma.ts";
import { EV } from "./vmstat.ts";

/** is_cow_mapping: a private mapping that may become writable. */
export function isCowMapping(flags: number): boolean {
  return (flags & (VM_SHARED | VM_MAYWRITE)) === VM_MAYWRITE;
}

/**
 * copy_present_page: the parent's exclusive anon page may be pinned, so the child gets its own
 * copy now (a new exclusive order-0 page, writable and dirty if the VMA is writable) and the
 * parent's entry is left as it is. Returns 0 or -ENOMEM.
 */
function copyPresentPage(
  dst: Mm,
  dpte: PageTable,
  dstVma: Vma,
  k: number,
  addr: number,
  oldPfn: number,
): number {
  const m = dst.machine;
  const pfn = m.allocFolio(0, PG_swapbacked | PG_lru, false);
  if (pfn < 0) return -ENOMEM;
  m.memmap.setTag(pfn, m.memmap.tag(oldPfn)); // copy_user_highpage
  m.stat.inc(EV.page_copy);
  m.stat.inc(EV.fork_page_copy);
  folioAddNewAnonRmap(dst, dstVma, pfn, 0, addr, false);
  dst.rss[MM_ANONPAGES]++;
  const w = dstVma.flags & VM_WRITE ? _PAGE_RW : 0;
  dpte.set(k, mkLo(pfn, vmPageProtLo(dstVma.flags) | w | _PAGE_DIRTY), mkHi(pfn, vmPageProtNx(dstVma.flags)));
  m.stat.inc(EV.pte_write);
  return 0;
}

/**
 * copy_present_pte for one entry: the child maps the same page, with one more reference and
 * mapping (folio_try_dup_anon_rmap_pte, which clears PageAnonExclusive); in a COW mapping both
 * entries become read-only; the child's entry is old (and clean in a shared mapping). The zero
 * page is shared as it is. A possibly pinned exclusive page is copied instead.
 */
export function copyPresentPte(
  dst: Mm,
  src: Mm,
  dpte: PageTable,
  spte: PageTable,
  dstVma: Vma,
  srcVma: Vma,
  k: number,
  addr: number,
): number {
  const m = dst.machine;
  const mem = m.memmap;
  let lo = spte.lo(k);
  const hi = spte.hi(k);
  if (!(lo & _PAGE_SPECIAL)) {
    const pfn = spte.pfnAt(k);
    const head = mem.folioHead(pfn);
    mem.addRef(head, 1);
    m.stat.inc(EV.ref_update);
    if (mem.test(head, PG_anon)) {
      if (!folioTryDupAnonRmapPtes(dst, src, head, pfn, 1)) {
        mem.addRef(head, -1);
        return copyPresentPage(dst, dpte, dstVma, k, addr, pfn);
      }
      dst.rss[MM_ANONPAGES]++;
    } else {
      folioAddRmapPtes(dst, head, pfn, 1, false); // folio_dup_file_rmap_pte
      dst.rss[MM_SHMEMPAGES]++;
    }
  }
  if (isCowMapping(srcVma.flags) && lo & _PAGE_RW) {
    lo = (lo & ~_PAGE_RW) >>> 0;
    spte.set(k, lo, hi); // ptep_set_wrprotect
    m.stat.inc(EV.pte_write);
  }
  if (srcVma.flags & VM_SHARED) lo = (lo & ~_PAGE_DIRTY) >>> 0;
  dpte.set(k, (lo & ~_PAGE_ACCESSED) >>> 0, hi);
  m.stat.inc(EV.pte_write);
  return 0;
}

/** copy_pte_range, one entry at a time. */
export const perPte: PteCopyDesign = {
  name: "per-pte",
  copyPteRange(dst, src, dpte, spte, dstVma, srcVma, addr, end) {
    for (let a = addr; a < end; a += 4096) {
      const k = pteIndex(a);
      const lo = spte.lo(k);
      if (lo === 0 && spte.hi(k) === 0) continue;
      if (!pteMapped(lo)) throw new Error(`copyPteRange: unknown non-present PTE ${lo}`);
      const r = copyPresentPte(dst, src, dpte, spte, dstVma, srcVma, k, a);
      if (r < 0) return r;
    }
    return 0;
  },
};
