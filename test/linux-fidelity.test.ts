// vmlab against facts observed on a live Linux 6.18 kernel (x86-64, THP global `madvise`,
// per-size knobs as each test states; `excl` is pagemap bit 56, PageAnonExclusive). Each test
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
//
// The tests read the model through the public Kernel API and src/report/proc.ts only.

import { describe, expect, it } from "vitest";
import { Kernel } from "../src/mm/kernel.ts";
import type { ThpConfig } from "../src/mm/machine.ts";
import type { Mm } from "../src/mm/mm.ts";
import { PG_partially_mapped } from "../src/phys/memmap.ts";
import { type PageInfo, pageDump, type SmapsEntry, smaps, status } from "../src/report/proc.ts";
import {
  MADV_HUGEPAGE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  PAGE_SIZE,
  PMD_SIZE,
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
function boot(orders: ThpConfig["orders"] = THP_2M_INHERIT, warm = true): Proc {
  const k = new Kernel({ ramBytes: 4 * GiB, thp: { enabled: "madvise", useZeroPage: true, orders } });
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
