// MADV_DONTNEED as Linux 6.18 does it (../shared/seeds/README.md, and VmPTE checked on this
// machine): zap, batched over large folios; a folio covered in part is queued for deferred
// split, not split; a PMD THP covered in part has its PMD split and keeps its folio; a PTE table
// covered whole is freed (CONFIG_PT_RECLAIM); private pages read zero afterwards, shared pages
// keep their content, and a pin keeps the page it holds.

import { describe, expect, it } from "vitest";
import { audit } from "../check/audit.ts";
import { status } from "../report/proc.ts";
import {
  MADV_DONTNEED,
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
import type { ThpConfig } from "./machine.ts";
import { pteTableOf } from "./mmu.ts";

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
