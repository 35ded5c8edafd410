// `vmlab bench fork`: the fork designs side by side (docs/fork-designs.md). Each cell forks a
// populated parent under one design and reports vmlab's own wall time, the modeled kernel time
// (event counts x a cost profile), the child's VmPTE and the main counts; mainline cells (the
// batched design, as Linux 6.18 forks) also get the live kernel's fork time, measured in the
// same run by the calibration microbenchmark. A "snapshot" workload (fork, the parent writes a
// fraction of its pages, the child reads everything and exits) shows where deferred work is paid.
// A benchmark, never a timed test: host times are medians over repetitions in one run.

import { FOLIO_KIB, type LiveFolio, measureLive } from "../calibrate/live.ts";
import { bootForFolio, prepare } from "../calibrate/model.ts";
import { type CostProfile, countsDelta, modeledNs } from "../cost/profile.ts";
import type { ForkPtCopy, Kernel } from "../mm/kernel.ts";
import { status } from "../report/proc.ts";
import { isErr, PAGE_SIZE } from "../uapi.ts";
import { gc, median } from "./core.ts";

export const BENCH_DESIGNS: readonly ForkPtCopy[] = ["per-pte", "batched", "cow-pte", "cow-pte-deferred"];
export const BENCH_FOLIOS: readonly LiveFolio[] = ["4k", "16k", "64k", "pmd", "pte-mapped-thp"];
/** The design Linux 6.18 runs: its cells get the live kernel's time. */
export const MAINLINE: ForkPtCopy = "batched";
/** The counts a row shows. */
const MAIN_EVENTS = [
  "pte_read",
  "pte_write",
  "ref_update",
  "mapcount_update",
  "rmap_dup",
  "pgtable_alloc",
  "ptl_lock",
  "cow_pte_share",
] as const;

export interface ForkRow {
  workload: "fork";
  design: ForkPtCopy;
  folio: LiveFolio;
  folioKiB: number;
  sizeMiB: number;
  /** vmlab's own wall time for the fork, median of at least 5, ms. */
  simMs: number;
  /** The modeled kernel time of the fork, ms. */
  modeledMs: number;
  /** The live kernel's fork of the same size and folio, median, ms (mainline cells only). */
  kernelMs: number | null;
  childVmPteKiB: number;
  counts: Record<string, number>;
}

export interface SnapshotRow {
  workload: "snapshot";
  design: ForkPtCopy;
  folio: LiveFolio;
  folioKiB: number;
  sizeMiB: number;
  /** The fraction of its pages the parent writes after fork (spread evenly). */
  p: number;
  simMs: number;
  /** Total modeled ms, and by phase. */
  modeledMs: number;
  phases: { fork: number; parentWrites: number; childReads: number; childExit: number };
  kernelMs: null;
  childVmPteKiB: number;
}

export type BenchForkRow = ForkRow | SnapshotRow;

export interface BenchForkOptions {
  profile: CostProfile;
  sizesMiB: readonly number[];
  /** Sizes above this get no live measurement (the kernel populates at ~10 us a fault here). */
  kernelMaxMiB: number;
  folios?: readonly LiveFolio[];
  designs?: readonly ForkPtCopy[];
  reps: number;
  /** Measure the live kernel (root, Linux); false leaves kernelMs null. */
  live: boolean;
  /** The snapshot workload's size and fractions. */
  snapshot: { sizeMiB: number; folios: readonly LiveFolio[]; ps: readonly number[] };
  progress?: (line: string) => void;
}

function pick(counts: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const e of MAIN_EVENTS) out[e] = counts[e] ?? 0;
  return out;
}

/** A parent process with sizeMiB of `folio` memory populated, under `design`. */
function parentWith(
  design: ForkPtCopy,
  folio: LiveFolio,
  sizeMiB: number,
): { k: Kernel; pid: number; addr: number } {
  const k = bootForFolio(folio, sizeMiB, design);
  const pid = k.createProcess();
  const addr = prepare(k, pid, sizeMiB * 2 ** 20, folio);
  return { k, pid, addr };
}

/**
 * One fork cell: each repetition forks a freshly populated parent, as the live microbenchmark
 * does (a second fork of the same parent would find its entries write-protected already).
 */
function forkCell(design: ForkPtCopy, folio: LiveFolio, sizeMiB: number, o: BenchForkOptions): ForkRow {
  const times: number[] = [];
  let counts: Record<string, number> = {};
  let vmPte = 0;
  // vmlab's own time is cheap to sample: at least 5 forks, each after a full GC, so that the
  // garbage of the previous machine is not collected inside a timed fork.
  for (let r = 0; r < Math.max(o.reps, 5); r++) {
    const { k, pid } = parentWith(design, folio, sizeMiB);
    gc();
    const before = k.machine.stat.snapshot();
    const t = performance.now();
    const child = k.fork(pid);
    times.push(performance.now() - t);
    if (isErr(child)) throw new Error(`bench fork: fork failed (${child})`);
    counts = countsDelta(before, k.machine.stat.snapshot());
    vmPte = status(k.mm(child)).VmPTE;
    k.exit(child);
  }
  return {
    workload: "fork",
    design,
    folio,
    folioKiB: FOLIO_KIB[folio],
    sizeMiB,
    simMs: median(times),
    modeledMs: modeledNs(counts, o.profile) / 1e6,
    kernelMs: null,
    childVmPteKiB: vmPte,
    counts: pick(counts),
  };
}

/** The snapshot workload under one design: fork, parent writes p, child reads all and exits. */
function snapshotCell(
  design: ForkPtCopy,
  folio: LiveFolio,
  sizeMiB: number,
  p: number,
  o: BenchForkOptions,
): SnapshotRow {
  const { k, pid, addr } = parentWith(design, folio, sizeMiB);
  const size = sizeMiB * 2 ** 20;
  const phase = (fn: () => void): number => {
    const before = k.machine.stat.snapshot();
    fn();
    return modeledNs(countsDelta(before, k.machine.stat.snapshot()), o.profile) / 1e6;
  };
  const t = performance.now();
  let child = -1;
  const fork = phase(() => {
    child = k.fork(pid);
    if (isErr(child)) throw new Error(`bench fork: snapshot fork failed (${child})`);
  });
  const vmPte = status(k.mm(child)).VmPTE;
  const parentWrites = phase(() => {
    if (p >= 1) k.write(pid, addr, size);
    else if (p > 0) {
      const stride = Math.round(1 / p) * PAGE_SIZE;
      for (let a = addr; a < addr + size; a += stride) k.write(pid, a, PAGE_SIZE);
    }
  });
  const childReads = phase(() => {
    if (k.read(child, addr, size).pages !== size / PAGE_SIZE)
      throw new Error("bench fork: the child's read fell short");
  });
  const childExit = phase(() => k.exit(child));
  const simMs = performance.now() - t;
  return {
    workload: "snapshot",
    design,
    folio,
    folioKiB: FOLIO_KIB[folio],
    sizeMiB,
    p,
    simMs,
    modeledMs: fork + parentWrites + childReads + childExit,
    phases: { fork, parentWrites, childReads, childExit },
    kernelMs: null,
    childVmPteKiB: vmPte,
  };
}

/**
 * Runs the sweep: every design x folio x size fork cell, the live kernel's fork for the mainline
 * cells up to kernelMaxMiB (when o.live), and the snapshot workload. Returns every row.
 */
export async function benchFork(o: BenchForkOptions): Promise<BenchForkRow[]> {
  const log = o.progress ?? (() => {});
  const rows: BenchForkRow[] = [];
  // vmlab's cells first, the live kernel after: a live run frees gigabytes, and the guest's
  // free-page reporting then competes for the CPU with whatever vmlab times next.
  for (const folio of o.folios ?? BENCH_FOLIOS)
    for (const sizeMiB of o.sizesMiB)
      for (const design of o.designs ?? BENCH_DESIGNS) {
        const row = forkCell(design, folio, sizeMiB, o);
        rows.push(row);
        log(
          `fork ${design} ${folio} ${sizeMiB} MiB: sim ${row.simMs.toFixed(2)} ms, modeled ${row.modeledMs.toFixed(2)} ms`,
        );
      }
  for (const folio of o.snapshot.folios)
    for (const p of o.snapshot.ps)
      for (const design of o.designs ?? BENCH_DESIGNS) {
        const row = snapshotCell(design, folio, o.snapshot.sizeMiB, p, o);
        rows.push(row);
        log(`snapshot ${design} ${folio} p=${p}: modeled ${row.modeledMs.toFixed(2)} ms`);
      }
  if (o.live)
    for (const row of rows) {
      if (row.workload !== "fork" || row.design !== MAINLINE || row.sizeMiB > o.kernelMaxMiB) continue;
      const [live] = await measureLive({
        workloads: ["fork"],
        folio: row.folio,
        sizeMiB: row.sizeMiB,
        reps: o.reps,
      });
      row.kernelMs = live.achieved && live.median.ns !== null ? live.median.ns / 1e6 : null;
      log(
        `fork on the live kernel, ${row.folio} ${row.sizeMiB} MiB: ${row.kernelMs?.toFixed(2) ?? "layout not achieved"} ms`,
      );
    }
  return rows;
}

const pct = (a: number, b: number): string => `${a >= b ? "+" : ""}${((100 * (a - b)) / b).toFixed(1)} %`;
const ms = (x: number | null): string => (x === null ? "-" : x < 10 ? x.toFixed(2) : x.toFixed(1));

/** The human report: the fork table, the snapshot table, and the seeds' claims (a)-(e) as measured. */
export function formatBenchFork(rows: readonly BenchForkRow[], profile: CostProfile): string {
  const forks = rows.filter((r): r is ForkRow => r.workload === "fork");
  const snaps = rows.filter((r): r is SnapshotRow => r.workload === "snapshot");
  const out: string[] = [`vmlab bench fork (profile ${profile.name}: ${profile.machine})`, ""];
  out.push(
    "design            folio           MiB   sim ms  modeled ms  kernel ms  child VmPTE kB  pte_write  ref_update  rmap_dup",
  );
  for (const r of forks)
    out.push(
      `${r.design.padEnd(17)} ${r.folio.padEnd(14)} ${String(r.sizeMiB).padStart(5)} ${ms(r.simMs).padStart(8)} ${ms(r.modeledMs).padStart(11)} ${ms(r.kernelMs).padStart(10)} ${String(r.childVmPteKiB).padStart(15)} ${String(r.counts.pte_write).padStart(10)} ${String(r.counts.ref_update).padStart(11)} ${String(r.counts.rmap_dup).padStart(9)}`,
    );
  if (snaps.length > 0) {
    out.push(
      "",
      "snapshot: fork, the parent writes a fraction p of its pages, the child reads all and exits",
    );
    out.push(
      "design            folio      MiB      p   modeled ms   (fork + parent writes + child reads + exit)",
    );
    for (const r of snaps) {
      const ph = r.phases;
      out.push(
        `${r.design.padEnd(17)} ${r.folio.padEnd(8)} ${String(r.sizeMiB).padStart(5)} ${String(r.p).padStart(6)} ${ms(r.modeledMs).padStart(11)}   (${ms(ph.fork)} + ${ms(ph.parentWrites)} + ${ms(ph.childReads)} + ${ms(ph.childExit)})`,
      );
    }
  }
  out.push("", ...claims(forks, snaps));
  return out.join("\n");
}

/** The seeds' claims against this run: (a) to (e) and the simulator's speed ratio. */
export function claims(forks: readonly ForkRow[], snaps: readonly SnapshotRow[]): string[] {
  const cell = (design: ForkPtCopy, folio: LiveFolio, sizeMiB: number) =>
    forks.find((r) => r.design === design && r.folio === folio && r.sizeMiB === sizeMiB);
  const lines: string[] = ["The seeds' claims, as modeled in this run:"];
  const at = forks.some((r) => r.sizeMiB === 1024) ? 1024 : Math.max(...forks.map((r) => r.sizeMiB));
  const a = BENCH_FOLIOS.map((f) => {
    const pp = cell("per-pte", f, at);
    const b = cell("batched", f, at);
    return pp && b ? `${f} ${pct(b.modeledMs, pp.modeledMs)}` : null;
  }).filter((x) => x !== null);
  lines.push(
    `(a) batched against per-PTE at ${at} MiB: ${a.join(", ")} (seed: 4k -2 %, 16k -16 %, 64k -26 %, 512k+ -30 %)`,
  );
  const v4 = cell("cow-pte", "4k", at);
  const main = cell("batched", "4k", at);
  if (v4 && main)
    lines.push(
      `(b) cow-pte (v4) against mainline at ${at} MiB, 4k: ${pct(v4.modeledMs, main.modeledMs)} (seed: no gain)`,
    );
  const half = forks.some((r) => r.sizeMiB === 512) ? 512 : at;
  const def = cell("cow-pte-deferred", "4k", half);
  const pp = cell("per-pte", "4k", half);
  if (def && pp)
    lines.push(
      `(c) cow-pte-deferred against per-PTE at ${half} MiB, 4k: ${pct(def.modeledMs, pp.modeledMs)} (seed: -93 %)`,
    );
  if (v4 && main)
    lines.push(
      `(d) child VmPTE at ${at} MiB: ${v4.childVmPteKiB} kB under cow-pte, ${main.childVmPteKiB} kB under mainline (seed: 44 kB against 2096 kB per GB)`,
    );
  if (snaps.length > 0) {
    const ps = [...new Set(snaps.map((s) => s.p))];
    for (const folio of [...new Set(snaps.map((s) => s.folio))]) {
      const parts = ps.map((p) => {
        const per = BENCH_DESIGNS.map((d) => {
          const s = snaps.find((x) => x.design === d && x.p === p && x.folio === folio);
          return s ? `${d} ${ms(s.modeledMs)}` : null;
        }).filter((x) => x !== null);
        return `p=${p}: ${per.join(", ")}`;
      });
      lines.push(`(e) snapshot ${folio}, modeled ms: ${parts.join("; ")}`);
    }
  }
  const sim = cell("per-pte", "4k", at);
  if (sim && main?.kernelMs)
    lines.push(
      `speed: vmlab's per-PTE fork of ${at} MiB of 4 KiB pages took ${ms(sim.simMs)} ms, the live kernel ${ms(main.kernelMs)} ms: ${(sim.simMs / main.kernelMs).toFixed(3)}x (target <= 0.25x)`,
    );
  return lines;
}
