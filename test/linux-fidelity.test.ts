// vmlab against facts observed on a live Linux 6.18 kernel (x86-64, THP global `madvise`,
// per-size knobs as each test states; `excl` is pagemap bit 56, see fact 19). Each test
// names the fact it encodes; the facts are numbered as in the observation notes:
//
//   1  2 MiB private anon, all mTHP never: 512 order-0 pages, one PTE table
//   2  hugepages-64kB=always: 32 naturally aligned 16-page folios
//   3  16kB and 64kB both always: 64 KiB wins
//   4  MADV_HUGEPAGE + write: one PMD-mapped order-9 folio, a deposited PTE table
//   5  MADV_HUGEPAGE + read first: the huge zero page, then a whole THP on write
//   6  munmap of 4 KiB inside a PMD THP: split, partly mapped folio, deferred split
//   7  mprotect of half a PMD THP: two VMAs, one PTE-mapped folio
//   8  top-down placement and merging of no-hint mmaps
//   9  VmPTE of 1 GiB of 4 KiB pages, and what munmap frees
//  10  a read of private anon maps the zero page, not counted in Rss
//  11  MAP_SHARED|MAP_ANONYMOUS: shmem pages, RssShmem, fault-around maps only cached pages
//  12  mprotect split and merge, and when VM_ACCOUNT (`ac`) is dropped
//  13  fork of 4 KiB pages: every page shared (mapcount 2); a COW write copies just that page, order 0
//  14  fork of 16/64 KiB mTHP: folios shared whole; a COW write copies one order-0 page, the folio stays
//  15  fork of a PMD THP: the child gets a PMD and a deposited table; a COW write splits only the writer's PMD
//  16  fork of a PTE-mapped THP: shared per page like any large folio; COW copies are order 0
//  17  once the child has exited, a write reuses the page in place (a still PMD-mapped THP keeps its PMD)
//  18  read-only private anon (zero page) across fork: no anon_vma, so fork copies no tables (from source)
//  19  pagemap bit 56 is "page mapped once" (precise mapcount 1; the head page's for a PMD map), not
//      PageAnonExclusive: after the child exits every page shows it, written or not
//
// The tests read the model through the public Kernel API and src/report/proc.ts only; the fork
// tests also run audit() (src/check/audit.ts) after every step.

import { describe, expect, it } from "vitest";
import { audit } from "../src/check/audit.ts";
import { Kernel } from "../src/mm/kernel.ts";
import type { ThpConfig } from "../src/mm/machine.ts";
import type { Mm } from "../src/mm/mm.ts";
import { PG_partially_mapped } from "../src/phys/memmap.ts";
import { type PageInfo, pageDump, type SmapsEntry, type Status, smaps, status } from "../src/report/proc.ts";
import {
  MADV_HUGEPAGE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_PRIVATE,
  MAP_SHARED,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
} from "../src/uapi.ts";

const P = PAGE_SIZE;
const KiB = 1024;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const R = PROT_READ;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;
/** 1 GiB aligned, in the same 512 GiB PGD range as mmap_base (so under the warm-up's PUD table). */
const G = 0x7fc000000000;
/** The test machine's THP knobs: the observed machine's, `never` for every size not named. */
const THP_2M_INHERIT: ThpConfig["orders"] = { 9: "inherit" };

interface Proc {
  k: Kernel;
  pid: number;
  mm: Mm;
}

/**
 * A kernel with THP global `madvise`, use_zero_page on, and the given per-order policies, and
 * one process. With `warm`, the process first writes one page near mmap_base: a real process
 * already has the PUD and PMD tables there, so VmPTE deltas then count what the observed
 * process's did (only new PTE tables, or new PMD tables where a test crosses into a new 1 GiB).
 */
function boot(
  orders: ThpConfig["orders"] = THP_2M_INHERIT,
  warm = true,
  enabled: ThpConfig["enabled"] = "madvise",
): Proc {
  const k = new Kernel({ ramBytes: 4 * GiB, thp: { enabled, useZeroPage: true, orders } });
  const pid = k.createProcess();
  const mm = k.mm(pid);
  if (warm) {
    const w = k.mmap(pid, 0, P, RW, PRIV);
    expect(k.write(pid, w, 1).pages, "precondition: the warm-up write").toBe(1);
    expect(status(mm).VmPTE, "precondition: PUD + PMD + PTE table").toBe(12);
  }
  return { k, pid, mm };
}

/** Writes one byte to each of the n pages from addr, one access per page, as the C harness did. */
function writePages(p: Proc, addr: number, n: number): void {
  for (let i = 0; i < n; i++) {
    const r = p.k.write(p.pid, addr + i * P, 1);
    expect(r.signal, `write of page ${i}`).toBeNull();
  }
}

/** The page-level picture of n pages from addr. */
function pages(p: Proc, addr: number, n: number): PageInfo[] {
  return pageDump(p.mm, addr, addr + n * P);
}

/** The smaps entry of the VMA containing addr. */
function smapsAt(p: Proc, addr: number): SmapsEntry {
  const e = smaps(p.mm).find((s) => s.start <= addr && addr < s.end);
  if (e === undefined) throw new Error(`smapsAt: no VMA contains ${addr.toString(16)}`);
  return e;
}

/** The VMAs overlapping [start, end), as [start, end] offsets from `start`. */
function vmaRanges(p: Proc, start: number, end: number): [number, number][] {
  return p.k
    .vmas(p.pid)
    .filter((v) => v.end > start && v.start < end)
    .map((v) => [v.start - start, v.end - start]);
}

/** Indices of the pages that are mapped by anything. */
function presentIndices(ps: PageInfo[]): number[] {
  return ps.flatMap((pg, i) => (pg.kind === "none" ? [] : [i]));
}

/** A 4 MiB MADV_HUGEPAGE mapping, 2 MiB aligned, nothing faulted yet. */
function hugepageMapping(p: Proc): number {
  const a = p.k.mmap(p.pid, 0, 4 * MiB, RW, PRIV);
  expect(a % PMD_SIZE, "precondition: a 2 MiB aligned address").toBe(0);
  expect(p.k.madvise(p.pid, a, 4 * MiB, MADV_HUGEPAGE)).toBe(0);
  return a;
}

describe("anonymous page faults, as Linux 6.18 maps them", () => {
  // Fact 1.
  it("maps 512 separate exclusive order-0 pages under one PTE table when every mTHP size is never", () => {
    const p = boot();
    const s0 = status(p.mm);
    const a = p.k.mmap(p.pid, 0, 2 * MiB, RW, PRIV);
    expect(a % PMD_SIZE).toBe(0);
    writePages(p, a, 512);
    const ps = pages(p, a, 512);
    ps.forEach((pg, i) => {
      expect(
        {
          i,
          kind: pg.kind,
          order: pg.order,
          head: pg.head,
          pmd: pg.pmd,
          excl: pg.exclusive,
          map: pg.mapcount,
        },
        `page ${i}`,
      ).toEqual({ i, kind: "anon", order: 0, head: pg.pfn, pmd: false, excl: true, map: 1 });
    });
    expect(new Set(ps.map((pg) => pg.pfn)).size).toBe(512);
    expect(vmaRanges(p, a, a + 2 * MiB)).toEqual([[0, 2 * MiB]]);
    const e = smapsAt(p, a);
    expect([e.perms, e.Size, e.Rss, e.Anonymous, e.AnonHugePages, e.VmFlags]).toEqual([
      "rw-p",
      2048,
      2048,
      2048,
      0,
      "rd wr mr mw me ac",
    ]);
    const s1 = status(p.mm);
    expect({ RssAnon: s1.RssAnon - s0.RssAnon, VmPTE: s1.VmPTE - s0.VmPTE }).toEqual({
      RssAnon: 2048,
      VmPTE: 4,
    });
  });

  // Fact 2.
  it("maps 16-page naturally aligned folios under a 64 KiB mTHP policy", () => {
    const p = boot({ 4: "always", 9: "inherit" });
    const s0 = status(p.mm);
    const a = p.k.mmap(p.pid, 0, 2 * MiB, RW, PRIV);
    writePages(p, a, 512);
    const ps = pages(p, a, 512);
    ps.forEach((pg, i) => {
      const head = ps[i & ~15].pfn; // the folio's first page is its head: heads at pages 0, 16, 32...
      expect(
        { i, kind: pg.kind, order: pg.order, head: pg.head, pfn: pg.pfn, pmd: pg.pmd, excl: pg.exclusive },
        `page ${i}`,
      ).toEqual({ i, kind: "anon", order: 4, head, pfn: head + (i & 15), pmd: false, excl: true });
      expect(pg.mapcount, `page ${i} mapcount`).toBe(1);
    });
    const heads = [...new Set(ps.map((pg) => pg.head))];
    expect(heads.length).toBe(32);
    // Natural alignment holds physically too: a folio is a buddy block of its order.
    expect(heads.filter((h) => h % 16 !== 0)).toEqual([]);
    expect(smapsAt(p, a).AnonHugePages).toBe(0);
    expect(smapsAt(p, a).Rss).toBe(2048);
    expect(status(p.mm).RssAnon - s0.RssAnon).toBe(2048);
  });

  // Fact 3.
  it("picks the largest allowed mTHP size that fits: 64 KiB over 16 KiB", () => {
    const p = boot({ 2: "always", 4: "always", 9: "inherit" });
    const a = p.k.mmap(p.pid, 0, 2 * MiB, RW, PRIV);
    writePages(p, a, 512);
    const ps = pages(p, a, 512);
    expect([...new Set(ps.map((pg) => pg.order))]).toEqual([4]);
    expect(new Set(ps.map((pg) => pg.head)).size).toBe(32);
    expect(ps.filter((pg, i) => pg.head !== ps[i & ~15].pfn)).toEqual([]);
  });

  // Fact 10.
  it("maps the shared zero page on a read, counted in no Rss", () => {
    const p = boot(THP_2M_INHERIT, false);
    const a = p.k.mmap(p.pid, 0, P, RW, PRIV);
    const r = p.k.read(p.pid, a, P);
    expect(r.tags).toEqual([0]);
    const [pg] = pages(p, a, 1);
    expect([pg.kind, pg.pfn]).toEqual(["zero", p.k.machine.zeroPfn]);
    const s = status(p.mm);
    expect([s.VmRSS, s.RssAnon]).toEqual([0, 0]);
    expect([smapsAt(p, a).Rss, smapsAt(p, a).Anonymous]).toEqual([0, 0]);
  });
});

describe("PMD-mapped THP", () => {
  // Fact 4.
  it("maps one order-9 folio by a PMD on the first write to a MADV_HUGEPAGE range, depositing a PTE table", () => {
    const p = boot();
    const s0 = status(p.mm);
    const a = hugepageMapping(p);
    expect(p.k.write(p.pid, a, 1).pages).toBe(1);
    const ps = pages(p, a, 1024);
    const head = ps[0].pfn;
    ps.slice(0, 512).forEach((pg, i) => {
      expect(
        { i, kind: pg.kind, pmd: pg.pmd, order: pg.order, head: pg.head, pfn: pg.pfn },
        `page ${i}`,
      ).toEqual({
        i,
        kind: "anon",
        pmd: true,
        order: 9,
        head,
        pfn: head + i,
      });
    });
    expect(presentIndices(ps.slice(512))).toEqual([]);
    const e = smapsAt(p, a);
    expect([e.Rss, e.AnonHugePages, e.VmFlags]).toEqual([2048, 2048, "rd wr mr mw me ac hg"]);
    const s1 = status(p.mm);
    expect({ RssAnon: s1.RssAnon - s0.RssAnon, VmPTE: s1.VmPTE - s0.VmPTE }).toEqual({
      RssAnon: 2048,
      VmPTE: 4,
    });
  });

  // Fact 5.
  it("maps the huge zero page on a read, then a whole THP on the first write", () => {
    const p = boot();
    const s0 = status(p.mm);
    const a = hugepageMapping(p);
    expect(p.k.read(p.pid, a, 1).tags).toEqual([0]);
    let ps = pages(p, a, 1024);
    ps.slice(0, 512).forEach((pg, i) => {
      expect({ i, kind: pg.kind, pmd: pg.pmd, pfn: pg.pfn }, `page ${i}`).toEqual({
        i,
        kind: "hugezero",
        pmd: true,
        pfn: p.k.machine.hugeZeroPfn + i,
      });
    });
    expect(presentIndices(ps.slice(512))).toEqual([]);
    let s = status(p.mm);
    expect({ RssAnon: s.RssAnon - s0.RssAnon, VmPTE: s.VmPTE - s0.VmPTE }).toEqual({ RssAnon: 0, VmPTE: 4 });
    expect(smapsAt(p, a).Rss).toBe(0);

    expect(p.k.write(p.pid, a, 1).pages).toBe(1);
    ps = pages(p, a, 512);
    expect(
      ps.filter((pg, i) => !(pg.kind === "anon" && pg.pmd && pg.order === 9 && pg.pfn === ps[0].pfn + i)),
    ).toEqual([]);
    s = status(p.mm);
    expect({ RssAnon: s.RssAnon - s0.RssAnon, VmPTE: s.VmPTE - s0.VmPTE }).toEqual({
      RssAnon: 2048,
      VmPTE: 4,
    });
    expect(smapsAt(p, a).AnonHugePages).toBe(2048);
  });

  // Fact 6.
  it("keeps the other 511 pages of a THP mapped, partly mapped and queued for deferred split, after munmap of one page", () => {
    const p = boot();
    const s0 = status(p.mm);
    const a = hugepageMapping(p);
    p.k.write(p.pid, a, 1);
    const before = pages(p, a, 512);
    const head = before[0].pfn;
    const vmPte = status(p.mm).VmPTE;

    expect(p.k.munmap(p.pid, a + MiB, P)).toBe(0);
    expect(vmaRanges(p, a, a + 4 * MiB)).toEqual([
      [0, MiB],
      [MiB + 4 * KiB, 4 * MiB],
    ]);
    const after = pages(p, a, 512);
    expect(presentIndices(after)).toEqual([...Array(512).keys()].filter((i) => i !== 256));
    after.forEach((pg, i) => {
      if (i === 256) return;
      expect(
        { i, pfn: pg.pfn, head: pg.head, order: pg.order, pmd: pg.pmd, excl: pg.exclusive },
        `page ${i}`,
      ).toEqual({
        i,
        pfn: before[i].pfn,
        head,
        order: 9,
        pmd: false,
        excl: true,
      });
    });
    expect(p.k.machine.deferredSplit.has(head)).toBe(true);
    expect(p.k.machine.memmap.test(head, PG_partially_mapped)).toBe(true);
    const lo = smapsAt(p, a);
    const hi = smapsAt(p, a + MiB + P);
    expect([lo.AnonHugePages, lo.Rss, hi.AnonHugePages, hi.Rss]).toEqual([0, 1024, 0, 1020]);
    const s = status(p.mm);
    expect(s.RssAnon - s0.RssAnon).toBe(2044);
    expect(s.VmPTE).toBe(vmPte);
  });

  // Fact 7.
  it("splits a PMD THP into one PTE-mapped folio when mprotect covers half of it", () => {
    const p = boot();
    const a = hugepageMapping(p);
    p.k.write(p.pid, a, 1);
    const head = pages(p, a, 1)[0].pfn;
    const vmPte = status(p.mm).VmPTE;

    expect(p.k.mprotect(p.pid, a, MiB, R)).toBe(0);
    expect(vmaRanges(p, a, a + 4 * MiB)).toEqual([
      [0, MiB],
      [MiB, 4 * MiB],
    ]);
    const lo = smapsAt(p, a);
    const hi = smapsAt(p, a + MiB);
    expect([lo.perms, lo.AnonHugePages, lo.Rss]).toEqual(["r--p", 0, 1024]);
    expect([hi.perms, hi.AnonHugePages, hi.Rss]).toEqual(["rw-p", 0, 1024]);
    const ps = pages(p, a, 512);
    expect(
      ps.filter((pg, i) => !(pg.kind === "anon" && !pg.pmd && pg.order === 9 && pg.pfn === head + i)),
    ).toEqual([]);
    expect(new Set(ps.map((pg) => pg.head))).toEqual(new Set([head]));
    expect(status(p.mm).VmPTE).toBe(vmPte);
  });
});

describe("VMA placement and page-table cost", () => {
  // Fact 8.
  it("places no-hint 4 KiB mappings directly below each other and merges them into one VMA", () => {
    const p = boot(THP_2M_INHERIT, false);
    const x = p.k.mmap(p.pid, 0, P, RW, PRIV);
    const y = p.k.mmap(p.pid, 0, P, RW, PRIV);
    const z = p.k.mmap(p.pid, 0, P, RW, PRIV);
    expect([x - y, x - z]).toEqual([P, 2 * P]);
    expect(p.k.vmas(p.pid).map((v) => [v.start, v.end])).toEqual([[z, x + P]]);
  });

  // Fact 8.
  it("places no-hint 2 MiB mappings 2 MiB aligned, the second directly below, merged into one VMA", () => {
    const p = boot(THP_2M_INHERIT, false);
    const a = p.k.mmap(p.pid, 0, 2 * MiB, RW, PRIV);
    const b = p.k.mmap(p.pid, 0, 2 * MiB, RW, PRIV);
    expect([a % PMD_SIZE, b % PMD_SIZE, a - b]).toEqual([0, 0, 2 * MiB]);
    expect(p.k.vmas(p.pid).map((v) => [v.start, v.end])).toEqual([[b, a + 2 * MiB]]);
  });

  // Fact 9.
  it("spends 512 PTE tables and one PMD table on 1 GiB of 4 KiB pages, and frees them on munmap", () => {
    const p = boot();
    const v0 = status(p.mm).VmPTE;
    expect(p.k.mmap(p.pid, G, GiB, RW, PRIV | MAP_FIXED)).toBe(G);
    expect(p.k.write(p.pid, G, GiB).pages).toBe(GiB / P);
    expect(smapsAt(p, G).AnonHugePages, "4 KiB pages, no THP").toBe(0);
    expect(status(p.mm).VmPTE - v0).toBe(2052);
    expect(p.k.munmap(p.pid, G, GiB / 2)).toBe(0);
    expect(status(p.mm).VmPTE - v0).toBe(2052 - 256 * 4); // the PMD table still serves the rest
    expect(p.k.munmap(p.pid, G + GiB / 2, GiB / 2)).toBe(0);
    expect(status(p.mm).VmPTE).toBe(v0);
  });

  // Fact 9.
  it("spends a second PMD table when 1 GiB straddles two 1 GiB ranges, freed with the range it empties", () => {
    const p = boot();
    const v0 = status(p.mm).VmPTE;
    const a = G + GiB / 2;
    expect(p.k.mmap(p.pid, a, GiB, RW, PRIV | MAP_FIXED)).toBe(a);
    p.k.write(p.pid, a, GiB);
    expect(smapsAt(p, a).AnonHugePages, "4 KiB pages, no THP").toBe(0);
    expect(status(p.mm).VmPTE - v0).toBe(2056);
    expect(p.k.munmap(p.pid, a, GiB / 2)).toBe(0); // empties [G, G + 1 GiB)
    expect(status(p.mm).VmPTE - v0).toBe(2056 - 256 * 4 - 4);
    expect(p.k.munmap(p.pid, a + GiB / 2, GiB / 2)).toBe(0);
    expect(status(p.mm).VmPTE).toBe(v0);
  });
});

describe("shared anonymous memory", () => {
  // Fact 11.
  it("faults shmem pages one at a time, counted in RssShmem, and fault-around maps only cached pages", () => {
    const p = boot();
    const s0 = status(p.mm);
    const a = p.k.mmap(p.pid, 0, 64 * KiB, RW, SHARED);
    p.k.write(p.pid, a, 1);
    expect(presentIndices(pages(p, a, 16))).toEqual([0]);
    expect(status(p.mm).RssShmem).toBe(4);

    expect(p.k.read(p.pid, a + 5 * P, 1).tags).toEqual([0]);
    const ps = pages(p, a, 16);
    expect(presentIndices(ps)).toEqual([0, 5]);
    expect([ps[0].kind, ps[5].kind]).toEqual(["shmem", "shmem"]);
    expect(ps[5].pfn).not.toBe(ps[0].pfn);
    const s = status(p.mm);
    expect([s.RssShmem, s.RssAnon - s0.RssAnon]).toEqual([8, 0]);
    const e = smapsAt(p, a);
    expect([e.perms, e.Rss, e.Anonymous, e.VmFlags]).toEqual(["rw-s", 8, 0, "rd wr sh mr mw me ms"]);
  });
});

describe("mprotect and VM_ACCOUNT", () => {
  // Fact 12.
  it("splits a VMA in three for the middle page and merges it back when the protection returns", () => {
    const p = boot(THP_2M_INHERIT, false);
    const a = p.k.mmap(p.pid, 0, 3 * P, RW, PRIV);
    expect(p.k.mprotect(p.pid, a + P, P, R)).toBe(0);
    expect(vmaRanges(p, a, a + 3 * P)).toEqual([
      [0, P],
      [P, 2 * P],
      [2 * P, 3 * P],
    ]);
    expect(p.k.mprotect(p.pid, a + P, P, RW)).toBe(0);
    expect(vmaRanges(p, a, a + 3 * P)).toEqual([[0, 3 * P]]);
  });

  // Fact 12.
  it("keeps VM_ACCOUNT on a written middle page made read-only again, so three VMAs remain", () => {
    const p = boot(THP_2M_INHERIT, false);
    const a = p.k.mmap(p.pid, 0, 3 * P, R, PRIV);
    expect(smapsAt(p, a).VmFlags).toBe("rd mr mw me");
    expect(p.k.mprotect(p.pid, a + P, P, RW)).toBe(0);
    expect(smapsAt(p, a + P).VmFlags).toBe("rd wr mr mw me ac");
    p.k.write(p.pid, a + P, 1);
    expect(p.k.mprotect(p.pid, a + P, P, R)).toBe(0);
    expect(smaps(p.mm).map((e) => [e.start - a, e.end - a, e.VmFlags])).toEqual([
      [0, P, "rd mr mw me"],
      [P, 2 * P, "rd mr mw me ac"],
      [2 * P, 3 * P, "rd mr mw me"],
    ]);
  });

  // Fact 12.
  it("drops VM_ACCOUNT from a never-written middle page made read-only again, so it merges into one VMA", () => {
    const p = boot(THP_2M_INHERIT, false);
    const a = p.k.mmap(p.pid, 0, 3 * P, R, PRIV);
    expect(p.k.mprotect(p.pid, a + P, P, RW)).toBe(0);
    expect(smapsAt(p, a + P).VmFlags).toBe("rd wr mr mw me ac");
    expect(p.k.mprotect(p.pid, a + P, P, R)).toBe(0);
    expect(smaps(p.mm).map((e) => [e.start - a, e.end - a, e.VmFlags])).toEqual([[0, 3 * P, "rd mr mw me"]]);
  });
});

// Facts 13-19: fork, then a write in the child (page 1), a write in the parent (page 2), the
// child's exit and a write in the parent (page 3), as the C probe ran them on a 2 MiB range at a
// fixed 2 MiB aligned address. Sharing is compared as which (process, page) pairs share a frame,
// VmPTE and RssAnon as deltas (the parent's from before the mmap, the child's from after it
// unmapped the range).

/** One fork scenario: the THP knobs and how the range is populated before the fork. */
interface ForkCase {
  enabled: ThpConfig["enabled"];
  orders: ThpConfig["orders"];
  /** MADV_HUGEPAGE on the range. */
  hugepage?: boolean;
  /** mprotect page 1 read-only and back to read-write before the fork: a PTE-mapped THP. */
  pteMapped?: boolean;
  /** Populate by reading every page instead of writing it. */
  readOnly?: boolean;
  /** The page the child writes in step b: 1 unless stated. */
  childPage?: number;
  /** The parent writes nothing while the child lives (no step c). */
  noParentWrite?: boolean;
}

/** 0 before the fork, a right after it, b the child wrote, c the parent wrote page 2, d0 the child exited, d the parent wrote page 3. */
type Step = "0" | "a" | "b" | "c" | "d0" | "d";

/** What one process shows of the range at one step. */
interface View {
  pages: PageInfo[];
  smaps: SmapsEntry;
  status: Status;
}

interface ForkRun {
  /** The parent's status before the mmap, the child's after it unmapped the range. */
  base: Status;
  childBase: Status;
  steps: Partial<Record<Step, { P: View; C: View | null }>>;
}

const RANGE = 2 * MiB;
const NPAGES = RANGE / P;

/** Runs the scenario in a fresh kernel, auditing after every step. */
function runFork(fc: ForkCase): ForkRun {
  const p = boot(fc.orders, true, fc.enabled);
  const { k, pid } = p;
  // A 2 MiB aligned address with at least 2 MiB free on each side, as the probe chose it.
  const hole = k.mmap(pid, 0, 8 * MiB, PROT_NONE, PRIV);
  const addr = Math.ceil((hole + 2 * MiB) / PMD_SIZE) * PMD_SIZE;
  expect(k.munmap(pid, hole, 8 * MiB)).toBe(0);
  const base = status(p.mm);
  expect(k.mmap(pid, addr, RANGE, RW, PRIV | MAP_FIXED_NOREPLACE)).toBe(addr);
  if (fc.hugepage) expect(k.madvise(pid, addr, RANGE, MADV_HUGEPAGE)).toBe(0);
  if (fc.readOnly) {
    for (let i = 0; i < NPAGES; i++) expect(k.read(pid, addr + i * P, 1).pages, `read of page ${i}`).toBe(1);
  } else {
    writePages(p, addr, NPAGES);
  }
  if (fc.pteMapped) {
    expect(k.mprotect(pid, addr + P, P, R)).toBe(0);
    expect(k.mprotect(pid, addr + P, P, RW)).toBe(0);
  }
  let child = -1;
  const steps: ForkRun["steps"] = {};
  const view = (q: number): View => {
    const mm = k.mm(q);
    const e = smaps(mm).find((s) => s.start <= addr && addr < s.end);
    if (e === undefined) throw new Error(`runFork: pid ${q} has no VMA at the range`);
    return { pages: pageDump(mm, addr, addr + RANGE), smaps: e, status: status(mm) };
  };
  const snap = (s: Step): void => {
    audit(k);
    steps[s] = { P: view(pid), C: child < 0 ? null : view(child) };
  };
  snap("0");
  child = k.fork(pid);
  expect(child, "fork").toBeGreaterThan(0);
  snap("a");
  expect(k.write(child, addr + (fc.childPage ?? 1) * P, 1).pages).toBe(1);
  snap("b");
  if (!fc.noParentWrite) {
    expect(k.write(pid, addr + 2 * P, 1).pages).toBe(1);
    snap("c");
  }
  expect(k.munmap(child, addr, RANGE)).toBe(0);
  audit(k);
  const childBase = status(k.mm(child));
  k.exit(child);
  child = -1;
  snap("d0");
  expect(k.write(pid, addr + 3 * P, 1).pages).toBe(1);
  snap("d");
  return { base, childBase, steps };
}

/** Runs [first, last, value] of consecutive pages with equal values. */
type Runs<T> = [number, number, T][];

function runs<T>(ps: PageInfo[], f: (pg: PageInfo, i: number) => T): Runs<T> {
  const out: Runs<T> = [];
  ps.forEach((pg, i) => {
    const v = f(pg, i);
    const last = out[out.length - 1];
    if (last !== undefined && JSON.stringify(last[2]) === JSON.stringify(v)) last[1] = i;
    else out.push([i, i, v]);
  });
  return out;
}

/** The runs of a range whose pages are all `rest` but the listed ones. */
function shape<T>(rest: T, except: Record<number, T> = {}): Runs<T> {
  return runs(Array(NPAGES).fill(null), (_pg, i) => (i in except ? except[i] : rest));
}

/** A page as the probe classified it: kind, folio order, kpagecount, mapped by a PMD. */
function label(pg: PageInfo): string {
  if (pg.kind === "none" || pg.kind === "zero") return pg.kind;
  return `${pg.kind} o${pg.order} m${pg.mapcount}${pg.pmd ? " pmd" : ""}`;
}

/** Which (process, page) pairs share a frame: every group of two or more, as "P<i>"/"C<i>". */
function sharing(P: PageInfo[], C: PageInfo[] | null): string[][] {
  const byPfn = new Map<number, string[]>();
  const add = (who: string, ps: PageInfo[]) =>
    ps.forEach((pg, i) => {
      if (pg.kind === "none") return;
      const g = byPfn.get(pg.pfn) ?? [];
      g.push(`${who}${i}`);
      byPfn.set(pg.pfn, g);
    });
  add("P", P);
  add("C", C ?? []);
  return [...byPfn.values()].filter((g) => g.length > 1);
}

/** Every page but the listed ones shared by parent and child at the same index, and nothing else. */
function pairs(except: number[] = []): string[][] {
  return [...Array(NPAGES).keys()].filter((i) => !except.includes(i)).map((i) => [`P${i}`, `C${i}`]);
}

/**
 * Pages of large folios that are not where a naturally aligned folio of `nr` pages puts them:
 * page i must be page i % nr of its folio, and the pages of one aligned block share one head.
 */
function misplaced(ps: PageInfo[], nr: number): number[] {
  const out: number[] = [];
  ps.forEach((pg, i) => {
    if (pg.kind !== "anon" || pg.order === 0) return;
    const block = ps.slice(i - (i % nr), i - (i % nr) + nr).filter((q) => q.kind === "anon" && q.order > 0);
    if (pg.order !== Math.log2(nr) || pg.pfn - pg.head !== i % nr || block.some((q) => q.head !== pg.head))
      out.push(i);
  });
  return out;
}

/** smaps of the range and the status deltas. */
interface Cost {
  Rss: number;
  Anonymous: number;
  AnonHugePages: number;
  RssAnon: number;
  VmPTE: number;
}

function cost(v: View, base: Status): Cost {
  return {
    Rss: v.smaps.Rss,
    Anonymous: v.smaps.Anonymous,
    AnonHugePages: v.smaps.AnonHugePages,
    RssAnon: v.status.RssAnon - base.RssAnon,
    VmPTE: v.status.VmPTE - base.VmPTE,
  };
}

/** The observed cost of a populated 2 MiB range: 512 anon pages, one PTE table (or deposit). */
const full = (AnonHugePages = 0): Cost => ({
  Rss: 2048,
  Anonymous: 2048,
  AnonHugePages,
  RssAnon: 2048,
  VmPTE: 4,
});

interface StepFacts {
  sharing: string[][];
  P: Runs<string>;
  C?: Runs<string>;
  costP: Cost;
  costC?: Cost;
}

/** The facts of every step of a run, in the form the expectations state them. */
function facts(r: ForkRun): Partial<Record<Step, StepFacts>> {
  const out: Partial<Record<Step, StepFacts>> = {};
  for (const [step, s] of Object.entries(r.steps) as [Step, { P: View; C: View | null }][]) {
    const f: StepFacts = {
      sharing: sharing(s.P.pages, s.C?.pages ?? null),
      P: runs(s.P.pages, label),
      costP: cost(s.P, r.base),
    };
    if (s.C !== null) {
      f.C = runs(s.C.pages, label);
      f.costC = cost(s.C, r.childBase);
    }
    out[step] = f;
  }
  return out;
}

/** Pagemap bit 56 (`exclusive`) of every step, as runs. */
function exclusiveBits(r: ForkRun): Partial<Record<Step, { P: Runs<boolean>; C?: Runs<boolean> }>> {
  const out: Partial<Record<Step, { P: Runs<boolean>; C?: Runs<boolean> }>> = {};
  for (const [step, s] of Object.entries(r.steps) as [Step, { P: View; C: View | null }][]) {
    out[step] = { P: runs(s.P.pages, (pg) => pg.exclusive) };
    if (s.C !== null) out[step].C = runs(s.C.pages, (pg) => pg.exclusive);
  }
  return out;
}

/** Pages whose content tags differ between parent and child. */
function tagDiff(s: { P: View; C: View | null } | undefined): number[] {
  const C = s?.C?.pages ?? [];
  return (s?.P.pages ?? []).flatMap((pg, i) => (pg.tag === C[i]?.tag ? [] : [i]));
}

/** Pages whose frame changed between two views of one process. */
function moved(x: View | undefined, y: View | undefined): number[] {
  const ys = y?.pages ?? [];
  return (x?.pages ?? []).flatMap((pg, i) => (pg.pfn === ys[i]?.pfn ? [] : [i]));
}

const FORK_CASES = {
  "4 KiB": { enabled: "never", orders: { 9: "inherit" } },
  "16 KiB mTHP": { enabled: "never", orders: { 2: "always", 9: "inherit" } },
  "64 KiB mTHP": { enabled: "never", orders: { 4: "always", 9: "inherit" } },
  "PMD THP": { enabled: "madvise", orders: THP_2M_INHERIT, hugepage: true },
  "PTE-mapped THP": { enabled: "madvise", orders: THP_2M_INHERIT, hugepage: true, pteMapped: true },
  "PMD THP, child writes the head": {
    enabled: "madvise",
    orders: THP_2M_INHERIT,
    hugepage: true,
    childPage: 0,
    noParentWrite: true,
  },
} satisfies Record<string, ForkCase>;
type ForkCaseName = keyof typeof FORK_CASES;

const forkRuns = new Map<ForkCaseName, ForkRun>();
function forkRun(name: ForkCaseName): ForkRun {
  let r = forkRuns.get(name);
  if (r === undefined) {
    r = runFork(FORK_CASES[name]);
    forkRuns.set(name, r);
  }
  return r;
}

/** The observed facts of a written range of order-`o` folios mapped by PTEs (facts 13, 14, 16). */
function pteMappedFacts(o: number): Partial<Record<Step, StepFacts>> {
  const a = (m: number) => `anon o${o} m${m}`;
  const copy = "anon o0 m1";
  return {
    "0": { sharing: [], P: shape(a(1)), costP: full() },
    a: { sharing: pairs(), P: shape(a(2)), C: shape(a(2)), costP: full(), costC: full() },
    b: {
      sharing: pairs([1]),
      P: shape(a(2), { 1: a(1) }),
      C: shape(a(2), { 1: copy }),
      costP: full(),
      costC: full(),
    },
    c: {
      sharing: pairs([1, 2]),
      P: shape(a(2), { 1: a(1), 2: copy }),
      C: shape(a(2), { 1: copy, 2: a(1) }),
      costP: full(),
      costC: full(),
    },
    d0: { sharing: [], P: shape(a(1), { 2: copy }), costP: full() },
    d: { sharing: [], P: shape(a(1), { 2: copy }), costP: full() },
  };
}

describe("fork and COW, as Linux 6.18 leaves parent and child", () => {
  // Fact 13.
  it("shares every 4 KiB page after fork; a COW write copies just the written page, in either process", () => {
    const r = forkRun("4 KiB");
    expect(facts(r)).toEqual(pteMappedFacts(0));
    expect([tagDiff(r.steps.a), tagDiff(r.steps.b), tagDiff(r.steps.c)]).toEqual([[], [1], [1, 2]]);
  });

  // Fact 14.
  it.each([
    ["16 KiB mTHP", 2],
    ["64 KiB mTHP", 4],
  ] as const)(
    "shares %s folios whole after fork; a COW write copies one order-0 page and the folio stays whole",
    (name, o) => {
      const r = forkRun(name);
      expect(facts(r)).toEqual(pteMappedFacts(o));
      for (const [step, s] of Object.entries(r.steps)) {
        expect([misplaced(s.P.pages, 2 ** o), misplaced(s.C?.pages ?? [], 2 ** o)], `step ${step}`).toEqual([
          [],
          [],
        ]);
      }
      expect([tagDiff(r.steps.b), tagDiff(r.steps.c)]).toEqual([[1], [1, 2]]);
    },
  );

  // Fact 15.
  it("maps a PMD THP by a PMD in both after fork; a COW write splits only the writer's PMD and copies one order-0 page", () => {
    const r = forkRun("PMD THP");
    const a = (m: number, pmd = false) => `anon o9 m${m}${pmd ? " pmd" : ""}`;
    const copy = "anon o0 m1";
    expect(facts(r)).toEqual({
      "0": { sharing: [], P: shape(a(1, true)), costP: full(2048) },
      a: {
        sharing: pairs(),
        P: shape(a(2, true)),
        C: shape(a(2, true)),
        costP: full(2048),
        costC: full(2048), // the child's deposited table is its VmPTE
      },
      b: {
        sharing: pairs([1]),
        P: shape(a(2, true), { 1: a(1, true) }), // kpagecount of a PMD-mapped page adds the entire mapcount
        C: shape(a(2), { 1: copy }),
        costP: full(2048),
        costC: full(),
      },
      c: {
        sharing: pairs([1, 2]),
        P: shape(a(2), { 1: a(1), 2: copy }),
        C: shape(a(2), { 1: copy, 2: a(1) }),
        costP: full(),
        costC: full(),
      },
      d0: { sharing: [], P: shape(a(1), { 2: copy }), costP: full() },
      d: { sharing: [], P: shape(a(1), { 2: copy }), costP: full() },
    });
    for (const [step, s] of Object.entries(r.steps)) {
      expect([misplaced(s.P.pages, 512), misplaced(s.C?.pages ?? [], 512)], `step ${step}`).toEqual([[], []]);
    }
  });

  // Fact 16.
  it("shares a PTE-mapped THP page by page after fork; COW copies are order 0 and the THP stays whole", () => {
    const r = forkRun("PTE-mapped THP");
    expect(facts(r)).toEqual(pteMappedFacts(9));
    for (const [step, s] of Object.entries(r.steps)) {
      expect([misplaced(s.P.pages, 512), misplaced(s.C?.pages ?? [], 512)], `step ${step}`).toEqual([[], []]);
    }
  });

  // Fact 17.
  it.each(Object.keys(FORK_CASES) as ForkCaseName[])(
    "reuses the page in place on the parent's write after the child exits: %s",
    (name) => {
      const r = forkRun(name);
      expect(moved(r.steps.d0?.P, r.steps.d?.P)).toEqual([]);
    },
  );

  // Fact 17.
  it("keeps a PMD THP PMD-mapped in the parent when the child COWed its head, and reuses it after the child exits", () => {
    const r = forkRun("PMD THP, child writes the head");
    const a = (m: number, pmd = false) => `anon o9 m${m}${pmd ? " pmd" : ""}`;
    expect(facts(r)).toEqual({
      "0": { sharing: [], P: shape(a(1, true)), costP: full(2048) },
      a: {
        sharing: pairs(),
        P: shape(a(2, true)),
        C: shape(a(2, true)),
        costP: full(2048),
        costC: full(2048),
      },
      b: {
        sharing: pairs([0]),
        P: shape(a(2, true), { 0: a(1, true) }),
        C: shape(a(2), { 0: "anon o0 m1" }),
        costP: full(2048),
        costC: full(),
      },
      d0: { sharing: [], P: shape(a(1, true)), costP: full(2048) },
      d: { sharing: [], P: shape(a(1, true)), costP: full(2048) },
    });
  });

  // Fact 18. Not observable on the probe's host, which boots with pvm_no_zero_page=1 (a read
  // fault there allocates a fresh page). From mm/memory.c: do_anonymous_page maps the zero page
  // for a read before vmf_anon_prepare, so the VMA has no anon_vma and vma_needs_copy() makes
  // fork skip its page tables; a write to a zero-page PTE is wp_page_copy into an order-0 page.
  it("copies no page tables at fork for a range only read (zero page); writes then fault order-0 pages", () => {
    const r = runFork({ enabled: "never", orders: { 9: "inherit" }, readOnly: true });
    const zeros = (except: number[] = []) => [
      [...Array(NPAGES).keys()].filter((i) => !except.includes(i)).map((i) => `P${i}`),
    ];
    const none: Cost = { Rss: 0, Anonymous: 0, AnonHugePages: 0, RssAnon: 0, VmPTE: 0 };
    const tables = { ...none, VmPTE: 4 };
    const pages = (n: number): Cost => ({ ...tables, Rss: 4 * n, Anonymous: 4 * n, RssAnon: 4 * n });
    const copy = "anon o0 m1";
    expect(facts(r)).toEqual({
      "0": { sharing: zeros(), P: shape("zero"), costP: tables },
      a: { sharing: zeros(), P: shape("zero"), C: shape("none"), costP: tables, costC: none },
      b: {
        sharing: zeros(),
        P: shape("zero"),
        C: shape("none", { 1: copy }),
        costP: tables,
        costC: pages(1),
      },
      c: {
        sharing: zeros([2]),
        P: shape("zero", { 2: copy }),
        C: shape("none", { 1: copy }),
        costP: pages(1),
        costC: pages(1),
      },
      d0: { sharing: zeros([2]), P: shape("zero", { 2: copy }), costP: pages(1) },
      d: { sharing: zeros([2, 3]), P: shape("zero", { 2: copy, 3: copy }), costP: pages(2) },
    });
  });
});

describe("pagemap's exclusive bit after fork", () => {
  const bits = (rest: boolean, set: number[] = []): Runs<boolean> =>
    shape(rest, Object.fromEntries(set.map((i) => [i, !rest])));
  /**
   * Observed bit 56 per step. `parentPmdAtB`: the parent still maps the THP by a PMD at b, where all
   * 512 entries show the head page's mapcount; `headMappedOnce`: that mapcount is 1 (the child
   * COWed the head). Without `parentWrites` there is no step c.
   */
  const observed = (
    childPage: number,
    parentPmdAtB = false,
    headMappedOnce = false,
    parentWrites = true,
  ) => ({
    "0": { P: bits(true) },
    a: { P: bits(false), C: bits(false) },
    b: { P: parentPmdAtB ? bits(headMappedOnce) : bits(false, [childPage]), C: bits(false, [childPage]) },
    ...(parentWrites ? { c: { P: bits(false, [1, 2]), C: bits(false, [1, 2]) } } : {}),
    d0: { P: bits(true) },
    d: { P: bits(true) },
  });

  // Fact 19.
  it.each([
    ["4 KiB", observed(1)],
    ["16 KiB mTHP", observed(1)],
    ["64 KiB mTHP", observed(1)],
    ["PMD THP", observed(1, true)],
    ["PTE-mapped THP", observed(1)],
    ["PMD THP, child writes the head", observed(0, true, true, false)],
  ] as const)("is set for a page mapped once, whether or not it is AnonExclusive: %s", (name, expected) => {
    expect(exclusiveBits(forkRun(name))).toEqual(expected);
  });
});
