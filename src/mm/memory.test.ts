// Fault paths that the syscalls of this issue cannot reach on their own: fault-around needs
// page-cache pages that are not mapped, which MADV_DONTNEED or fork will produce later. The
// tests zap PTEs with unmapPageRange, as MADV_DONTNEED will.

import { describe, expect, it } from "vitest";
import { audit } from "../check/audit.ts";
import { pageDump, status } from "../report/proc.ts";
import { MAP_ANONYMOUS, MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE } from "../uapi.ts";
import { Kernel } from "./kernel.ts";
import { unmapPageRange } from "./memory.ts";

const P = 4096;

function sharedMapping(addr: number, pages: number) {
  const k = new Kernel({ ramBytes: 64 * 2 ** 20 });
  const pid = k.createProcess();
  expect(k.mmap(pid, addr, pages * P, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED)).toBe(
    addr,
  );
  k.write(pid, addr, pages * P);
  const mm = k.mm(pid);
  unmapPageRange(mm, mm.vmas[0], addr, addr + pages * P);
  expect(status(mm).RssShmem).toBe(0);
  return { k, pid, mm };
}

const present = (k: Kernel, pid: number, addr: number, pages: number) =>
  pageDump(k.mm(pid), addr, addr + pages * P)
    .map((p, i) => (p.kind === "shmem" ? i : -1))
    .filter((i) => i >= 0);

describe("do_fault_around on shared anonymous memory", () => {
  it("maps the cached pages of the 64 KiB window that starts at the VMA when the VMA is unaligned", () => {
    const addr = 0x7f0000003000; // 16 pages, not 64 KiB aligned
    const { k, pid } = sharedMapping(addr, 16);
    const r = k.read(pid, addr + 5 * P, P);
    expect(r.pages).toBe(1);
    // from_pte is clamped to the VMA start, and to_pte = from_pte + 16: the whole VMA.
    expect(present(k, pid, addr, 16)).toEqual([...Array(16).keys()]);
    expect(status(k.mm(pid)).RssShmem).toBe(64);
    audit(k);
  });

  it("maps only the aligned 16-page block around the fault in a larger aligned VMA", () => {
    const addr = 0x7f0000010000; // 32 pages, 64 KiB aligned
    const { k, pid } = sharedMapping(addr, 32);
    k.read(pid, addr + 20 * P, P);
    expect(present(k, pid, addr, 32)).toEqual([...Array(16).keys()].map((i) => i + 16));
    expect(status(k.mm(pid)).RssShmem).toBe(64);
    audit(k);
  });

  it("maps around read faults only: a write fault maps just its page", () => {
    const addr = 0x7f0000010000;
    const { k, pid } = sharedMapping(addr, 32);
    k.write(pid, addr + 20 * P, P);
    expect(present(k, pid, addr, 32)).toEqual([20]);
    audit(k);
  });
});
