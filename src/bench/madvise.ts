// `vmlab bench madvise`: MADV_FREE under its two designs and MADV_DONTNEED, of a populated private
// anonymous range at every anon folio size (docs/madvise.md). The designs are madvise.free
// "split" (Linux before 6.10: every large folio in the range is split, then each page is made
// lazyfree) and "batched" (6.10 and later, Lance Yang's "mm/madvise: enhance lazyfreeing with
// mTHP in madvise_free": a folio the range covers whole is made lazyfree at once).
//
//   for each folio size:  boot, populate (write every page), madvise over the whole range
//     counts of the madvise call x profile --> modeledMs      wall time of the call --> simMs
//     folio_split delta --> splits                 the live kernel, same call --> kernelMs
//
// Each repetition populates a fresh range: a second MADV_FREE of the same range finds its folios
// split or clean already. MADV_DONTNEED does not depend on the MADV_FREE design, so it has one
// row per folio size, with design "-". A benchmark, never a timed test: times are medians over
// repetitions in one run.

import { CalibrateRefusal } from "../calibrate/knobs.ts";
import { FOLIO_KIB, type LiveFolio, type LiveWorkload, measureLive } from "../calibrate/live.ts";
import { bootForFolio, prepare } from "../calibrate/model.ts";
import { type CostProfile, costBreakdown, countsDelta } from "../cost/profile.ts";
import type { MadviseFreeDesign } from "../mm/machine.ts";
import { MADV_DONTNEED, MADV_FREE } from "../uapi.ts";
import { gc, median } from "./core.ts";

/** The folio sizes of the seed's table: order 0, the PTE-mapped mTHP orders 2..8, and PMD THP. */
export const MADVISE_FOLIOS: readonly LiveFolio[] = [
  "4k",
  "16k",
  "32k",
  "64k",
  "128k",
  "256k",
  "512k",
  "1m",
  "pmd",
];
export const MADVISE_DESIGNS: readonly MadviseFreeDesign[] = ["split", "batched"];
/** The MADV_FREE design Linux 6.18 runs: its cells get the live kernel's madv_free time. */
export const MAINLINE_FREE: MadviseFreeDesign = "batched";

export type Advice = "free" | "dontneed";

/**
 * The seed: Lance Yang's v2 cover letter for "mm/madvise: enhance lazyfreeing with mTHP in
 * madvise_free" (Intel i5, MADV_FREE of 1 GiB), seconds before (old: split) and after (new:
 * batched), and the change it printed, in %, by folio size in KiB.
 */
export const SEED_MADV_FREE: Readonly<Record<number, { old: number; new: number; pct: number }>> = {
  4: { old: 0.590251, new: 0.590259, pct: 0 },
  16: { old: 2.990447, new: 0.185655, pct: -94 },
  32: { old: 2.547831, new: 0.10487, pct: -95 },
  64: { old: 2.457796, new: 0.052812, pct: -97 },
  128: { old: 2.281034, new: 0.032777, pct: -99 },
  256: { old: 2.230387, new: 0.017496, pct: -99 },
  512: { old: 2.189106, new: 0.010781, pct: -99 },
  1024: { old: 2.183949, new: 0.007753, pct: -99 },
  2048: { old: 0.002799, new: 0.002804, pct: 0 },
};

/** The issue's target: the modeled change within this many points of the seed's. */
export const TARGET_POINTS = 5;

export interface MadviseRow {
  advice: Advice;
  /** The MADV_FREE design; "-" for MADV_DONTNEED, which runs the same code under both. */
  design: MadviseFreeDesign | "-";
  folio: LiveFolio;
  folioKiB: number;
  sizeMiB: number;
  /** The madvise call's event counts priced by the profile, ms (the populate is not counted). */
  modeledMs: number;
  /** vmlab's own wall time for the madvise call, median over the repetitions, ms. */
  simMs: number;
  /** Folios split during the call (VmStat folio_split). */
  splits: number;
  /**
   * The live kernel, median ms, where measured: madv_free for the mainline (batched) MADV_FREE
   * rows, dontneed for MADV_DONTNEED; null elsewhere, or with --no-kernel, or when the layout
   * was not achieved.
   */
  kernelMs: number | null;
  /** The madvise call's non-zero event counts. */
  counts: Record<string, number>;
  /** Events of the call that the profile does not price (they count 0 in modeledMs). */
  unpriced: string[];
}

export interface BenchMadviseOptions {
  profile: CostProfile;
  /** The range, MiB: even (the PMD folios are 2 MiB). */
  sizeMiB: number;
  folios?: readonly LiveFolio[];
  reps: number;
  /** Measure the live kernel (root, Linux); false leaves kernelMs null. */
  live: boolean;
  progress?: (line: string) => void;
}

/** One summary line: MADV_FREE batched against split for one folio size, in %. */
export interface MadviseChange {
  folio: LiveFolio;
  folioKiB: number;
  /** 100 * (batched - split) / split of modeledMs. */
  modeledPct: number;
  /** The same for simMs. */
  simPct: number;
  /** The seed's change (its own rounding), and the change from its seconds. */
  seedPct: number;
  seedExactPct: number;
  /** modeledPct minus seedExactPct, in points. */
  points: number;
  withinTarget: boolean;
}

const ADVICE: Record<Advice, number> = { free: MADV_FREE, dontneed: MADV_DONTNEED };

/**
 * One cell: each repetition boots a machine set up as the live measurement (calibrate/model.ts),
 * populates sizeMiB of `folio` folios under `design`, and times madvise over the whole range.
 * Throws "benchMadvise: ..." when madvise fails (a bug: the range is a plain anon mapping).
 */
function madviseCell(
  advice: Advice,
  design: MadviseFreeDesign | "-",
  folio: LiveFolio,
  o: BenchMadviseOptions,
): MadviseRow {
  const size = o.sizeMiB * 2 ** 20;
  const times: number[] = [];
  let counts: Record<string, number> = {};
  for (let r = 0; r < o.reps; r++) {
    const k = bootForFolio(folio, o.sizeMiB, "batched", design === "-" ? MAINLINE_FREE : design);
    const pid = k.createProcess();
    const addr = prepare(k, pid, size, folio);
    // The previous machine's garbage must not be collected inside the timed call.
    gc();
    const before = k.machine.stat.snapshot();
    const t = performance.now();
    const ret = k.madvise(pid, addr, size, ADVICE[advice]);
    times.push(performance.now() - t);
    if (ret !== 0) throw new Error(`benchMadvise: madvise(${advice}) of ${folio} returned ${ret}`);
    counts = countsDelta(before, k.machine.stat.snapshot());
  }
  const cost = costBreakdown(counts, o.profile);
  return {
    advice,
    design,
    folio,
    folioKiB: FOLIO_KIB[folio],
    sizeMiB: o.sizeMiB,
    modeledMs: cost.totalNs / 1e6,
    simMs: median(times),
    splits: counts.folio_split ?? 0,
    kernelMs: null,
    counts,
    unpriced: cost.unpriced.map((u) => u.event),
  };
}

/** The live workload whose time a row gets, or null (the split design is not what 6.18 runs). */
function liveWorkloadOf(row: MadviseRow): LiveWorkload | null {
  if (row.advice === "dontneed") return "dontneed";
  return row.design === MAINLINE_FREE ? "madv_free" : null;
}

/**
 * Runs the sweep: for every folio size, MADV_FREE under each design and MADV_DONTNEED once, in
 * vmlab; then, when o.live, the live kernel's madv_free and dontneed of the same size and folio
 * (calibrate/microbench.c through measureLive, which restores every THP knob it changes). A
 * folio size the live kernel cannot be set up for (no knob, too little memory) keeps kernelMs
 * null and is reported through progress. Returns the rows, by folio, then split, batched,
 * dontneed.
 */
export async function benchMadvise(o: BenchMadviseOptions): Promise<MadviseRow[]> {
  const log = o.progress ?? (() => {});
  const folios = o.folios ?? MADVISE_FOLIOS;
  const rows: MadviseRow[] = [];
  const cells: [Advice, MadviseFreeDesign | "-"][] = [
    ...MADVISE_DESIGNS.map((d): [Advice, MadviseFreeDesign] => ["free", d]),
    ["dontneed", "-"],
  ];
  // An untimed pass over every cell at 16 MiB first, so that no timed cell pays for the JIT
  // compiling the paths it is the first to take.
  for (const folio of folios)
    for (const [advice, design] of cells) madviseCell(advice, design, folio, { ...o, sizeMiB: 16, reps: 1 });
  // vmlab's cells first, the live kernel after: a live run frees gigabytes, and the guest's
  // free-page reporting then competes for the CPU with whatever vmlab times next.
  for (const folio of folios) {
    for (const [advice, design] of cells) {
      const row = madviseCell(advice, design, folio, o);
      rows.push(row);
      log(
        `${advice} ${design} ${folio} ${o.sizeMiB} MiB: sim ${row.simMs.toFixed(2)} ms, modeled ${row.modeledMs.toFixed(2)} ms, ${row.splits} splits`,
      );
    }
  }
  if (!o.live) return rows;
  for (const folio of folios) {
    const mine = rows.flatMap((row) => {
      const workload = liveWorkloadOf(row);
      return row.folio === folio && workload !== null ? [{ row, workload }] : [];
    });
    try {
      const results = await measureLive({
        workloads: mine.map((m) => m.workload),
        folio,
        sizeMiB: o.sizeMiB,
        reps: o.reps,
      });
      results.forEach((live, i) => {
        const ns = live.achieved ? live.median.ns : null;
        mine[i].row.kernelMs = ns === null ? null : ns / 1e6;
        log(
          `${live.workload} on the live kernel, ${folio} ${o.sizeMiB} MiB: ${ns === null ? `layout not achieved (${live.notes.join("; ")})` : `${(ns / 1e6).toFixed(2)} ms`}`,
        );
      });
    } catch (e) {
      if (!(e instanceof CalibrateRefusal)) throw e;
      log(`no live-kernel time for ${folio}: ${e.message} (Hint: ${e.hint})`);
    }
  }
  return rows;
}

const change = (batched: number, split: number): number => (100 * (batched - split)) / split;

/**
 * MADV_FREE batched against split for every folio size that has both rows, next to the seed's
 * change (from its seconds; its printed rounding is seedPct).
 */
export function madviseChanges(rows: readonly MadviseRow[]): MadviseChange[] {
  const out: MadviseChange[] = [];
  for (const folio of MADVISE_FOLIOS) {
    const cell = (d: MadviseFreeDesign) =>
      rows.find((r) => r.advice === "free" && r.design === d && r.folio === folio);
    const split = cell("split");
    const batched = cell("batched");
    if (!split || !batched) continue;
    const seed = SEED_MADV_FREE[FOLIO_KIB[folio]];
    const seedExactPct = change(seed.new, seed.old);
    const modeledPct = change(batched.modeledMs, split.modeledMs);
    out.push({
      folio,
      folioKiB: FOLIO_KIB[folio],
      modeledPct,
      simPct: change(batched.simMs, split.simMs),
      seedPct: seed.pct,
      seedExactPct,
      points: modeledPct - seedExactPct,
      withinTarget: Math.abs(modeledPct - seedExactPct) <= TARGET_POINTS,
    });
  }
  return out;
}

const ms = (x: number | null): string =>
  x === null ? "-" : x < 1 ? x.toFixed(3) : x < 100 ? x.toFixed(2) : x.toFixed(1);
const pct = (x: number): string => `${x >= 0 ? "+" : ""}${x.toFixed(1)} %`;

/** The human report: one line per row, then MADV_FREE batched against split next to the seed. */
export function formatBenchMadvise(rows: readonly MadviseRow[], profile: CostProfile): string {
  const first = rows[0];
  const out: string[] = [
    `vmlab bench madvise: ${first?.sizeMiB ?? "?"} MiB populated (profile ${profile.name}: ${profile.machine})`,
    "",
    "advice    design   folio   KiB    sim ms  modeled ms  kernel ms  splits  pte_write  tlb_flush  lru_move",
  ];
  for (const r of rows)
    out.push(
      `${r.advice.padEnd(9)} ${r.design.padEnd(8)} ${r.folio.padEnd(5)} ${String(r.folioKiB).padStart(5)} ${ms(r.simMs).padStart(9)} ${ms(r.modeledMs).padStart(11)} ${ms(r.kernelMs).padStart(10)} ${String(r.splits).padStart(7)} ${String(r.counts.pte_write ?? 0).padStart(10)} ${String(r.counts.tlb_flush ?? 0).padStart(10)} ${String(r.counts.lru_move ?? 0).padStart(9)}`,
    );
  const unpriced = [...new Set(rows.flatMap((r) => r.unpriced))];
  if (unpriced.length > 0)
    out.push("", `unpriced by ${profile.name} (counted 0 in modeled ms): ${unpriced.join(", ")}`);
  const changes = madviseChanges(rows);
  if (changes.length > 0) {
    out.push(
      "",
      "MADV_FREE, batched against split: 100 * (batched - split) / split",
      `folio   KiB   modeled       sim   seed (i5)   modeled - seed   within ±${TARGET_POINTS}`,
    );
    for (const c of changes)
      out.push(
        `${c.folio.padEnd(5)} ${String(c.folioKiB).padStart(5)} ${pct(c.modeledPct).padStart(9)} ${pct(c.simPct).padStart(9)} ${pct(c.seedExactPct).padStart(11)} ${`${c.points >= 0 ? "+" : ""}${c.points.toFixed(1)}`.padStart(16)}   ${c.withinTarget ? "yes" : "no"}`,
      );
    const hit = changes.filter((c) => c.withinTarget).length;
    out.push(
      `${hit} of ${changes.length} sizes within ±${TARGET_POINTS} points of the seed (Lance Yang's v2 cover letter, Intel i5, 1 GiB)`,
    );
  }
  const live = rows.filter((r) => r.kernelMs !== null);
  if (live.length > 0) {
    out.push("", "modeled against the live kernel (mainline cells): 100 * (modeled - kernel) / kernel");
    for (const r of live)
      out.push(
        `${r.advice.padEnd(9)} ${r.design.padEnd(8)} ${r.folio.padEnd(5)} ${pct(change(r.modeledMs, r.kernelMs as number)).padStart(10)}`,
      );
  }
  return out.join("\n");
}
