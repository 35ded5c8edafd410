// The batched fork design: copy_pte_range as Linux does it since 6.9. copy_present_ptes hands
// the PTEs that map consecutive pages of one large folio, with the same bits, to one batch
// (folio_pte_batch): one refcount add, one rmap dup of nr pages, nr write-protects in the parent
// and nr entries set in the child. Order-0 pages, special entries and a possibly pinned folio
// keep the per-PTE path (copyPresentPte), which is Linux's "small folio" fast path too.

import { PG_anon } from "../phys/memmap.ts";
import type { PteCopyDesign } from "./fork.ts";
import { copyNonpresentPte, copyPresentPte, copySmallAnonPtes, isCowMapping } from "./fork-per-pte.ts";
import { MM_ANONPAGES, MM_SHMEMPAGES, type Mm } from "./mm.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_NX_HI,
  _PAGE_RW,
  _PAGE_SOFT_DIRTY,
  _PAGE_SPECIAL,
  LO_FLAGS,
  mkHi,
  mkLo,
  type PageTable,
  pteIndex,
  pteMapped,
} from "./pgtable.ts";
import { folioAddRmapPtes, folioTryDupAnonRmapPtes } from "./rmap.ts";
import { VM_SHARED, type Vma } from "./vma.ts";
import { EV } from "./vmstat.ts";

/**
 * folio_pte_batch (FPB_MERGE_WRITE): how many entries from spte[k] on, at most maxNr, map
 * consecutive pages of the folio at `head` (from pfn on) with the same bits, ignoring the
 * accessed and soft-dirty bits (soft-dirty tracking is off: new VMAs are VM_SOFTDIRTY), the
 * dirty bit when `respectDirty` is false, and the write bit, which is merged: `anyWritable`
 * tells whether one of them was writable. Never crosses the folio, the table or the range.
 */
export function folioPteBatch(
  m: Mm["machine"],
  head: number,
  spte: PageTable,
  k: number,
  pfn: number,
  maxNr: number,
  respectDirty: boolean,
): { nr: number; anyWritable: boolean } {
  const ignore = _PAGE_ACCESSED | _PAGE_SOFT_DIRTY | _PAGE_RW | (respectDirty ? 0 : _PAGE_DIRTY);
  const lo0 = spte.lo(k);
  const want = lo0 & LO_FLAGS & ~ignore;
  const nx = spte.hi(k) & _PAGE_NX_HI;
  const max = Math.min(maxNr, head + (1 << m.memmap.order(head)) - pfn, 512 - k);
  let anyWritable = (lo0 & _PAGE_RW) !== 0;
  let nr = 1;
  for (; nr < max; nr++) {
    const lo = spte.lo(k + nr);
    if (!pteMapped(lo) || (lo & LO_FLAGS & ~ignore) !== want) break;
    if ((spte.hi(k + nr) & _PAGE_NX_HI) !== nx || spte.pfnAt(k + nr) !== pfn + nr) break;
    if (lo & _PAGE_RW) anyWritable = true;
  }
  return { nr, anyWritable };
}

/**
 * copy_present_ptes for the batch starting at spte[k]: returns how many entries it copied, or
 * -ENOMEM. A large folio goes as one batch (dirty respected in a private mapping, where the
 * child keeps it per entry; ignored in a shared one, where the child's entries are clean). If
 * the rmap dup refuses (a PageAnonExclusive page of a folio that may be pinned), the first
 * entry takes the per-PTE path, which copies its page for the child, as the kernel's -EAGAIN
 * retry with a preallocated folio does.
 */
function copyPresentPtes(
  dst: Mm,
  src: Mm,
  dpte: PageTable,
  spte: PageTable,
  dstVma: Vma,
  srcVma: Vma,
  k: number,
  addr: number,
  maxNr: number,
): number {
  const m = dst.machine;
  const mem = m.memmap;
  const lo = spte.lo(k);
  const pfn = spte.pfnAt(k);
  const head = lo & _PAGE_SPECIAL ? -1 : mem.folioHead(pfn);
  if (head < 0 || mem.order(head) === 0 || maxNr === 1)
    return perPteOne(dst, src, dpte, spte, dstVma, srcVma, k, addr);
  const shared = (srcVma.flags & VM_SHARED) !== 0;
  const { nr, anyWritable } = folioPteBatch(m, head, spte, k, pfn, maxNr, !shared);
  m.stat.inc(EV.pte_read, nr - 1); // the caller counted the first
  mem.addRef(head, nr);
  m.stat.inc(EV.ref_update);
  if (mem.test(head, PG_anon)) {
    if (!folioTryDupAnonRmapPtes(dst, src, head, pfn, nr)) {
      mem.addRef(head, -nr);
      m.stat.inc(EV.ref_update);
      return perPteOne(dst, src, dpte, spte, dstVma, srcVma, k, addr);
    }
    dst.rss[MM_ANONPAGES] += nr;
  } else {
    folioAddRmapPtes(dst, head, pfn, nr, false); // folio_dup_file_rmap_ptes
    m.stat.inc(EV.rmap_dup);
    dst.rss[MM_SHMEMPAGES] += nr;
  }
  // __copy_present_ptes: the child's entries all take the first entry's bits, write merged.
  let flags = (lo & LO_FLAGS) | (anyWritable ? _PAGE_RW : 0);
  if (isCowMapping(srcVma.flags) && anyWritable) {
    for (let i = 0; i < nr; i++) spte.set(k + i, (spte.lo(k + i) & ~_PAGE_RW) >>> 0, spte.hi(k + i)); // wrprotect_ptes
    m.stat.inc(EV.pte_write, nr);
    flags &= ~_PAGE_RW;
  }
  if (shared) flags &= ~_PAGE_DIRTY;
  flags &= ~_PAGE_ACCESSED;
  const nx = (spte.hi(k) & _PAGE_NX_HI) !== 0;
  for (let i = 0; i < nr; i++) dpte.set(k + i, mkLo(pfn + i, flags), mkHi(pfn + i, nx)); // set_ptes
  m.stat.inc(EV.pte_write, nr);
  return nr;
}

/** One entry the per-PTE way: returns 1 (entries copied) or -ENOMEM. */
function perPteOne(
  dst: Mm,
  src: Mm,
  dpte: PageTable,
  spte: PageTable,
  dstVma: Vma,
  srcVma: Vma,
  k: number,
  addr: number,
): number {
  const r = copyPresentPte(dst, src, dpte, spte, dstVma, srcVma, k, addr);
  return r < 0 ? r : 1;
}

/** copy_pte_range with folio_pte_batch (Linux 6.9 and later). */
export const batched: PteCopyDesign = {
  name: "batched",
  copyPteRange(dst, src, dpte, spte, dstVma, srcVma, addr, end) {
    const cow = isCowMapping(srcVma.flags);
    for (let a = addr; a < end; ) {
      let k = pteIndex(a);
      if (cow) {
        // Order-0 pages keep their own fast path, as in Linux (!folio_test_large).
        a += copySmallAnonPtes(dst, src, dpte, spte, k, (end - a) / 4096) * 4096;
        if (a >= end) break;
        k = pteIndex(a);
      }
      const lo = spte.lo(k);
      dst.machine.stat.inc(EV.pte_read);
      if (lo === 0 && spte.hi(k) === 0) {
        a += 4096;
        continue;
      }
      if (!pteMapped(lo)) {
        copyNonpresentPte(dst, dpte, spte, k);
        a += 4096;
        continue;
      }
      const nr = copyPresentPtes(dst, src, dpte, spte, dstVma, srcVma, k, a, (end - a) / 4096);
      if (nr < 0) return nr;
      a += nr * 4096;
    }
    return 0;
  },
};
