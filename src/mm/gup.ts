// get_user_pages (mm/gup.c): the kernel taking references to user pages, as O_DIRECT, RDMA,
// io_uring fixed buffers (FOLL_PIN) and vmsplice (FOLL_GET) do. The slow path faults pages
// in; the fast path (gup_fast) walks page tables without locks and gives up on anything that
// needs a fault, after which the slow path continues.
//
// The rules that keep pins coherent and private (Linux 5.19+): a R/O pin of a shared anon
// page, or of the zero page for a long-term pin in a COW mapping, first takes an unshare fault
// (gup_must_unshare), so that the pinned page is exclusive to the pinning mm; a writable pin
// first takes a write fault. FOLL_PIN marks the mm MMF_HAS_PINNED, so that fork copies pages
// that may be pinned instead of sharing them.

import { PG_anon, PG_anon_exclusive } from "../phys/memmap.ts";
import { EFAULT, ENOMEM } from "../uapi.ts";
import { isCowMapping } from "./fork-per-pte.ts";
import { VM_FAULT_OOM, VM_FAULT_SIGBUS } from "./huge-memory.ts";
import type { Machine } from "./machine.ts";
import { FAULT_FLAG_UNSHARE, FAULT_FLAG_WRITE, handleMmFault } from "./memory.ts";
import type { Mm } from "./mm.ts";
import { follTouch } from "./mmu.ts";
import { isPmdLeaf, pmdOffset } from "./pgalloc.ts";
import { _PAGE_PRESENT, _PAGE_RW, _PAGE_SPECIAL, pmdIndex, pteIndex } from "./pgtable.ts";
import { GUP_PIN_COUNTING_BIAS } from "./rmap.ts";
import { VM_READ, VM_WRITE, type Vma } from "./vma.ts";
import { EV } from "./vmstat.ts";

export const FOLL_WRITE = 0x01;
export const FOLL_GET = 0x04;
export const FOLL_LONGTERM = 0x100;
export const FOLL_PIN = 0x40000;

/**
 * The references one GUP call took: one page frame per page of the range (the zero page's
 * frame where it was mapped), held until released.
 * Invariant: each pfn that is not a zero page holds GUP_PIN_COUNTING_BIAS (small folio) or 1
 * plus one _pincount (large) of its folio's counts for FOLL_PIN, and 1 reference for FOLL_GET.
 */
export interface GupRefs {
  pid: number;
  flags: number;
  pfns: number[];
  /** Why the call stopped short of the range: 0, EFAULT or ENOMEM (GupResult.errno). */
  errno: number;
}

/** The outcome of a GUP call: the frames referenced, and why it stopped short, if it did. */
export interface GupResult {
  pfns: number[];
  /** 0 when every page was taken, else the errno that stopped it (EFAULT, ENOMEM). */
  errno: number;
}

/**
 * gup_must_unshare: a R/O pin (FOLL_PIN without FOLL_WRITE) must not take a page the mm shares:
 * an anon page that is not PageAnonExclusive, or, for a long-term pin in a COW mapping, a page
 * that is not anon at all (the zero page). `vma` null is the fast path, which cannot tell the
 * mapping and refuses every long-term non-anon page.
 */
export function gupMustUnshare(m: Machine, vma: Vma | null, flags: number, pfn: number): boolean {
  if ((flags & (FOLL_WRITE | FOLL_PIN)) !== FOLL_PIN) return false;
  if (m.cow === "legacy") return false; // before 5.19 nothing was unshared
  const anon = !isZeroPfn(m, pfn) && isAnonPage(m, pfn);
  if (!anon) {
    if (!(flags & FOLL_LONGTERM)) return false;
    return vma === null || isCowMapping(vma.flags);
  }
  return !m.memmap.test(pfn, PG_anon_exclusive);
}

function isAnonPage(m: Machine, pfn: number): boolean {
  return m.memmap.test(m.memmap.folioHead(pfn), PG_anon);
}

/** Whether the zero pages are behind pfn (they are reserved frames, never reference counted). */
function isZeroPfn(m: Machine, pfn: number): boolean {
  return pfn === m.zeroPfn || (pfn >= m.hugeZeroPfn && pfn < m.hugeZeroPfn + 512);
}

/**
 * try_grab_folio: takes the reference FOLL_PIN or FOLL_GET asks for on the folio of pfn.
 * Differs from Linux: the zero pages are never reference counted (Linux exempts them from
 * FOLL_PIN only).
 */
function tryGrabFolio(m: Machine, pfn: number, flags: number): void {
  if (isZeroPfn(m, pfn)) return;
  const mem = m.memmap;
  const head = mem.folioHead(pfn);
  if (flags & FOLL_PIN) {
    if (mem.order(head) > 0) {
      mem.addRef(head, 1);
      mem.addPincount(head, 1);
    } else mem.addRef(head, GUP_PIN_COUNTING_BIAS);
    m.stat.inc(EV.pin);
  } else mem.addRef(head, 1);
  m.stat.inc(EV.ref_update);
}

/** gup_put_folio / unpin_user_page: drops the reference tryGrabFolio took. */
export function gupPutFolio(m: Machine, pfn: number, flags: number): void {
  if (isZeroPfn(m, pfn)) return;
  const mem = m.memmap;
  const head = mem.folioHead(pfn);
  if (flags & FOLL_PIN) {
    m.stat.inc(EV.unpin);
    if (mem.order(head) > 0) {
      mem.addPincount(head, -1);
      m.folioPut(head, 1);
    } else m.folioPut(head, GUP_PIN_COUNTING_BIAS);
  } else m.folioPut(head, 1);
}

/**
 * What the page walk found at addr: a frame, whether its entry is writable, and the page whose
 * PageAnonExclusive speaks for it (the head under a PMD: follow_huge_pmd and
 * gup_fast_pmd_leaf test pmd_page(), as a PMD-mapped THP keeps the flag on its head); or nothing.
 */
function walk(
  mm: Mm,
  addr: number,
): { pfn: number; writable: boolean; special: boolean; exclusivePfn: number } | null {
  const pmd = pmdOffset(mm, addr);
  if (pmd === undefined) return null;
  const i = pmdIndex(addr);
  if (pmd.none(i)) return null;
  const t = isPmdLeaf(pmd, i) ? pmd : pmd.child(i);
  const k = t === pmd ? i : pteIndex(addr);
  if (t === undefined) return null;
  const lo = t.lo(k);
  if (!(lo & _PAGE_PRESENT)) return null;
  const pfn = t.pfnAt(k) + (t === pmd ? pteIndex(addr) : 0);
  const exclusivePfn = t === pmd ? t.pfnAt(k) : pfn;
  return { pfn, writable: (lo & _PAGE_RW) !== 0, special: (lo & _PAGE_SPECIAL) !== 0, exclusivePfn };
}

/**
 * gup_fast: takes pages of [addr, addr + nr pages) from the page tables alone, stopping at the
 * first page that needs the slow path: not present (a swap entry among them: only a fault
 * brings the page back), not writable for FOLL_WRITE, special (the zero pages), or one a R/O pin
 * must unshare. Returns the frames taken.
 */
function gupFast(mm: Mm, addr: number, nr: number, flags: number): number[] {
  const m = mm.machine;
  const pfns: number[] = [];
  for (let k = 0; k < nr; k++) {
    const w = walk(mm, addr + k * 4096);
    if (w === null || w.special || (flags & FOLL_WRITE && !w.writable)) break;
    if (!w.writable && gupMustUnshare(m, null, flags, w.exclusivePfn)) break;
    tryGrabFolio(m, w.pfn, flags);
    m.stat.inc(EV.gup_fast);
    pfns.push(w.pfn);
  }
  return pfns;
}

/**
 * __get_user_pages: takes pages of [addr, addr + nr pages) one by one, faulting each in as
 * needed: a write fault for FOLL_WRITE on a read-only entry, an unshare fault where
 * gupMustUnshare says so, a read fault where nothing is present (do_swap_page for a swap entry). Stops with EFAULT outside a
 * VMA, without the VMA right (check_vma_flags: VM_WRITE for FOLL_WRITE, else VM_READ) or past
 * the end of a shmem object, and with ENOMEM when a fault runs out of memory.
 */
function gupSlow(mm: Mm, addr: number, nr: number, flags: number, pfns: number[]): number {
  const m = mm.machine;
  for (let k = pfns.length; k < nr; k++) {
    const a = addr + k * 4096;
    const vma = mm.vmaLookup(a);
    if (vma === undefined || !(vma.flags & (flags & FOLL_WRITE ? VM_WRITE : VM_READ))) return EFAULT;
    for (let tries = 0; ; tries++) {
      const w = walk(mm, a);
      if (tries > 3)
        throw new Error(
          `gupSlow: faults at ${a.toString(16)} never gave a usable page (${JSON.stringify(w)})`,
        );
      let fault = 0;
      if (w === null) fault = flags & FOLL_WRITE ? FAULT_FLAG_WRITE : 0;
      else if (flags & FOLL_WRITE && !w.writable) fault = FAULT_FLAG_WRITE;
      else if (!w.writable && gupMustUnshare(m, vma, flags, w.exclusivePfn)) {
        fault = FAULT_FLAG_UNSHARE;
        m.stat.inc(EV.gup_unshare);
      } else {
        // FOLL_TOUCH: a write marks the folio dirty (follow_page_pte) or the PMD (touch_pmd).
        follTouch(mm, a, (flags & FOLL_WRITE) !== 0);
        tryGrabFolio(m, w.pfn, flags);
        m.stat.inc(EV.gup_slow);
        pfns.push(w.pfn);
        break;
      }
      const ret = handleMmFault(mm, vma, a, fault);
      if (ret & VM_FAULT_OOM) return ENOMEM;
      if (ret & VM_FAULT_SIGBUS) return EFAULT; // past the end of a shmem object
    }
  }
  return 0;
}

/**
 * get_user_pages / pin_user_pages (and their _fast variants with `fast`): takes FOLL_GET or
 * FOLL_PIN references on the pages covering [addr, addr + nr pages) of mm. A FOLL_PIN marks
 * the mm MMF_HAS_PINNED. Returns the frames taken, in order, and the errno that stopped it
 * short (0 when all were taken); a short result keeps its references.
 */
export function getUserPages(mm: Mm, addr: number, nr: number, flags: number, fast: boolean): GupResult {
  if (flags & FOLL_PIN) mm.hasPinned = true; // mm_set_has_pinned_flag
  const pfns = fast ? gupFast(mm, addr, nr, flags) : [];
  const errno = pfns.length < nr ? gupSlow(mm, addr, nr, flags, pfns) : 0;
  return { pfns, errno };
}
