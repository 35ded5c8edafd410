// /proc/PID/smaps and status as fs/proc/task_mmu.c prints them: LazyFree counts the pages of
// lazyfree anon folios (not swap-backed) whose PTE or PMD and folio are clean, AnonHugePages
// counts PMD-mapped anon THPs only, and the fields come in Linux's order.

import { describe, expect, it } from "vitest";
import { Kernel, type KernelConfig } from "../mm/kernel.ts";
import {
  MADV_FREE,
  MADV_HUGEPAGE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_READ,
  PROT_WRITE,
} from "../uapi.ts";
import { formatSmaps, formatStatus, smapsVma, status } from "./proc.ts";

const A = 0x7f0000000000;

/** A process with len bytes of private anon memory at A, written, with THP as given. */
function setup(len: number, thp: KernelConfig["thp"]) {
  const k = new Kernel({ ramBytes: 64 * 2 ** 20, thp });
  const pid = k.createProcess();
  expect(k.mmap(pid, A, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(A);
  const smapsAt = () => {
    const mm = k.mm(pid);
    // Non-null: the mapping at A was made above and is never unmapped here.
    return smapsVma(mm, mm.vmaLookup(A)!);
  };
  return { k, pid, smapsAt };
}

describe("smaps LazyFree and AnonHugePages", () => {
  it("counts a PMD-mapped THP freed whole in LazyFree and AnonHugePages, until it is written again", () => {
    const { k, pid, smapsAt } = setup(PMD_SIZE, { enabled: "madvise" });
    expect(k.madvise(pid, A, PMD_SIZE, MADV_HUGEPAGE)).toBe(0);
    expect(k.write(pid, A, PMD_SIZE).pages).toBe(512);
    expect(smapsAt()).toMatchObject({ Rss: 2048, AnonHugePages: 2048, LazyFree: 0 });
    expect(k.madvise(pid, A, PMD_SIZE, MADV_FREE)).toBe(0);
    expect(smapsAt()).toMatchObject({ Rss: 2048, Anonymous: 2048, AnonHugePages: 2048, LazyFree: 2048 });
    // One write dirties the PMD, which speaks for the whole folio (smaps_pmd_entry).
    k.write(pid, A + 5 * PAGE_SIZE, PAGE_SIZE);
    expect(smapsAt()).toMatchObject({ AnonHugePages: 2048, LazyFree: 0 });
  });

  it("counts a lazyfree mTHP folio page by page: a page written again leaves LazyFree, the rest stays", () => {
    const { k, pid, smapsAt } = setup(64 * 1024, { enabled: "never", orders: { 4: "always" } });
    k.write(pid, A, 64 * 1024);
    expect(k.madvise(pid, A, 64 * 1024, MADV_FREE)).toBe(0);
    expect(smapsAt()).toMatchObject({ Rss: 64, LazyFree: 64, AnonHugePages: 0 });
    k.write(pid, A + 3 * PAGE_SIZE, PAGE_SIZE);
    expect(smapsAt()).toMatchObject({ Rss: 64, LazyFree: 60 });
  });

  it("prints the fields in Linux's order: LazyFree before AnonHugePages, Swap last; VmSwap after VmPTE", () => {
    const { k, pid, smapsAt } = setup(PAGE_SIZE, {});
    k.write(pid, A, PAGE_SIZE);
    const names = (text: string) => text.split("\n").map((l) => l.split(":")[0]);
    expect(names(formatSmaps(smapsAt())).slice(1)).toEqual([
      "Size",
      "Rss",
      "Anonymous",
      "LazyFree",
      "AnonHugePages",
      "Swap",
      "VmFlags",
    ]);
    expect(names(formatStatus(status(k.mm(pid)))).slice(-2)).toEqual(["VmPTE", "VmSwap"]);
  });
});
