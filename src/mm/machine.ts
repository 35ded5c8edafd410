// The simulated machine: physical memory, the global MM state (zero pages, deferred split
// queue, shmem objects), the THP policy and the event counters. One Machine per run.

import { BuddyAllocator } from "../phys/buddy.ts";
import {
  type MemMap,
  PG_lru,
  PG_partially_mapped,
  PG_reserved,
  PG_table,
  SECTION_SHIFT,
} from "../phys/memmap.ts";
import type { CowPteMode } from "./cow-pte.ts";
import type { GupRefs } from "./gup.ts";
import { LruVec, lruvecAddFolio, lruvecDelFolio } from "./lru.ts";
import { HPAGE_PMD_ORDER, PageTable } from "./pgtable.ts";
import type { ShmemObject } from "./shmem.ts";
import { SwapInfo } from "./swap.ts";
import type { AnonVma } from "./vma.ts";
import { watermarks } from "./vmscan.ts";
import { EV, VmStat } from "./vmstat.ts";

export type ThpGlobal = "always" | "madvise" | "never";
export type ThpPolicy = "always" | "inherit" | "madvise" | "never";

/** /sys/kernel/mm/transparent_hugepage: the global setting and the per-size anon policies. */
export interface ThpConfig {
  enabled: ThpGlobal;
  /** Per anon order 2..9 (hugepages-16kB .. hugepages-2048kB). Missing orders are "never". */
  orders: Partial<Record<number, ThpPolicy>>;
  /** use_zero_page: read faults in a THP-eligible PMD range map the huge zero page. */
  useZeroPage: boolean;
}

/**
 * The COW reuse rule (cow.reuse): "modern" is Linux 6.18 (PageAnonExclusive, refcount-based
 * reuse, unshare faults for R/O pins, pinned pages copied at fork); "legacy" is the rule
 * before 5.8: a write fault reuses a page that only one PTE maps, whoever else holds a
 * reference, and GUP neither unshares nor copies at fork. Legacy leaks (CVE-2020-29374).
 */
export type CowReuse = "modern" | "legacy";

/**
 * How MADV_FREE treats large folios (madvise.free): "split" splits every large folio in the
 * range first, as Linux before 6.10; "batched" marks a folio the range covers whole and that
 * this mm maps exclusively lazyfree without a split, as 6.10 and later (madvise.ts).
 */
export type MadviseFreeDesign = "split" | "batched";

export interface MachineConfig {
  ramBytes: number;
  thp: ThpConfig;
  cow: CowReuse;
  /** Size of the swap device in bytes (0: no swap, as on our machines). */
  swapBytes?: number;
  /** The MADV_FREE design (default "batched", as 6.18). */
  madviseFree?: MadviseFreeDesign;
}

/** Linux 6.18 defaults on our machines: global madvise, 2048kB inherit, other sizes never. */
export function defaultThpConfig(): ThpConfig {
  return { enabled: "madvise", orders: { [HPAGE_PMD_ORDER]: "inherit" }, useZeroPage: true };
}

export class Machine {
  readonly config: MachineConfig;
  readonly buddy: BuddyAllocator;
  readonly memmap: MemMap;
  readonly stat = new VmStat();
  /** The LRU lists (lru.ts). */
  readonly lru = new LruVec();
  /** The shared zero page (ZERO_PAGE(0)): reserved, outside the buddy allocator. */
  readonly zeroPfn: number;
  /** The huge zero folio (order 9), also reserved. */
  readonly hugeZeroPfn: number;
  /** Large folios on the deferred split queue (head pfns, in queueing order). */
  readonly deferredSplit = new Set<number>();
  readonly shmemObjects = new Map<number, ShmemObject>();
  /** Live anon_vmas by id: folio->mapping of an anon folio names one of them. */
  readonly anonVmas = new Map<number, AnonVma>();
  /**
   * References user pages hold for the kernel, by handle: FOLL_PIN pins and FOLL_GET pipe
   * buffers (vmsplice). The audit counts them into refcounts.
   */
  readonly gupRefs = new Map<number, GupRefs>();
  /** The COW reuse rule in force. */
  readonly cow: CowReuse;
  /** The MADV_FREE design in force. */
  readonly madviseFree: MadviseFreeDesign;
  /** The zone watermarks in pages (vmscan.ts watermarks): reclaim starts below `low`. */
  readonly wmark: { min: number; low: number; high: number };
  /** kswapd passes in a row that freed nothing (pgdat->kswapd_failures, vmscan.ts). */
  kswapdFailures = 0;
  /** The swap device (nrSlots 0 when there is none). */
  readonly swap: SwapInfo;
  /**
   * Whether fork shares PTE tables (the cow-pte designs, cow-pte.ts), and how; null when it
   * copies them. Walkers that change entries break COW only when this is set.
   */
  cowPte: CowPteMode | null = null;
  /** huge_anon_orders_always / _madvise / _inherit: the per-size sysfs policy as order masks. */
  readonly hugeAnonOrdersAlways: number;
  readonly hugeAnonOrdersMadvise: number;
  readonly hugeAnonOrdersInherit: number;
  private nextTag = 1;
  private nextId = 1;

  constructor(config: MachineConfig) {
    this.config = config;
    this.cow = config.cow;
    this.madviseFree = config.madviseFree ?? "batched";
    this.swap = new SwapInfo(Math.floor((config.swapBytes ?? 0) / 4096));
    const masks = { always: 0, madvise: 0, inherit: 0, never: 0 };
    for (const [order, policy] of Object.entries(config.thp.orders)) {
      if (policy !== undefined) masks[policy] |= 1 << Number(order);
    }
    this.hugeAnonOrdersAlways = masks.always;
    this.hugeAnonOrdersMadvise = masks.madvise;
    this.hugeAnonOrdersInherit = masks.inherit;
    const nrPages = Math.floor(config.ramBytes / 4096);
    this.wmark = watermarks(nrPages);
    this.buddy = new BuddyAllocator(nrPages);
    this.memmap = this.buddy.memmap;
    // Differs from Linux: the huge zero folio is allocated at boot and never freed, outside RAM.
    const reserved = Math.ceil(nrPages / 2 ** SECTION_SHIFT) * 2 ** SECTION_SHIFT;
    this.zeroPfn = reserved;
    this.hugeZeroPfn = reserved + 512;
    this.memmap.online(reserved);
    this.memmap.prepFolio(this.zeroPfn, 0, PG_reserved);
    this.memmap.prepFolio(this.hugeZeroPfn, HPAGE_PMD_ORDER, PG_reserved);
  }

  /** A fresh content tag (never 0, which means zeroed memory). */
  newTag(): number {
    const t = this.nextTag++;
    if (this.nextTag > 0xffffffff) throw new Error("newTag: 2^32 content tags used");
    return t;
  }

  /** A fresh id for anon_vmas and shmem objects. */
  newId(): number {
    return this.nextId++;
  }

  /**
   * folio_put: drops one reference; the last one frees the folio to the buddy allocator,
   * taking it off the deferred split queue first.
   */
  folioPut(head: number, refs = 1): void {
    const mm = this.memmap;
    const left = mm.addRef(head, -refs);
    this.stat.inc(EV.ref_update);
    if (left > 0) return;
    if (left < 0) throw new Error(`folioPut: pfn ${head} refcount went negative`);
    const order = mm.order(head);
    if (order > 1 && this.deferredSplit.delete(head) && mm.test(head, PG_partially_mapped))
      this.stat.incOrder("nr_anon_partially_mapped", order, -1); // folio_undo_large_rmappable
    if (mm.test(head, PG_lru)) lruvecDelFolio(this, head); // __folio_put: lruvec_del_folio
    mm.clearFolio(head, order);
    this.buddy.free(head, order);
    this.stat.inc(EV.folio_free);
  }

  /**
   * Allocates a folio of 2^order pages from the buddy allocator with PG_* `flags`, refcount 1,
   * its pages zeroed (content tag 0) unless `zero` is false. Returns the head pfn, or -1 when
   * no block of that order is free.
   * With PG_lru in `flags` the folio joins the head of its LRU list at once (folio_add_lru;
   * no per-cpu batches).
   */
  allocFolio(order: number, flags: number, zero = true): number {
    const pfn = this.buddy.alloc(order);
    if (pfn < 0) return -1;
    this.memmap.prepFolio(pfn, order, flags);
    if (flags & PG_lru) lruvecAddFolio(this, pfn);
    this.stat.inc(EV.folio_alloc);
    if (zero) {
      this.memmap.fillTag(pfn, 1 << order, 0);
      this.stat.inc(EV.page_zero, 1 << order);
    }
    return pfn;
  }

  /** pte_alloc_one / pmd_alloc_one: a zeroed page-table page, or null when memory is out. */
  allocTable(level: PageTable["level"]): PageTable | null {
    const pfn = this.buddy.alloc(0);
    if (pfn < 0) return null;
    this.memmap.prepFolio(pfn, 0, PG_table);
    this.memmap.setTag(pfn, 0);
    this.stat.inc(EV.pgtable_alloc);
    return new PageTable(pfn, level);
  }

  /** Frees a page-table page. Precondition: it has no entries left. */
  freeTable(t: PageTable): void {
    if (t.used !== 0)
      throw new Error(`freeTable: ${t.level} table at pfn ${t.pfn} still has ${t.used} entries`);
    this.stat.inc(EV.pgtable_free);
    // A table is not a folio: free its frame without counting folio_free (pgtable_free did).
    this.memmap.addRef(t.pfn, -1);
    this.memmap.clearFolio(t.pfn, 0);
    this.buddy.free(t.pfn, 0);
  }
}
