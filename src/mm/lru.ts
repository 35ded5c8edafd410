// The LRU lists (include/linux/mm_inline.h, mm/swap.c): one lruvec for the machine (no memcg,
// one node) with the classic lists: anon and file, each inactive and active, and unevictable.
// A folio is on the list folio_lru_list names: file when it is not swap-backed (page cache, and
// lazyfree anon folios), active with PG_active, unevictable with PG_unevictable.
//
// Each list is doubly linked through its folios' head pfns, newest at `first` (list head:
// lruvec_add_folio) and oldest at `last` (the tail, where reclaim isolates from). The links live
// in per-section arrays beside the memmap, as struct folio's lru list_head lives in struct page.
// Differs from Linux: no per-cpu folio batches (a folio joins its list at once), no MGLRU
// (our machines run the classic LRU: /sys/kernel/mm/lru_gen is absent).

import {
  PAGES_PER_SECTION,
  PG_active,
  PG_lru,
  PG_swapbacked,
  PG_unevictable,
  SECTION_SHIFT,
} from "../phys/memmap.ts";
import type { Machine } from "./machine.ts";
import { EV } from "./vmstat.ts";

export const LRU_INACTIVE_ANON = 0;
export const LRU_ACTIVE_ANON = 1;
export const LRU_INACTIVE_FILE = 2;
export const LRU_ACTIVE_FILE = 3;
export const LRU_UNEVICTABLE = 4;
export const NR_LRU_LISTS = 5;
export const LRU_NAMES = [
  "inactive_anon",
  "active_anon",
  "inactive_file",
  "active_file",
  "unevictable",
] as const;

/** folio_lru_list: the list a folio with these PG_* flags belongs on. */
export function folioLruList(flags: number): number {
  if (flags & PG_unevictable) return LRU_UNEVICTABLE;
  const base = flags & PG_swapbacked ? LRU_INACTIVE_ANON : LRU_INACTIVE_FILE;
  return flags & PG_active ? base + 1 : base;
}

const NIL = -1;

export class LruVec {
  /** Newest folio of each list (the list head side), or -1. */
  readonly first = new Float64Array(NR_LRU_LISTS).fill(NIL);
  /** Oldest folio of each list (the tail, scanned first), or -1. */
  readonly last = new Float64Array(NR_LRU_LISTS).fill(NIL);
  /** lruvec_lru_size: pages on each list. */
  readonly nrPages = new Float64Array(NR_LRU_LISTS);
  /** Folios on each list. */
  readonly nrFolios = new Float64Array(NR_LRU_LISTS);
  /** Per section: [prev, next] pfn pairs (prev is the newer neighbour), -1 for none. */
  private readonly links: (Int32Array | undefined)[] = [];

  private link(pfn: number): Int32Array {
    const s = pfn >>> SECTION_SHIFT;
    let a = this.links[s];
    if (a === undefined) {
      a = new Int32Array(2 * PAGES_PER_SECTION).fill(NIL);
      this.links[s] = a;
    }
    return a;
  }

  /** The newer neighbour of a listed folio, or -1. */
  prev(pfn: number): number {
    return this.link(pfn)[2 * (pfn & (PAGES_PER_SECTION - 1))];
  }
  /** The older neighbour of a listed folio, or -1. */
  next(pfn: number): number {
    return this.link(pfn)[2 * (pfn & (PAGES_PER_SECTION - 1)) + 1];
  }
  private setPrev(pfn: number, v: number): void {
    this.link(pfn)[2 * (pfn & (PAGES_PER_SECTION - 1))] = v;
  }
  private setNext(pfn: number, v: number): void {
    this.link(pfn)[2 * (pfn & (PAGES_PER_SECTION - 1)) + 1] = v;
  }

  /** list_add: head becomes the newest folio of list `lru`. */
  addFirst(lru: number, head: number, nr: number): void {
    const old = this.first[lru];
    this.setPrev(head, NIL);
    this.setNext(head, old);
    if (old === NIL) this.last[lru] = head;
    else this.setPrev(old, head);
    this.first[lru] = head;
    this.nrPages[lru] += nr;
    this.nrFolios[lru]++;
  }

  /** list_add after `after` (lru_add_split_folio): `head` goes just older than `after`. */
  addAfter(lru: number, after: number, head: number, nr: number): void {
    const nx = this.next(after);
    this.setPrev(head, after);
    this.setNext(head, nx);
    this.setNext(after, head);
    if (nx === NIL) this.last[lru] = head;
    else this.setPrev(nx, head);
    this.nrPages[lru] += nr;
    this.nrFolios[lru]++;
  }

  /** list_del of head from list `lru`. */
  remove(lru: number, head: number, nr: number): void {
    const p = this.prev(head);
    const n = this.next(head);
    if (p === NIL) this.first[lru] = n;
    else this.setNext(p, n);
    if (n === NIL) this.last[lru] = p;
    else this.setPrev(n, p);
    this.setPrev(head, NIL);
    this.setNext(head, NIL);
    this.nrPages[lru] -= nr;
    this.nrFolios[lru]--;
  }

  /** The folios of list `lru`, oldest first (for the audit and reports). */
  folios(lru: number): number[] {
    const out: number[] = [];
    for (let p = this.last[lru]; p !== NIL; p = this.prev(p)) out.push(p);
    return out;
  }
}

/** lruvec_add_folio: puts a PG_lru folio at the head of the list its flags name. */
export function lruvecAddFolio(m: Machine, head: number): void {
  const mem = m.memmap;
  m.lru.addFirst(folioLruList(mem.flags(head)), head, 1 << mem.order(head));
}

/** lruvec_del_folio: takes a folio off its list (its flags must still name that list). */
export function lruvecDelFolio(m: Machine, head: number): void {
  const mem = m.memmap;
  m.lru.remove(folioLruList(mem.flags(head)), head, 1 << mem.order(head));
}

/**
 * Moves a folio on the LRU to the head of the list that `flags` (its new PG_* flags) name,
 * and sets them: the common step of folio_activate, lru_deactivate, lru_lazyfree and putback.
 */
export function lruMove(m: Machine, head: number, flags: number): void {
  const mem = m.memmap;
  if (mem.test(head, PG_lru)) lruvecDelFolio(m, head);
  mem.setFlags(head, flags);
  if (flags & PG_lru) lruvecAddFolio(m, head);
  m.stat.inc(EV.lru_move);
}
