// The fork designs side by side (fork.ptCopy): the same workload under per-PTE and batched
// leaves the same page-level state, and the batch does one refcount and one rmap update per
// run of PTEs of a large folio where per-PTE does one per page.

import { describe, expect, it } from "vitest";
import { audit } from "../check/audit.ts";
import { pageDump, status } from "../report/proc.ts";
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE } from "../uapi.ts";
import { type ForkPtCopy, Kernel } from "./kernel.ts";
import type { ThpConfig } from "./machine.ts";
import { pteTableOf } from "./mmu.ts";
import { _PAGE_DIRTY, pteIndex } from "./pgtable.ts";

const P = PAGE_SIZE;
const A = 0x7f0000000000;
const RW = PROT_READ | PROT_WRITE;

/** A process with `len` bytes of private anon memory at A, built by `build`, then forked. */
function forked(
  design: ForkPtCopy,
  orders: ThpConfig["orders"],
  len: number,
  build: (k: Kernel, pid: number) => void,
) {
  const k = new Kernel({
    ramBytes: 256 * 2 ** 20,
    thp: { enabled: "never", orders },
    fork: { ptCopy: design },
  });
  const pid = k.createProcess();
  expect(k.mmap(pid, A, len, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(A);
  build(k, pid);
  const before = { ...k.machine.stat.snapshot() };
  const child = k.fork(pid);
  expect(child).toBeGreaterThan(0);
  audit(k);
  const after = k.machine.stat.snapshot();
  const delta = (name: string) => (after[name] ?? 0) - (before[name] ?? 0);
  const state = [pid, child].map((p) => ({ status: status(k.mm(p)), pages: pageDump(k.mm(p), A, A + len) }));
  return { k, pid, child, delta, state };
}

const populate = (len: number) => (k: Kernel, pid: number) => void k.write(pid, A, len);

describe("fork designs: per-PTE against batched (folio_pte_batch)", () => {
  it.each([
    ["4 KiB pages", {}, 256, 256],
    ["16 KiB mTHP", { 2: "always" as const }, 256, 64],
    ["64 KiB mTHP", { 4: "always" as const }, 256, 16],
  ])(
    "%s: the same state; refcount and rmap dups per page against per folio, mapcounts per page in both",
    (_, orders, perPte, batched) => {
      const len = 256 * P;
      const a = forked("per-pte", orders, len, populate(len));
      const b = forked("batched", orders, len, populate(len));
      expect(b.state).toEqual(a.state);
      expect([a.delta("ref_update"), a.delta("rmap_dup")]).toEqual([perPte, perPte]);
      expect([b.delta("ref_update"), b.delta("rmap_dup")]).toEqual([batched, batched]);
      // folio_try_dup_anon_rmap_ptes still increments every page's _mapcount.
      expect(b.delta("mapcount_update")).toBe(a.delta("mapcount_update"));
      expect(a.delta("mapcount_update")).toBe(256);
      // Both write-protect every parent entry and set every child entry.
      expect(b.delta("pte_write")).toBe(a.delta("pte_write"));
    },
  );

  it("respects the dirty bit in a private mapping: a batch stops where dirty changes", () => {
    // No syscall here yet leaves a large folio partly clean (MADV_FREE will: it clears dirty
    // and keeps the entry), so the test cleans page 3's entry as MADV_FREE would. The child
    // keeps each entry's dirty bit, so the batch must stop there: runs of 3, 1 and 12.
    const build = (k: Kernel, pid: number) => {
      k.write(pid, A, 16 * P);
      const pte = pteTableOf(k.mm(pid), A + 3 * P)!;
      const j = pteIndex(A + 3 * P);
      pte.set(j, (pte.lo(j) & ~_PAGE_DIRTY) >>> 0, pte.hi(j));
    };
    const a = forked("per-pte", { 4: "always" }, 16 * P, build);
    const b = forked("batched", { 4: "always" }, 16 * P, build);
    expect(b.state).toEqual(a.state);
    expect(b.state[1].pages.map((p) => p.dirty)).toEqual([...Array(16).keys()].map((i) => i !== 3));
    expect(b.state[1].pages[0].order).toBe(4);
    expect(b.delta("ref_update")).toBe(3);
  });

  it("stops a batch at the end of a VMA and of a page table", () => {
    // A 64 KiB folio cut in two VMAs by mprotect: the batch cannot cross the VMA boundary.
    const build = (k: Kernel, pid: number) => {
      k.write(pid, A, 16 * P);
      k.mprotect(pid, A + 8 * P, 8 * P, PROT_READ);
    };
    const a = forked("per-pte", { 4: "always" }, 16 * P, build);
    const b = forked("batched", { 4: "always" }, 16 * P, build);
    expect(b.state).toEqual(a.state);
    expect(b.delta("ref_update")).toBe(2);
  });

  it("copies a possibly pinned exclusive large folio page by page for the child, as per-PTE does", () => {
    const build = (k: Kernel, pid: number) => {
      k.write(pid, A, 16 * P);
      expect(k.pin(pid, A, P, { write: true })).toBeGreaterThan(0);
    };
    const a = forked("per-pte", { 4: "always" }, 16 * P, build);
    const b = forked("batched", { 4: "always" }, 16 * P, build);
    expect(b.state).toEqual(a.state);
    expect([a.delta("fork_page_copy"), b.delta("fork_page_copy")]).toEqual([16, 16]);
    expect(b.state[1].pages.every((p) => p.order === 0 && p.anonExclusive)).toBe(true);
  });
});
