// mremap(2) on anonymous memory, checked against what Linux 6.18 does. Every expected value here
// was run on a live 6.18.44 kernel with the C probe described in docs/errno.md ("mremap"): the
// errno rows as uid 65534 with vm.mmap_min_addr = 65536, the state rows as root with pagemap,
// kpagecount and smaps. The row ids (F1, X7, H2, ...) are the probe's. The audit runs after
// every operation.

import { describe, expect, it } from "vitest";
import { audit } from "../check/audit.ts";
import { pageDump, smapsVma, status } from "../report/proc.ts";
import {
  EFAULT,
  EINVAL,
  ENOMEM,
  EPERM,
  isErr,
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_READ,
  PROT_WRITE,
  TASK_SIZE,
} from "../uapi.ts";
import { Kernel } from "./kernel.ts";
import { sysMremap } from "./mremap.ts";

const P = PAGE_SIZE;
const MiB = 2 ** 20;
const G = 2 ** 30;
const T = TASK_SIZE;
/** Where the tests map: 4 GiB, free after createProcess. */
const B = 2 ** 32;
/** vm.mmap_min_addr (the probe set the live kernel's to this). */
const MIN = 65536;
const RAM = 64 * MiB;
/** More than RAM + swap: the overcommit heuristic refuses to charge it. */
const BIG = G;
const MM = MREMAP_MAYMOVE;
const FX = MREMAP_FIXED;
const DU = MREMAP_DONTUNMAP;
const R = PROT_READ;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;
const MAX_MAP_COUNT = 65530;
const SLOW = { timeout: 120_000 };

interface Area {
  start: number;
  end: number;
  prot: number;
  shared?: true;
}

function boot(): { k: Kernel; pid: number } {
  const k = new Kernel({
    ramBytes: RAM,
    thp: { enabled: "madvise", orders: { 9: "inherit" }, useZeroPage: true },
  });
  const pid = k.createProcess();
  return { k, pid };
}

function mapAt(k: Kernel, pid: number, addr: number, len: number, prot = RW, flags = PRIV): void {
  expect(k.mmap(pid, addr, len, prot, flags | MAP_FIXED)).toBe(addr);
  audit(k);
}

/** mremap on pid's mm, then the audit. */
function remap(
  k: Kernel,
  pid: number,
  addr: number,
  oldLen: number,
  newLen: number,
  flags: number,
  to = 0,
): number {
  const r = sysMremap(k.mm(pid), addr, oldLen, newLen, flags, to);
  audit(k);
  return r;
}

/** The VMAs of pid, as start, end, prot and whether shared. */
function areas(k: Kernel, pid: number): Area[] {
  return k.mm(pid).vmas.map((v) => {
    const a: Area = { start: v.start, end: v.end, prot: v.flags & RW };
    if (v.shmem !== null) a.shared = true;
    return a;
  });
}

const area = (start: number, end: number, prot = RW): Area => ({ start, end, prot });
const shared = (start: number, end: number, prot = RW): Area => ({ start, end, prot, shared: true });

/** Writes [addr, addr + len) and returns the first tag (page i holds first + i). */
function fill(k: Kernel, pid: number, addr: number, len: number): number {
  const w = k.write(pid, addr, len);
  expect(w.pages).toBe(len / P);
  audit(k);
  return w.firstTag;
}

/** The tags read from [addr, addr + len), expected to be first, first + 1, ... (0: all zero). */
function expectTags(k: Kernel, pid: number, addr: number, len: number, first: number): void {
  const r = k.read(pid, addr, len);
  expect(r.signal).toBeNull();
  const want = Array.from({ length: len / P }, (_, i) => (first === 0 ? 0 : first + i));
  expect(r.tags).toEqual(want);
  audit(k);
}

const vmPte = (k: Kernel, pid: number): number => status(k.mm(pid)).VmPTE;

/** smaps AnonHugePages (kB) of the VMA containing addr. */
function anonHuge(k: Kernel, pid: number, addr: number): number {
  const mm = k.mm(pid);
  const vma = mm.vmaLookup(addr);
  if (vma === undefined) throw new Error(`anonHuge: no VMA at ${addr}`);
  return smapsVma(mm, vma).AnonHugePages;
}

/** 1-page VMAs separated by holes above `at` until pid has exactly `count` VMAs. */
function fillMapCount(k: Kernel, pid: number, at: number, count: number): void {
  const mm = k.mm(pid);
  for (let addr = at; mm.mapCount < count; addr += 2 * P) {
    if (k.mmap(pid, addr, P, RW, PRIV | MAP_FIXED) !== addr) throw new Error(`fillMapCount: mmap at ${addr}`);
  }
  expect(mm.mapCount).toBe(count);
}

// ---------------------------------------------------------------------------------------------
// The errno table: one row per live probe row, in Linux's order of checks.

type Setup = (k: Kernel, pid: number) => void;
/** [B, B+4P) RW private. */
const ONE: Setup = (k, pid) => mapAt(k, pid, B, 4 * P);
/** [B, B+2P) RW and [B+2P, B+4P) R, private. */
const TWO: Setup = (k, pid) => {
  mapAt(k, pid, B, 2 * P);
  mapAt(k, pid, B + 2 * P, 2 * P, R);
};
/** [B, B+2P) private and [B+4P, B+6P) shared, RW. */
const ZS: Setup = (k, pid) => {
  mapAt(k, pid, B, 2 * P);
  mapAt(k, pid, B + 4 * P, 2 * P, RW, SHARED);
};
/** [B, B+P) RW, [B+P, B+2P) R, [B+4P, B+7P) RW, [T-P, T) RW. */
const NS: Setup = (k, pid) => {
  mapAt(k, pid, B, P);
  mapAt(k, pid, B + P, P, R);
  mapAt(k, pid, B + 4 * P, 3 * P);
  mapAt(k, pid, T - P, P);
};
const NONE: Setup = () => {};
const one =
  (prot: number, flags: number, len = P): Setup =>
  (k, pid) =>
    mapAt(k, pid, B, len, prot, flags);

/** An expected result: -errno, an address, or "moved" (any address but the old one). */
type Want = number | "moved";
/** [id, setup, [addr, oldLen, newLen, flags, newAddr], result, the VMAs after (if checked)]. */
type Row = [string, Setup, [number, number, number, number, number], Want, Area[]?];

const U64_MINUS_PAGE = 2 ** 64 - 4096;
const U64_MINUS_HALF_PAGE = 2 ** 64 - 2048;
const ONE_AREA = [area(B, B + 4 * P)];
const TWO_AREAS = [area(B, B + 2 * P), area(B + 2 * P, B + 4 * P, R)];

const ROWS: Row[] = [
  // check_mremap_params: flags, addr, new_len
  ["RF1", ONE, [B, P, P, 8, 0], -EINVAL, ONE_AREA],
  ["RF1b", ONE, [B, P, 2 * P, MM | 0x10, 0], -EINVAL],
  ["RF2", ONE, [B + 1, P, P, 0, 0], -EINVAL],
  ["RF2b", ONE, [B + 1, P, P, MM | FX, B + G], -EINVAL],
  ["RF3", ONE, [B, P, 0, 0, 0], -EINVAL],
  ["RF3b", NONE, [B + G, P, 0, 0, 0], -EINVAL],
  ["RF3c", ONE, [B, 0, 0, MM, 0], -EINVAL],
  ["RF4", ONE, [B, P, U64_MINUS_HALF_PAGE, MM, 0], -EINVAL],
  ["RF5", ONE, [B, P, T + 1, MM, 0], -EINVAL],
  ["RF5b", NONE, [B + G, P, T, 0, 0], -EFAULT],
  ["RF5c", ONE, [B, P, T, 0, 0], -ENOMEM],
  ["RF5d", ONE, [B, P, T, MM, 0], -ENOMEM],
  // ... then, for FIXED or DONTUNMAP only: new_addr, MAYMOVE, DONTUNMAP resize, overlap
  ["RF6", ONE, [B, 2 * P, 2 * P, MM | FX, T - P], -EINVAL, ONE_AREA],
  ["RF6b", ONE, [B, P, P, MM | FX, T - P], T - P, [area(B + P, B + 4 * P), area(T - P, T)]],
  ["RF6c", ONE, [B, P, P, 0, 0xdeadbeef123], B, ONE_AREA],
  ["RF6d", ONE, [B, P, P, MM, U64_MINUS_PAGE], B, ONE_AREA],
  ["RF6e", ONE, [B, P, 2 * P, MM, U64_MINUS_PAGE], "moved"],
  ["RF6f", ONE, [B, 2 * P, P, 0, B + 1], B, [area(B, B + P), area(B + 2 * P, B + 4 * P)]],
  ["RF6g", ONE, [B, P, P, MM | DU, T], -EINVAL],
  ["RF7", ONE, [B, P, P, MM | FX, B + G + 1], -EINVAL],
  ["RF7b", ONE, [B, P, P, MM | DU, B + G + 1], -EINVAL],
  ["RF8", ONE, [B, P, P, FX, B + G], -EINVAL],
  ["RF8b", ONE, [B, P, P, DU, B + G], -EINVAL],
  ["RF9", ONE, [B, P, 2 * P, MM | DU, B + G], -EINVAL],
  ["RF9b", ONE, [B, 2 * P, P, MM | DU | FX, B + G], -EINVAL],
  ["RF10", ONE, [B, 2 * P, 2 * P, MM | FX, B + P], -EINVAL],
  ["RF10b", ONE, [B, 2 * P, 2 * P, MM | FX, B], -EINVAL],
  ["RF10c", ONE, [B + 2 * P, P, 4 * P, MM | FX, B - P], -EINVAL],
  ["RF10d", ONE, [B, 2 * P, 2 * P, MM | DU, B + P], -EINVAL],
  ["RF10e", ONE, [B, 2 * P, 2 * P, MM | FX | DU, B - P], -EINVAL],
  ["RF10f", ONE, [B, 2 * P, 2 * P, MM | FX, B + 2 * P], B + 2 * P, [area(B + 2 * P, B + 4 * P)]],
  [
    "F10g",
    ONE,
    [B + 2 * P, P, 4 * P, MM | FX, B - 2 * P],
    B - 2 * P,
    [area(B - 2 * P, B + 2 * P), area(B + 3 * P, B + 4 * P)],
  ],
  ["RF10h", ONE, [B, 2 * P, 2 * P, MM | DU, B + 2 * P], "moved"],
  ["RO1", ONE, [B + 1, P, 0, 8, 0], -EINVAL],
  ["RO2", ONE, [B, P, P, MM | FX, B + 1], -EINVAL],
  ["RO3", ONE, [B, P, 2 * P, FX | DU, B + G], -EINVAL],
  ["RO4", NONE, [B + G, P, P, MM | FX, 0], -EFAULT],
  ["RO5", NONE, [B + G, P, 2 * P, MM | FX, 0], -EFAULT],
  ["RO6", NONE, [B + G, P, P, MM | FX, T - P + 1], -EINVAL],
  ["RO7", ONE, [B, P, P, MM | FX, T], -EINVAL],
  // check_prep_vma and remap_move: EFAULT, and the ranges 6.18 accepts across VMAs and holes
  ["RX1", TWO, [B + G, P, P, 0, 0], -EFAULT],
  ["RX1b", TWO, [B + G, P, 2 * P, MM, 0], -EFAULT],
  ["RX1c", TWO, [B + G, P, P, MM | FX, B + 2 * G], -EFAULT],
  ["RX1d", TWO, [B + G, P, P, MM | DU, B + 2 * G], -EFAULT],
  ["RX1e", TWO, [B + G, 2 * P, P, 0, 0], -EFAULT],
  ["RX1f", TWO, [B + 4 * P, P, P, 0, 0], -EFAULT],
  ["RX2", TWO, [B, 4 * P, 5 * P, MM, 0], -EFAULT, TWO_AREAS],
  ["RX2b", TWO, [B + P, 2 * P, 2 * P, MM | DU, B + G], -EFAULT],
  ["RX2c", TWO, [B + P, 2 * P, 3 * P, MM | FX, B + G], -EFAULT],
  [
    "X2d",
    TWO,
    [B, 3 * P, 3 * P, MM | DU | FX, B + G],
    B + G,
    [...TWO_AREAS, area(B + G, B + G + 2 * P), area(B + G + 2 * P, B + G + 3 * P, R)],
  ],
  ["RX3", TWO, [B + 2 * P, 3 * P, 4 * P, MM, 0], -EFAULT],
  ["RX3b", TWO, [B + 2 * P, 3 * P, 4 * P, 0, 0], -EFAULT],
  ["RX4", TWO, [B - P, 2 * P, 2 * P, MM | FX, B + G], -EFAULT, TWO_AREAS],
  ["RX5", TWO, [B + 5 * P, 2 * P, 2 * P, MM | FX, B + G], -EFAULT],
  ["RX6", TWO, [B + 3 * P, 5 * P, 5 * P, 0, 0], B + 3 * P, TWO_AREAS],
  ["RX6b", TWO, [B + P, 9 * P, 9 * P, MM, 0], B + P, TWO_AREAS],
  [
    "X7",
    TWO,
    [B, 4 * P, 4 * P, MM | FX, B + G],
    B + G,
    [area(B + G, B + G + 2 * P), area(B + G + 2 * P, B + G + 4 * P, R)],
  ],
  [
    "X7b",
    TWO,
    [B + P, 5 * P, 5 * P, MM | FX, B + G],
    B + G,
    [area(B, B + P), area(B + G, B + G + P), area(B + G + P, B + G + 3 * P, R)],
  ],
  ["RX8", TWO, [B, 4 * P, P, MM | FX, B + G], B + G, [area(B + G, B + G + P)]],
  ["RX8b", TWO, [B, 4 * P, P, 0, 0], B, [area(B, B + P)]],
  ["RX8c", TWO, [B, 6 * P, 3 * P, 0, 0], B, [area(B, B + 2 * P), area(B + 2 * P, B + 3 * P, R)]],
  ["RX8d", TWO, [B, 6 * P, 3 * P, MM | FX, B + G], -EFAULT, TWO_AREAS],
  ["RX8e", TWO, [B + P, 5 * P, 2 * P, MM | FX, B + G], -EFAULT, TWO_AREAS],
  ["RX9", TWO, [B, U64_MINUS_PAGE, P, 0, 0], -EINVAL, TWO_AREAS],
  ["RX9b", TWO, [B, U64_MINUS_HALF_PAGE, P, 0, 0], -EINVAL, TWO_AREAS],
  ["RX9c", TWO, [B, T, P, 0, 0], -EINVAL, TWO_AREAS],
  ["RX9d", TWO, [B, T - B + P, P, 0, 0], -EINVAL, TWO_AREAS],
  // old_len 0: nothing to move for a private mapping; a second mapping of a shared one
  ["RZ1", ZS, [B, 0, P, MM, 0], -EINVAL],
  ["RZ1b", ZS, [B, 0, P, 0, 0], -EINVAL],
  ["RZ1c", ZS, [B, 0, P, MM | FX, B + G], -EINVAL],
  ["RZ2", ZS, [B + 4 * P, 0, 2 * P, MM, B + G], "moved"],
  ["RZ2b", ZS, [B + 4 * P, 0, 2 * P, 0, 0], -ENOMEM],
  [
    "Z3",
    ZS,
    [B + 4 * P, 0, 2 * P, MM | FX, B + G],
    B + G,
    [area(B, B + 2 * P), shared(B + 4 * P, B + 6 * P), shared(B + G, B + G + 2 * P)],
  ],
  [
    "Z3b",
    ZS,
    [B + 5 * P, 0, 3 * P, MM | FX, B + G],
    B + G,
    [area(B, B + 2 * P), shared(B + 4 * P, B + 6 * P), shared(B + G, B + G + 3 * P)],
  ],
  ["RZ4", ZS, [B + 4 * P, 0, 0, MM, 0], -EINVAL],
  ["RZ5", ZS, [B + 6 * P, 0, P, MM, 0], -EFAULT],
  ["RZ6", ZS, [B + 4 * P, 0, P, MM | DU, B + G], -EINVAL],
  // growing: in place, or ENOMEM without MREMAP_MAYMOVE
  ["RN1", NS, [B, P, 2 * P, 0, 0], -ENOMEM],
  ["RN1b", NS, [B, P, 2 * P, MM, 0], "moved"],
  ["RN2", NS, [B + 4 * P, P, 2 * P, 0, 0], -ENOMEM],
  ["RN2b", NS, [B + 4 * P, 3 * P, 4 * P, 0, 0], B + 4 * P],
  ["RN2c", NS, [B + 5 * P, 2 * P, 4 * P, 0, 0], B + 5 * P],
  ["RN3", NS, [T - P, P, 2 * P, 0, 0], -ENOMEM],
  ["RN3b", NS, [T - P, P, 2 * P, MM, 0], "moved"],
  ["RN4", NS, [B + 4 * P, P, T, MM, 0], -ENOMEM],
  // VM_ACCOUNT: growth is charged
  ["RK1", one(RW, PRIV), [B, P, BIG, 0, 0], -ENOMEM, [area(B, B + P)]],
  ["RK1b", one(RW, PRIV), [B, P, BIG, MM, 0], -ENOMEM],
  ["RK1c", one(RW, PRIV), [B, P, BIG, MM | FX, B + 4 * G], -ENOMEM],
  ["RK1d", one(RW, PRIV, 2 * P), [B, 2 * P, BIG, MM | FX, B + 4 * G], -ENOMEM, [area(B, B + 2 * P)]],
  ["RK1e", one(RW, PRIV, 2 * P), [B, 2 * P, 2 * P, MM | DU, B + 4 * G], B + 4 * G],
  ["RK2", one(R, PRIV), [B, P, BIG, 0, 0], B, [area(B, B + BIG, R)]],
  ["RK3", one(R, SHARED), [B, P, BIG, 0, 0], B, [shared(B, B + BIG, R)]],
  ["RK4", one(RW, PRIV | MAP_NORESERVE), [B, P, BIG, 0, 0], B],
  ["RK5", one(RW, SHARED), [B, P, BIG, 0, 0], B],
  ["RK6", one(RW, SHARED | MAP_NORESERVE), [B, P, BIG, 0, 0], B],
  ["RK7", one(R, PRIV), [B, P, BIG, MM | FX, B + 4 * G], B + 4 * G, [area(B + 4 * G, B + 4 * G + BIG, R)]],
  // get_unmapped_area: mmap_min_addr (an unprivileged process) and TASK_SIZE
  ["RG1", ONE, [B, P, P, MM | FX, MIN - P], -EPERM, ONE_AREA],
  ["RG1b", ONE, [B, P, P, MM | FX, 0], -EPERM],
  ["RG1c", ONE, [B, P, 2 * P, MM | FX, MIN - P], -EPERM, ONE_AREA],
  ["RG1d", ONE, [B, P, P, MM | FX, MIN - 2 * P], -EPERM],
  ["RG2", ONE, [B, P, P, MM | DU, MIN - P], -EPERM, ONE_AREA],
  ["RG2b", ONE, [B, P, P, MM | DU, 0], "moved"],
  ["RG3", ONE, [B, P, P, MM | DU | FX, MIN - P], -EPERM, ONE_AREA],
  ["RG4", ONE, [B, P, P, MM | FX, MIN], MIN, [area(MIN, MIN + P), area(B + P, B + 4 * P)]],
  [
    "G5",
    ONE,
    [B + P, P, P, MM | FX, T - P],
    T - P,
    [area(B, B + P), area(B + 2 * P, B + 4 * P), area(T - P, T)],
  ],
  ["RG6", ONE, [B, 2 * P, P, MM | FX, MIN - P], -EPERM, [area(B, B + P), area(B + 2 * P, B + 4 * P)]],
];

describe("mremap errno, as Linux 6.18 decides it", () => {
  it.each(ROWS)("%s", (_id, setup, [addr, oldLen, newLen, flags, to], want, after) => {
    const { k, pid } = boot();
    setup(k, pid);
    const r = remap(k, pid, addr, oldLen, newLen, flags, to);
    if (want === "moved") {
      expect(isErr(r)).toBe(false);
      expect(r).not.toBe(addr);
    } else {
      expect(r).toBe(want);
    }
    if (after !== undefined) expect(areas(k, pid)).toEqual(after);
  });

  // RC1, RC2
  it("refuses a FIXED or DONTUNMAP move once map_count + 2 reaches max_map_count - 3", SLOW, () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    fillMapCount(k, pid, B + 8 * P, MAX_MAP_COUNT - 6);
    expect(remap(k, pid, B, P, P, MM | FX, B + G)).toBe(B + G);
    expect(k.mm(pid).mapCount).toBe(MAX_MAP_COUNT - 5);
    expect(remap(k, pid, B + P, P, P, MM | FX, B + 2 * G)).toBe(-ENOMEM);
    expect(remap(k, pid, B + P, P, P, MM | DU, 0)).toBe(-ENOMEM);
    expect(remap(k, pid, B + P, P, P, MM | FX, B + 3 * P)).toBe(-ENOMEM);
    // RC2d: growing in place needs no new VMA and is not counted.
    expect(remap(k, pid, B + P, 2 * P, 3 * P, MM, 0)).toBe(B + P);
  });

  // RC3, RC5
  it("refuses a MAYMOVE move at max_map_count - 3 VMAs and allows it one below", SLOW, () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    mapAt(k, pid, B + 3 * P, P, R);
    fillMapCount(k, pid, B + 8 * P, MAX_MAP_COUNT - 3);
    const mm = k.mm(pid);
    expect(remap(k, pid, B, 3 * P, 4 * P, MM, 0)).toBe(-ENOMEM);
    expect(k.munmap(pid, B + 8 * P, P)).toBe(0);
    // RC5: moving the middle page splits the source in two: two more VMAs.
    const r = remap(k, pid, B + P, P, 4 * P, MM, 0);
    expect(isErr(r)).toBe(false);
    expect(mm.mapCount).toBe(MAX_MAP_COUNT - 2);
    expect(areas(k, pid).slice(0, 3)).toEqual([
      area(B, B + P),
      area(B + 2 * P, B + 3 * P),
      area(B + 3 * P, B + 4 * P, R),
    ]);
  });

  // RC4
  it("fails to shrink from the middle of a VMA at max_map_count, and shrinks its tail", SLOW, () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    fillMapCount(k, pid, B + 8 * P, MAX_MAP_COUNT);
    expect(remap(k, pid, B, 2 * P, P, 0, 0)).toBe(-ENOMEM);
    expect(remap(k, pid, B, 3 * P, P, 0, 0)).toBe(B);
    expect(k.mm(pid).mapCount).toBe(MAX_MAP_COUNT);
  });
});

// ---------------------------------------------------------------------------------------------

describe("mremap resizes in place", () => {
  // S1
  it("shrinks by unmapping the tail: RSS drops, the page table stays", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * P);
    const tag = fill(k, pid, B, 4 * P);
    expect(vmPte(k, pid)).toBe(12);
    expect(remap(k, pid, B, 4 * P, 2 * P, 0)).toBe(B);
    expect(areas(k, pid)).toEqual([area(B, B + 2 * P)]);
    expect(status(k.mm(pid)).RssAnon).toBe(8);
    expect(vmPte(k, pid)).toBe(12);
    expectTags(k, pid, B, 2 * P, tag);
  });

  // S2, S6
  it("grows into free space and merges with a next VMA that was never faulted", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    const tag = fill(k, pid, B, 2 * P);
    mapAt(k, pid, B + 4 * P, 2 * P);
    expect(remap(k, pid, B, 2 * P, 4 * P, 0)).toBe(B);
    expect(areas(k, pid)).toEqual([area(B, B + 6 * P)]);
    expectTags(k, pid, B, 2 * P, tag);
    expectTags(k, pid, B + 2 * P, 4 * P, 0);
  });

  it("grows a VMA never faulted into a next VMA that was, and takes its anon_vma", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    mapAt(k, pid, B + 4 * P, 2 * P);
    const tag = fill(k, pid, B + 4 * P, 2 * P);
    expect(remap(k, pid, B, 2 * P, 4 * P, 0)).toBe(B);
    expect(areas(k, pid)).toEqual([area(B, B + 6 * P)]);
    expect(k.mm(pid).vmas[0].anonVma).not.toBeNull();
    expectTags(k, pid, B + 4 * P, 2 * P, tag);
  });

  // S3, S8b, S8c
  it("does not merge with a next VMA that has another anon_vma, other flags or another file", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    fill(k, pid, B, 2 * P);
    mapAt(k, pid, B + 4 * P, 2 * P);
    fill(k, pid, B + 4 * P, 2 * P);
    mapAt(k, pid, B + 8 * P, 2 * P);
    mapAt(k, pid, B + 12 * P, 2 * P, R);
    mapAt(k, pid, B + 16 * P, 2 * P);
    mapAt(k, pid, B + 20 * P, 2 * P, RW, SHARED);
    for (const a of [B, B + 8 * P, B + 16 * P]) expect(remap(k, pid, a, 2 * P, 4 * P, 0)).toBe(a);
    expect(areas(k, pid)).toEqual([
      area(B, B + 4 * P),
      area(B + 4 * P, B + 6 * P),
      area(B + 8 * P, B + 12 * P),
      area(B + 12 * P, B + 14 * P, R),
      area(B + 16 * P, B + 20 * P),
      shared(B + 20 * P, B + 22 * P),
    ]);
  });

  // SH1
  it("grows a shared mapping past its object; the pages past the end raise SIGBUS", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * P, RW, SHARED);
    const tag = fill(k, pid, B, 4 * P);
    expect(remap(k, pid, B, 4 * P, 8 * P, 0)).toBe(B);
    expect(areas(k, pid)).toEqual([shared(B, B + 8 * P)]);
    expectTags(k, pid, B, 4 * P, tag);
    expect(k.read(pid, B + 4 * P, P).signal).toBe("SIGBUS");
    audit(k);
    expect(status(k.mm(pid)).RssShmem).toBe(16);
  });
});

describe("mremap moves", () => {
  // S4
  it("moves a blocked mapping that must grow, keeping its frames, bits and counts", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * P);
    const tag = fill(k, pid, B, 4 * P);
    mapAt(k, pid, B + 4 * P, P, R);
    const mm = k.mm(pid);
    const before = pageDump(mm, B, B + 4 * P).map(({ addr: _, ...rest }) => rest);
    const r = remap(k, pid, B, 4 * P, 8 * P, MM);
    expect(isErr(r)).toBe(false);
    expect(r).not.toBe(B);
    const after = pageDump(mm, r, r + 4 * P).map(({ addr: _, ...rest }) => rest);
    expect(after).toEqual(before);
    expect(pageDump(mm, r + 4 * P, r + 8 * P).every((p) => p.kind === "none")).toBe(true);
    expect(areas(k, pid)).toEqual([area(B + 4 * P, B + 5 * P, R), area(r, r + 8 * P)]);
    expect(status(mm).RssAnon).toBe(16);
    expectTags(k, pid, r, 4 * P, tag);
  });

  // S5, S7, S7b
  it("places a private move of a 2 MiB multiple 2 MiB aligned, and a shared one anywhere", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * MiB);
    mapAt(k, pid, B + 2 * MiB, P, R);
    mapAt(k, pid, B + 8 * MiB, 2 * MiB, RW, SHARED);
    mapAt(k, pid, B + 10 * MiB, P, R);
    mapAt(k, pid, B + 16 * MiB, 3 * P);
    mapAt(k, pid, B + 16 * MiB + 3 * P, P, R);
    const shr = remap(k, pid, B + 8 * MiB, 2 * MiB, 4 * MiB, MM);
    expect(isErr(shr)).toBe(false);
    expect(shr % PMD_SIZE).not.toBe(0);
    const priv = remap(k, pid, B, 2 * MiB, 4 * MiB, MM);
    expect(priv % PMD_SIZE).toBe(0);
    const small = remap(k, pid, B + 16 * MiB, 3 * P, 2 * MiB, MM);
    expect(small % PMD_SIZE).toBe(0);
  });

  // M1
  it("moves a page out and back, and the three VMAs merge into one again", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    const tag = fill(k, pid, B, 3 * P);
    expect(remap(k, pid, B + P, P, P, MM | FX, B + G)).toBe(B + G);
    expect(areas(k, pid)).toEqual([area(B, B + P), area(B + 2 * P, B + 3 * P), area(B + G, B + G + P)]);
    expectTags(k, pid, B + G, P, tag + 1);
    const merges = k.machine.stat.get("vma_merge");
    expect(remap(k, pid, B + G, P, P, MM | FX, B + P)).toBe(B + P);
    expect(areas(k, pid)).toEqual([area(B, B + 3 * P)]);
    expect(k.machine.stat.get("vma_merge")).toBe(merges + 1);
    expectTags(k, pid, B, 3 * P, tag);
  });

  // M3
  it("merges a page moved into the gap between its old neighbours from either side", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 3 * P);
    const tag = fill(k, pid, B, 3 * P);
    remap(k, pid, B + P, P, P, MM | FX, B + G);
    remap(k, pid, B + 2 * P, P, P, MM | FX, B + G + P);
    expect(areas(k, pid)).toEqual([area(B, B + P), area(B + G, B + G + 2 * P)]);
    remap(k, pid, B + G + P, P, P, MM | FX, B + 2 * P);
    remap(k, pid, B + G, P, P, MM | FX, B + P);
    expect(areas(k, pid)).toEqual([area(B, B + 3 * P)]);
    expectTags(k, pid, B, 3 * P, tag);
  });

  // M2, M2b, M2c, M2d
  it("lets a VMA never faulted merge at its target (its pgoff follows it) but not a faulted one", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * P);
    mapAt(k, pid, B + G, 2 * P);
    expect(remap(k, pid, B, 2 * P, 2 * P, MM | FX, B + G + 2 * P)).toBe(B + G + 2 * P);
    expect(areas(k, pid)).toEqual([area(B + G, B + G + 4 * P)]);
    mapAt(k, pid, B, 2 * P);
    fill(k, pid, B, 2 * P);
    mapAt(k, pid, B + G + 8 * P, 2 * P);
    expect(remap(k, pid, B, 2 * P, 2 * P, MM | FX, B + G + 10 * P)).toBe(B + G + 10 * P);
    expect(areas(k, pid)).toEqual([
      area(B + G, B + G + 4 * P),
      area(B + G + 8 * P, B + G + 10 * P),
      area(B + G + 10 * P, B + G + 12 * P),
    ]);
    // Next to itself: the copy merges with the source, which then loses its old range.
    mapAt(k, pid, B, 2 * P);
    expect(remap(k, pid, B, 2 * P, 2 * P, MM | FX, B + 2 * P)).toBe(B + 2 * P);
    mapAt(k, pid, B + 8 * P, 2 * P, R);
    k.read(pid, B + 8 * P, P); // the zero page: still no anon_vma
    expect(remap(k, pid, B + 8 * P, 2 * P, 2 * P, MM | FX, B + 10 * P)).toBe(B + 10 * P);
    expect(areas(k, pid).filter((a) => a.start < B + G)).toEqual([
      area(B + 2 * P, B + 4 * P),
      area(B + 10 * P, B + 12 * P, R),
    ]);
    expect(pageDump(k.mm(pid), B + 10 * P, B + 11 * P)[0].kind).toBe("zero");
  });

  // V1
  it("moves several VMAs at once with MREMAP_FIXED, keeping the gaps and what the target had there", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, P);
    mapAt(k, pid, B + 2 * P, 2 * P, R);
    const tag = fill(k, pid, B, P);
    mapAt(k, pid, B + G, 8 * P, R, SHARED);
    expect(remap(k, pid, B, 5 * P, 5 * P, MM | FX, B + G + P)).toBe(B + G + P);
    expect(areas(k, pid)).toEqual([
      shared(B + G, B + G + P, R),
      area(B + G + P, B + G + 2 * P),
      shared(B + G + 2 * P, B + G + 3 * P, R),
      area(B + G + 3 * P, B + G + 5 * P, R),
      shared(B + G + 5 * P, B + G + 8 * P, R),
    ]);
    expectTags(k, pid, B + G + P, P, tag);
  });

  // SH2, SH3, SH4, SH5
  it("moves a shared mapping and its pieces, which merge again, and duplicates it from old_len 0", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * P, RW, SHARED);
    const tag = fill(k, pid, B, 4 * P);
    remap(k, pid, B, 4 * P, 8 * P, 0);
    expect(remap(k, pid, B, 8 * P, 8 * P, MM | FX, B + G)).toBe(B + G);
    expect(vmPte(k, pid)).toBe(12);
    expect(status(k.mm(pid)).RssShmem).toBe(16);
    expect(remap(k, pid, B + G + P, 2 * P, 2 * P, MM | FX, B + 2 * P)).toBe(B + 2 * P);
    expect(areas(k, pid)).toEqual([
      shared(B + 2 * P, B + 4 * P),
      shared(B + G, B + G + P),
      shared(B + G + 3 * P, B + G + 8 * P),
    ]);
    expect(remap(k, pid, B + 2 * P, 2 * P, 2 * P, MM | FX, B + G + P)).toBe(B + G + P);
    expect(areas(k, pid)).toEqual([shared(B + G, B + G + 8 * P)]);
    expectTags(k, pid, B + G, 4 * P, tag);
    const dup = remap(k, pid, B + G, 0, 4 * P, MM);
    expect(isErr(dup)).toBe(false);
    expectTags(k, pid, dup, 4 * P, tag);
    const w = fill(k, pid, dup, P);
    expectTags(k, pid, B + G, P, w);
    expect(k.machine.shmemObjects.size).toBe(1);
  });

  it("unmaps the source, then fails with EFAULT, when a FIXED duplicate (old_len 0) targets the source itself", () => {
    // Measured on Linux 6.18: mremap(x, 0, 2 MiB, MAYMOVE|FIXED, x) on a shared mapping returns
    // EFAULT and x is no longer mapped: mremap_to unmaps [new_addr, new_addr + new_len) before
    // it looks the source VMA up again (the ranges do not overlap when old_len is 0).
    const { k, pid } = boot();
    mapAt(k, pid, B, 5 * P, RW, SHARED);
    expect(remap(k, pid, B, 0, 512 * P, MM | FX, B)).toBe(-EFAULT);
    expect(areas(k, pid)).toEqual([]);
  });

  it("moves pages a forked child shares with its parent, and rmap still finds them", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * P);
    const tag = fill(k, pid, B, 4 * P);
    const child = k.fork(pid);
    audit(k);
    const before = pageDump(k.mm(child), B, B + 4 * P).map((p) => [p.pfn, p.anonExclusive, p.writable]);
    expect(remap(k, child, B + P, 2 * P, 2 * P, MM | FX, B + G)).toBe(B + G);
    const after = pageDump(k.mm(child), B + G, B + G + 2 * P).map((p) => [
      p.pfn,
      p.anonExclusive,
      p.writable,
    ]);
    expect(after).toEqual(before.slice(1, 3));
    const w = fill(k, child, B + G, P); // COW in the child only
    expectTags(k, pid, B, 4 * P, tag);
    expectTags(k, child, B + G, P, w);
    expectTags(k, child, B + G + P, P, tag + 2);
  });
});

describe("mremap moves page tables as Linux does", () => {
  /** A PMD-mapped THP at B (2 MiB aligned), written: [B, B+2 MiB) RW. */
  function thp(): { k: Kernel; pid: number; head: number; tag: number } {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * MiB);
    expect(k.madvise(pid, B, 2 * MiB, MADV_HUGEPAGE)).toBe(0);
    const tag = fill(k, pid, B, 2 * MiB);
    const [p] = pageDump(k.mm(pid), B, B + P);
    expect(p).toMatchObject({ kind: "anon", pmd: true, order: 9 });
    expect(vmPte(k, pid)).toBe(12); // PUD, PMD and the deposited table
    return { k, pid, head: p.head, tag };
  }

  // H1
  it("moves a whole PMD THP to a 2 MiB aligned target as a PMD, with its deposited table", () => {
    const { k, pid, head, tag } = thp();
    const before = { ...k.machine.stat.snapshot() };
    expect(remap(k, pid, B, 2 * MiB, 2 * MiB, MM | FX, B + G)).toBe(B + G);
    const s = k.machine.stat;
    expect(s.get("pmd_write") - (before.pmd_write ?? 0)).toBe(1);
    expect(s.get("pte_write") - (before.pte_write ?? 0)).toBe(0);
    expect(s.get("thp_split_pmd")).toBe(0);
    const [p] = pageDump(k.mm(pid), B + G, B + G + P);
    expect(p).toMatchObject({ kind: "anon", pmd: true, head, mapcount: 1, refcount: 1, anonExclusive: true });
    expect(anonHuge(k, pid, B + G)).toBe(2048);
    expect(vmPte(k, pid)).toBe(12);
    expect(status(k.mm(pid)).RssAnon).toBe(2048);
    expectTags(k, pid, B + G, 2 * MiB, tag);
  });

  // H2
  it("moves half a PMD THP: split, the folio PTE-mapped at both places", () => {
    const { k, pid, head, tag } = thp();
    expect(remap(k, pid, B + MiB, MiB, MiB, MM | FX, B + G)).toBe(B + G);
    const mm = k.mm(pid);
    const old = pageDump(mm, B, B + MiB);
    const moved = pageDump(mm, B + G, B + G + MiB);
    for (const [half, first] of [
      [old, head],
      [moved, head + 256],
    ] as const) {
      half.forEach((p, i) => {
        expect(p).toMatchObject({ kind: "anon", pmd: false, head, order: 9, pfn: first + i, mapcount: 1 });
        expect(p.anonExclusive).toBe(true);
      });
    }
    expect(k.machine.memmap.ref(head)).toBe(512);
    expect(k.machine.stat.get("thp_split_pmd")).toBe(1);
    expect(k.machine.stat.get("thp_deferred_split_page")).toBe(0); // every page is still mapped
    expect(anonHuge(k, pid, B)).toBe(0);
    expect(anonHuge(k, pid, B + G)).toBe(0);
    expect(vmPte(k, pid)).toBe(20);
    expect(areas(k, pid)).toEqual([area(B, B + MiB), area(B + G, B + G + MiB)]);
    expectTags(k, pid, B, MiB, tag);
    expectTags(k, pid, B + G, MiB, tag + 256);
  });

  // H3
  it("splits a PMD THP moved to a target that is not 2 MiB aligned", () => {
    const { k, pid, head, tag } = thp();
    expect(remap(k, pid, B, 2 * MiB, 2 * MiB, MM | FX, B + G + P)).toBe(B + G + P);
    const pages = pageDump(k.mm(pid), B + G + P, B + G + P + 2 * MiB);
    for (const [i, p] of pages.entries()) expect(p).toMatchObject({ pmd: false, head, pfn: head + i });
    expect(anonHuge(k, pid, B + G + P)).toBe(0);
    expect(vmPte(k, pid)).toBe(16);
    expectTags(k, pid, B + G + P, 2 * MiB, tag);
  });

  // H4
  it("moves a PMD THP with MREMAP_DONTUNMAP, leaving the old VMA empty and its PMD table", () => {
    const { k, pid, head, tag } = thp();
    expect(remap(k, pid, B, 2 * MiB, 2 * MiB, MM | FX | DU, B + G)).toBe(B + G);
    expect(pageDump(k.mm(pid), B + G, B + G + P)[0]).toMatchObject({ pmd: true, head });
    expect(pageDump(k.mm(pid), B, B + 2 * MiB).every((p) => p.kind === "none")).toBe(true);
    expect(areas(k, pid)).toEqual([area(B, B + 2 * MiB), area(B + G, B + G + 2 * MiB)]);
    expect(anonHuge(k, pid, B + G)).toBe(2048);
    expect(vmPte(k, pid)).toBe(16);
    expectTags(k, pid, B + G, 2 * MiB, tag);
  });

  // Z7
  it("moves the huge zero page as a PMD and zero-page PTEs as PTEs", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * MiB);
    k.madvise(pid, B, 2 * MiB, MADV_HUGEPAGE);
    k.read(pid, B, P);
    k.read(pid, B + 2 * MiB, P);
    audit(k);
    expect(vmPte(k, pid)).toBe(16);
    expect(remap(k, pid, B, 4 * MiB, 4 * MiB, MM | FX, B + G)).toBe(B + G);
    const mm = k.mm(pid);
    expect(pageDump(mm, B + G, B + G + P)[0].kind).toBe("hugezero");
    expect(pageDump(mm, B + G + 2 * MiB, B + G + 2 * MiB + P)[0].kind).toBe("zero");
    expect(vmPte(k, pid)).toBe(16);
    expect(status(mm).RssAnon).toBe(0);
    expect(areas(k, pid)).toEqual([area(B + G, B + G + 2 * MiB), area(B + G + 2 * MiB, B + G + 4 * MiB)]);
  });

  // T1
  it("moves a whole PTE table when both ranges cover a 2 MiB aligned 2 MiB (move_normal_pmd)", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 2 * MiB);
    k.madvise(pid, B, 2 * MiB, MADV_NOHUGEPAGE);
    fill(k, pid, B, 2 * MiB);
    expect(vmPte(k, pid)).toBe(12);
    const ptes = k.machine.stat.get("pte_write");
    expect(remap(k, pid, B, 2 * MiB, 2 * MiB, MM | FX | DU, B + G)).toBe(B + G);
    expect(k.machine.stat.get("pte_write")).toBe(ptes);
    expect(vmPte(k, pid)).toBe(16); // one new PMD table; the PTE table moved
  });

  // T2
  it("moves a whole PMD table when both ranges cover an aligned 1 GiB (move_normal_pud)", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, G, RW, PRIV | MAP_NORESERVE);
    k.madvise(pid, B, G, MADV_NOHUGEPAGE);
    const t1 = fill(k, pid, B, P);
    const t2 = fill(k, pid, B + 512 * MiB, P);
    expect(vmPte(k, pid)).toBe(16);
    expect(remap(k, pid, B, G, G, MM | FX | DU, B + 4 * G)).toBe(B + 4 * G);
    expect(vmPte(k, pid)).toBe(16);
    expectTags(k, pid, B + 4 * G, P, t1);
    expectTags(k, pid, B + 4 * G + 512 * MiB, P, t2);
  });

  // T3
  it("realigns a move starting 1 MiB into a 2 MiB to move the first PTE table whole", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B + MiB, 2 * MiB);
    const tag = fill(k, pid, B + MiB, 2 * MiB);
    expect(vmPte(k, pid)).toBe(16);
    const ptes = k.machine.stat.get("pte_write");
    expect(remap(k, pid, B + MiB, 2 * MiB, 2 * MiB, MM | FX | DU, B + G + MiB)).toBe(B + G + MiB);
    expect(k.machine.stat.get("pte_write") - ptes).toBe(256); // only the second half, PTE by PTE
    expect(vmPte(k, pid)).toBe(24);
    expectTags(k, pid, B + G + MiB, 2 * MiB, tag);
  });

  // T4
  it("keeps VmPTE when a move frees the old tables and allocates as many new ones", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B + P, 3 * P);
    const tag = fill(k, pid, B + P, 3 * P);
    expect(vmPte(k, pid)).toBe(12);
    expect(remap(k, pid, B + P, 3 * P, 3 * P, MM | FX, B + G + P)).toBe(B + G + P);
    expect(vmPte(k, pid)).toBe(12);
    expect(remap(k, pid, B + G + P, 3 * P, 3 * P, MM | FX, B + G + 2 * MiB)).toBe(B + G + 2 * MiB);
    expect(vmPte(k, pid)).toBe(12);
    expectTags(k, pid, B + G + 2 * MiB, 3 * P, tag);
  });

  it("counts one pte_write per PTE moved and one TLB flush per table of them", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B + 2 * MiB - 2 * P, 4 * P);
    fill(k, pid, B + 2 * MiB - 2 * P, 3 * P);
    const s = k.machine.stat;
    const before = { syscall: s.get("syscall"), pte: s.get("pte_write"), tlb: s.get("tlb_flush") };
    expect(remap(k, pid, B + 2 * MiB - 2 * P, 4 * P, 4 * P, MM | FX, B + G)).toBe(B + G);
    expect(s.get("syscall") - before.syscall).toBe(1);
    expect(s.get("pte_write") - before.pte).toBe(3);
    expect(s.get("tlb_flush") - before.tlb).toBe(2);
  });
});

describe("mremap with MREMAP_DONTUNMAP", () => {
  // D1
  it("moves every page and leaves the old VMA mapped, empty, reading zeros", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * P);
    const tag = fill(k, pid, B, 4 * P);
    const old = k.mm(pid).vmas[0];
    expect(remap(k, pid, B, 4 * P, 4 * P, MM | FX | DU, B + G)).toBe(B + G);
    expect(areas(k, pid)).toEqual([area(B, B + 4 * P), area(B + G, B + G + 4 * P)]);
    expect(old.anonVma).toBeNull(); // unlink_anon_vmas: nothing of it is left to find
    expect(old.flags).toBe(k.mm(pid).vmas[1].flags); // VM_ACCOUNT stays (6.18)
    expect(status(k.mm(pid)).RssAnon).toBe(16);
    expect(vmPte(k, pid)).toBe(20);
    expectTags(k, pid, B, 4 * P, 0);
    expectTags(k, pid, B + G, 4 * P, tag);
  });

  // D2
  it("moves part of a VMA and leaves the VMA whole", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * P);
    const tag = fill(k, pid, B, 4 * P);
    expect(remap(k, pid, B + P, 2 * P, 2 * P, MM | FX | DU, B + G)).toBe(B + G);
    expect(areas(k, pid)).toEqual([area(B, B + 4 * P), area(B + G, B + G + 2 * P)]);
    const kinds = pageDump(k.mm(pid), B, B + 4 * P).map((p) => p.kind);
    expect(kinds).toEqual(["anon", "none", "none", "anon"]);
    expect(k.mm(pid).vmas[0].anonVma).not.toBeNull();
    expectTags(k, pid, B + G, 2 * P, tag + 1);
    expectTags(k, pid, B + 3 * P, P, tag + 3);
  });

  // D3
  it("moves a shared mapping's PTEs; the old range refaults the same page-cache pages", () => {
    const { k, pid } = boot();
    mapAt(k, pid, B, 4 * P, RW, SHARED);
    const tag = fill(k, pid, B, 4 * P);
    expect(remap(k, pid, B, 4 * P, 4 * P, MM | FX | DU, B + G)).toBe(B + G);
    expect(areas(k, pid)).toEqual([shared(B, B + 4 * P), shared(B + G, B + G + 4 * P)]);
    expect(pageDump(k.mm(pid), B, B + P)[0].kind).toBe("none");
    expectTags(k, pid, B, 4 * P, tag);
    expectTags(k, pid, B + G, 4 * P, tag);
  });
});

describe("mremap out of memory", () => {
  it("moves the entries back and unmaps the target when a page table cannot be allocated", () => {
    const k = new Kernel({ ramBytes: 4 * MiB, thp: { enabled: "never" } });
    const pid = k.createProcess();
    mapAt(k, pid, B, 4 * P);
    const tag = fill(k, pid, B, 4 * P);
    // Use up the rest of RAM.
    const hog = k.mmap(pid, 0, 8 * MiB, RW, PRIV | MAP_NORESERVE);
    expect(k.write(pid, hog, 8 * MiB).oom).toBe(true);
    audit(k);
    const pte = vmPte(k, pid);
    expect(remap(k, pid, B, 4 * P, 4 * P, MM | FX, B + 8 * G)).toBe(-ENOMEM);
    expect(areas(k, pid).filter((a) => a.start < hog)).toEqual([area(B, B + 4 * P)]);
    expect(vmPte(k, pid)).toBe(pte);
    expectTags(k, pid, B, 4 * P, tag);
  });

  it("moves back what had moved when the page table for the rest cannot be allocated", () => {
    const k = new Kernel({ ramBytes: 4 * MiB, thp: { enabled: "never" } });
    const pid = k.createProcess();
    // The target's first 2 MiB has a PTE table already (kept by X); its second has none.
    mapAt(k, pid, B + 4 * MiB, P, R);
    k.read(pid, B + 4 * MiB, P);
    mapAt(k, pid, B + 2 * MiB - P, 2 * P);
    const tag = fill(k, pid, B + 2 * MiB - P, 2 * P);
    const hog = k.mmap(pid, 0, 8 * MiB, RW, PRIV | MAP_NORESERVE);
    expect(k.write(pid, hog, 8 * MiB).oom).toBe(true);
    audit(k);
    const pte = vmPte(k, pid);
    const ptes = k.machine.stat.get("pte_write");
    expect(remap(k, pid, B + 2 * MiB - P, 2 * P, 2 * P, MM | FX, B + 6 * MiB - P)).toBe(-ENOMEM);
    expect(k.machine.stat.get("pte_write") - ptes).toBe(2); // one PTE there and back
    expect(areas(k, pid).filter((a) => a.start < hog)).toEqual([
      area(B + 2 * MiB - P, B + 2 * MiB + P),
      area(B + 4 * MiB, B + 4 * MiB + P, R),
    ]);
    expect(vmPte(k, pid)).toBe(pte);
    expectTags(k, pid, B + 2 * MiB - P, 2 * P, tag);
  });
});
