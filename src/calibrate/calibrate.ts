// `vmlab calibrate`: measure the microbench workloads on the live kernel (live.ts), count their
// events in vmlab (model.ts), fit ns per event (fit.ts) and write the cost profile.
//
//   for each folio mode, each size:  measureLive  --median ns-->  sample  <--counts--  modelWorkload
//   samples --fitCosts--> ns per event --> profiles/NAME.json (with the fit table)
//
// A sample enters the fit only when the live layout was the one asked for (achieved) and vmlab
// models the workload; the others stay in the table, marked, with the reason.

import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, release } from "node:os";
import { join } from "node:path";
import {
  type CostProfile,
  eventNames,
  type FitRow,
  formatNs,
  modeledNs,
  PROFILES_DIR,
  parseProfile,
} from "../cost/profile.ts";
import { type FitSample, fitCosts } from "./fit.ts";
import { CalibrateRefusal, checkKnobAccess, type KnobEnv, listKnobs, THP_SYSFS_ROOT } from "./knobs.ts";
import {
  LIVE_FOLIOS,
  LIVE_WORKLOADS,
  type LiveFolio,
  type LiveResult,
  type LiveWorkload,
  measureLive,
} from "./live.ts";
import { modelWorkload } from "./model.ts";
import { FIXED_FROM_PRIOR, PRIOR_WEIGHT, priorNs } from "./prior.ts";

/**
 * The default measurement, about a minute on a 2-vCPU guest (up to a few minutes when its TLB
 * flushes are slow): the small sizes pin the fixed costs, the large ones the per-page costs.
 * --quick's is a smoke run of seconds; its profile is rough. Every folio mode and every workload
 * that live.ts measures: each mTHP size has its own split and fault-allocation stats, and the
 * MADV_FREE workloads price the lazyfree and split events (`vmlab bench madvise`).
 */
export const CALIBRATE_DEFAULTS = {
  sizesMiB: [2, 16, 64, 256],
  reps: 5,
  folios: [...LIVE_FOLIOS] satisfies LiveFolio[],
  workloads: [...LIVE_WORKLOADS] satisfies LiveWorkload[],
  quick: { sizesMiB: [16], reps: 3 },
} as const;

export interface CalibrateOptions {
  /** Profile name: written to outDir/NAME.json. */
  name: string;
  /** Range sizes, MiB: positive and even (PMD modes map whole 2 MiB folios). */
  sizesMiB: readonly number[];
  reps: number;
  /** Folio modes (default CALIBRATE_DEFAULTS.folios; any of live.ts LIVE_FOLIOS). */
  folios?: readonly LiveFolio[];
  /** Workloads (default CALIBRATE_DEFAULTS.workloads; any of live.ts LIVE_WORKLOADS). */
  workloads?: readonly LiveWorkload[];
  /** Where the profile goes (default PROFILES_DIR). */
  outDir?: string;
  /** Where microbench is compiled (default: live.ts's cache). */
  cacheDir?: string;
  env?: KnobEnv;
  /** One line per measurement, as it finishes. */
  progress?: (line: string) => void;
  /** The fit date (default now). */
  now?: Date;
}

export interface CalibrateResult {
  profile: CostProfile;
  file: string;
}

/** "Linux 6.18.44 on AMD EPYC (2 CPUs)": where a profile was fitted. */
export function machineDescription(): string {
  const cpu = cpus();
  return `Linux ${release()} on ${cpu[0]?.model.trim() ?? "an unknown CPU"} (${cpu.length} CPUs)`;
}

/** A number rounded to 4 significant digits, so that profiles read as measurements. */
const round4 = (v: number): number => (v === 0 ? 0 : Number(v.toPrecision(4)));

/**
 * Checks the options a user gives. Throws CalibrateRefusal with a hint for a bad name, size or
 * repetition count.
 */
export function checkCalibrateOptions(o: Pick<CalibrateOptions, "name" | "sizesMiB" | "reps">): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(o.name))
    throw new CalibrateRefusal(
      `bad profile name "${o.name}"`,
      "use letters, digits, '.', '_' and '-' (it becomes profiles/NAME.json)",
    );
  if (o.sizesMiB.length === 0 || o.sizesMiB.some((s) => !Number.isInteger(s) || s < 2 || s % 2))
    throw new CalibrateRefusal(
      `bad --sizes ${o.sizesMiB.join(",")}`,
      "give even sizes in MiB, at least 2, separated by commas (such as 64,256)",
    );
  if (!Number.isInteger(o.reps) || o.reps < 1)
    throw new CalibrateRefusal(`bad --reps ${o.reps}`, "give a positive number of repetitions");
}

interface Measured {
  live: LiveResult;
  row: FitRow;
  counts: Record<string, number> | null;
}

/**
 * Runs the calibration: live measurements for every folio mode and size (and fork of an empty
 * range, its fixed cost), the model's counts for each, the fit, and the profile written to
 * outDir/NAME.json. Preconditions: Linux, root, writable THP knobs, cc (else CalibrateRefusal,
 * before any measurement). Every knob is restored after each measurement (withKnobs). Returns the
 * profile and its file. Throws CalibrateRefusal when nothing could be fitted.
 */
export async function calibrate(opts: CalibrateOptions): Promise<CalibrateResult> {
  checkCalibrateOptions(opts);
  const root = opts.env?.root ?? THP_SYSFS_ROOT;
  checkKnobAccess(listKnobs(root).length > 0 ? [] : ["enabled"], opts.env);
  const folios = opts.folios ?? CALIBRATE_DEFAULTS.folios;
  const workloads = opts.workloads ?? CALIBRATE_DEFAULTS.workloads;
  const progress = opts.progress ?? (() => {});
  const measured: Measured[] = [];
  const notApplicable = new Set<string>();
  const run = async (folio: LiveFolio, sizeMiB: number, which: readonly LiveWorkload[]) => {
    const t0 = performance.now();
    const results = await measureLive({
      workloads: which,
      folio,
      sizeMiB,
      reps: opts.reps,
      cacheDir: opts.cacheDir,
      env: opts.env,
    });
    for (const live of results) {
      if (live.applicable) measured.push(toMeasured(live));
      else notApplicable.add(`${live.workload} of ${live.folio}: ${live.notes.join("; ")}`);
    }
    const done = results
      .filter((r) => r.applicable)
      .map(
        (r) =>
          `${r.workload} ${r.median.ns === null ? "-" : formatNs(r.median.ns)}${r.achieved ? "" : " (layout not achieved)"}`,
      );
    progress(
      `${folio} ${sizeMiB} MiB: ${done.join(", ")}  [${((performance.now() - t0) / 1000).toFixed(1)} s]`,
    );
  };
  if (workloads.includes("fork")) await run("4k", 0, ["fork"]);
  for (const folio of folios) for (const size of opts.sizesMiB) await run(folio, size, workloads);

  const fitted = measured.filter((m) => m.row.fitted);
  if (fitted.length === 0)
    throw new CalibrateRefusal(
      "no sample could be fitted: every one was unmodelled or missed its folio layout",
      "see the notes above; free memory (echo 1 > /proc/sys/vm/compact_memory) and retry",
    );
  const samples: FitSample[] = fitted.map((m) => ({
    measuredNs: m.row.measuredNs,
    // Non-null: a fitted row has model counts.
    counts: m.counts!,
  }));
  const fit = fitCosts(samples, priorNs, PRIOR_WEIGHT, FIXED_FROM_PRIOR);
  const order = eventNames();
  const ns: Record<string, number> = {};
  const fromPrior: string[] = [];
  for (const e of order) {
    if (e in fit.ns) ns[e] = round4(fit.ns[e]);
    else if (priorNs(e) !== undefined) {
      // Events no calibration workload produces (the COW-PTE designs, pins, splits).
      ns[e] = priorNs(e) as number;
      fromPrior.push(e);
    }
  }
  const profile: CostProfile = {
    name: opts.name,
    description:
      `Fitted by vmlab calibrate: workloads ${workloads.join(", ")} on ${folios.join(", ")} folios, ` +
      `${opts.sizesMiB.join(", ")} MiB, median of ${opts.reps}; ns per event by NNLS on relative error, ` +
      "pulled toward a prior for events the workloads cannot tell apart (docs/calibrate.md). Fixed costs are the events syscall, pgfault and fork.",
    machine: machineDescription(),
    fitted: (opts.now ?? new Date()).toISOString(),
    ns,
    fit: {
      sizesMiB: [...opts.sizesMiB],
      reps: opts.reps,
      aliased: fit.aliased,
      rows: [],
      notes: [],
    },
  };
  const report = profile.fit!; // Non-null: set just above.
  for (const m of measured) {
    if (m.counts !== null) {
      const t = round4(modeledNs(m.counts, profile));
      m.row.modeledNs = t;
      m.row.errorPct =
        m.row.measuredNs > 0 ? round4((100 * (t - m.row.measuredNs)) / m.row.measuredNs) : null;
    }
    report.rows.push(m.row);
  }
  // One note per unmodelled workload (whatever the folio), one per sample that missed its layout.
  const notes = new Set(
    measured.flatMap((m) =>
      m.row.fitted || !m.row.note
        ? []
        : [`${m.row.workload}${m.counts === null ? "" : ` of ${m.row.folio}`}: ${m.row.note}`],
    ),
  );
  report.notes.push(
    `${fitted.length} of ${measured.length} samples fitted; rms relative error ${(100 * fit.rmsRelError).toFixed(1)} %`,
    ...notes,
    ...notApplicable,
    `priced from the prior and not fitted, as the workloads cannot separate them: ${[...FIXED_FROM_PRIOR].join(", ")}`,
    ...(fromPrior.length > 0
      ? [`priced from the prior (src/calibrate/prior.ts), not fitted: ${fromPrior.join(", ")}`]
      : []),
  );
  parseProfile(profile, "(new profile)"); // a bug here must not write a file that cannot be loaded
  const outDir = opts.outDir ?? PROFILES_DIR;
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${opts.name}.json`);
  writeFileSync(file, `${JSON.stringify(profile, null, 2)}\n`);
  return { profile, file };
}

/** One live result as a table row, with the model's counts when vmlab runs the workload. */
function toMeasured(live: LiveResult): Measured {
  const row: FitRow = {
    workload: live.workload,
    folio: live.folio,
    sizeMiB: live.sizeMiB,
    measuredNs: live.median.ns === null ? 0 : Math.round(live.median.ns),
    modeledNs: null,
    errorPct: null,
    fitted: false,
  };
  const model = modelWorkload(live.workload, live.folio, live.sizeMiB);
  if ("unsupported" in model) {
    row.note = model.unsupported;
    return { live, row, counts: null };
  }
  if (!live.achieved) row.note = `layout not achieved: ${live.notes.join("; ")}`;
  else if (!(row.measuredNs > 0)) row.note = "no time measured";
  else row.fitted = true;
  return { live, row, counts: model.counts };
}

/**
 * The calibration report: one line per sample (measured median, modeled, error), the fit's notes,
 * then ns per event with aliased groups marked.
 */
export function formatCalibration(profile: CostProfile, file: string): string {
  const fit = profile.fit;
  const lines: string[] = [];
  if (fit) {
    lines.push(
      `${"workload".padEnd(11)}${"folio".padEnd(16)}${"size".padStart(8)}${"measured".padStart(11)}${"modeled".padStart(11)}${"error".padStart(9)}`,
    );
    for (const r of fit.rows) {
      const err = r.errorPct === null ? "" : `${r.errorPct >= 0 ? "+" : ""}${r.errorPct.toFixed(1)} %`;
      const tail = r.fitted ? "" : `  not fitted: ${r.note?.replace(/:.*$/, "")}`;
      lines.push(
        `${r.workload.padEnd(11)}${r.folio.padEnd(16)}${`${r.sizeMiB} MiB`.padStart(8)}${formatNs(r.measuredNs).padStart(11)}${(r.modeledNs === null ? "-" : formatNs(r.modeledNs)).padStart(11)}${err.padStart(9)}${tail}`,
      );
    }
    lines.push("", ...fit.notes);
  }
  lines.push("", `ns per event (${profile.machine}):`);
  const aliasOf = new Map<string, string[]>();
  for (const g of fit?.aliased ?? []) for (const e of g) aliasOf.set(e, g);
  for (const [e, v] of Object.entries(profile.ns)) {
    const g = aliasOf.get(e);
    const note = g ? `  (same as ${g.filter((x) => x !== e).join(", ")}: always seen together)` : "";
    lines.push(`  ${e.padEnd(36)}${String(v).padStart(12)}${note}`);
  }
  lines.push("", `wrote ${file}`);
  return lines.join("\n");
}
