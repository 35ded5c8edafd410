// COW page tables (cow-pte.ts): what fork shares, what a break costs and leaves, how RSS and
// VmPTE are charged, that a break out of memory fails cleanly, and that the audit catches a
// walker that writes a shared table in place.

import { describe, expect, it } from "vitest";
import { audit } from "../check/audit.ts";
import { pageDump, status } from "../report/proc.ts";
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_READ,
  PROT_WRITE,
} from "../uapi.ts";
import { type ForkPtCopy, Kernel } from "./kernel.ts";
import { pteTableOf } from "./mmu.ts";
import { pmdOffset } from "./pgalloc.ts";
import { _PAGE_RW, pmdIndex } from "./pgtable.ts";

const A = 0x7f0000000000;
const RW = PROT_READ | PROT_WRITE;
const TABLES = 8;
const LEN = TABLES * PMD_SIZE;

/** A parent with LEN bytes of written 4 KiB pages at A, and its child under `design`. */
function setup(design: ForkPtCopy, ramMiB = 256) {
  const k = new Kernel({ ramBytes: ramMiB * 2 ** 20, thp: { enabled: "never" }, fork: { ptCopy: design } });
  const parent = k.createProcess();
  expect(k.mmap(parent, A, LEN, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(A);
  expect(k.write(parent, A, LEN).pages).toBe(LEN / PAGE_SIZE);
  const before = k.machine.stat.snapshot();
  const child = k.fork(parent);
  expect(child).toBeGreaterThan(0);
  const after = k.machine.stat.snapshot();
  audit(k);
  const delta = (name: string) => (after[name] ?? 0) - (before[name] ?? 0);
  return { k, parent, child, delta };
}

const vmPteKiB = (k: Kernel, pid: number) => status(k.mm(pid)).VmPTE;
const rssAnonKiB = (k: Kernel, pid: number) => status(k.mm(pid)).RssAnon;
const shared = (k: Kernel, pid: number, addr: number) => pteTableOf(k.mm(pid), addr)?.cow != null;

describe.each(["cow-pte", "cow-pte-deferred"] as const)("%s", (design) => {
  it("shares every PTE table at fork under read-only PMD entries, and charges them to the parent", () => {
    const { k, parent, child, delta } = setup(design);
    expect(delta("cow_pte_share")).toBe(TABLES);
    expect(delta("pgtable_alloc")).toBe(3); // the child's PGD, PUD and PMD tables only
    for (let a = A; a < A + LEN; a += PMD_SIZE) {
      expect(pteTableOf(k.mm(child), a)).toBe(pteTableOf(k.mm(parent), a));
      for (const pid of [parent, child]) {
        const pmd = pmdOffset(k.mm(pid), a);
        expect(pmd && pmd.lo(pmdIndex(a)) & _PAGE_RW).toBe(0);
      }
    }
    expect(vmPteKiB(k, child)).toBe(8);
    expect(vmPteKiB(k, parent)).toBe(8 + 4 * TABLES);
    // v4 walks every PTE at fork (a reference and an rmap dup per page); deferred none.
    expect(delta("ref_update")).toBe(design === "cow-pte" ? LEN / PAGE_SIZE : 0);
    expect(rssAnonKiB(k, child)).toBe(design === "cow-pte" ? LEN / 1024 : 0);
  });

  it("breaks only the table a write reaches, and the last sharer takes the table back", () => {
    const { k, parent, child } = setup(design);
    const tag = k.read(parent, A + 5 * PAGE_SIZE, PAGE_SIZE).tags[0];
    expect(k.write(child, A + PAGE_SIZE, PAGE_SIZE).pages).toBe(1);
    audit(k);
    expect(shared(k, child, A)).toBe(false);
    expect(shared(k, parent, A)).toBe(false); // the parent is the last sharer: reused
    expect(shared(k, child, A + PMD_SIZE)).toBe(true);
    expect(k.machine.stat.get("cow_pte_break")).toBe(1);
    expect(k.machine.stat.get("cow_pte_reuse")).toBe(1);
    expect(k.read(child, A + 5 * PAGE_SIZE, PAGE_SIZE).tags[0]).toBe(tag);
    expect(vmPteKiB(k, child)).toBe(8 + 4);
    // Deferred: the break did the per-page work for the child's 512 pages.
    expect(rssAnonKiB(k, child)).toBe(design === "cow-pte" ? LEN / 1024 : PMD_SIZE / 1024);
  });

  it("maps a page on a read fault under a shared table (the fault replaces the table the CPU walked)", () => {
    // Found by vmlab fuzz: the access loop kept walking the table it had before the fault.
    const k = new Kernel({ ramBytes: 64 * 2 ** 20, thp: { enabled: "never" }, fork: { ptCopy: design } });
    const parent = k.createProcess();
    expect(k.mmap(parent, A, PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(A);
    for (let p = 0; p < 512; p += 2) k.write(parent, A + p * PAGE_SIZE, PAGE_SIZE);
    const child = k.fork(parent);
    expect(shared(k, child, A)).toBe(true);
    const want = k.read(parent, A, 4 * PAGE_SIZE).tags;
    const r = k.read(child, A, 4 * PAGE_SIZE); // pages 1 and 3 are none: read faults
    expect([r.pages, r.signal, r.tags]).toEqual([4, null, want]);
    expect(shared(k, child, A)).toBe(false);
    audit(k);
  });

  it("breaks COW when mmap(MAP_FIXED) replaces part of a shared table", () => {
    // Found by vmlab fuzz: mmap_region unmapped the old range without the munmap pre-pass.
    const { k, parent, child } = setup(design);
    const at = A + PMD_SIZE + 4 * PAGE_SIZE;
    expect(k.mmap(child, at, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(at);
    expect(shared(k, child, at)).toBe(false);
    expect(k.read(child, at, PAGE_SIZE).tags).toEqual([0]);
    expect(k.read(child, at + PAGE_SIZE, PAGE_SIZE).tags).toEqual(
      k.read(parent, at + PAGE_SIZE, PAGE_SIZE).tags,
    );
    audit(k);
  });

  it("reports the same RSS as per-PTE fork once no table is shared", () => {
    const a = setup(design);
    const b = setup("per-pte");
    for (const s of [a, b]) {
      s.k.write(s.child, A, LEN); // breaks every table
      s.k.write(s.parent, A + 3 * PMD_SIZE, PAGE_SIZE);
      audit(s.k);
    }
    for (const pid of [a.parent, a.child]) expect(status(a.k.mm(pid)).VmRSS).toBe(status(b.k.mm(pid)).VmRSS);
    expect(vmPteKiB(a.k, a.child)).toBe(vmPteKiB(b.k, b.child));
  });

  it("fails a break with ENOMEM and changes nothing when no frame is free; exit still works", () => {
    const { k, parent, child } = setup(design, 24);
    // A third process eats every free frame.
    const hog = k.createProcess();
    let oom = false;
    for (let n = 0; n < 8 && !oom; n++) {
      const at = k.mmap(hog, 0, 4 * 2 ** 20, RW, MAP_PRIVATE | MAP_ANONYMOUS);
      expect(at).toBeGreaterThan(0);
      oom = k.write(hog, at, 4 * 2 ** 20).oom;
    }
    expect(oom).toBe(true);
    expect(k.machine.buddy.freePages()).toBe(0);
    audit(k);
    const snap = () =>
      [parent, child].map((p) => ({ vmas: k.vmas(p), pages: pageDump(k.mm(p), A, A + LEN) }));
    const before = snap();
    expect(k.mprotect(child, A + PAGE_SIZE, PAGE_SIZE, PROT_READ)).toBe(-12);
    expect(k.munmap(child, A + PAGE_SIZE, PAGE_SIZE)).toBe(-12);
    expect(k.madvise(child, A + PAGE_SIZE, PAGE_SIZE, 10 /* MADV_DONTFORK */)).toBe(-12);
    expect(k.pin(child, A, PAGE_SIZE, { write: true })).toBe(-12);
    const w = k.write(child, A, PAGE_SIZE);
    expect([w.pages, w.oom]).toEqual([0, true]);
    expect(snap()).toEqual(before);
    expect(k.machine.stat.get("cow_pte_enomem")).toBe(5);
    audit(k);
    // Whole tables are dropped without allocating: munmap of whole tables and exit succeed.
    expect(k.munmap(child, A, PMD_SIZE)).toBe(0);
    audit(k);
    k.exit(hog);
    k.exit(parent);
    audit(k);
    expect(k.write(child, A + PMD_SIZE, PAGE_SIZE).pages).toBe(1);
    k.exit(child);
    audit(k);
  });

  it("lets the audit catch a walker that changes a shared table without breaking COW", () => {
    const { k, parent } = setup(design);
    audit(k); // seals the shared tables
    // Non-null: the table is shared and mapped.
    const t = pteTableOf(k.mm(parent), A)!;
    t.set(3, (t.lo(3) ^ 0x40) >>> 0, t.hi(3)); // flips the dirty bit in place
    expect(() => audit(k)).toThrow(/changed while shared \(a walker did not break COW\)/);
  });
});

describe("COW page tables across three processes", () => {
  it.each(["cow-pte", "cow-pte-deferred"] as const)(
    "%s: the parent exits first and ownership passes on",
    (design) => {
      const { k, parent, child } = setup(design);
      const second = k.fork(parent);
      expect(pteTableOf(k.mm(second), A)?.cow?.sharers.length).toBe(3);
      audit(k);
      const tags = k.read(parent, A, LEN).tags;
      k.exit(parent);
      audit(k);
      expect(k.read(child, A, LEN).tags).toEqual(tags);
      expect(k.write(second, A, PAGE_SIZE).pages).toBe(1);
      audit(k);
      expect(k.read(child, A, LEN).tags).toEqual(tags);
      k.exit(child);
      k.exit(second);
      audit(k);
    },
  );
});
