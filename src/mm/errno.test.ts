// The errno contract of mmap, munmap, mprotect and madvise on anonymous memory, as Linux 6.18 decides
// it. One test per row of docs/errno.md, in the same order; the row id is in the comment above each
// test, and the doc names the kernel function that decides it. Every row was also run on a live
// 6.18.44 kernel as an unprivileged process.
//
// Assumes what docs/errno.md assumes: unprivileged process, mmap_min_addr 65536, max_map_count
// 65530, overcommit heuristic (mode 0), no swap, THP compiled in, 4-level x86-64 paging.

import { describe, expect, it } from "vitest";
import {
  EEXIST,
  EINVAL,
  ENOMEM,
  EPERM,
  isErr,
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MADV_NORMAL,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MAP_SHARED_VALIDATE,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_GROWSDOWN,
  PROT_GROWSUP,
  PROT_READ,
  PROT_SEM,
  PROT_WRITE,
  TASK_SIZE,
} from "../uapi.ts";
import { Kernel } from "./kernel.ts";

const P = PAGE_SIZE;
const GiB = 2 ** 30;
const R = PROT_READ;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;
/** Where the tests map: 4 GiB. boot() checks that [B, B + 2 GiB) is free after createProcess. */
const B = 2 ** 32;
/** RAM of the simulated machine. BIG exceeds RAM + swap, so overcommit accounting refuses it. */
const RAM = 64 * 2 ** 20;
const BIG = GiB;
/** vm.mmap_min_addr (CONFIG_DEFAULT_MMAP_MIN_ADDR on x86-64). */
const MMAP_MIN_ADDR = 65536;
/** vm.max_map_count (DEFAULT_MAX_MAP_COUNT). */
const MAX_MAP_COUNT = 65530;
/** Not in uapi.ts yet; x86-64 values. */
const EAGAIN = 11;
const MAP_GROWSDOWN = 0x0100;
/** A mmap flag bit x86-64 does not define (between MAP_FIXED_NOREPLACE and MAP_UNINITIALIZED). */
const MAP_UNKNOWN = 0x200000;
/** A prot bit x86-64 does not define (arm64's PROT_BTI). */
const PROT_UNKNOWN = 0x10;
/** size_t values near 2^64. Both are exact doubles (doubles there are 2048 apart). */
const U64_MINUS_PAGE = 2 ** 64 - 4096;
const U64_MINUS_HALF_PAGE = 2 ** 64 - 2048;
/** The max_map_count tests map 65530 VMAs. */
const SLOW = { timeout: 120_000 };

interface Area {
  start: number;
  end: number;
  prot: number;
}

/** A fresh kernel and process, with the region the tests use checked free. */
function boot(): { k: Kernel; pid: number } {
  const k = new Kernel({ ramBytes: RAM });
  const pid = k.createProcess();
  expect(areas(k, pid, B, B + 2 * GiB), "precondition: [4 GiB, 6 GiB) is free after createProcess").toEqual(
    [],
  );
  return { k, pid };
}

/** The VMAs that intersect [lo, hi), as start, end and prot. */
function areas(k: Kernel, pid: number, lo: number, hi: number): Area[] {
  return k
    .vmas(pid)
    .filter((v) => v.end > lo && v.start < hi)
    .map(({ start, end, prot }) => ({ start, end, prot }));
}

/** mmap with MAP_FIXED that must succeed (test setup). */
function mapAt(k: Kernel, pid: number, addr: number, len: number, prot = RW, flags = PRIV): void {
  expect(k.mmap(pid, addr, len, prot, flags | MAP_FIXED)).toBe(addr);
}

/**
 * Maps [B, B + 3P) RW, then 1-page VMAs separated by 1-page holes above it, until the process
 * has exactly `count` VMAs.
 */
function fillMapCount(k: Kernel, pid: number, count: number): void {
  mapAt(k, pid, B, 3 * P);
  let n = k.vmas(pid).length;
  let addr = B + 4 * P;
  while (n < count) {
    const r = k.mmap(pid, addr, P, RW, PRIV | MAP_FIXED);
    if (r !== addr) throw new Error(`fillMapCount: mmap at ${addr.toString(16)} returned ${r}`);
    addr += 2 * P;
    n++;
  }
  expect(k.vmas(pid).length).toBe(count);
}

describe("mmap", () => {
  // M1
  it("mmap with zero length fails with EINVAL", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, 0, RW, PRIV)).toBe(-EINVAL);
    expect(k.mmap(pid, B, 0, RW, PRIV | MAP_FIXED)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([]);
  });

  // M2
  it("mmap rounds the length up to whole pages", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, 1, RW, PRIV | MAP_FIXED)).toBe(B);
    expect(k.mmap(pid, B + 2 * P, P + 1, R, PRIV | MAP_FIXED)).toBe(B + 2 * P);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + 2 * P, end: B + 4 * P, prot: R },
    ]);
  });

  // M3
  it("mmap with a length that rounds up past TASK_SIZE fails with ENOMEM", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, TASK_SIZE + 1, RW, PRIV)).toBe(-ENOMEM);
  });

  // M4
  it("mmap with a length that wraps to zero when rounded to pages fails with ENOMEM", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, U64_MINUS_HALF_PAGE, RW, PRIV)).toBe(-ENOMEM);
  });

  // M5
  it("mmap without a hint fails with ENOMEM when no gap is large enough", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, TASK_SIZE, RW, PRIV)).toBe(-ENOMEM);
  });

  // M6
  it("mmap with MAP_FIXED at an unaligned address fails with EINVAL", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B + 1, P, RW, PRIV | MAP_FIXED)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([]);
  });

  // M7
  it("mmap with MAP_FIXED of a range that ends past TASK_SIZE fails with ENOMEM", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, TASK_SIZE - P, 2 * P, RW, PRIV | MAP_FIXED)).toBe(-ENOMEM);
  });

  // M8
  it("mmap with MAP_FIXED may map the last page below TASK_SIZE", () => {
    const { k, pid } = boot();
    expect(areas(k, pid, TASK_SIZE - P, TASK_SIZE), "precondition: the last user page is free").toEqual([]);
    expect(k.mmap(pid, TASK_SIZE - P, P, RW, PRIV | MAP_FIXED)).toBe(TASK_SIZE - P);
    expect(areas(k, pid, TASK_SIZE - P, TASK_SIZE)).toEqual([
      { start: TASK_SIZE - P, end: TASK_SIZE, prot: RW },
    ]);
  });

  // M9
  it("mmap with MAP_FIXED below mmap_min_addr fails with EPERM for an unprivileged process", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0x1000, P, RW, PRIV | MAP_FIXED)).toBe(-EPERM);
    expect(k.mmap(pid, MMAP_MIN_ADDR - P, P, RW, SHARED | MAP_FIXED)).toBe(-EPERM);
    expect(areas(k, pid, 0, MMAP_MIN_ADDR)).toEqual([]);
  });

  // M10
  it("mmap with MAP_FIXED at address 0 fails with EPERM", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, P, RW, PRIV | MAP_FIXED)).toBe(-EPERM);
  });

  // M11
  it("mmap with MAP_FIXED that starts below mmap_min_addr fails with EPERM even if it ends above", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, MMAP_MIN_ADDR - P, 2 * P, RW, PRIV | MAP_FIXED)).toBe(-EPERM);
    expect(areas(k, pid, 0, MMAP_MIN_ADDR + P)).toEqual([]);
  });

  // M12
  it("mmap with MAP_FIXED exactly at mmap_min_addr succeeds", () => {
    const { k, pid } = boot();
    expect(areas(k, pid, MMAP_MIN_ADDR, MMAP_MIN_ADDR + P), "precondition: free").toEqual([]);
    expect(k.mmap(pid, MMAP_MIN_ADDR, P, RW, PRIV | MAP_FIXED)).toBe(MMAP_MIN_ADDR);
  });

  // M13
  it("mmap with MAP_FIXED_NOREPLACE below mmap_min_addr fails with EPERM", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0x1000, P, RW, PRIV | MAP_FIXED_NOREPLACE)).toBe(-EPERM);
  });

  // M14
  it("mmap with MAP_FIXED_NOREPLACE over an existing mapping fails with EEXIST and changes nothing", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.mmap(pid, B + 2 * P, 2 * P, R, PRIV | MAP_FIXED_NOREPLACE)).toBe(-EEXIST);
    expect(k.mmap(pid, B, 3 * P, R, SHARED | MAP_FIXED_NOREPLACE)).toBe(-EEXIST);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + 3 * P, prot: RW }]);
  });

  // M15
  it("mmap with MAP_FIXED_NOREPLACE in a free range maps at exactly that address", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, P, RW, PRIV | MAP_FIXED_NOREPLACE)).toBe(B);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + P, prot: RW }]);
  });

  // M16
  it("mmap with MAP_FIXED_NOREPLACE at an unaligned address fails with EINVAL", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B + 1, P, RW, PRIV | MAP_FIXED_NOREPLACE)).toBe(-EINVAL);
  });

  // M17
  it("mmap with MAP_FIXED over an existing mapping replaces that part of it", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.mmap(pid, B + P, P, R, PRIV | MAP_FIXED)).toBe(B + P);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 2 * P, prot: R },
      { start: B + 2 * P, end: B + 3 * P, prot: RW },
    ]);
  });

  // M18
  it("mmap with neither MAP_SHARED nor MAP_PRIVATE fails with EINVAL", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, P, RW, MAP_ANONYMOUS)).toBe(-EINVAL);
    expect(k.mmap(pid, B, P, RW, MAP_ANONYMOUS | MAP_FIXED)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([]);
  });

  // M19
  it("mmap with MAP_SHARED_VALIDATE of anonymous memory fails with EINVAL, never EOPNOTSUPP", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, P, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS | MAP_UNKNOWN)).toBe(-EINVAL);
    expect(k.mmap(pid, 0, P, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS)).toBe(-EINVAL);
  });

  // M20
  it("mmap ignores unknown flag bits with MAP_SHARED and MAP_PRIVATE", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, P, RW, SHARED | MAP_FIXED | MAP_UNKNOWN)).toBe(B);
    expect(k.mmap(pid, B + 2 * P, P, RW, PRIV | MAP_FIXED | MAP_UNKNOWN)).toBe(B + 2 * P);
  });

  // M21
  it("mmap with MAP_SHARED and MAP_GROWSDOWN fails with EINVAL", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, P, RW, SHARED | MAP_GROWSDOWN)).toBe(-EINVAL);
  });

  // M22
  it("mmap ignores unknown prot bits", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, P, R | PROT_UNKNOWN, PRIV | MAP_FIXED)).toBe(B);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + P, prot: R }]);
  });

  // M23
  it("mmap with MAP_POPULATE returns the address of the mapping", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, 4 * P, RW, PRIV | MAP_FIXED | MAP_POPULATE)).toBe(B);
    expect(k.mmap(pid, B + 8 * P, 4 * P, RW, SHARED | MAP_FIXED | MAP_POPULATE)).toBe(B + 8 * P);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + 4 * P, prot: RW },
      { start: B + 8 * P, end: B + 12 * P, prot: RW },
    ]);
  });

  // M24
  it("mmap with a free hint maps at the hint", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, P, RW, PRIV)).toBe(B);
    expect(k.mmap(pid, B + 2 * P, P, RW, SHARED)).toBe(B + 2 * P);
  });

  // M25
  it("mmap with an unaligned hint rounds the hint down to a page", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B + 0x123, P, RW, PRIV)).toBe(B);
  });

  // M26
  it("mmap with a hint that overlaps a mapping maps elsewhere instead of failing", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P, R);
    const r = k.mmap(pid, B + P, P, RW, PRIV);
    expect(isErr(r)).toBe(false);
    expect(r).not.toBe(B + P);
    expect(r % P).toBe(0);
    expect(r + P <= B || r >= B + 3 * P).toBe(true);
    expect(k.vmas(pid).some((v) => v.start <= r && r + P <= v.end && v.prot === RW)).toBe(true);
    expect(areas(k, pid, B, B + 3 * P)).toEqual([{ start: B, end: B + 3 * P, prot: R }]);
  });

  // M27
  it("mmap with a hint whose range would pass TASK_SIZE maps elsewhere instead of failing", () => {
    const { k, pid } = boot();
    const r = k.mmap(pid, TASK_SIZE - P, 2 * P, RW, PRIV);
    expect(isErr(r)).toBe(false);
    expect(r).not.toBe(TASK_SIZE - P);
    expect(r + 2 * P <= TASK_SIZE).toBe(true);
  });

  // M28
  it("mmap with a hint below mmap_min_addr maps at mmap_min_addr", () => {
    const { k, pid } = boot();
    expect(areas(k, pid, MMAP_MIN_ADDR, MMAP_MIN_ADDR + P), "precondition: free").toEqual([]);
    expect(k.mmap(pid, 0x1000, P, RW, PRIV)).toBe(MMAP_MIN_ADDR);
  });

  // M29
  it("mmap without a hint of a 2 MiB multiple returns a 2 MiB-aligned address", () => {
    const { k, pid } = boot();
    const r = k.mmap(pid, 0, 2 * PMD_SIZE, RW, PRIV);
    expect(isErr(r)).toBe(false);
    expect(r % PMD_SIZE).toBe(0);
  });

  // M30
  it("mmap of a private writable mapping larger than RAM plus swap fails with ENOMEM", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, BIG, RW, PRIV)).toBe(-ENOMEM);
    expect(k.mmap(pid, B, BIG, RW, PRIV | MAP_FIXED)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 2 * GiB)).toEqual([]);
  });

  // M31
  it("mmap with MAP_NORESERVE of a private writable mapping larger than RAM succeeds", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, BIG, RW, PRIV | MAP_FIXED | MAP_NORESERVE)).toBe(B);
    expect(areas(k, pid, B, B + 2 * GiB)).toEqual([{ start: B, end: B + BIG, prot: RW }]);
  });

  // M32
  it("mmap of a private read-only mapping larger than RAM succeeds because it is not accounted", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, BIG, R, PRIV | MAP_FIXED)).toBe(B);
  });

  // M33
  it("mmap of a shared mapping larger than RAM fails with ENOMEM even read-only", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, BIG, R, SHARED | MAP_FIXED)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 2 * GiB)).toEqual([]);
  });

  // M34
  it("mmap with MAP_NORESERVE of a shared mapping larger than RAM succeeds", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B, BIG, R, SHARED | MAP_FIXED | MAP_NORESERVE)).toBe(B);
  });

  // M35
  it("failed MAP_FIXED private mmap over a mapping leaves the old mapping split but in place", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P, R);
    expect(k.mmap(pid, B + P, BIG, RW, PRIV | MAP_FIXED)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 2 * GiB)).toEqual([
      { start: B, end: B + P, prot: R },
      { start: B + P, end: B + 3 * P, prot: R },
    ]);
  });

  // M36
  it("failed MAP_FIXED shared mmap over a mapping leaves a hole where the old mapping was", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P, R);
    expect(k.mmap(pid, B + P, BIG, R, SHARED | MAP_FIXED)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 2 * GiB)).toEqual([{ start: B, end: B + P, prot: R }]);
  });

  // M37
  it("mmap succeeds once more at exactly vm.max_map_count VMAs, then fails with ENOMEM", SLOW, () => {
    const { k, pid } = boot();
    fillMapCount(k, pid, MAX_MAP_COUNT);
    expect(k.mmap(pid, B + GiB, P, RW, PRIV | MAP_FIXED)).toBe(B + GiB);
    expect(k.vmas(pid).length).toBe(MAX_MAP_COUNT + 1);
    expect(k.mmap(pid, B + GiB + 2 * P, P, RW, PRIV | MAP_FIXED)).toBe(-ENOMEM);
    expect(k.mmap(pid, 0, P, RW, PRIV)).toBe(-ENOMEM);
    expect(k.vmas(pid).length).toBe(MAX_MAP_COUNT + 1);
  });

  // M38
  it("mmap with MAP_FIXED into the middle of a VMA at the map count limit fails with ENOMEM", SLOW, () => {
    const { k, pid } = boot();
    fillMapCount(k, pid, MAX_MAP_COUNT);
    expect(k.mmap(pid, B + P, P, R, PRIV | MAP_FIXED)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 3 * P)).toEqual([{ start: B, end: B + 3 * P, prot: RW }]);
    expect(k.vmas(pid).length).toBe(MAX_MAP_COUNT);
  });
});

describe("munmap", () => {
  // U1
  it("munmap with zero length fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.munmap(pid, B, 0)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + P, prot: RW }]);
  });

  // U2
  it("munmap at an unaligned address fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    expect(k.munmap(pid, B + 1, P)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + 2 * P, prot: RW }]);
  });

  // U3
  it("munmap of a range with nothing mapped succeeds", () => {
    const { k, pid } = boot();
    expect(k.munmap(pid, B + GiB, 16 * P)).toBe(0);
  });

  // U4
  it("munmap at address 0 succeeds (no mmap_min_addr check)", () => {
    const { k, pid } = boot();
    expect(k.munmap(pid, 0, P)).toBe(0);
  });

  // U5
  it("munmap starting at TASK_SIZE fails with EINVAL", () => {
    const { k, pid } = boot();
    expect(k.munmap(pid, TASK_SIZE, P)).toBe(-EINVAL);
  });

  // U6
  it("munmap of a range that passes TASK_SIZE fails with EINVAL", () => {
    const { k, pid } = boot();
    expect(k.munmap(pid, TASK_SIZE - P, 2 * P)).toBe(-EINVAL);
  });

  // U7
  it("munmap with a length near 2^64 fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.munmap(pid, B, U64_MINUS_PAGE)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + P, prot: RW }]);
  });

  // U8
  it("munmap rounds the length up to whole pages", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    expect(k.munmap(pid, B, 1)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B + P, end: B + 2 * P, prot: RW }]);
  });

  // U9
  it("munmap of the middle of a VMA leaves two VMAs", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.munmap(pid, B + P, P)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + 2 * P, end: B + 3 * P, prot: RW },
    ]);
  });

  // U10
  it("munmap of a range covering parts of two VMAs and a hole trims both", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    mapAt(k, pid, B + 4 * P, 3 * P, R);
    expect(k.munmap(pid, B + P, 5 * P)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + 6 * P, end: B + 7 * P, prot: R },
    ]);
  });

  // U11
  it("munmap that would split a VMA in three at the map count limit fails with ENOMEM", SLOW, () => {
    const { k, pid } = boot();
    fillMapCount(k, pid, MAX_MAP_COUNT);
    expect(k.munmap(pid, B + P, P)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 3 * P)).toEqual([{ start: B, end: B + 3 * P, prot: RW }]);
    expect(k.vmas(pid).length).toBe(MAX_MAP_COUNT);
  });

  // U12
  it("munmap of the head of a VMA at the map count limit succeeds", SLOW, () => {
    const { k, pid } = boot();
    fillMapCount(k, pid, MAX_MAP_COUNT);
    expect(k.munmap(pid, B, P)).toBe(0);
    expect(areas(k, pid, B, B + 3 * P)).toEqual([{ start: B + P, end: B + 3 * P, prot: RW }]);
    expect(k.vmas(pid).length).toBe(MAX_MAP_COUNT);
  });
});

describe("mprotect", () => {
  // P1
  it("mprotect at an unaligned address fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    expect(k.mprotect(pid, B + 1, P, R)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + 2 * P, prot: RW }]);
  });

  // P2
  it("mprotect with zero length succeeds even over nothing", () => {
    const { k, pid } = boot();
    expect(k.mprotect(pid, B + GiB, 0, R)).toBe(0);
  });

  // P3
  it("mprotect with unknown prot bits fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.mprotect(pid, B, P, R | PROT_UNKNOWN)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + P, prot: RW }]);
  });

  // P4
  it("mprotect accepts PROT_SEM and ignores it", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    expect(k.mprotect(pid, B, 2 * P, R | PROT_SEM)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + 2 * P, prot: R }]);
  });

  // P5
  it("mprotect with both PROT_GROWSDOWN and PROT_GROWSUP fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.mprotect(pid, B, P, R | PROT_GROWSDOWN | PROT_GROWSUP)).toBe(-EINVAL);
  });

  // P6
  it("mprotect with PROT_GROWSDOWN on an ordinary VMA fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    expect(k.mprotect(pid, B + P, P, R | PROT_GROWSDOWN)).toBe(-EINVAL);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + 2 * P, prot: RW }]);
  });

  // P7
  it("mprotect with PROT_GROWSUP fails with EINVAL on x86-64", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.mprotect(pid, B, P, R | PROT_GROWSUP)).toBe(-EINVAL);
  });

  // P8
  it("mprotect with a length that wraps fails with ENOMEM", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.mprotect(pid, B, U64_MINUS_PAGE, R)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + P, prot: RW }]);
  });

  // P9
  it("mprotect at TASK_SIZE fails with ENOMEM, not EINVAL", () => {
    const { k, pid } = boot();
    expect(k.mprotect(pid, TASK_SIZE, P, R)).toBe(-ENOMEM);
  });

  // P10
  it("mprotect of a range with nothing mapped fails with ENOMEM", () => {
    const { k, pid } = boot();
    expect(k.mprotect(pid, B + GiB, P, R)).toBe(-ENOMEM);
  });

  // P11
  it("mprotect of a range that starts in a hole fails with ENOMEM and changes nothing", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B + P, 2 * P);
    expect(k.mprotect(pid, B, 2 * P, R)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B + P, end: B + 3 * P, prot: RW }]);
  });

  // P12
  it("mprotect over a hole fails with ENOMEM after changing the VMAs before the hole", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    mapAt(k, pid, B + 4 * P, 3 * P);
    expect(k.mprotect(pid, B + P, 5 * P, R)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 3 * P, prot: R },
      { start: B + 4 * P, end: B + 7 * P, prot: RW },
    ]);
  });

  // P13
  it("mprotect of a range that runs past the last VMA fails with ENOMEM after changing it", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.mprotect(pid, B + P, 5 * P, R)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 3 * P, prot: R },
    ]);
  });

  // P14
  it("mprotect rounds the length up to whole pages", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    expect(k.mprotect(pid, B, 1, R)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: R },
      { start: B + P, end: B + 2 * P, prot: RW },
    ]);
  });

  // P15
  it("mprotect making a private mapping larger than RAM writable fails with ENOMEM", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, BIG, R);
    expect(k.mprotect(pid, B, BIG, RW)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 2 * GiB)).toEqual([{ start: B, end: B + BIG, prot: R }]);
  });

  // P16
  it("mprotect that needs a split at the map count limit fails with ENOMEM", SLOW, () => {
    const { k, pid } = boot();
    fillMapCount(k, pid, MAX_MAP_COUNT);
    expect(k.mprotect(pid, B, P, R)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 3 * P)).toEqual([{ start: B, end: B + 3 * P, prot: RW }]);
    expect(k.vmas(pid).length).toBe(MAX_MAP_COUNT);
  });

  // P17
  it("mprotect that needs two splits one below the limit splits once, then fails with ENOMEM", SLOW, () => {
    const { k, pid } = boot();
    fillMapCount(k, pid, MAX_MAP_COUNT - 1);
    expect(k.mprotect(pid, B + P, P, R)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + 3 * P)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 3 * P, prot: RW },
    ]);
    expect(k.vmas(pid).length).toBe(MAX_MAP_COUNT);
  });
});

describe("madvise", () => {
  // A1
  it("madvise with an invalid advice fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.madvise(pid, B, P, 7)).toBe(-EINVAL);
    expect(k.madvise(pid, B, P, 9999)).toBe(-EINVAL);
  });

  // A2
  it("madvise at an unaligned address fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    expect(k.madvise(pid, B + 1, P, MADV_NORMAL)).toBe(-EINVAL);
  });

  // A3
  it("madvise with zero length succeeds even over nothing", () => {
    const { k, pid } = boot();
    expect(k.madvise(pid, B + GiB, 0, MADV_HUGEPAGE)).toBe(0);
  });

  // A4
  it("madvise with a length that rounds up to zero fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.madvise(pid, B, U64_MINUS_HALF_PAGE, MADV_NORMAL)).toBe(-EINVAL);
  });

  // A5
  it("madvise with a length that wraps fails with EINVAL", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.madvise(pid, B, U64_MINUS_PAGE, MADV_NORMAL)).toBe(-EINVAL);
  });

  // A6
  it("madvise at TASK_SIZE fails with ENOMEM, not EINVAL", () => {
    const { k, pid } = boot();
    expect(k.madvise(pid, TASK_SIZE, P, MADV_NORMAL)).toBe(-ENOMEM);
  });

  // A7
  it("madvise of a range with nothing mapped fails with ENOMEM", () => {
    const { k, pid } = boot();
    expect(k.madvise(pid, B + GiB, P, MADV_NORMAL)).toBe(-ENOMEM);
  });

  // A8
  it("madvise of a range that starts in a hole fails with ENOMEM but advises the VMA after it", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B + P, 3 * P);
    expect(k.madvise(pid, B, 3 * P, MADV_HUGEPAGE)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B + P, end: B + 3 * P, prot: RW },
      { start: B + 3 * P, end: B + 4 * P, prot: RW },
    ]);
  });

  // A9
  it("madvise over a hole fails with ENOMEM but advises the VMAs on both sides", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    mapAt(k, pid, B + 4 * P, 3 * P);
    expect(k.madvise(pid, B + P, 5 * P, MADV_HUGEPAGE)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 3 * P, prot: RW },
      { start: B + 4 * P, end: B + 6 * P, prot: RW },
      { start: B + 6 * P, end: B + 7 * P, prot: RW },
    ]);
  });

  // A10
  it("madvise of a range that runs past the last VMA fails with ENOMEM after advising it", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.madvise(pid, B + P, 5 * P, MADV_HUGEPAGE)).toBe(-ENOMEM);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 3 * P, prot: RW },
    ]);
  });

  // A11
  it("madvise MADV_HUGEPAGE on the middle of a VMA splits it in three", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.madvise(pid, B + P, P, MADV_HUGEPAGE)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 2 * P, prot: RW },
      { start: B + 2 * P, end: B + 3 * P, prot: RW },
    ]);
  });

  // A12
  it("madvise MADV_NOHUGEPAGE on the middle of a VMA splits it in three", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.madvise(pid, B + P, P, MADV_NOHUGEPAGE)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 2 * P, prot: RW },
      { start: B + 2 * P, end: B + 3 * P, prot: RW },
    ]);
  });

  // A13
  it("madvise MADV_NORMAL on a plain VMA succeeds without splitting it", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.madvise(pid, B + P, P, MADV_NORMAL)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([{ start: B, end: B + 3 * P, prot: RW }]);
  });

  // A14
  it("madvise MADV_NORMAL does not undo MADV_HUGEPAGE", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    expect(k.madvise(pid, B + P, P, MADV_HUGEPAGE)).toBe(0);
    expect(k.madvise(pid, B + P, P, MADV_NORMAL)).toBe(0);
    expect(k.madvise(pid, B, 3 * P, MADV_NORMAL)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 2 * P, prot: RW },
      { start: B + 2 * P, end: B + 3 * P, prot: RW },
    ]);
  });

  // A15
  it("madvise MADV_HUGEPAGE on shared anonymous memory succeeds", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P, RW, SHARED);
    expect(k.madvise(pid, B + P, P, MADV_HUGEPAGE)).toBe(0);
    expect(areas(k, pid, B, B + GiB)).toEqual([
      { start: B, end: B + P, prot: RW },
      { start: B + P, end: B + 2 * P, prot: RW },
      { start: B + 2 * P, end: B + 3 * P, prot: RW },
    ]);
  });

  // A16
  it("madvise that needs a split at the map count limit fails with EAGAIN, not ENOMEM", SLOW, () => {
    const { k, pid } = boot();
    fillMapCount(k, pid, MAX_MAP_COUNT);
    expect(k.madvise(pid, B + P, P, MADV_HUGEPAGE)).toBe(-EAGAIN);
    expect(areas(k, pid, B, B + 3 * P)).toEqual([{ start: B, end: B + 3 * P, prot: RW }]);
    expect(k.vmas(pid).length).toBe(MAX_MAP_COUNT);
  });
});

describe("order of the checks", () => {
  // O1
  it("mmap with zero length and an unaligned MAP_FIXED address fails with EINVAL", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, B + 1, 0, RW, PRIV | MAP_FIXED)).toBe(-EINVAL);
  });

  // O2
  it("mmap with zero length fails with EINVAL before the mmap_min_addr check", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, 0, RW, MAP_ANONYMOUS | MAP_FIXED)).toBe(-EINVAL);
  });

  // O3
  it("mmap below mmap_min_addr fails with EPERM before the map type check", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0x1000, P, RW, MAP_ANONYMOUS | MAP_FIXED)).toBe(-EPERM);
  });

  // O4
  it("mmap with MAP_FIXED_NOREPLACE fails with EEXIST before the map type check", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    expect(k.mmap(pid, B, P, RW, MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)).toBe(-EEXIST);
  });

  // O5
  it("mmap with MAP_FIXED fails with ENOMEM for a range past TASK_SIZE before the alignment check", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, TASK_SIZE - P + 1, 2 * P, RW, PRIV | MAP_FIXED)).toBe(-ENOMEM);
  });

  // O6
  it("mmap with MAP_FIXED fails with EINVAL for an unaligned address before the mmap_min_addr check", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0x1001, P, RW, PRIV | MAP_FIXED)).toBe(-EINVAL);
  });

  // O7
  it("mmap with a length past TASK_SIZE fails with ENOMEM before the map type check", () => {
    const { k, pid } = boot();
    expect(k.mmap(pid, 0, TASK_SIZE + 1, RW, MAP_ANONYMOUS)).toBe(-ENOMEM);
  });

  // O8
  it("mprotect with zero length succeeds before the prot bits are checked", () => {
    const { k, pid } = boot();
    expect(k.mprotect(pid, B + GiB, 0, PROT_UNKNOWN)).toBe(0);
  });

  // O9
  it("mprotect with unknown prot bits fails with EINVAL before the VMA lookup", () => {
    const { k, pid } = boot();
    expect(k.mprotect(pid, B + GiB, P, PROT_UNKNOWN)).toBe(-EINVAL);
  });

  // O10
  it("mprotect with a wrapping length fails with ENOMEM before the prot bits are checked", () => {
    const { k, pid } = boot();
    expect(k.mprotect(pid, B, U64_MINUS_PAGE, PROT_UNKNOWN)).toBe(-ENOMEM);
  });

  // O11
  it("mprotect at an unaligned address fails with EINVAL even with zero length", () => {
    const { k, pid } = boot();
    expect(k.mprotect(pid, B + 1, 0, R)).toBe(-EINVAL);
  });

  // O12
  it("madvise with an invalid advice fails with EINVAL even with zero length", () => {
    const { k, pid } = boot();
    expect(k.madvise(pid, B, 0, 7)).toBe(-EINVAL);
  });

  // O13
  it("madvise at an unaligned address fails with EINVAL even with zero length", () => {
    const { k, pid } = boot();
    expect(k.madvise(pid, B + 1, 0, MADV_NORMAL)).toBe(-EINVAL);
  });
});

describe("address selection and commit charge (review findings)", () => {
  it("mmap without a hint falls back to the bottom-up layout when nothing fits below mmap_base", () => {
    const k = new Kernel({ ramBytes: 64 * 2 ** 20 });
    const pid = k.createProcess();
    const low = 65536;
    const base = 0x7ffff7fff000;
    expect(k.mmap(pid, low, base - low, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(low);
    const got = k.mmap(pid, 0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
    expect(got).toBeGreaterThanOrEqual(base);
  });

  it("MAP_FIXED over an accounted mapping charges only the pages not charged already", () => {
    const k = new Kernel({ ramBytes: 64 * 2 ** 20 }); // 16384 pages
    const pid = k.createProcess();
    const rw = PROT_READ | PROT_WRITE;
    const a = k.mmap(pid, 0, 12288 * 4096, rw, MAP_PRIVATE | MAP_ANONYMOUS);
    expect(a).toBeGreaterThan(0);
    expect(k.mmap(pid, a, 20000 * 4096, rw, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(a);
    expect(k.mmap(pid, 0, 20000 * 4096, rw, MAP_PRIVATE | MAP_ANONYMOUS)).toBe(-ENOMEM);
  });
});
