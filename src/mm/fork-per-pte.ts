// The per-PTE fork design: copy_pte_range as Linux did it before 6.9 (before folio_pte_batch),
// one entry at a time, each with its own refcount and mapcount update.

import {
  PG_anon,
  PG_anon_exclusive,
  PG_head,
  PG_lru,
  PG_swapbacked,
  PG_tail,
  SECTION_MASK,
} from "../phys/memmap.ts";
import { ENOMEM } from "../uapi.ts";
import type { PteCopyDesign } from "./fork.ts";
import { MM_ANONPAGES, MM_SHMEMPAGES, MM_SWAPENTS, type Mm } from "./mm.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_PRESENT,
  _PAGE_RW,
  _PAGE_SPECIAL,
  entryPfn,
  mkHi,
  mkLo,
  type PageTable,
  pteIndex,
  pteMapped,
} from "./pgtable.ts";
import {
  folioAddNewAnonRmap,
  folioAddRmapPtes,
  folioTryDupAnonRmapPtes,
  GUP_PIN_COUNTING_BIAS,
} from "./rmap.ts";
import { isSwapPte, pteSwpClearExclusive, pteSwpExclusive, swapDuplicate, swapPteSlot } from "./swap.ts";
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
      m.stat.inc(EV.rmap_dup);
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

/**
 * copy_nonpresent_pte for a swap entry spte[k]: the child's entry refers to the same slot, which
 * gains a reference (swap_duplicate), and counts in the child's MM_SWAPENTS. The page is shared
 * from now on, so an exclusive entry loses its exclusive bit in the parent as in the child.
 * Differs from Linux: swap counts have no limit, so this never fails (no -EIO retry with
 * add_swap_count_continuation).
 */
export function copyNonpresentPte(dst: Mm, dpte: PageTable, spte: PageTable, k: number): void {
  const m = dst.machine;
  let lo = spte.lo(k);
  const hi = spte.hi(k);
  if (!isSwapPte(lo, hi)) throw new Error(`copyNonpresentPte: unknown non-present PTE ${lo}`);
  swapDuplicate(m, swapPteSlot(lo, hi));
  if (pteSwpExclusive(lo)) {
    lo = pteSwpClearExclusive(lo);
    spte.set(k, lo, hi);
    m.stat.inc(EV.pte_write);
  }
  dst.rss[MM_SWAPENTS]++;
  dpte.set(k, lo, hi);
  m.stat.inc(EV.pte_write);
}

/** Flags that send a page off the small-anon fast path: a large folio, or not anon. */
const NOT_SMALL_ANON = PG_head | PG_tail;

/**
 * copy_present_pte for a run of entries from spte[k] on (at most `max`), as long as each maps
 * an order-0 anon page that fork may share (in a COW mapping; not exclusive-and-maybe-pinned).
 * Exactly copyPresentPte's work and counts, with the memmap and table words accessed directly:
 * this is the loop that decides how fast vmlab forks. Returns how many entries it copied
 * (0 when spte[k] needs the general path).
 */
export function copySmallAnonPtes(
  dst: Mm,
  src: Mm,
  dpte: PageTable,
  spte: PageTable,
  k: number,
  max: number,
): number {
  const m = dst.machine;
  const mem = m.memmap;
  const se = spte.e;
  const de = dpte.e;
  // folioTryDupAnonRmapPtes refuses an exclusive page of a maybe-pinned folio only then.
  const pinAware = m.cow === "modern" && src.hasPinned;
  let n = 0;
  let wp = 0;
  let pages = 0;
  let used = 0;
  for (; n < max; n++) {
    const w = 2 * (k + n);
    let lo = se[w];
    const hi = se[w + 1];
    if (lo === 0 && hi === 0) continue;
    if (!(lo & _PAGE_PRESENT) || lo & _PAGE_SPECIAL) break;
    const pfn = entryPfn(lo, hi);
    const s = mem.sec(pfn);
    const i = pfn & SECTION_MASK;
    const flags = s.flags[i];
    if ((flags & (PG_anon | NOT_SMALL_ANON)) !== PG_anon) break;
    if (pinAware && flags & PG_anon_exclusive && s.refcount[i] >= GUP_PIN_COUNTING_BIAS) break;
    s.refcount[i]++;
    s.flags[i] = flags & ~PG_anon_exclusive;
    s.mapcount[i]++;
    if (lo & _PAGE_RW) {
      lo = (lo & ~_PAGE_RW) >>> 0;
      se[w] = lo; // ptep_set_wrprotect
      wp++;
    }
    // dst is a fresh table at fork, but a COW-PTE break may copy into a table in use.
    if (de[w] === 0 && de[w + 1] === 0) used++;
    de[w] = (lo & ~_PAGE_ACCESSED) >>> 0;
    de[w + 1] = hi;
    pages++;
  }
  dpte.used += used;
  dst.rss[MM_ANONPAGES] += pages;
  m.stat.inc(EV.pte_read, n);
  m.stat.inc(EV.pte_write, wp + pages);
  m.stat.inc(EV.ref_update, pages);
  m.stat.inc(EV.mapcount_update, pages);
  m.stat.inc(EV.rmap_dup, pages);
  return n;
}

/**
 * copy_pte_range, one entry at a time (order-0 anon runs through copySmallAnonPtes, swap entries
 * through copyNonpresentPte).
 */
export const perPte: PteCopyDesign = {
  name: "per-pte",
  copyPteRange(dst, src, dpte, spte, dstVma, srcVma, addr, end) {
    const cow = isCowMapping(srcVma.flags);
    for (let a = addr; a < end; a += 4096) {
      let k = pteIndex(a);
      if (cow) {
        a += copySmallAnonPtes(dst, src, dpte, spte, k, (end - a) / 4096) * 4096;
        if (a >= end) break;
        k = pteIndex(a);
      }
      const lo = spte.lo(k);
      dst.machine.stat.inc(EV.pte_read);
      if (lo === 0 && spte.hi(k) === 0) continue;
      if (!pteMapped(lo)) {
        copyNonpresentPte(dst, dpte, spte, k);
        continue;
      }
      const r = copyPresentPte(dst, src, dpte, spte, dstVma, srcVma, k, a);
      if (r < 0) return r;
    }
    return 0;
  },
};
