// MADV_DONTNEED as Linux 6.18 does it (../shared/seeds/README.md, and VmPTE checked on this
// machine): zap, batched over large folios; a folio covered in part is queued for deferred
// split, not split; a PMD THP covered in part has its PMD split and keeps its folio; a PTE table
// covered whole is freed (CONFIG_PT_RECLAIM); private pages read zero afterwards, shared pages
// keep their content, and a pin keeps the page it holds.
// MADV_FREE under both designs, lazyfree reclaim, MADV_COLD/PAGEOUT/POPULATE_*: the seed's facts
// for 6.18 (../shared/seeds/README.md): MADV_FREE over whole folios splits nothing, MADV_FREE of
// 4 KiB inside a large folio splits it at once, MADV_DONTNEED of 4 KiB queues it for deferred split.

import { describe, expect, it } from "vitest";
import { audit } from "../check/audit.ts";
import { PG_anon, PG_swapbacked } from "../phys/memmap.ts";
import { status } from "../report/proc.ts";
import {
  MADV_COLD,
  MADV_DONTNEED,
  MADV_FREE,
  MADV_PAGEOUT,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_READ,
  PROT_WRITE,
} from "../uapi.ts";
import { Kernel } from "./kernel.ts";
import { folioLruList, LRU_NAMES } from "./lru.ts";
import type { MadviseFreeDesign, ThpConfig } from "./machine.ts";
import { mmuTranslate, pteTableOf } from "./mmu.ts";
import { _PAGE_ACCESSED, _PAGE_DIRTY } from "./pgtable.ts";

const A = 0x7f0000000000;
const RW = PROT_READ | PROT_WRITE;
const P = PAGE_SIZE;

function populated(thp: Partial<ThpConfig>, len: number, flags = MAP_PRIVATE) {
  const k = new Kernel({ ramBytes: 256 * 2 ** 20, thp });
  const pid = k.createProcess();
  expect(k.mmap(pid, A, len, RW, flags | MAP_ANONYMOUS | MAP_FIXED)).toBe(A);
  expect(k.write(pid, A, len).pages).toBe(len / P);
  const stat = (name: string) => k.machine.stat.get(name as never);
  return { k, pid, stat };
}

describe("MADV_DONTNEED", () => {
  it("frees a PTE table it covers whole, and keeps one it covers in part (CONFIG_PT_RECLAIM)", () => {
    // Measured on this 6.18 machine: 4 MiB of 4 KiB pages, DONTNEED of half a table leaves VmPTE,
    // DONTNEED of a whole table takes 4 kB off.
    const { k, pid } = populated({ enabled: "never" }, 2 * PMD_SIZE);
    const vmPte = () => status(k.mm(pid)).VmPTE;
    const before = vmPte();
    expect(k.madvise(pid, A, PMD_SIZE / 2, MADV_DONTNEED)).toBe(0);
    expect(vmPte()).toBe(before);
    expect(k.madvise(pid, A + PMD_SIZE, PMD_SIZE, MADV_DONTNEED)).toBe(0);
    expect(vmPte()).toBe(before - 4);
    expect(pteTableOf(k.mm(pid), A + PMD_SIZE)).toBeUndefined();
    expect(k.read(pid, A, 2 * PMD_SIZE).tags.every((t, i) => (i < 256 || i >= 512 ? t === 0 : t !== 0))).toBe(
      true,
    );
    audit(k);
  });

  it("unmaps 4 KiB of a 64 KiB folio and queues the folio for deferred split, without splitting it", () => {
    const { k, pid, stat } = populated({ enabled: "never", orders: { 4: "always" } }, 16 * P);
    const rss = status(k.mm(pid)).RssAnon;
    expect(k.madvise(pid, A + 3 * P, P, MADV_DONTNEED)).toBe(0);
    expect(status(k.mm(pid)).RssAnon).toBe(rss - 4);
    expect(k.machine.stat.getOrder("split_deferred", 4)).toBe(1);
    expect(stat("thp_split_pmd")).toBe(0);
    expect(k.machine.deferredSplit.size).toBe(1);
    expect(k.read(pid, A + 3 * P, P).tags).toEqual([0]);
    audit(k);
  });

  it("splits the PMD of a THP it covers in part and keeps the folio; whole folios are not queued", () => {
    const { k, pid, stat } = populated({ enabled: "always" }, 2 * PMD_SIZE);
    expect(stat("thp_fault_alloc")).toBe(2);
    expect(k.madvise(pid, A, P, MADV_DONTNEED)).toBe(0);
    expect(stat("thp_split_pmd")).toBe(1);
    expect(stat("thp_deferred_split_page")).toBe(1);
    expect(k.madvise(pid, A + PMD_SIZE, PMD_SIZE, MADV_DONTNEED)).toBe(0);
    expect(stat("thp_split_pmd")).toBe(1); // the whole THP goes as one PMD
    expect(stat("thp_deferred_split_page")).toBe(1);
    expect(status(k.mm(pid)).RssAnon).toBe(2048 - 4);
    audit(k);
  });

  it("leaves shared pages their content and a pinned page to its pin", () => {
    const s = populated({ enabled: "never" }, 4 * P, MAP_SHARED);
    const tags = s.k.read(s.pid, A, 4 * P).tags;
    expect(s.k.madvise(s.pid, A, 4 * P, MADV_DONTNEED)).toBe(0);
    expect(s.k.read(s.pid, A, 4 * P).tags).toEqual(tags);
    audit(s.k);

    const { k, pid } = populated({ enabled: "never" }, 4 * P);
    const held = k.read(pid, A, P).tags;
    const pin = k.pin(pid, A, P, { write: true, longterm: true });
    expect(k.madvise(pid, A, 4 * P, MADV_DONTNEED)).toBe(0);
    expect(k.read(pid, A, P).tags).toEqual([0]);
    expect(k.pinRead(pin)).toEqual(held);
    audit(k);
  });

  it("reports ENOMEM for a hole after zapping the mapped parts", () => {
    const { k, pid } = populated({ enabled: "never" }, 4 * P);
    expect(k.munmap(pid, A + P, P)).toBe(0);
    expect(k.madvise(pid, A, 4 * P, MADV_DONTNEED)).toBe(-12);
    expect(k.read(pid, A + 2 * P, P).tags).toEqual([0]);
    audit(k);
  });
});

/** Order, flags and LRU list of the folio mapping addr. */
function folioAt(k: Kernel, pid: number, addr: number) {
  const mem = k.machine.memmap;
  const pfn = mmuTranslate(k.mm(pid), addr, false, false);
  const head = mem.folioHead(pfn);
  return {
    head,
    order: mem.order(head),
    lazyfree: mem.test(head, PG_anon) && !mem.test(head, PG_swapbacked),
    list: LRU_NAMES[folioLruList(mem.flags(head))],
  };
}

/** LazyFree of the mm in kB, as smaps sums it: mapped pages of anon folios not swap-backed. */
function lazyFreeKiB(k: Kernel, pid: number, len: number): number {
  const mem = k.machine.memmap;
  let n = 0;
  for (let a = A; a < A + len; a += P) {
    const pfn = mmuTranslate(k.mm(pid), a, false, false);
    if (pfn >= 0 && pfn < k.machine.buddy.nrPages && !mem.test(mem.folioHead(pfn), PG_swapbacked)) n += 4;
  }
  return n;
}

const MTHP_64K: Partial<ThpConfig> = { enabled: "never", orders: { 4: "always" } };

function populatedFree(
  design: MadviseFreeDesign,
  thp: Partial<ThpConfig>,
  len: number,
  ramMiB = 256,
  swapMiB = 0,
) {
  const k = new Kernel({
    ramBytes: ramMiB * 2 ** 20,
    swapBytes: swapMiB * 2 ** 20,
    thp,
    madvise: { free: design },
  });
  const pid = k.createProcess();
  expect(k.mmap(pid, A, len, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(A);
  const w = k.write(pid, A, len);
  expect(w.pages).toBe(len / P);
  const stat = (name: string) => k.machine.stat.get(name as never);
  const order = (stat: "split" | "split_deferred" | "nr_anon_partially_mapped", o: number) =>
    k.machine.stat.getOrder(stat, o);
  return { k, pid, stat, order, firstTag: w.firstTag };
}

describe("MADV_FREE (Linux 6.18: batched; before 6.10: split)", () => {
  it("batched: marks whole 64 KiB folios lazyfree without a split, PTEs clean and old, RSS kept", () => {
    const { k, pid, stat, order } = populatedFree("batched", MTHP_64K, 64 * P);
    const rss = status(k.mm(pid)).RssAnon;
    expect(k.madvise(pid, A, 64 * P, MADV_FREE)).toBe(0);
    expect(order("split", 4)).toBe(0);
    expect(stat("pglazyfree")).toBe(64);
    for (let a = A; a < A + 64 * P; a += 16 * P)
      expect(folioAt(k, pid, a)).toMatchObject({ order: 4, lazyfree: true, list: "inactive_file" });
    // Non-null: the range is mapped by PTEs.
    const t = pteTableOf(k.mm(pid), A)!;
    for (let j = 0; j < 64; j++) expect(t.lo(j) & (_PAGE_DIRTY | _PAGE_ACCESSED)).toBe(0);
    expect(status(k.mm(pid)).RssAnon).toBe(rss);
    expect(lazyFreeKiB(k, pid, 64 * P)).toBe(256);
    expect(k.machine.deferredSplit.size).toBe(0);
    audit(k);
  });

  it("split: splits every large folio first, then makes each page lazyfree", () => {
    const { k, pid, stat, order } = populatedFree("split", MTHP_64K, 64 * P);
    expect(k.madvise(pid, A, 64 * P, MADV_FREE)).toBe(0);
    expect(order("split", 4)).toBe(4);
    expect(stat("folio_split")).toBe(4);
    expect(stat("pglazyfree")).toBe(64);
    expect(folioAt(k, pid, A + 5 * P)).toMatchObject({ order: 0, lazyfree: true, list: "inactive_file" });
    expect(lazyFreeKiB(k, pid, 64 * P)).toBe(256);
    audit(k);
  });

  it.each(["batched", "split"] as const)(
    "%s: 4 KiB inside a 64 KiB folio splits the folio at once; only that page is lazyfree",
    (design) => {
      const { k, pid, stat, order } = populatedFree(design, MTHP_64K, 16 * P);
      const rss = status(k.mm(pid)).RssAnon;
      expect(k.madvise(pid, A + 3 * P, P, MADV_FREE)).toBe(0);
      expect(order("split", 4)).toBe(1);
      expect(order("split_deferred", 4)).toBe(0);
      expect(stat("pglazyfree")).toBe(1);
      expect(folioAt(k, pid, A + 3 * P)).toMatchObject({ order: 0, lazyfree: true });
      expect(folioAt(k, pid, A + 4 * P)).toMatchObject({ order: 0, lazyfree: false });
      expect(status(k.mm(pid)).RssAnon).toBe(rss);
      expect(lazyFreeKiB(k, pid, 16 * P)).toBe(4);
      audit(k);
    },
  );

  it("MADV_DONTNEED of 4 KiB queues the folio for deferred split; the shrinker splits it and frees the page", () => {
    const { k, pid, order } = populatedFree("batched", MTHP_64K, 16 * P);
    expect(k.madvise(pid, A + 3 * P, P, MADV_DONTNEED)).toBe(0);
    expect([order("split", 4), order("split_deferred", 4), order("nr_anon_partially_mapped", 4)]).toEqual([
      0, 1, 1,
    ]);
    const free = k.machine.buddy.freePages();
    expect(k.splitDeferred()).toBe(1);
    expect([order("split", 4), order("nr_anon_partially_mapped", 4)]).toEqual([1, 0]);
    expect(k.machine.buddy.freePages()).toBe(free + 1);
    expect(folioAt(k, pid, A + 4 * P).order).toBe(0);
    audit(k);
  });

  it("after fork: batched marks a whole shared folio lazyfree (only PTE bits change), skips a partial one", () => {
    // 6.18 checks folio_maybe_mapped_shared only for a folio the range covers in part; a whole,
    // clean folio loses the dirty bits of this mm's PTEs only, and the child's dirty PTEs keep
    // it from being discarded. The 6.9 split design stops at a shared large folio (`break`).
    const { k, pid, stat, order } = populatedFree("batched", MTHP_64K, 16 * P);
    const tags = k.read(pid, A, 16 * P).tags;
    const child = k.fork(pid);
    expect(k.madvise(pid, A, 16 * P, MADV_FREE)).toBe(0);
    expect([stat("pglazyfree"), order("split", 4)]).toEqual([16, 0]);
    expect(k.madvise(pid, A + 3 * P, P, MADV_FREE)).toBe(0);
    expect([stat("pglazyfree"), order("split", 4)]).toEqual([16, 0]);
    k.reclaim(1024);
    expect(stat("pglazyfreed")).toBe(0);
    expect(k.read(child, A, 16 * P).tags).toEqual(tags);
    expect(folioAt(k, child, A)).toMatchObject({ order: 4, lazyfree: false });
    audit(k);

    const s = populatedFree("split", MTHP_64K, 16 * P);
    s.k.fork(s.pid);
    expect(s.k.madvise(s.pid, A, 16 * P, MADV_FREE)).toBe(0);
    expect([s.stat("pglazyfree"), s.order("split", 4)]).toEqual([0, 0]);
    audit(s.k);
  });

  it("reclaim discards clean lazyfree folios (reads give zeros) and keeps one written since", () => {
    const { k, pid, stat, firstTag } = populatedFree("batched", MTHP_64K, 64 * P);
    expect(k.madvise(pid, A, 64 * P, MADV_FREE)).toBe(0);
    // Write page 5 of the first folio again: its PTE is dirty, so the whole folio stays.
    const w = k.write(pid, A + 5 * P, P);
    const rss = status(k.mm(pid)).RssAnon;
    const freed = k.reclaim(1024);
    expect(freed).toBe(48);
    expect(stat("pglazyfreed")).toBe(48);
    expect(status(k.mm(pid)).RssAnon).toBe(rss - 192);
    expect(k.machine.stat.getOrder("split_deferred", 4)).toBe(0);
    const tags = k.read(pid, A, 64 * P).tags;
    expect(tags.slice(0, 16)).toEqual(
      [...Array(16).keys()].map((i) => (i === 5 ? w.firstTag : firstTag + i)),
    );
    expect(tags.slice(16).every((t) => t === 0)).toBe(true);
    expect(folioAt(k, pid, A)).toMatchObject({ order: 4, lazyfree: false, list: "active_anon" });
    audit(k);
  });

  it("reclaim keeps a lazyfree page a pin holds, and a lazyfree THP goes after its PMD is split", () => {
    const { k, pid, stat } = populatedFree("batched", { enabled: "always" }, PMD_SIZE);
    expect(stat("thp_fault_alloc")).toBe(1);
    expect(k.madvise(pid, A, PMD_SIZE, MADV_FREE)).toBe(0);
    expect(lazyFreeKiB(k, pid, PMD_SIZE)).toBe(2048);
    // As on the live 6.18 kernel (vmlab diff): the PMD is split, the 512 PTEs are discarded as a
    // batch, the folio is freed unsplit and the PTE table stays.
    expect(k.reclaim(512)).toBe(512);
    expect(stat("pglazyfreed")).toBe(512);
    expect([stat("thp_split_pmd"), stat("thp_split_page")]).toEqual([1, 0]);
    expect(status(k.mm(pid)).VmPTE).toBe(12);
    expect(k.read(pid, A, P).tags).toEqual([0]);
    audit(k);

    const s = populatedFree("batched", { enabled: "never" }, 4 * P);
    const held = s.k.read(s.pid, A, 4 * P).tags;
    const pin = s.k.pin(s.pid, A, P, {});
    expect(s.k.madvise(s.pid, A, 4 * P, MADV_FREE)).toBe(0);
    expect(s.k.reclaim(64)).toBe(3);
    expect(s.k.read(s.pid, A, 4 * P).tags).toEqual([held[0], 0, 0, 0]);
    expect(s.k.pinRead(pin)).toEqual([held[0]]);
    audit(s.k);
  });

  it("fails with EINVAL on a shared mapping and ENOMEM over a hole", () => {
    const s = populated({ enabled: "never" }, 4 * P, MAP_SHARED);
    expect(s.k.madvise(s.pid, A, 4 * P, MADV_FREE)).toBe(-22);
    const { k, pid } = populatedFree("batched", { enabled: "never" }, 4 * P);
    expect(k.munmap(pid, A + P, P)).toBe(0);
    expect(k.madvise(pid, A, 4 * P, MADV_FREE)).toBe(-12);
    expect(k.machine.stat.get("pglazyfree")).toBe(3);
    audit(k);
  });
});

describe("MADV_COLD, MADV_PAGEOUT, MADV_POPULATE_*", () => {
  it("MADV_COLD moves active folios to the inactive list and clears their young bits", () => {
    const { k, pid } = populatedFree("batched", { enabled: "never" }, 4 * P, 256, 16);
    // Reclaim's active-list scan and second chance make pages active: activate them by hand.
    expect(k.madvise(pid, A, 4 * P, MADV_PAGEOUT)).toBe(0); // out to swap
    expect(k.read(pid, A, 4 * P).pages).toBe(4);
    for (let a = A; a < A + 4 * P; a += P) expect(folioAt(k, pid, a).list).toMatch(/anon/);
    expect(k.madvise(pid, A, 4 * P, MADV_COLD)).toBe(0);
    for (let a = A; a < A + 4 * P; a += P) expect(folioAt(k, pid, a).list).toBe("inactive_anon");
    // Non-null: the range is mapped by PTEs.
    const t = pteTableOf(k.mm(pid), A)!;
    for (let j = 0; j < 4; j++) expect(t.lo(j) & _PAGE_ACCESSED).toBe(0);
    audit(k);
  });

  it("MADV_PAGEOUT swaps anon pages out at once, young or not, and a read brings them back", () => {
    const { k, pid, stat, firstTag } = populatedFree("batched", MTHP_64K, 32 * P, 256, 16);
    expect(k.madvise(pid, A, 32 * P, MADV_PAGEOUT)).toBe(0);
    expect(stat("pswpout")).toBe(32);
    expect(k.machine.stat.getOrder("split", 4)).toBe(2); // vmlab swaps order 0 only
    expect(status(k.mm(pid)).RssAnon).toBe(0);
    expect(status(k.mm(pid)).VmSwap).toBe(128);
    expect(k.read(pid, A, 32 * P).tags).toEqual([...Array(32).keys()].map((i) => firstTag + i));
    expect(stat("pswpin")).toBe(32);
    audit(k);
  });

  it("MADV_PAGEOUT without swap keeps anon pages; MADV_POPULATE_WRITE faults pages in writable", () => {
    const { k, pid, stat } = populatedFree("batched", { enabled: "never" }, 4 * P);
    expect(k.madvise(pid, A, 4 * P, MADV_PAGEOUT)).toBe(0);
    expect([stat("pswpout"), status(k.mm(pid)).RssAnon]).toEqual([0, 16]);
    expect(k.mmap(pid, A + 8 * P, 4 * P, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(A + 8 * P);
    expect(k.madvise(pid, A + 8 * P, 4 * P, MADV_POPULATE_WRITE)).toBe(0);
    expect(status(k.mm(pid)).RssAnon).toBe(32);
    expect(k.madvise(pid, A + 8 * P, 8 * P, MADV_POPULATE_READ)).toBe(-12);
    expect(k.mprotect(pid, A + 8 * P, 4 * P, PROT_READ)).toBe(0);
    expect(k.madvise(pid, A + 8 * P, 4 * P, MADV_POPULATE_WRITE)).toBe(-22); // EINVAL, as Linux 6.18 answers (vmlab diff)
    audit(k);
  });

  it("MADV_POPULATE_WRITE dirties a lazyfree page, so reclaim keeps it", () => {
    const { k, pid, stat, firstTag } = populatedFree("batched", { enabled: "never" }, 2 * P);
    expect(k.madvise(pid, A, 2 * P, MADV_FREE)).toBe(0);
    expect(k.madvise(pid, A, P, MADV_POPULATE_WRITE)).toBe(0);
    expect(k.reclaim(64)).toBe(1);
    expect(stat("pglazyfreed")).toBe(1);
    expect(k.read(pid, A, 2 * P).tags).toEqual([firstTag, 0]);
    audit(k);
  });
});
