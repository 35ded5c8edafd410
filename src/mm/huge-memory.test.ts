// THP details a kernel developer would check: counters, PMD bits and the deferred split queue.

import { describe, expect, it } from "vitest";
import { audit } from "../check/audit.ts";
import { pageDump } from "../report/proc.ts";
import { MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../uapi.ts";
import { Kernel } from "./kernel.ts";

const MiB = 2 ** 20;
const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;

function thpProcess(useZeroPage = true, prot = RW) {
  const k = new Kernel({ ramBytes: 64 * MiB, thp: { useZeroPage } });
  const pid = k.createProcess();
  const addr = k.mmap(pid, 0, 8 * MiB, prot, ANON);
  k.madvise(pid, addr, 8 * MiB, MADV_HUGEPAGE);
  return { k, pid, addr };
}

describe("THP counters and bits", () => {
  it("counts split_deferred for a partly unmapped 64 KiB folio but not thp_deferred_split_page", () => {
    const k = new Kernel({ ramBytes: 64 * MiB, thp: { orders: { 4: "always" } } });
    const pid = k.createProcess();
    const addr = k.mmap(pid, 0, 2 * MiB, RW, ANON);
    k.write(pid, addr, 64 * 1024);
    k.munmap(pid, addr, 4096);
    expect(k.machine.stat.getOrder("split_deferred", 4)).toBe(1);
    expect(k.machine.stat.get("thp_deferred_split_page")).toBe(0);
    audit(k);
  });

  it("counts thp_zero_page_alloc once, however many PMDs map the huge zero page", () => {
    const { k, pid, addr } = thpProcess();
    for (let i = 0; i < 4; i++) k.read(pid, addr + i * 2 * MiB, 4096);
    expect(pageDump(k.mm(pid), addr + 6 * MiB, addr + 6 * MiB + 4096)[0].kind).toBe("hugezero");
    expect(k.machine.stat.get("thp_zero_page_alloc")).toBe(1);
  });

  it("maps a THP dirty even on a read fault (use_zero_page off), writable only with VM_WRITE", () => {
    const { k, pid, addr } = thpProcess(false, PROT_READ);
    k.read(pid, addr, 4096);
    const [p] = pageDump(k.mm(pid), addr, addr + 4096);
    expect(p).toMatchObject({ kind: "anon", pmd: true, order: 9, dirty: true, writable: false });
  });

  it("queues a new PMD THP for deferred split unmarked, and marks it once partly unmapped", () => {
    const { k, pid, addr } = thpProcess();
    k.write(pid, addr, 4096);
    expect(k.machine.deferredSplit.size).toBe(1);
    expect(k.machine.stat.get("thp_deferred_split_page")).toBe(0);
    k.munmap(pid, addr, 4096);
    expect(k.machine.deferredSplit.size).toBe(1);
    expect(k.machine.stat.get("thp_deferred_split_page")).toBe(1);
    audit(k);
    k.exit(pid);
    expect(k.machine.deferredSplit.size).toBe(0);
  });
});
