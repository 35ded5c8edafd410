// The COW conformance matrix (issue #3, item 7): every kind of private anonymous backing against
// every operation that must keep private memory private and pinned memory coherent. Each cell
// asserts what Linux 6.18's rules give, read from the kernel source:
//
//   mm/memory.c       do_wp_page: a PageAnonExclusive page is reused; otherwise
//                     wp_can_reuse_anon_folio: a small folio only at refcount 1, a large one only
//                     when its large mapcount > 1, it is not maybe-mapped-shared and every
//                     reference is a mapping (__wp_can_reuse_large_anon_folio); anything else is
//                     copied, 4 KiB at a time (wp_page_copy). FAULT_FLAG_UNSHARE does the same
//                     but leaves the entry read-only.
//   mm/rmap.c         folio_try_dup_anon_rmap_*: fork clears PageAnonExclusive, except on a
//                     folio that may be pinned in an MMF_HAS_PINNED mm, which fails (-EBUSY) so
//                     that copy_present_page gives the child its own copy.
//   mm/gup.c          gup_must_unshare: a R/O FOLL_PIN of an anon page that is not
//                     PageAnonExclusive (the head page's flag for a PMD mapping) takes an unshare
//                     fault first; FOLL_GET (vmsplice) never unshares and never sets
//                     MMF_HAS_PINNED.
//   mm/huge_memory.c  copy_huge_pmd shares the PMD unless the folio may be pinned (then the
//                     parent's PMD is split and its PTEs copied); do_huge_pmd_wp_page reuses an
//                     exclusive THP or one with refcount 1, else splits this mm's PMD only and
//                     falls back to the PTE path.
//   mm/mprotect.c     can_change_pte_writable / can_change_pmd_writable: mprotect(RW) maps only
//                     a PageAnonExclusive page writable.
//
// Content is followed by tags: every write stores a fresh tag per page, reads and pins return
// the tags the pages hold now. audit() runs after every step.

import { describe, expect, it } from "vitest";
import { audit } from "../src/check/audit.ts";
import { Kernel } from "../src/mm/kernel.ts";
import type { CowReuse, ThpConfig } from "../src/mm/machine.ts";
import type { GlobalEvent } from "../src/mm/vmstat.ts";
import { type PageInfo, pageDump } from "../src/report/proc.ts";
import {
  MADV_DONTFORK,
  MADV_HUGEPAGE,
  MADV_WIPEONFORK,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_READ,
  PROT_WRITE,
} from "../src/uapi.ts";

const P = PAGE_SIZE;
const KiB = 1024;
const MiB = 2 ** 20;
const RW = PROT_READ | PROT_WRITE;
const PRIV_FIXED = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
/** 2 MiB aligned and free in every test process. */
const BASE = 0x7f0000000000;
/** Where the mremap backing moves the upper half of its THP to. */
const ELSEWHERE = BASE + 8 * MiB;

// ---------------------------------------------------------------------------------------------
// The world: one kernel, with every step audited.

/** What a backing built: the probe page the cell watches and every range the backing maps. */
interface Layout {
  probe: number;
  ranges: [start: number, len: number][];
}

/** How a write or unshare fault resolved, by the cow_copy and cow_reuse counters. */
type Cow = "copy" | "reuse" | "none";

class World {
  readonly k: Kernel;

  constructor(cow: CowReuse, orders: ThpConfig["orders"]) {
    this.k = new Kernel({ ramBytes: 64 * MiB, thp: { enabled: "always", useZeroPage: true, orders }, cow });
  }

  /** Runs one step and audits the whole machine after it, naming the step on failure. */
  step<T>(what: string, f: () => T): T {
    const r = f();
    try {
      audit(this.k);
    } catch (e) {
      throw new Error(`after ${what}: ${(e as Error).message}`);
    }
    return r;
  }

  process(): number {
    const pid = this.step("createProcess", () => this.k.createProcess());
    expect(pid).toBeGreaterThan(0);
    return pid;
  }

  mmap(pid: number, addr: number, len: number): void {
    expect(this.step(`mmap ${hex(addr)}`, () => this.k.mmap(pid, addr, len, RW, PRIV_FIXED))).toBe(addr);
  }

  munmap(pid: number, addr: number, len: number): void {
    expect(this.step(`munmap ${hex(addr)}`, () => this.k.munmap(pid, addr, len))).toBe(0);
  }

  mprotect(pid: number, addr: number, len: number, prot: number): void {
    expect(this.step(`mprotect ${hex(addr)} ${prot}`, () => this.k.mprotect(pid, addr, len, prot))).toBe(0);
  }

  /** Writes [addr, addr + len) and returns the tag the first page got. */
  write(pid: number, addr: number, len = P): number {
    const r = this.step(`write ${pid} ${hex(addr)}`, () => this.k.write(pid, addr, len));
    expect(r.signal, `write by ${pid} at ${hex(addr)}`).toBeNull();
    expect(r.oom).toBe(false);
    expect(r.pages).toBe(len / P);
    return r.firstTag;
  }

  /** The tag the page at addr holds, as pid reads it. */
  read(pid: number, addr: number): number {
    const r = this.step(`read ${pid} ${hex(addr)}`, () => this.k.read(pid, addr, P));
    expect(r.signal, `read by ${pid} at ${hex(addr)}`).toBeNull();
    return r.tags[0];
  }

  fork(pid: number): number {
    const child = this.step(`fork ${pid}`, () => this.k.fork(pid));
    expect(child).toBeGreaterThan(0);
    return child;
  }

  exit(pid: number): void {
    this.step(`exit ${pid}`, () => this.k.exit(pid));
  }

  /** Pins the one page at addr; expects the pin to take it. */
  pin(pid: number, addr: number, opts: { write?: boolean; fast: boolean; longterm?: boolean }): number {
    const h = this.step(`pin ${pid} ${hex(addr)}`, () => this.k.pin(pid, addr, P, opts));
    expect(h, "pin handle").toBeGreaterThan(0);
    expect(this.k.pinned(h)).toBe(1);
    return h;
  }

  pinRead(h: number): number {
    return this.k.pinRead(h)[0];
  }

  unpin(h: number): void {
    expect(this.step(`unpin ${h}`, () => this.k.unpin(h))).toBe(0);
  }

  /** vmsplice of the one page at addr into a new pipe. */
  vmsplice(pid: number, addr: number): number {
    const h = this.step(`vmsplice ${pid} ${hex(addr)}`, () => this.k.vmsplice(pid, addr, P));
    expect(h, "pipe handle").toBeGreaterThan(0);
    expect(this.k.pinned(h)).toBe(1);
    return h;
  }

  pipeRead(h: number): number {
    return this.step(`pipeRead ${h}`, () => this.k.pipeRead(h))[0];
  }

  /** What maps the page at addr in pid. */
  page(pid: number, addr: number): PageInfo {
    return pageDump(this.k.mm(pid), addr, addr + P)[0];
  }

  /** The [start, len) of pid's VMA containing addr. */
  vmaOf(pid: number, addr: number): [number, number] {
    const v = this.k.vmas(pid).find((x) => x.start <= addr && addr < x.end);
    if (v === undefined) throw new Error(`vmaOf: no VMA of ${pid} contains ${hex(addr)}`);
    return [v.start, v.end - v.start];
  }

  stat(name: GlobalEvent): number {
    return this.k.machine.stat.get(name);
  }

  /** Runs f (one write) and checks how its fault resolved: a 4 KiB copy, a reuse, or no COW. */
  cow<T>(want: Cow, f: () => T): T {
    const copy0 = this.stat("cow_copy");
    const reuse0 = this.stat("cow_reuse");
    const r = f();
    const got = { copy: this.stat("cow_copy") - copy0, reuse: this.stat("cow_reuse") - reuse0 };
    expect(got, `expected a COW ${want}`).toEqual({
      copy: want === "copy" ? 1 : 0,
      reuse: want === "reuse" ? 1 : 0,
    });
    return r;
  }
}

const hex = (n: number): string => `0x${n.toString(16)}`;

// ---------------------------------------------------------------------------------------------
// Backings (rows).

interface Backing {
  name: string;
  /** The per-size THP policies the backing needs (global "always"; unnamed sizes "never"). */
  orders: ThpConfig["orders"];
  /** The order of the probe's folio as built. */
  order: number;
  /** The probe is mapped by a PMD as built. */
  pmd: boolean;
  /** The probe is PageAnonExclusive in its owner as built (false once fork shared it). */
  exclusive: boolean;
  /**
   * Once every other process has let go of the probe page (exited, or COW'd it away), a fault
   * by the owner reuses the folio: false for a large folio with one mapped page
   * (__wp_can_reuse_large_anon_folio: large mapcount <= 1) and for a folio another process
   * still maps part of (maybe-mapped-shared).
   */
  reusableAlone: boolean;
  /**
   * Pages fork copies for the child when the probe is pinned: every PageAnonExclusive page of
   * the pinned folio (folio_try_dup_anon_rmap_ptes fails for the batch, copy_present_page per
   * page). A pin of a page that is not exclusive first COWs it to a new order-0 page.
   */
  pinnedForkCopies: number;
  /** Builds the backing in pid (which has nothing mapped). */
  build(w: World, pid: number): Layout;
}

/** A PMD-mapped THP at BASE: 2 MiB written in one go. */
function buildPmdThp(w: World, pid: number): void {
  w.mmap(pid, BASE, 2 * MiB);
  w.write(pid, BASE, 2 * MiB);
  const pg = w.page(pid, BASE);
  expect(pg.pmd && pg.order === 9, "precondition: a PMD-mapped THP").toBe(true);
}

/** Every page of the ranges maps the same order-9 folio through PTEs. */
function expectPteMappedThp(w: World, pid: number, ranges: [number, number][]): void {
  const pages = ranges.flatMap(([s, len]) => pageDump(w.k.mm(pid), s, s + len));
  const head = pages[0].head;
  for (const pg of pages) {
    expect(pg.kind, `precondition at ${hex(pg.addr)}`).toBe("anon");
    expect({ pmd: pg.pmd, order: pg.order, head: pg.head }).toEqual({ pmd: false, order: 9, head });
  }
}

/** A private anonymous range of 128 KiB populated by writes, in folios of one order. */
const smallFolios = (name: string, order: number, orders: Backing["orders"]): Backing => ({
  name,
  orders,
  order,
  pmd: false,
  exclusive: true,
  reusableAlone: true,
  pinnedForkCopies: 1 << order,
  build(w, pid) {
    w.mmap(pid, BASE, 128 * KiB);
    w.write(pid, BASE, 128 * KiB);
    return { probe: BASE + P, ranges: [[BASE, 128 * KiB]] };
  },
});

const BACKINGS: Backing[] = [
  smallFolios("4 KiB page", 0, { 9: "never" }),
  smallFolios("mTHP 16 KiB", 2, { 2: "always", 9: "never" }),
  smallFolios("mTHP 64 KiB", 4, { 4: "always", 9: "never" }),
  {
    name: "PMD-mapped THP",
    orders: { 9: "always" },
    order: 9,
    pmd: true,
    exclusive: true,
    reusableAlone: true,
    pinnedForkCopies: 512,
    build(w, pid) {
      buildPmdThp(w, pid);
      return { probe: BASE + P, ranges: [[BASE, 2 * MiB]] };
    },
  },
  {
    name: "PTE-mapped THP",
    orders: { 9: "always" },
    order: 9,
    pmd: false,
    exclusive: true,
    reusableAlone: true,
    pinnedForkCopies: 512,
    build(w, pid) {
      buildPmdThp(w, pid);
      // mprotect of one page splits the PMD; mprotect back merges the VMAs again.
      w.mprotect(pid, BASE + 7 * P, P, PROT_READ);
      w.mprotect(pid, BASE + 7 * P, P, RW);
      expect(w.k.vmas(pid).length, "precondition: the VMAs merged again").toBe(1);
      expectPteMappedThp(w, pid, [[BASE, 2 * MiB]]);
      return { probe: BASE + P, ranges: [[BASE, 2 * MiB]] };
    },
  },
  {
    name: "last PTE of a THP",
    orders: { 9: "always" },
    order: 9,
    pmd: false,
    exclusive: true,
    reusableAlone: false,
    pinnedForkCopies: 1,
    build(w, pid) {
      buildPmdThp(w, pid);
      w.munmap(pid, BASE, P);
      w.munmap(pid, BASE + 2 * P, 2 * MiB - 2 * P);
      expectPteMappedThp(w, pid, [[BASE + P, P]]);
      return { probe: BASE + P, ranges: [[BASE + P, P]] };
    },
  },
  {
    name: "THP half moved by mremap",
    orders: { 9: "always" },
    order: 9,
    pmd: false,
    exclusive: true,
    reusableAlone: true,
    pinnedForkCopies: 512,
    build(w, pid) {
      buildPmdThp(w, pid);
      const r = w.step("mremap", () =>
        w.k.mremap(pid, BASE + MiB, MiB, MiB, MREMAP_MAYMOVE | MREMAP_FIXED, ELSEWHERE),
      );
      expect(r).toBe(ELSEWHERE);
      const ranges: [number, number][] = [
        [BASE, MiB],
        [ELSEWHERE, MiB],
      ];
      expectPteMappedThp(w, pid, ranges);
      return { probe: ELSEWHERE + P, ranges };
    },
  },
  {
    name: "partly shared THP (child munmapped half)",
    orders: { 9: "always" },
    order: 9,
    pmd: true,
    exclusive: false,
    reusableAlone: false,
    pinnedForkCopies: 1,
    build(w, pid) {
      buildPmdThp(w, pid);
      const helper = w.fork(pid);
      w.munmap(helper, BASE + MiB, MiB);
      // The probe lies in the half only the owner maps; the helper keeps the other half.
      return { probe: BASE + MiB + P, ranges: [[BASE, 2 * MiB]] };
    },
  },
  {
    name: "partly shared THP (child COW'd half)",
    orders: { 9: "always" },
    order: 9,
    pmd: true,
    exclusive: false,
    reusableAlone: false,
    pinnedForkCopies: 1,
    build(w, pid) {
      buildPmdThp(w, pid);
      const helper = w.fork(pid);
      w.write(helper, BASE, MiB);
      // The probe lies in the half the helper still shares.
      return { probe: BASE + MiB + P, ranges: [[BASE, 2 * MiB]] };
    },
  },
];

/** A fresh world with the backing built in one process, its preconditions checked. */
function boot(b: Backing, cow: CowReuse = "modern"): { w: World; owner: number; lay: Layout } {
  const w = new World(cow, b.orders);
  const owner = w.process();
  const lay = b.build(w, owner);
  const pg = w.page(owner, lay.probe);
  expect(
    { kind: pg.kind, order: pg.order, pmd: pg.pmd, exclusive: pg.anonExclusive },
    "precondition: the probe as built",
  ).toEqual({ kind: "anon", order: b.order, pmd: b.pmd, exclusive: b.exclusive });
  return { w, owner, lay };
}

// ---------------------------------------------------------------------------------------------
// Operations (columns).

interface Operation {
  name: string;
  run(w: World, b: Backing, lay: Layout, owner: number): void;
}

/** After fork, both processes map the probe's page read-only and shared, the PMD kept whole. */
function expectSharedAfterFork(w: World, b: Backing, probe: number, pids: number[], pfn: number): void {
  for (const pid of pids) {
    const pg = w.page(pid, probe);
    expect({ pfn: pg.pfn, writable: pg.writable, exclusive: pg.anonExclusive, pmd: pg.pmd }).toEqual({
      pfn,
      writable: false,
      exclusive: false,
      pmd: b.pmd,
    });
  }
}

/** A write that COWed left the writer a new exclusive, writable order-0 page. */
function expectCopied(w: World, pid: number, probe: number, oldPfn: number): void {
  const pg = w.page(pid, probe);
  expect(pg.pfn).not.toBe(oldPfn);
  expect({ order: pg.order, pmd: pg.pmd, exclusive: pg.anonExclusive, writable: pg.writable }).toEqual({
    order: 0,
    pmd: false,
    exclusive: true,
    writable: true,
  });
}

/**
 * fork, then one side writes first (a 4 KiB copy; a PMD is split in the writer only), then the
 * other: reused when the folio is small (its refcount is 1 now), copied when large (the first
 * writer still maps the folio's other pages, or, for the last PTE of a THP, large mapcount 1).
 */
function forkThenWrite(first: "child" | "parent"): Operation {
  return {
    name: `COW after fork, ${first} writes first`,
    run(w, b, { probe }, owner) {
      const t0 = w.read(owner, probe);
      const pfn = w.page(owner, probe).pfn;
      const child = w.fork(owner);
      expectSharedAfterFork(w, b, probe, [owner, child], pfn);
      const [a, z] = first === "child" ? [child, owner] : [owner, child];
      const ta = w.cow("copy", () => w.write(a, probe));
      expectCopied(w, a, probe, pfn);
      expect(w.read(a, probe)).toBe(ta);
      expect(w.read(z, probe)).toBe(t0);
      const zp = w.page(z, probe);
      expect({ pfn: zp.pfn, pmd: zp.pmd }, "the other side keeps its page and PMD").toEqual({
        pfn,
        pmd: b.pmd,
      });
      const tz = w.cow(b.order === 0 ? "reuse" : "copy", () => w.write(z, probe));
      if (b.order === 0) expect(w.page(z, probe).pfn).toBe(pfn);
      else expectCopied(w, z, probe, pfn);
      expect(w.read(z, probe)).toBe(tz);
      expect(w.read(a, probe)).toBe(ta);
    },
  };
}

const MPROTECT_AFTER_FORK: Operation = {
  name: "mprotect RO→RW after fork",
  run(w, b, { probe }, owner) {
    const t0 = w.read(owner, probe);
    const pfn = w.page(owner, probe).pfn;
    const child = w.fork(owner);
    for (const pid of [owner, child]) {
      const [s, len] = w.vmaOf(pid, probe);
      w.mprotect(pid, s, len, PROT_READ);
      expect(w.page(pid, probe).writable).toBe(false);
      w.mprotect(pid, s, len, RW);
    }
    // can_change_pte_writable / can_change_pmd_writable: the shared page is not exclusive.
    expectSharedAfterFork(w, b, probe, [owner, child], pfn);
    const tp = w.cow("copy", () => w.write(owner, probe));
    expectCopied(w, owner, probe, pfn);
    expect(w.read(child, probe)).toBe(t0);
    const tc = w.cow(b.order === 0 ? "reuse" : "copy", () => w.write(child, probe));
    expect(w.read(owner, probe)).toBe(tp);
    expect(w.read(child, probe)).toBe(tc);
  },
};

/**
 * CVE-2020-29374: the child vmsplices the shared page, unmaps it, and the parent writes. The
 * pipe's reference keeps the page from reuse (refcount > mapcount), so the parent copies and the
 * pipe keeps the old content. `legacy` asserts the pre-5.8 leak instead: one mapping left, the
 * page is reused, and the child's pipe reads the parent's new data.
 */
function vmspliceChildUnmaps(cow: CowReuse): Operation {
  return {
    name: "vmsplice in child, child unmaps, parent writes",
    run(w, _b, { probe, ranges }, owner) {
      const t0 = w.read(owner, probe);
      const child = w.fork(owner);
      const pipe = w.vmsplice(child, probe);
      for (const [s, len] of ranges) w.munmap(child, s, len);
      const tp = w.cow(cow === "modern" ? "copy" : "reuse", () => w.write(owner, probe));
      expect(w.read(owner, probe)).toBe(tp);
      expect(w.pipeRead(pipe), cow === "modern" ? "no leak" : "the legacy leak").toBe(
        cow === "modern" ? t0 : tp,
      );
    },
  };
}

/**
 * vmsplice in the parent before fork: FOLL_GET sets no MMF_HAS_PINNED, so fork shares the page
 * as usual; the parent's write copies, and so does the child's (the pipe holds a reference).
 * The pipe follows the original page, which nobody writes after fork.
 */
const VMSPLICE_BEFORE_FORK: Operation = {
  name: "vmsplice in parent before fork",
  run(w, b, { probe }, owner) {
    const t0 = w.read(owner, probe);
    const pfn = w.page(owner, probe).pfn;
    const pipe = w.vmsplice(owner, probe);
    const copies = w.stat("fork_page_copy");
    const child = w.fork(owner);
    expect(w.stat("fork_page_copy") - copies, "a pipe reference is no pin").toBe(0);
    expectSharedAfterFork(w, b, probe, [owner, child], pfn);
    const tp = w.cow("copy", () => w.write(owner, probe));
    expect(w.read(child, probe)).toBe(t0);
    const tc = w.cow("copy", () => w.write(child, probe));
    expect(w.read(owner, probe)).toBe(tp);
    expect(w.read(child, probe)).toBe(tc);
    expect(w.pipeRead(pipe)).toBe(t0);
  },
};

/** vmsplice in the parent after fork: FOLL_GET takes the shared page without unsharing it. */
const VMSPLICE_AFTER_FORK: Operation = {
  name: "vmsplice in parent after fork",
  run(w, b, { probe }, owner) {
    const t0 = w.read(owner, probe);
    const pfn = w.page(owner, probe).pfn;
    const child = w.fork(owner);
    const pipe = w.vmsplice(owner, probe);
    expectSharedAfterFork(w, b, probe, [owner, child], pfn);
    const tp = w.cow("copy", () => w.write(owner, probe));
    const tc = w.cow("copy", () => w.write(child, probe));
    expect(w.read(owner, probe)).toBe(tp);
    expect(w.read(child, probe)).toBe(tc);
    expect(w.pipeRead(pipe)).toBe(t0);
  },
};

/**
 * vmsplice with no new fork: an exclusive, writable page takes the owner's write in place, and
 * the pipe (which only references the page) reads it; a page still shared is copied first.
 */
const VMSPLICE_NO_FORK: Operation = {
  name: "vmsplice, no fork, owner writes",
  run(w, b, { probe }, owner) {
    const t0 = w.read(owner, probe);
    const pipe = w.vmsplice(owner, probe);
    const tp = w.cow(b.exclusive ? "none" : "copy", () => w.write(owner, probe));
    expect(w.pipeRead(pipe)).toBe(b.exclusive ? tp : t0);
  },
};

/** What the owner's probe page has been through before a pin. */
type PinState = "as built" | "shared after fork" | "after child exited" | "after child COW'd every page";
const PIN_STATES: PinState[] = [
  "as built",
  "shared after fork",
  "after child exited",
  "after child COW'd every page",
];

/** Brings the owner's probe into `state`; returns the child still sharing it, if any. */
function enterPinState(w: World, lay: Layout, owner: number, state: PinState): number | null {
  if (state === "as built") return null;
  const child = w.fork(owner);
  if (state === "shared after fork") return child;
  if (state === "after child exited") w.exit(child);
  else for (const [s, len] of lay.ranges) w.write(child, s, len);
  return null;
}

/**
 * Whether a pin in `state` takes the probe's own page (no fault, or a fault that reuses it) or
 * a fresh order-0 copy.
 */
function pinKeepsPage(b: Backing, state: PinState): boolean {
  if (state === "as built") return b.exclusive;
  if (state === "shared after fork") return false;
  return b.reusableAlone;
}

/**
 * A R/O pin: gup_must_unshare makes the page exclusive first (reusing or copying it), so that
 * the pinned page is PageAnonExclusive in the owner and every later owner write lands in it;
 * a child's writes never do. Fast GUP takes an exclusive writable page at once and leaves
 * anything to unshare to the slow path.
 */
function roPin(state: PinState, fast: boolean): Operation {
  return {
    name: `R/O pin (${fast ? "fast" : "slow"} GUP), ${state}`,
    run(w, b, lay, owner) {
      const { probe } = lay;
      const t0 = w.read(owner, probe);
      const pfn = w.page(owner, probe).pfn;
      const child = enterPinState(w, lay, owner, state);
      const unshare = !(state === "as built" && b.exclusive);
      const fast0 = w.stat("gup_fast");
      const unshare0 = w.stat("gup_unshare");
      const pin = w.pin(owner, probe, { fast });
      expect(w.stat("gup_unshare") - unshare0, "unshare faults").toBe(unshare ? 1 : 0);
      expect(w.stat("gup_fast") - fast0, "pages taken by gup_fast").toBe(fast && !unshare ? 1 : 0);
      const pg = w.page(owner, probe);
      expect(pg.anonExclusive, "the pinned page is PageAnonExclusive").toBe(true);
      if (pinKeepsPage(b, state)) expect(pg.pfn).toBe(pfn);
      else expect({ copy: pg.pfn !== pfn, order: pg.order }).toEqual({ copy: true, order: 0 });
      expect(w.pinRead(pin)).toBe(t0);
      if (child !== null) {
        expect(w.read(child, probe)).toBe(t0);
        w.write(child, probe);
        expect(w.pinRead(pin), "a child's write is not seen by the pin").toBe(t0);
      }
      const tp = w.write(owner, probe);
      expect(w.page(owner, probe).pfn).toBe(pg.pfn);
      expect(w.pinRead(pin), "the owner's write lands in the pinned page").toBe(tp);
      w.unpin(pin);
    },
  };
}

/**
 * A R/W pin, then mprotect(PROT_READ) and back to RW: the pinned page stays exclusive, so
 * mprotect maps it writable again and the owner's write lands in it with no fault.
 */
function rwPinMprotect(state: PinState, fast: boolean): Operation {
  return {
    name: `R/W pin (${fast ? "fast" : "slow"} GUP), ${state}, mprotect R then RW, write`,
    run(w, b, lay, owner) {
      const { probe } = lay;
      const t0 = w.read(owner, probe);
      const pfn = w.page(owner, probe).pfn;
      enterPinState(w, lay, owner, state);
      const pin = w.pin(owner, probe, { write: true, fast });
      const pg = w.page(owner, probe);
      expect({ exclusive: pg.anonExclusive, writable: pg.writable }).toEqual({
        exclusive: true,
        writable: true,
      });
      expect(pg.pfn === pfn, "the pin kept the probe's own page").toBe(pinKeepsPage(b, state));
      expect(w.pinRead(pin)).toBe(t0);
      const [s, len] = w.vmaOf(owner, probe);
      w.mprotect(owner, s, len, PROT_READ);
      expect(w.page(owner, probe).writable).toBe(false);
      w.mprotect(owner, s, len, RW);
      const back = w.page(owner, probe);
      expect({ pfn: back.pfn, exclusive: back.anonExclusive, writable: back.writable }).toEqual({
        pfn: pg.pfn,
        exclusive: true,
        writable: true,
      });
      const tp = w.cow("none", () => w.write(owner, probe));
      expect(w.pinRead(pin), "the write lands in the pinned page").toBe(tp);
      w.unpin(pin);
    },
  };
}

/**
 * fork with a pinned page (MMF_HAS_PINNED, folio_maybe_dma_pinned): the child gets copies at
 * fork (different pfn, same content), the parent keeps the pinned page exclusive (and writable
 * if it was) in its PTEs (a PMD is split first), and neither side's write faults afterwards:
 * the child's stays out of the pin, the parent's lands in it.
 */
function forkWithPin(write: boolean, fast: boolean): Operation {
  return {
    name: `fork with a ${write ? "R/W" : "R/O"} pinned page (${fast ? "fast" : "slow"} GUP)`,
    run(w, b, { probe }, owner) {
      const t0 = w.read(owner, probe);
      const pin = w.pin(owner, probe, { write, fast, longterm: true });
      const pinned = w.page(owner, probe);
      expect(pinned.exclusive).toBe(true);
      const copies = w.stat("fork_page_copy");
      const child = w.fork(owner);
      expect(w.stat("fork_page_copy") - copies, "pages copied at fork").toBe(b.pinnedForkCopies);
      const cp = w.page(child, probe);
      expect(cp.pfn, "the child's copy").not.toBe(pinned.pfn);
      expect({ order: cp.order, exclusive: cp.exclusive, writable: cp.writable }).toEqual({
        order: 0,
        exclusive: true,
        writable: true,
      });
      expect(w.read(child, probe)).toBe(t0);
      const pp = w.page(owner, probe);
      expect({ pfn: pp.pfn, pmd: pp.pmd, exclusive: pp.exclusive, writable: pp.writable }).toEqual({
        pfn: pinned.pfn,
        pmd: false,
        exclusive: true,
        writable: pinned.writable,
      });
      if (write) expect(pp.writable).toBe(true);
      const tc = w.cow("none", () => w.write(child, probe));
      expect(w.pinRead(pin), "the child's write stays out of the pin").toBe(t0);
      const tp = w.cow(pp.writable ? "none" : "reuse", () => w.write(owner, probe));
      expect(w.pinRead(pin), "the parent's write lands in the pin").toBe(tp);
      expect(w.read(child, probe)).toBe(tc);
      w.unpin(pin);
    },
  };
}

const OPERATIONS: Operation[] = [
  forkThenWrite("child"),
  forkThenWrite("parent"),
  MPROTECT_AFTER_FORK,
  vmspliceChildUnmaps("modern"),
  VMSPLICE_BEFORE_FORK,
  VMSPLICE_AFTER_FORK,
  VMSPLICE_NO_FORK,
  ...PIN_STATES.flatMap((s) => [roPin(s, false), roPin(s, true)]),
  ...PIN_STATES.flatMap((s) => [rwPinMprotect(s, false), rwPinMprotect(s, true)]),
  forkWithPin(true, false),
  forkWithPin(true, true),
  forkWithPin(false, false),
  forkWithPin(false, true),
];

const CELLS = BACKINGS.flatMap((backing) =>
  OPERATIONS.map((op) => ({ name: `${backing.name} × ${op.name}`, backing, op })),
);

describe("COW conformance matrix, Linux 6.18 rules (cow: modern)", () => {
  it.each(CELLS)("$name", ({ backing, op }) => {
    const { w, owner, lay } = boot(backing);
    op.run(w, backing, lay, owner);
  });
});

// ---------------------------------------------------------------------------------------------
// Legacy cells: the rule before 5.8 (reuse a page mapped once, whoever else holds it; no unshare,
// no copy at fork), and what it leaks.

const byName = (name: string): Backing => {
  const b = BACKINGS.find((x) => x.name === name);
  if (b === undefined) throw new Error(`byName: no backing ${name}`);
  return b;
};

const LEGACY_LEAK = ["4 KiB page", "mTHP 64 KiB", "PMD-mapped THP", "PTE-mapped THP"].map(byName);

describe("COW before Linux 5.8 (cow: legacy)", () => {
  it.each(LEGACY_LEAK.map((backing) => ({ name: backing.name, backing })))(
    "$name × vmsplice in child, child unmaps, parent writes: the pipe reads the parent's new data",
    ({ backing }) => {
      const { w, owner, lay } = boot(backing, "legacy");
      vmspliceChildUnmaps("legacy").run(w, backing, lay, owner);
    },
  );

  it.each(["4 KiB page", "PMD-mapped THP"].map((name) => ({ name, backing: byName(name) })))(
    "$name × R/O pin after fork: no unshare, so the owner's write COWs away from the pin",
    ({ backing }) => {
      const { w, owner, lay } = boot(backing, "legacy");
      const { probe } = lay;
      const t0 = w.read(owner, probe);
      const pfn = w.page(owner, probe).pfn;
      w.fork(owner);
      const pin = w.pin(owner, probe, { fast: false });
      expect(w.stat("gup_unshare")).toBe(0);
      expect(w.page(owner, probe).pfn).toBe(pfn);
      const tp = w.cow("copy", () => w.write(owner, probe));
      expect(w.read(owner, probe)).toBe(tp);
      expect(w.pinRead(pin), "the pin lost the owner's write").toBe(t0);
      w.unpin(pin);
    },
  );

  it("4 KiB page × fork with a R/W pinned page: shared at fork, parent's write lost, child's write leaks into the pin", () => {
    const backing = byName("4 KiB page");
    const { w, owner, lay } = boot(backing, "legacy");
    const { probe } = lay;
    const t0 = w.read(owner, probe);
    const pin = w.pin(owner, probe, { write: true, fast: true, longterm: true });
    const pfn = w.page(owner, probe).pfn;
    const child = w.fork(owner);
    expect(w.stat("fork_page_copy")).toBe(0);
    expect(w.page(child, probe).pfn, "the child shares the pinned page").toBe(pfn);
    const tp = w.cow("copy", () => w.write(owner, probe));
    expect(w.pinRead(pin), "the parent's write missed its own pin").toBe(t0);
    const tc = w.cow("reuse", () => w.write(child, probe));
    expect(w.page(child, probe).pfn).toBe(pfn);
    expect(w.pinRead(pin), "the child's data is in the parent's pinned buffer").toBe(tc);
    expect(w.read(owner, probe)).toBe(tp);
    w.unpin(pin);
  });
});

// ---------------------------------------------------------------------------------------------
// Fork facts measured on a live 6.18 kernel, beside the matrix.

describe("fork edge cases, as measured on Linux 6.18", () => {
  it("shares the huge zero page at fork; a write in the child leaves the parent on it", () => {
    const w = new World("modern", { 9: "always" });
    const owner = w.process();
    w.mmap(owner, BASE, 2 * MiB);
    expect(w.step("madvise", () => w.k.madvise(owner, BASE, 2 * MiB, MADV_HUGEPAGE))).toBe(0);
    expect(w.read(owner, BASE + P)).toBe(0);
    const child = w.fork(owner);
    for (const pid of [owner, child]) {
      const pg = w.page(pid, BASE + P);
      expect({ kind: pg.kind, pmd: pg.pmd }).toEqual({ kind: "hugezero", pmd: true });
    }
    const tc = w.write(child, BASE + P);
    expect(w.read(child, BASE + P)).toBe(tc);
    expect(w.page(child, BASE + P).kind).toBe("anon");
    expect(w.page(owner, BASE + P).kind).toBe("hugezero");
    expect(w.read(owner, BASE + P)).toBe(0);
  });

  it("MADV_DONTFORK: the child has no mapping there (SIGSEGV); MADV_WIPEONFORK: the child reads zeros", () => {
    const w = new World("modern", { 9: "never" });
    const owner = w.process();
    const wipe = BASE + PMD_SIZE;
    w.mmap(owner, BASE, 16 * KiB);
    w.mmap(owner, wipe, 16 * KiB);
    w.write(owner, BASE, 16 * KiB);
    const tw = w.write(owner, wipe, 16 * KiB);
    expect(w.step("madvise", () => w.k.madvise(owner, BASE, 16 * KiB, MADV_DONTFORK))).toBe(0);
    expect(w.step("madvise", () => w.k.madvise(owner, wipe, 16 * KiB, MADV_WIPEONFORK))).toBe(0);
    const child = w.fork(owner);
    expect(w.step("read", () => w.k.read(child, BASE, P)).signal).toBe("SIGSEGV");
    expect(w.read(child, wipe)).toBe(0);
    expect(w.read(owner, wipe)).toBe(tw);
  });
});
