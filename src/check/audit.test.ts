// The audit must catch each kind of broken state: every test corrupts one field of a healthy
// machine and expects the audit's message.

import { describe, expect, it } from "vitest";
import { Kernel } from "../mm/kernel.ts";
import { MM_SWAPENTS } from "../mm/mm.ts";
import { _PAGE_NX_HI, pgdIndex, pmdIndex, pteIndex, pudIndex } from "../mm/pgtable.ts";
import { mkSwapPte, swapOutFolio, swapPteSlot } from "../mm/swap.ts";
import { PG_anon_exclusive, PG_partially_mapped } from "../phys/memmap.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../uapi.ts";
import { audit } from "./audit.ts";

/** A machine with one process that wrote 64 KiB of 16-page folios and unmapped one page. */
function healthy() {
  const k = new Kernel({ ramBytes: 64 * 2 ** 20, thp: { orders: { 4: "always" } } });
  const pid = k.createProcess();
  const addr = k.mmap(pid, 0, 2 * 2 ** 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  k.write(pid, addr, 128 * 1024);
  k.munmap(pid, addr + 64 * 1024, 4096); // the second folio is now partly mapped
  audit(k);
  const mm = k.mm(pid);
  // Non-null: the write above populated this range.
  const pte = mm.pgd.child(pgdIndex(addr))!.child(pudIndex(addr))!.child(pmdIndex(addr))!;
  return { k, pid, addr, mm, pte, pfn: pte.pfnAt(pteIndex(addr)) };
}

describe("audit", () => {
  it("accepts a healthy machine, and the empty machine after the last exit", () => {
    const { k, pid } = healthy();
    k.exit(pid);
    expect(() => audit(k)).not.toThrow();
  });

  it("reports a refcount that does not match the mappings", () => {
    const { k, pfn } = healthy();
    k.machine.memmap.addRef(pfn, 1);
    expect(() => audit(k)).toThrow(/refcount 17, expected 16/);
  });

  it("reports a per-page mapcount that does not match the page tables", () => {
    const { k, pfn } = healthy();
    k.machine.memmap.addMapcount(pfn + 3, 1);
    expect(() => audit(k)).toThrow(/mapcount is 2, page tables map it 1 times/);
  });

  it("reports an RSS counter that does not match the page tables", () => {
    const { k, mm } = healthy();
    mm.rss[1] += 1;
    expect(() => audit(k)).toThrow(/MM_ANONPAGES is 32, page tables map 31/);
  });

  it("reports a VmPTE that does not match the tables", () => {
    const { k, mm } = healthy();
    mm.pgtablesBytes += 4096;
    expect(() => audit(k)).toThrow(/VmPTE is 16 kB but 3 tables/);
  });

  it("reports an entry whose NX bit disagrees with VM_EXEC", () => {
    const { k, pte, addr } = healthy();
    const j = pteIndex(addr);
    pte.set(j, pte.lo(j), (pte.hi(j) & ~_PAGE_NX_HI) >>> 0);
    expect(() => audit(k)).toThrow(/NX at .* disagrees with VM_EXEC/);
  });

  it("reports a partly mapped folio missing from the deferred split queue", () => {
    const { k, pfn } = healthy();
    const second = pfn + 16;
    k.machine.deferredSplit.delete(second);
    k.machine.memmap.clear(second, PG_partially_mapped);
    expect(() => audit(k)).toThrow(/partly mapped \(15\/16 pages\) but not queued/);
  });

  it("reports a leaked folio and a frame lost by the allocator", () => {
    const { k } = healthy();
    const pfn = k.machine.buddy.alloc(0);
    k.machine.memmap.prepFolio(pfn, 0, 0);
    expect(() => audit(k)).toThrow(/refcount 1, expected 0/);
  });

  it("reports a writable PTE over a page that is not AnonExclusive", () => {
    const { k, pfn } = healthy();
    k.machine.memmap.clear(pfn, PG_anon_exclusive);
    expect(() => audit(k)).toThrow(/not AnonExclusive/);
  });
});

/**
 * One process with five pages, four written: page 0 swapped out, page 1 back from swap (cached).
 */
function swapped() {
  const k = new Kernel({ ramBytes: 64 * 2 ** 20, swapBytes: 64 * 4096, thp: { enabled: "never" } });
  const pid = k.createProcess();
  const addr = k.mmap(pid, 0, 5 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  k.write(pid, addr, 4 * 4096);
  const mm = k.mm(pid);
  // Non-null: the write above populated this range.
  const pte = mm.pgd.child(pgdIndex(addr))!.child(pudIndex(addr))!.child(pmdIndex(addr))!;
  const j = pteIndex(addr);
  for (const i of [0, 1]) expect(swapOutFolio(k.machine, pte.pfnAt(j + i))).toBe("swapped");
  k.read(pid, addr + 4096, 4096);
  audit(k);
  const slot = swapPteSlot(pte.lo(j), pte.hi(j));
  // Non-null: page 1 was read back through the swap cache, which keeps it.
  const cachedSlot = k.machine.swap.slotOf.get(pte.pfnAt(j + 1))!;
  return { k, mm, pte, j, slot, cachedSlot, cached: pte.pfnAt(j + 1) };
}

describe("audit of swap", () => {
  it("reports a slot count that does not match the swap entries", () => {
    const { k, slot } = swapped();
    k.machine.swap.count[slot]++;
    expect(() => audit(k)).toThrow(
      new RegExp(`swap slot ${slot} counts 2 swap entries, the page tables hold 1`),
    );
  });

  it("reports MM_SWAPENTS that does not match the swap entries", () => {
    const { k, mm } = swapped();
    mm.rss[MM_SWAPENTS]--;
    expect(() => audit(k)).toThrow(/MM_SWAPENTS is 0, page tables map 1/);
  });

  it("reports a swap entry naming a free slot", () => {
    const { k, mm, pte, j } = swapped();
    const [lo, hi] = mkSwapPte(40, false, false);
    pte.set(j + 4, lo, hi);
    mm.rss[MM_SWAPENTS]++;
    expect(() => audit(k)).toThrow(/swap slot 40 counts 0 swap entries, the page tables hold 1/);
  });

  it("reports a clean swap-cache folio whose content is not its slot's", () => {
    const { k, cached } = swapped();
    k.machine.memmap.setTag(cached, 12345);
    expect(() => audit(k)).toThrow(/clean swap cache folio .* holds 12345/);
  });

  it("reports a swap-cache folio whose refcount lacks the cache's reference", () => {
    const { k, cached } = swapped();
    k.machine.memmap.addRef(cached, -1);
    expect(() => audit(k)).toThrow(/refcount 1, expected 2/);
  });

  it("reports a swap cache and folio->swap that disagree", () => {
    const { k, cached, cachedSlot } = swapped();
    k.machine.swap.slotOf.set(cached, cachedSlot + 7);
    expect(() => audit(k)).toThrow(/whose folio->swap is/);
  });
});
