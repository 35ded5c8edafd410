// x86-64 4-level page tables: entry encoding, address split, and the tables themselves.
// Our machines run 4-level paging too (no la57: a MAP_FIXED mapping above 2^47 fails there).
//
// A virtual address (48 bits used, user half below 2^47):
//
//   47      39 38      30 29      21 20      12 11         0
//  +----------+----------+----------+----------+------------+
//  | PGD idx  | PUD idx  | PMD idx  | PTE idx  |   offset   |
//  +----------+----------+----------+----------+------------+
//     9 bits     9 bits     9 bits     9 bits     12 bits      (P4D is folded into the PGD)
//
// An entry is 64 bits, kept as two 32-bit words: lo = bits 0..31, hi = bits 32..63.
//
//   63  62    52 51                     12 11 10  9  8  7  6  5  4  3  2  1  0
//  +--+--------+-------------------------+--+--+--+--+--+--+--+--+--+--+--+--+
//  |NX|  ign   |          PFN            |SD|UW|SP|PN|PS| D| A|CD|WT| U| W| P|
//  +--+--------+-------------------------+--+--+--+--+--+--+--+--+--+--+--+--+
//   P  _PAGE_PRESENT      W  _PAGE_RW         U  _PAGE_USER      A  _PAGE_ACCESSED (young)
//   D  _PAGE_DIRTY        PS _PAGE_PSE (leaf at PMD level)
//   PN _PAGE_PROTNONE (bit 8, only meaningful with P clear: a PROT_NONE mapping)
//   SP _PAGE_SPECIAL (bit 9: no struct page behind it, e.g. the zero page)
//   SD _PAGE_SOFT_DIRTY (bit 11)       NX _PAGE_NX (bit 63 = hi bit 31)
//
// The PFN's low 20 bits sit in lo bits 12..31, its high bits in hi bits 0..19.

import { PAGE_SIZE, PMD_SIZE, PUD_SIZE } from "../uapi.ts";
import type { CowPteState } from "./cow-pte.ts";

export const _PAGE_PRESENT = 1 << 0;
export const _PAGE_RW = 1 << 1;
export const _PAGE_USER = 1 << 2;
export const _PAGE_ACCESSED = 1 << 5;
export const _PAGE_DIRTY = 1 << 6;
export const _PAGE_PSE = 1 << 7;
export const _PAGE_PROTNONE = 1 << 8;
export const _PAGE_SPECIAL = 1 << 9;
export const _PAGE_SOFT_DIRTY = 1 << 11;
/** NX lives in the high word. */
export const _PAGE_NX_HI = 1 << 31;
/** The bits an intermediate (table) entry carries: _PAGE_TABLE. */
export const _PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY;

/** The flag bits of an entry's low word (bits 0..11); the rest is pfn. */
export const LO_FLAGS = 0xfff;
const PFN_LO_BITS = 20;

export const PTRS_PER_TABLE = 512;
export const PGDIR_SIZE = 2 ** 39;
export const HPAGE_PMD_NR = 512;
export const HPAGE_PMD_ORDER = 9;

/** Low word of an entry mapping pfn with the given low flag bits. */
export function mkLo(pfn: number, flags: number): number {
  return ((pfn % 2 ** PFN_LO_BITS) * 4096 + (flags & LO_FLAGS)) >>> 0;
}
/** High word of an entry mapping pfn; nx sets _PAGE_NX. */
export function mkHi(pfn: number, nx: boolean): number {
  return (Math.floor(pfn / 2 ** PFN_LO_BITS) | (nx ? _PAGE_NX_HI : 0)) >>> 0;
}
/** The pfn held by an entry's two words. */
export function entryPfn(lo: number, hi: number): number {
  // Below 2^20 pages (4 GiB of RAM) the high word holds no pfn bits: return a small integer
  // then, which keeps the callers' arithmetic on the fast integer path.
  const high = hi & 0xfffff;
  return high === 0 ? lo >>> 12 : (lo >>> 12) + high * 2 ** PFN_LO_BITS;
}

export const pgdIndex = (addr: number): number => Math.floor(addr / PGDIR_SIZE) & 511;
export const pudIndex = (addr: number): number => Math.floor(addr / PUD_SIZE) & 511;
export const pmdIndex = (addr: number): number => Math.floor(addr / PMD_SIZE) & 511;
export const pteIndex = (addr: number): number => Math.floor(addr / PAGE_SIZE) & 511;

/** The next boundary of a region of `size` after addr, clamped to end (pmd_addr_end etc.). */
function addrEnd(addr: number, end: number, size: number): number {
  const boundary = (Math.floor(addr / size) + 1) * size;
  return Math.min(boundary, end);
}
export const pgdAddrEnd = (addr: number, end: number): number => addrEnd(addr, end, PGDIR_SIZE);
export const pudAddrEnd = (addr: number, end: number): number => addrEnd(addr, end, PUD_SIZE);
export const pmdAddrEnd = (addr: number, end: number): number => addrEnd(addr, end, PMD_SIZE);

/**
 * One page-table page: 512 entries as 1024 words. `pfn` is the frame the table lives in (from
 * the buddy allocator, PG_table). Upper levels keep the host object of each child table in
 * `next`, parallel to the entries; at PMD level a huge (PSE) entry keeps its deposited PTE
 * table there (pgtable_trans_huge_deposit).
 * Invariant: an entry is present or none; a present non-leaf entry's pfn is next[i].pfn.
 */
export class PageTable {
  readonly e = new Uint32Array(2 * PTRS_PER_TABLE);
  readonly next: (PageTable | undefined)[] | null;
  /** Number of non-none entries. */
  used = 0;
  /** A PTE table shared by several mms under COW page tables (cow-pte.ts), else null. */
  cow: CowPteState | null = null;
  constructor(
    readonly pfn: number,
    readonly level: "pgd" | "pud" | "pmd" | "pte",
  ) {
    this.next = level === "pte" ? null : new Array<PageTable | undefined>(PTRS_PER_TABLE);
  }

  /** The child table (or, at PMD level under a huge leaf, the deposited table) of entry i. */
  child(i: number): PageTable | undefined {
    return this.next === null ? undefined : this.next[i];
  }
  setChild(i: number, t: PageTable | undefined): void {
    if (this.next === null) throw new Error("setChild: a PTE table has no children");
    this.next[i] = t;
  }

  lo(i: number): number {
    return this.e[2 * i];
  }
  hi(i: number): number {
    return this.e[2 * i + 1];
  }
  /** True when the entry is none (all zero). */
  none(i: number): boolean {
    return this.e[2 * i] === 0 && this.e[2 * i + 1] === 0;
  }
  pfnAt(i: number): number {
    return entryPfn(this.e[2 * i], this.e[2 * i + 1]);
  }
  /** Writes entry i; keeps `used` in step. */
  set(i: number, lo: number, hi: number): void {
    const wasNone = this.e[2 * i] === 0 && this.e[2 * i + 1] === 0;
    const isNone = lo === 0 && hi === 0;
    this.e[2 * i] = lo;
    this.e[2 * i + 1] = hi;
    if (wasNone && !isNone) this.used++;
    else if (!wasNone && isNone) this.used--;
  }
  clear(i: number): void {
    this.set(i, 0, 0);
  }
}

/** True when a PTE maps a page (present, or PROT_NONE which keeps the page mapped). */
export function pteMapped(lo: number): boolean {
  return (lo & (_PAGE_PRESENT | _PAGE_PROTNONE)) !== 0;
}

/**
 * How many entries from t[j] on (at most up to jEnd) map consecutive pages pfn, pfn + 1, ...
 * below `last` (the end of pfn's folio): the run zap and unmap take as one batch. At least 1;
 * t[j] must map pfn.
 */
export function folioRunLength(t: PageTable, j: number, jEnd: number, pfn: number, last: number): number {
  let nr = 1;
  while (j + nr < jEnd && pfn + nr < last && pteMapped(t.lo(j + nr)) && t.pfnAt(j + nr) === pfn + nr) nr++;
  return nr;
}
