// The model half of `vmlab calibrate`: the workloads of calibrate/microbench.c run in vmlab, with
// the event counts of the timed section only. The fit (fit.ts) sets these counts against the live
// kernel's times for the same workload, folio mode and size (live.ts).
//
// Each run boots a fresh Kernel as Linux 6.18 is set up for the measurement: fork.ptCopy
// "batched", the global THP knob "never", and every per-size knob "never" except the folio size
// asked for, "always" (live.ts knobSettingsFor). Like microbench, it maps a 2 MiB-aligned private
// anonymous range by trimming a larger mapping, and populates it by writing every page.

import { countsDelta } from "../cost/profile.ts";
import { type ForkPtCopy, Kernel } from "../mm/kernel.ts";
import type { MadviseFreeDesign, ThpPolicy } from "../mm/machine.ts";
import { ANON_ORDERS, orderSizeName } from "../mm/vmstat.ts";
import {
  EINVAL,
  isErr,
  MADV_DONTNEED,
  MADV_FREE,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_READ,
  PROT_WRITE,
} from "../uapi.ts";
import type { LiveFolio, LiveWorkload } from "./live.ts";

/** The anon folio order each folio mode asks for (none: order 0 only). */
export const FOLIO_ORDER: Record<LiveFolio, number | null> = {
  "4k": null,
  "16k": 2,
  "32k": 3,
  "64k": 4,
  "128k": 5,
  "256k": 6,
  "512k": 7,
  "1m": 8,
  pmd: 9,
  "pte-mapped-thp": 9,
};

/** The event counts of a timed section, or why vmlab cannot run the workload. */
export type ModelResult = { counts: Record<string, number> } | { unsupported: string };

/**
 * A Kernel set up as the live measurement of `folio` is: batched fork (or `ptCopy`), THP "never" globally and
 * for every size but the asked one, which is "always", and MADV_FREE batched as 6.18 (or
 * `madviseFree`). RAM is at least 1 GiB and four times the range (cow_fault holds two copies of it).
 */
export function bootForFolio(
  folio: LiveFolio,
  sizeMiB: number,
  ptCopy: ForkPtCopy = "batched",
  madviseFree: MadviseFreeDesign = "batched",
): Kernel {
  const orders: Partial<Record<number, ThpPolicy>> = {};
  for (const o of ANON_ORDERS) orders[o] = "never";
  const order = FOLIO_ORDER[folio];
  if (order !== null) orders[order] = "always";
  const gib = Math.max(1, Math.ceil((4 * sizeMiB) / 1024));
  return new Kernel({
    ramBytes: gib * 2 ** 30,
    thp: { enabled: "never", orders, useZeroPage: true },
    fork: { ptCopy },
    madvise: { free: madviseFree },
  });
}

/** The change in k's event counters over fn (a timed section). */
function measure(k: Kernel, fn: () => void): Record<string, number> {
  const before = k.machine.stat.snapshot();
  fn();
  return countsDelta(before, k.machine.stat.snapshot());
}

const bug = (what: string): never => {
  throw new Error(`modelWorkload: ${what}`);
};

/** microbench's map_aligned: a fresh private anonymous range of `size` bytes, 2 MiB aligned. */
function mapAligned(k: Kernel, pid: number, size: number): number {
  const raw = k.mmap(pid, 0, size + PMD_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (isErr(raw)) bug(`mmap of ${size + PMD_SIZE} bytes failed: ${raw}`);
  const p = Math.ceil(raw / PMD_SIZE) * PMD_SIZE;
  const head = p - raw;
  if (head && k.munmap(pid, raw, head) !== 0) bug("munmap of the head failed");
  if (PMD_SIZE - head && k.munmap(pid, p + size, PMD_SIZE - head) !== 0) bug("munmap of the tail failed");
  return p;
}

/**
 * Writes every page of [p, p + size) and checks the folios the faults chose: all of the asked
 * size (from the per-size alloc counters), as live.ts checks with kpageflags. Throws
 * "modelWorkload: ..." otherwise: the model did not set up what the fit needs.
 */
function touch(k: Kernel, pid: number, p: number, size: number, folio: LiveFolio): void {
  const order = FOLIO_ORDER[folio];
  const d = measure(k, () => {
    const r = k.write(pid, p, size);
    if (r.pages !== size / PAGE_SIZE) bug(`populate wrote ${r.pages} of ${size / PAGE_SIZE} pages`);
  });
  const folios = size / PAGE_SIZE / 2 ** (order ?? 0);
  const got =
    order === null ? (d.folio_alloc ?? 0) : (d[`hugepages-${orderSizeName(order)}/anon_fault_alloc`] ?? 0);
  if (got !== folios) bug(`${folio}: populate allocated ${got} folios of the asked size, not ${folios}`);
}

/**
 * microbench's prepare: a populated range, its PMD mappings split for pte-mapped-thp (mprotect
 * of one page read-only and back, which splits the PMD and merges the VMAs again).
 */
export function prepare(k: Kernel, pid: number, size: number, folio: LiveFolio): number {
  const p = mapAligned(k, pid, size);
  touch(k, pid, p, size, folio);
  if (folio === "pte-mapped-thp") {
    const d = measure(k, () => {
      for (let off = 0; off < size; off += PMD_SIZE) {
        if (k.mprotect(pid, p + off, PAGE_SIZE, PROT_READ) !== 0) bug("mprotect(PROT_READ) failed");
        if (k.mprotect(pid, p + off, PAGE_SIZE, PROT_READ | PROT_WRITE) !== 0) bug("mprotect back failed");
      }
    });
    if ((d.thp_split_pmd ?? 0) !== size / PMD_SIZE)
      bug(`pte-mapped-thp: ${d.thp_split_pmd ?? 0} PMD splits for ${size / PMD_SIZE} PMDs`);
  }
  return p;
}

/**
 * Runs one microbench workload in vmlab and returns the event counts of its timed section:
 * fork: the fork call (the child's exit is not timed); munmap: the munmap of the populated range;
 * anon_fault: the populating writes; cow_fault: the child's write to every page after fork;
 * dontneed: madvise(MADV_DONTNEED) of the populated range; madv_free: madvise(MADV_FREE) of the
 * populated range; madv_free_split: madvise(MADV_FREE) of the first page of every folio, one call
 * per folio. Returns `unsupported` when vmlab does not model the workload (anon_fault of
 * pte-mapped-thp, as live; MADV_DONTNEED or MADV_FREE while madvise returns -EINVAL for it).
 * sizeMiB 0 is only for fork (its fixed cost); pmd modes need an even size.
 * Throws "modelWorkload: ..." when the model does not reach the asked layout.
 */
export function modelWorkload(workload: LiveWorkload, folio: LiveFolio, sizeMiB: number): ModelResult {
  if (!Number.isInteger(sizeMiB) || sizeMiB < (workload === "fork" ? 0 : 1))
    bug(`bad size ${sizeMiB} MiB for ${workload}`);
  if (FOLIO_ORDER[folio] === 9 && sizeMiB % 2) bug(`${folio} needs an even size, not ${sizeMiB} MiB`);
  if (workload === "anon_fault" && folio === "pte-mapped-thp")
    return { unsupported: "not applicable: the first touch decides the mapping" };
  const size = sizeMiB * 2 ** 20;
  const k = bootForFolio(folio, sizeMiB);
  const pid = k.createProcess();
  if (pid < 0) bug("createProcess failed");
  switch (workload) {
    case "fork": {
      if (size > 0) prepare(k, pid, size, folio);
      return {
        counts: measure(k, () => {
          if (isErr(k.fork(pid))) bug("fork failed");
        }),
      };
    }
    case "munmap": {
      const p = prepare(k, pid, size, folio);
      return {
        counts: measure(k, () => {
          if (k.munmap(pid, p, size) !== 0) bug("munmap failed");
        }),
      };
    }
    case "anon_fault": {
      const p = mapAligned(k, pid, size);
      return { counts: measure(k, () => touch(k, pid, p, size, folio)) };
    }
    case "cow_fault": {
      const p = prepare(k, pid, size, folio);
      const child = k.fork(pid);
      if (isErr(child)) bug("fork failed");
      return {
        counts: measure(k, () => {
          const r = k.write(child, p, size);
          if (r.pages !== size / PAGE_SIZE) bug(`the child wrote ${r.pages} of ${size / PAGE_SIZE} pages`);
        }),
      };
    }
    case "dontneed": {
      const p = prepare(k, pid, size, folio);
      let ret = 0;
      const counts = measure(k, () => {
        ret = k.madvise(pid, p, size, MADV_DONTNEED);
      });
      if (ret === -EINVAL) return { unsupported: "not modelled: vmlab's madvise has no MADV_DONTNEED yet" };
      if (ret !== 0) bug(`madvise(MADV_DONTNEED) returned ${ret}`);
      return { counts };
    }
    case "madv_free":
    case "madv_free_split": {
      const p = prepare(k, pid, size, folio);
      // One call over the range, or one per folio on its first page (live: folio=KIB chunks).
      const step = workload === "madv_free" ? size : PAGE_SIZE << (FOLIO_ORDER[folio] ?? 0);
      const len = workload === "madv_free" ? size : PAGE_SIZE;
      let ret = 0;
      const counts = measure(k, () => {
        for (let off = 0; off < size && ret === 0; off += step) ret = k.madvise(pid, p + off, len, MADV_FREE);
      });
      if (ret === -EINVAL) return { unsupported: "vmlab does not model MADV_FREE yet" };
      if (ret !== 0) bug(`madvise(MADV_FREE) returned ${ret}`);
      return { counts };
    }
  }
}
