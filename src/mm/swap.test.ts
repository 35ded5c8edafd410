// Swap entries as Linux 6.18 keeps them: reclaim's swap-out (swapOutFolio) turns every PTE of a
// page into a swap entry and frees the page; a fault brings it back from the swap cache or the
// slot (do_swap_page); fork shares the entry (copy_nonpresent_pte); zap frees its slot; mremap
// moves it and mprotect leaves it alone. A pinned page, or one under a shared COW page table,
// is not swapped out. The audit runs after every step.

import { describe, expect, it } from "vitest";
import { audit } from "../check/audit.ts";
import { peekContent } from "../check/compare.ts";
import { pageDump, smapsVma, status } from "../report/proc.ts";
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
} from "../uapi.ts";
import { type ForkPtCopy, Kernel } from "./kernel.ts";
import type { CowReuse } from "./machine.ts";
import { pteTableOf } from "./mmu.ts";
import { pteIndex } from "./pgtable.ts";
import { isSwapPte, pteSwpExclusive, swapOutFolio, swapPteSlot } from "./swap.ts";

const P = PAGE_SIZE;
const A = 0x7f0000000000;
const B = 0x7f0040000000;
const RW = PROT_READ | PROT_WRITE;

interface Opts {
  swapPages?: number;
  design?: ForkPtCopy;
  cow?: CowReuse;
  len?: number;
}

/** A process with `len` bytes (default 8 pages) of private anon memory at A, all written. */
function setup(opts: Opts = {}) {
  const k = new Kernel({
    ramBytes: 64 * 2 ** 20,
    swapBytes: (opts.swapPages ?? 256) * P,
    thp: { enabled: "never" },
    fork: { ptCopy: opts.design ?? "batched" },
    cow: opts.cow ?? "modern",
  });
  const pid = k.createProcess();
  const len = opts.len ?? 8 * P;
  expect(k.mmap(pid, A, len, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(A);
  const w = k.write(pid, A, len);
  expect(w.pages).toBe(len / P);
  const tags = [...Array(len / P).keys()].map((i) => w.firstTag + i);
  const stat = (name: string) => k.machine.stat.get(name as never);
  audit(k);
  return { k, pid, tags, stat, swap: k.machine.swap };
}

/** The one page at addr as the page dump shows it. */
const page = (k: Kernel, pid: number, addr: number) => pageDump(k.mm(pid), addr, addr + P)[0];

/** The words of the PTE at addr. */
function entry(k: Kernel, pid: number, addr: number): [number, number] {
  // Non-null: the tests only look where a table exists.
  const t = pteTableOf(k.mm(pid), addr)!;
  return [t.lo(pteIndex(addr)), t.hi(pteIndex(addr))];
}

/** Swaps out the page mapped at addr in pid. */
const swapOut = (k: Kernel, pid: number, addr: number) => swapOutFolio(k.machine, page(k, pid, addr).pfn);

describe("swap-out and swap-in", () => {
  it("turns the PTE into an exclusive swap entry, frees the page, and reads back the same content", () => {
    const { k, pid, tags, stat, swap } = setup();
    const free = k.machine.buddy.freePages();
    for (let i = 0; i < 4; i++) expect(swapOut(k, pid, A + i * P)).toBe("swapped");
    audit(k);
    const [lo, hi] = entry(k, pid, A);
    expect(isSwapPte(lo, hi)).toBe(true);
    expect(pteSwpExclusive(lo)).toBe(true);
    expect(page(k, pid, A)).toMatchObject({
      kind: "swap",
      anonExclusive: true,
      tag: tags[0],
      present: false,
    });
    expect(k.machine.buddy.freePages()).toBe(free + 4);
    expect(status(k.mm(pid))).toMatchObject({ RssAnon: 16, VmSwap: 16 });
    const vma = k.mm(pid).vmas[0];
    expect(smapsVma(k.mm(pid), vma)).toMatchObject({ Rss: 16, Anonymous: 16, Swap: 16 });
    expect([stat("pswpout"), stat("swap_slot_alloc"), swap.inuse, swap.cache.size]).toEqual([4, 4, 4, 0]);
    expect(peekContent(k.mm(pid), A + P)).toBe(tags[1]);

    expect(k.read(pid, A, 8 * P).tags).toEqual(tags);
    audit(k);
    expect(stat("pswpin")).toBe(4);
    expect(status(k.mm(pid))).toMatchObject({ RssAnon: 32, VmSwap: 0 });
    // A read fault keeps the page in the swap cache (swap is not half full): its slot stays.
    expect([swap.inuse, swap.cache.size]).toEqual([4, 4]);
    // The entry was exclusive, so the page is mapped writable at once, clean.
    expect(page(k, pid, A)).toMatchObject({
      kind: "anon",
      anonExclusive: true,
      writable: true,
      dirty: false,
    });
  });

  it("does not write a clean swap-cache page again, and writes one that was written since", () => {
    const { k, pid, tags, stat, swap } = setup();
    expect(swapOut(k, pid, A)).toBe("swapped");
    expect(swapOut(k, pid, A + P)).toBe("swapped");
    k.read(pid, A, 2 * P);
    const w = k.write(pid, A + P, P); // writable already: no fault, the PTE gets dirty
    expect(stat("pgfault")).toBe(8 + 2);
    expect(swapOut(k, pid, A)).toBe("swapped");
    expect(swapOut(k, pid, A + P)).toBe("swapped");
    audit(k);
    expect(stat("pswpout")).toBe(3); // page 0 was clean in the swap cache: no second write
    expect(stat("swap_slot_alloc")).toBe(2); // both kept their slots
    expect(swap.cache.size).toBe(0);
    expect(k.read(pid, A, 2 * P).tags).toEqual([tags[0], w.firstTag]);
    audit(k);
  });

  it("maps the page writable on a write fault and drops its slot, the cache and this fault being all that held it", () => {
    const { k, pid, stat, swap } = setup();
    expect(swapOut(k, pid, A)).toBe("swapped");
    const w = k.write(pid, A, P);
    audit(k);
    expect(page(k, pid, A)).toMatchObject({ kind: "anon", writable: true, dirty: true, tag: w.firstTag });
    expect([swap.inuse, swap.cache.size, stat("cow_copy")]).toEqual([0, 0, 0]);
  });

  it("frees the swap cache on a read fault once swap is over half full (vm_swap_full)", () => {
    const { k, pid, tags, swap } = setup({ swapPages: 4 });
    for (let i = 0; i < 3; i++) expect(swapOut(k, pid, A + i * P)).toBe("swapped");
    expect(swap.full()).toBe(true);
    expect(k.read(pid, A, P).tags).toEqual([tags[0]]);
    audit(k);
    expect([swap.inuse, swap.cache.size]).toEqual([2, 0]);
  });

  it("reports nospace when no slot is free, and changes nothing", () => {
    const { k, pid, swap } = setup({ swapPages: 2 });
    expect(swapOut(k, pid, A)).toBe("swapped");
    expect(swapOut(k, pid, A + P)).toBe("swapped");
    const before = entry(k, pid, A + 2 * P);
    expect(swapOut(k, pid, A + 2 * P)).toBe("nospace");
    expect(entry(k, pid, A + 2 * P)).toEqual(before);
    expect(swap.inuse).toBe(2);
    audit(k);
  });

  it("reclaims to swap a page in when no page is free: another page goes out to make room", () => {
    const { k, pid, tags, stat } = setup();
    expect(swapOut(k, pid, A)).toBe("swapped");
    const hog: number[] = [];
    for (let pfn = k.machine.allocFolio(0, 0); pfn >= 0; pfn = k.machine.allocFolio(0, 0)) hog.push(pfn);
    const out = stat("pswpout");
    const r = k.read(pid, A, P);
    expect(r.oom).toBe(false);
    expect(r.tags).toEqual([tags[0]]);
    expect(stat("pswpout")).toBeGreaterThan(out);
    expect(k.read(pid, A + P, 7 * P).tags).toEqual(tags.slice(1));
    for (const pfn of hog) k.machine.folioPut(pfn);
    audit(k);
  });

  it("fails a swap-in with VM_FAULT_OOM when no page is free and reclaim has no slot to swap to", () => {
    const { k, pid, tags, swap, stat } = setup({ swapPages: 1 });
    expect(swapOut(k, pid, A)).toBe("swapped");
    const hog: number[] = [];
    for (let pfn = k.machine.allocFolio(0, 0); pfn >= 0; pfn = k.machine.allocFolio(0, 0)) hog.push(pfn);
    const before = entry(k, pid, A);
    const r = k.read(pid, A, P);
    expect(r.oom).toBe(true);
    expect(stat("oom")).toBe(1);
    expect(entry(k, pid, A)).toEqual(before);
    expect([swap.inuse, swap.cache.size, swap.count[swapPteSlot(...before)]]).toEqual([1, 0, 1]);
    for (const pfn of hog) k.machine.folioPut(pfn);
    audit(k);
    expect(k.read(pid, A, P).tags).toEqual([tags[0]]);
    audit(k);
  });
});

describe("swap entries at fork", () => {
  it.each(["per-pte", "batched"] as const)(
    "%s: both processes read the same content, the exclusive bit goes in both, and a COW in the child stays there",
    (design) => {
      const { k, pid, tags, swap } = setup({ design });
      expect(swapOut(k, pid, A)).toBe("swapped");
      expect(swapOut(k, pid, A + P)).toBe("swapped");
      const slot = swapPteSlot(...entry(k, pid, A));
      const child = k.fork(pid);
      expect(child).toBeGreaterThan(0);
      audit(k);
      for (const p of [pid, child]) {
        expect(page(k, p, A)).toMatchObject({ kind: "swap", anonExclusive: false, swap: slot });
        expect(status(k.mm(p)).VmSwap).toBe(8);
      }
      expect(swap.count[slot]).toBe(2);

      // The child faults page 0 in first, the parent then maps the same page from the swap cache.
      expect(k.read(child, A, P).tags).toEqual([tags[0]]);
      audit(k);
      expect(k.read(pid, A, P).tags).toEqual([tags[0]]);
      audit(k);
      expect(page(k, child, A).pfn).toBe(page(k, pid, A).pfn);
      expect(page(k, pid, A)).toMatchObject({ anonExclusive: false, writable: false, mapcount: 2 });

      // A write in the child copies; the parent keeps what it had, then reuses its page.
      const w = k.write(child, A, P);
      audit(k);
      expect(k.read(pid, A, P).tags).toEqual([tags[0]]);
      expect(k.read(child, A, P).tags).toEqual([w.firstTag]);
      const cow = k.machine.stat.get("cow_copy");
      const pw = k.write(pid, A, P);
      audit(k);
      expect(k.machine.stat.get("cow_copy")).toBe(cow); // reused: the swap cache let go of it
      expect(k.read(child, A, P).tags).toEqual([w.firstTag]);
      expect(k.read(pid, A, P).tags).toEqual([pw.firstTag]);

      // Page 1 is still out in both; the child's exit drops its reference to the slot.
      const slot1 = swapPteSlot(...entry(k, pid, A + P));
      k.exit(child);
      audit(k);
      expect(swap.count[slot1]).toBe(1);
      expect(k.read(pid, A + P, P).tags).toEqual([tags[1]]);
      k.exit(pid);
      audit(k);
      expect(swap.inuse).toBe(0);
    },
  );

  it("legacy reuse counts the swap entries too: a child's write after swap-in never reaches the parent", () => {
    const { k, pid, tags } = setup({ cow: "legacy" });
    expect(swapOut(k, pid, A)).toBe("swapped");
    const child = k.fork(pid);
    k.read(child, A, P); // mapped once (by the child), but the parent's entry still names the slot
    const w = k.write(child, A, P);
    audit(k);
    expect(k.read(pid, A, P).tags).toEqual([tags[0]]);
    expect(k.read(child, A, P).tags).toEqual([w.firstTag]);
    audit(k);
    // Now the parent maps the page once and no entry names its slot: it reuses it, and the swap
    // cache lets go of it (reuse_swap_page).
    const cow = k.machine.stat.get("cow_copy");
    k.write(pid, A, P);
    expect(k.machine.stat.get("cow_copy")).toBe(cow);
    expect(k.machine.swap.inuse).toBe(0);
    audit(k);
  });
});

describe("swap entries and the other page-table walkers", () => {
  it.each([
    ["munmap", (k: Kernel, pid: number) => expect(k.munmap(pid, A, 8 * P)).toBe(0)],
    ["exit", (k: Kernel, pid: number) => k.exit(pid)],
    ["MADV_DONTNEED", (k: Kernel, pid: number) => expect(k.madvise(pid, A, 8 * P, MADV_DONTNEED)).toBe(0)],
  ])("%s frees the slots of swap entries and of the swap-cache pages it unmaps", (_, zap) => {
    const { k, pid, swap } = setup();
    for (let i = 0; i < 4; i++) expect(swapOut(k, pid, A + i * P)).toBe("swapped");
    k.read(pid, A, P); // page 0 back, its slot kept by the swap cache
    expect([swap.inuse, swap.cache.size]).toEqual([4, 1]);
    zap(k, pid);
    audit(k);
    expect([swap.inuse, swap.cache.size]).toEqual([0, 0]);
    if (k.pids().includes(pid)) {
      expect(status(k.mm(pid)).VmSwap).toBe(0);
      if (k.mm(pid).vmas.length > 0) expect(k.read(pid, A, 4 * P).tags).toEqual([0, 0, 0, 0]);
    }
  });

  it("mremap moves swap entries as they are", () => {
    const { k, pid, tags, swap } = setup();
    expect(swapOut(k, pid, A + P)).toBe("swapped");
    const before = entry(k, pid, A + P);
    expect(k.mremap(pid, A, 8 * P, 8 * P, MREMAP_MAYMOVE | MREMAP_FIXED, B)).toBe(B);
    audit(k);
    expect(entry(k, pid, B + P)).toEqual(before);
    expect(status(k.mm(pid)).VmSwap).toBe(4);
    expect(swap.count[swapPteSlot(...before)]).toBe(1);
    expect(k.read(pid, B, 8 * P).tags).toEqual(tags);
    audit(k);
  });

  it("mprotect leaves a swap entry alone; the fault maps the page with the protection of the moment", () => {
    const { k, pid, tags } = setup();
    expect(swapOut(k, pid, A)).toBe("swapped");
    const before = entry(k, pid, A);
    expect(k.mprotect(pid, A, 8 * P, PROT_NONE)).toBe(0);
    expect(entry(k, pid, A)).toEqual(before);
    expect(k.read(pid, A, P).signal).toBe("SIGSEGV");
    audit(k);
    expect(k.mprotect(pid, A, 8 * P, PROT_READ)).toBe(0);
    expect(entry(k, pid, A)).toEqual(before);
    expect(k.read(pid, A, P).tags).toEqual([tags[0]]);
    expect(page(k, pid, A)).toMatchObject({ kind: "anon", writable: false });
    expect(k.write(pid, A, P).signal).toBe("SIGSEGV");
    audit(k);
  });

  it("GUP faults a swapped page in: a pin falls back from the fast path and sees its content", () => {
    const { k, pid, tags } = setup();
    expect(swapOut(k, pid, A)).toBe("swapped");
    const pin = k.pin(pid, A, P, { fast: true, longterm: true });
    expect(k.pinned(pin)).toBe(1);
    expect(k.pinRead(pin)).toEqual([tags[0]]);
    expect(k.machine.stat.get("gup_fast")).toBe(0);
    expect(page(k, pid, A).anonExclusive).toBe(true);
    audit(k);
  });
});

describe("pages that are not swapped out", () => {
  it("keeps a pinned page as it is", () => {
    const { k, pid, swap } = setup();
    k.pin(pid, A, P, { write: true, longterm: true });
    const before = entry(k, pid, A);
    expect(swapOut(k, pid, A)).toBe("busy");
    expect(entry(k, pid, A)).toEqual(before);
    expect([swap.inuse, k.machine.stat.get("swap_slot_alloc")]).toEqual([0, 0]);
    audit(k);
  });

  it("keeps a pinned page that is in the swap cache already (try_to_unmap_one would fail)", () => {
    const { k, pid, swap } = setup();
    const pipe = k.vmsplice(pid, A, P);
    expect(swapOut(k, pid, A)).toBe("busy"); // unmapped, held by the pipe, in the swap cache
    k.read(pid, A, P); // mapped again from the swap cache, exclusive
    k.pipeRead(pipe);
    k.pin(pid, A, P, { write: true, longterm: true });
    expect(swap.cache.size).toBe(1);
    const before = entry(k, pid, A);
    expect(swapOut(k, pid, A)).toBe("busy");
    expect(entry(k, pid, A)).toEqual(before);
    audit(k);
  });

  it("leaves a page a pipe holds in the swap cache, unmapped and written, and maps it again from there", () => {
    const { k, pid, tags, stat, swap } = setup();
    const pfn = page(k, pid, A).pfn;
    const pipe = k.vmsplice(pid, A, P);
    expect(swapOut(k, pid, A)).toBe("busy");
    audit(k);
    expect(page(k, pid, A).kind).toBe("swap");
    expect([swap.cache.get(swapPteSlot(...entry(k, pid, A))), stat("pswpout")]).toEqual([pfn, 1]);
    expect(k.read(pid, A, P).tags).toEqual([tags[0]]);
    expect(page(k, pid, A).pfn).toBe(pfn);
    expect(stat("pswpin")).toBe(0);
    audit(k);
    expect(k.pipeRead(pipe)).toEqual([tags[0]]);
    expect(swapOut(k, pid, A)).toBe("swapped");
    expect(stat("pswpout")).toBe(1); // clean in the swap cache: nothing to write
    audit(k);
  });

  it.each(["cow-pte", "cow-pte-deferred"] as const)(
    "%s: keeps a page under a shared PTE table, and does not share a table holding a swap entry",
    (design) => {
      const { k, pid, swap, stat } = setup({ design, len: PMD_SIZE });
      const child = k.fork(pid);
      expect(stat("cow_pte_share")).toBe(1);
      const before = entry(k, pid, A);
      expect(swapOut(k, pid, A)).toBe("busy");
      expect(entry(k, pid, A)).toEqual(before);
      expect(swap.inuse).toBe(0);
      audit(k);
      k.exit(child); // the parent has the table to itself again
      expect(swapOut(k, pid, A)).toBe("swapped");
      const again = k.fork(pid);
      audit(k);
      expect(stat("cow_pte_share")).toBe(1);
      expect(pteTableOf(k.mm(again), A)).not.toBe(pteTableOf(k.mm(pid), A));
      expect(page(k, again, A)).toMatchObject({ kind: "swap", anonExclusive: false });
    },
  );
});
