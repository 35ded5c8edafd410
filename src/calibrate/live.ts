// The live-kernel half of `vmlab calibrate`: compile calibrate/microbench.c with the machine's cc,
// set the THP knobs for one folio size, run the workloads as root, check that the folio size asked
// for is the one the kernel used, and return medians with every sample.
//
// The model half (vmlab's event counts for the same workloads) and the fit live elsewhere; this
// module only measures. A sample whose layout is not the one asked for is never silently accepted:
// its result says `achieved: false` and why.

import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as z from "zod";
import {
  CalibrateRefusal,
  checkKnobAccess,
  type KnobEnv,
  type KnobSettings,
  listKnobs,
  mthpKnob,
  THP_SYSFS_ROOT,
  withKnobs,
} from "./knobs.ts";

/**
 * madv_free: one madvise(MADV_FREE) of the whole populated range. madv_free_split: MADV_FREE of
 * the first page of every folio, one call per folio, which splits each large folio at once.
 */
export const LIVE_WORKLOADS = [
  "fork",
  "munmap",
  "anon_fault",
  "cow_fault",
  "dontneed",
  "madv_free",
  "madv_free_split",
] as const;
export type LiveWorkload = (typeof LIVE_WORKLOADS)[number];

/** Every anonymous folio size of x86-64 (4 KiB pages, orders 0 and 2..9) and PTE-mapped THPs. */
export const LIVE_FOLIOS = [
  "4k",
  "16k",
  "32k",
  "64k",
  "128k",
  "256k",
  "512k",
  "1m",
  "pmd",
  "pte-mapped-thp",
] as const;
export type LiveFolio = (typeof LIVE_FOLIOS)[number];

/** The folio size, KiB, each mode asks the kernel for. */
export const FOLIO_KIB: Record<LiveFolio, number> = {
  "4k": 4,
  "16k": 16,
  "32k": 32,
  "64k": 64,
  "128k": 128,
  "256k": 256,
  "512k": 512,
  "1m": 1024,
  pmd: 2048,
  "pte-mapped-thp": 2048,
};

/** A sample is accepted when at least this fraction of its pages sits in folios of the asked size. */
export const MIN_FOLIO_FRACTION = 0.9;

export const MICROBENCH_SOURCE = fileURLToPath(new URL("../../calibrate/microbench.c", import.meta.url));
const CC_FLAGS = ["-O2", "-Wall", "-Wextra"];

/** One line of microbench output: one repetition. See calibrate/microbench.c for each field. */
export const LiveSampleSchema = z.strictObject({
  workload: z.enum(LIVE_WORKLOADS),
  sizeMiB: z.number().int().nonnegative(),
  rep: z.number().int().nonnegative(),
  pteMapped: z.boolean(),
  hugepageAdvice: z.boolean(),
  ns: z.number().nonnegative(),
  pages: z.number().int().nonnegative(),
  nsPerGiB: z.number().nullable(),
  nsPerPage: z.number().nullable(),
  faults: z.number().int().nullable(),
  nsPerFault: z.number().nullable(),
  /** AnonHugePages of the whole microbench process, kB (-1: not read). */
  anonHugeKiB: z.number().int(),
  /** thp_split_pmd delta (system-wide) over the pte-mapped split step. */
  splitPmdDelta: z.number().int(),
  /** Pages of the range by the KiB size of the folio mapping them (null: kpageflags unreadable). */
  folios: z.record(z.string(), z.number().int().nonnegative()).nullable(),
  otherFolioPages: z.number().int().nullable(),
  absentPages: z.number().int().nullable(),
  /** anon_fault_alloc delta per mTHP size over the populate step; system-wide, so an upper bound. */
  mthpAllocDelta: z.record(z.string(), z.number().int()),
  // The madv_free workloads only (absent in the others):
  /** madvise calls in the timed step: 1 for madv_free, one per chunk for madv_free_split. */
  madviseCalls: z.number().int().positive().optional(),
  /** ns per madvise call; for madv_free_split, ns per folio (one call splits one folio). */
  nsPerCall: z.number().nonnegative().optional(),
  /** madv_free_split: the chunk, KiB (the folio size asked for). */
  chunkKiB: z.number().int().positive().optional(),
  /** thp_split_pmd delta over the timed step (system-wide). */
  timedSplitPmdDelta: z.number().int().optional(),
  /** thp_split_page delta over the timed step: PMD-order folios split (system-wide). */
  splitPageDelta: z.number().int().optional(),
  /** The mTHP `split` stat's delta per size over the timed step (every order; system-wide). */
  mthpSplitDelta: z.record(z.string(), z.number().int()).optional(),
  /** The mTHP `split_failed` stat's delta per size over the timed step (system-wide). */
  mthpSplitFailedDelta: z.record(z.string(), z.number().int()).optional(),
});
export type LiveSample = z.infer<typeof LiveSampleSchema>;

/** Medians over the samples of one result; null where the workload does not measure it. */
export interface LiveMedian {
  ns: number | null;
  nsPerGiB: number | null;
  nsPerPage: number | null;
  nsPerFault: number | null;
  faults: number | null;
  /** The madv_free workloads' ns per madvise call (per folio for madv_free_split). */
  nsPerCall: number | null;
}

export interface LiveResult {
  workload: LiveWorkload;
  folio: LiveFolio;
  sizeMiB: number;
  reps: number;
  /** False when the workload has no such mode (anon_fault of pte-mapped THP): no samples. */
  applicable: boolean;
  /** Every sample had the asked folio layout. A false result must not be fitted. */
  achieved: boolean;
  /** Why it is not applicable or not achieved, one line per problem. */
  notes: string[];
  median: LiveMedian;
  samples: LiveSample[];
}

export interface MeasureLiveOptions {
  workloads: readonly LiveWorkload[];
  folio: LiveFolio;
  sizeMiB: number;
  reps: number;
  /** MADV_HUGEPAGE on the range in pmd modes, which lets the fault compact (default false). */
  hugepageAdvice?: boolean;
  /** Where the compiled binary is kept (default ~/.cache/vmlab/calibrate). */
  cacheDir?: string;
  /** The C compiler (default "cc"). */
  cc?: string;
  /** Per-workload timeout, ms (default 10 minutes). */
  timeoutMs?: number;
  env?: KnobEnv;
}

/**
 * The knob values for one folio mode, given the knobs this kernel has: every size "never" except
 * the one asked ("always"), and the global knob "never" so that no size inherits. A kernel without
 * per-size knobs gets the global knob "always" for pmd modes. Throws CalibrateRefusal when the
 * size has no knob here.
 */
export function knobSettingsFor(folio: LiveFolio, available: readonly string[]): KnobSettings {
  const settings: KnobSettings = {};
  for (const name of available) settings[name] = "never";
  if (folio === "4k") return settings;
  const want = mthpKnob(FOLIO_KIB[folio]);
  if (available.includes(want)) settings[want] = "always";
  else if (FOLIO_KIB[folio] === 2048 && available.includes("enabled")) settings.enabled = "always";
  else
    throw new CalibrateRefusal(
      `this kernel has no THP knob for ${FOLIO_KIB[folio]} KiB folios (no ${want})`,
      "mTHP sizes need Linux 6.8+; measure the folio sizes this kernel offers",
    );
  return settings;
}

/**
 * Compiles MICROBENCH_SOURCE unless a binary of the same source, compiler and flags is cached.
 * Returns the binary's path. Throws CalibrateRefusal when cc is missing or the compile fails.
 */
export function compileMicrobench(
  cacheDir = join(homedir(), ".cache", "vmlab", "calibrate"),
  cc = "cc",
): string {
  return compileCached(MICROBENCH_SOURCE, "microbench", cacheDir, cc);
}

/**
 * Compiles the C program at `source` into cacheDir/NAME-HASH unless a binary of the same source,
 * compiler and flags is there already. Returns the binary's path. Throws CalibrateRefusal when
 * cc is missing or the compile fails. The cache is private to the user (mode 0700): a root
 * process must not run a binary that someone else could have replaced.
 */
export function compileCached(source: string, name: string, cacheDir: string, cc = "cc"): string {
  const text = readFileSync(source);
  const hash = createHash("sha256")
    .update(text)
    .update(`\0${cc}\0${CC_FLAGS.join(" ")}`)
    .digest("hex");
  const bin = join(cacheDir, `${name}-${hash.slice(0, 16)}`);
  if (existsSync(bin)) return bin;
  mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  chmodSync(cacheDir, 0o700);
  const tmp = `${bin}.${process.pid}.tmp`;
  const r = spawnSync(cc, [...CC_FLAGS, "-o", tmp, source], { encoding: "utf8" });
  if (r.error !== undefined || r.status !== 0) {
    rmSync(tmp, { force: true });
    const why =
      r.error !== undefined ? (r.error as NodeJS.ErrnoException).code : `exit ${r.status}\n${r.stderr}`;
    throw new CalibrateRefusal(
      `cannot compile ${source} with ${cc}: ${why}`,
      "install gcc (apt-get install -y gcc)",
    );
  }
  renameSync(tmp, bin);
  return bin;
}

/**
 * Parses microbench stdout: one JSON sample per non-empty line. Throws "parseMicrobenchOutput: …"
 * (a bug: the C and this schema disagree) on a line that does not fit.
 */
export function parseMicrobenchOutput(stdout: string): LiveSample[] {
  return stdout
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((line, i) => {
      const r = LiveSampleSchema.safeParse(JSON.parse(line));
      if (!r.success)
        throw new Error(`parseMicrobenchOutput: line ${i + 1}: ${z.prettifyError(r.error)}\n${line}`);
      return r.data;
    });
}

/**
 * The reason a sample's layout is not the one `folio` asked for, or null when it is. Checks the
 * folio histogram from kpageflags, and the PMD mappings from AnonHugePages: all of the range for
 * pmd, none for pte-mapped-thp.
 */
export function checkFolioLayout(folio: LiveFolio, s: LiveSample): string | null {
  if (s.sizeMiB === 0) return null;
  if (s.folios === null) return `rep ${s.rep}: folio layout unreadable (/proc/kpageflags needs root)`;
  const want = FOLIO_KIB[folio];
  const got = s.folios[String(want)] ?? 0;
  if (got < MIN_FOLIO_FRACTION * s.pages) {
    const seen = Object.entries(s.folios)
      .map(([kib, pages]) => `${pages} pages in ${kib} KiB folios`)
      .concat(s.otherFolioPages ? [`${s.otherFolioPages} in other shapes`] : [])
      .join(", ");
    return `rep ${s.rep}: ${got} of ${s.pages} pages in ${want} KiB folios (${seen || "none present"})`;
  }
  const rangeKiB = s.sizeMiB * 1024;
  if (folio === "pmd" && s.anonHugeKiB < MIN_FOLIO_FRACTION * rangeKiB)
    return `rep ${s.rep}: only ${s.anonHugeKiB} of ${rangeKiB} KiB PMD-mapped (AnonHugePages)`;
  if (folio === "pte-mapped-thp" && s.anonHugeKiB > (1 - MIN_FOLIO_FRACTION) * rangeKiB)
    return `rep ${s.rep}: ${s.anonHugeKiB} KiB still PMD-mapped after the split (AnonHugePages)`;
  return null;
}

/** The median of the non-null values, or null when there are none. */
export function median(xs: readonly (number | null)[]): number | null {
  const s = xs.filter((x): x is number => x !== null).sort((a, b) => a - b);
  if (s.length === 0) return null;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const medianOf = (samples: readonly LiveSample[]): LiveMedian => ({
  ns: median(samples.map((s) => s.ns)),
  nsPerGiB: median(samples.map((s) => s.nsPerGiB)),
  nsPerPage: median(samples.map((s) => s.nsPerPage)),
  nsPerFault: median(samples.map((s) => s.nsPerFault)),
  faults: median(samples.map((s) => s.faults)),
  nsPerCall: median(samples.map((s) => s.nsPerCall ?? null)),
});

/**
 * Lets queued signal handlers (SIGINT/SIGTERM from withKnobs) run between runs: a signal that
 * arrived during a blocking step (the compile is still spawnSync) is dispatched on the second
 * turn of the event loop, not the first.
 */
async function yieldToSignals(): Promise<void> {
  for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
}

function memAvailableMiB(): number | null {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync("/proc/meminfo", "utf8"));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

function checkOptions(o: MeasureLiveOptions): void {
  const bad = (what: string): never => {
    throw new CalibrateRefusal(`measureLive: ${what}`, "see `vmlab calibrate --help`");
  };
  if (!LIVE_FOLIOS.includes(o.folio)) bad(`unknown folio "${o.folio}" (one of ${LIVE_FOLIOS.join(", ")})`);
  for (const w of o.workloads) if (!LIVE_WORKLOADS.includes(w)) bad(`unknown workload "${w}"`);
  // Size 0 is fork's fixed cost; the other workloads need a mapping.
  const minSize = o.workloads.every((w) => w === "fork") ? 0 : 1;
  if (!Number.isInteger(o.sizeMiB) || o.sizeMiB < minSize)
    bad(`sizeMiB must be an integer >= ${minSize}, not ${o.sizeMiB}`);
  if ((o.sizeMiB * 1024) % FOLIO_KIB[o.folio])
    bad(`sizeMiB must be a multiple of ${FOLIO_KIB[o.folio] / 1024} for ${o.folio}`);
  if (!Number.isInteger(o.reps) || o.reps < 1) bad(`reps must be a positive integer, not ${o.reps}`);
  const avail = memAvailableMiB();
  // cow_fault holds two copies of the range.
  if (avail !== null && 2 * o.sizeMiB > 0.8 * avail)
    throw new CalibrateRefusal(
      `measureLive: ${o.sizeMiB} MiB needs twice that free for cow_fault, and ${Math.round(avail)} MiB is available`,
      "measure a smaller size",
    );
}

/**
 * Runs the microbenchmark without blocking the event loop, so that a SIGINT or SIGTERM is handled
 * (the knobs restored) at once rather than when a long run ends: a blocked process can be killed
 * outright by a supervisor (tsx escalates to SIGKILL), which would leave the knobs changed. The
 * microbenchmark is killed when this process exits.
 */
function runMicrobench(
  bin: string,
  args: string[],
  timeoutMs: number,
): Promise<{ samples: LiveSample[]; signal: string | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
    const killChild = (): void => {
      child.kill("SIGKILL");
    };
    process.on("exit", killChild);
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      out += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      err += d;
    });
    const timer = setTimeout(killChild, timeoutMs);
    const done = (): void => {
      clearTimeout(timer);
      process.off("exit", killChild);
    };
    child.on("error", (e) => {
      done();
      reject(new Error(`runMicrobench: ${bin}: ${e.message}`));
    });
    child.on("close", (status, signal) => {
      done();
      if (signal !== null) resolve({ samples: [], signal });
      else if (status !== 0)
        reject(new Error(`runMicrobench: microbench ${args.join(" ")} exited ${status}: ${err.trim()}`));
      else {
        try {
          resolve({ samples: parseMicrobenchOutput(out), signal: null });
        } catch (e) {
          reject(e);
        }
      }
    });
  });
}

/**
 * Measures `workloads` on the live kernel with `folio` folios: compiles the microbenchmark (if
 * its source changed), sets the THP knobs with withKnobs (so they are restored however this
 * ends), runs each workload `reps` times on a fresh `sizeMiB` mapping, and checks each sample's
 * folio layout. Preconditions: Linux, root, the knobs for `folio` present and writable. Returns
 * one result per workload, in order. Throws CalibrateRefusal when it cannot run here, or when a
 * run is killed (timeout, signal).
 */
export async function measureLive(opts: MeasureLiveOptions): Promise<LiveResult[]> {
  checkOptions(opts);
  const root = opts.env?.root ?? THP_SYSFS_ROOT;
  checkKnobAccess(listKnobs(root).length > 0 ? [] : ["enabled"], opts.env);
  const pmdPath = join(root, "hpage_pmd_size");
  if (existsSync(pmdPath) && readFileSync(pmdPath, "utf8").trim() !== String(2 << 20))
    throw new CalibrateRefusal(
      `the PMD size here is ${readFileSync(pmdPath, "utf8").trim()} bytes`,
      "calibrate/microbench.c assumes 4 KiB pages and 2 MiB PMDs (x86-64, arm64 with 4 KiB pages)",
    );
  const settings = knobSettingsFor(opts.folio, listKnobs(root));
  checkKnobAccess(Object.keys(settings), opts.env);
  const bin = compileMicrobench(opts.cacheDir, opts.cc);
  const pteMapped = opts.folio === "pte-mapped-thp";
  const flags = [
    ...(opts.hugepageAdvice && FOLIO_KIB[opts.folio] === 2048 ? ["hugepage"] : []),
    ...(pteMapped ? ["pte-mapped"] : []),
  ];
  return withKnobs(
    settings,
    async () => {
      const results: LiveResult[] = [];
      for (const workload of opts.workloads) {
        const base = { workload, folio: opts.folio, sizeMiB: opts.sizeMiB, reps: opts.reps };
        if (workload === "anon_fault" && pteMapped) {
          const notes = [
            "not applicable: the first touch decides the mapping, so a fault cannot find a PTE-mapped THP",
          ];
          results.push({
            ...base,
            applicable: false,
            achieved: false,
            notes,
            median: medianOf([]),
            samples: [],
          });
          continue;
        }
        // madv_free_split advises the first page of every chunk of the folio size.
        const wflags = workload === "madv_free_split" ? [...flags, `folio=${FOLIO_KIB[opts.folio]}`] : flags;
        const args = [
          workload,
          String(opts.sizeMiB),
          String(opts.reps),
          ...(wflags.length ? [wflags.join(",")] : []),
        ];
        const run = await runMicrobench(bin, args, opts.timeoutMs ?? 600_000);
        await yieldToSignals();
        if (run.signal !== null)
          throw new CalibrateRefusal(
            `microbench ${args.join(" ")} was killed by ${run.signal}`,
            run.signal === "SIGKILL"
              ? "it timed out or ran out of memory: measure a smaller size"
              : "rerun it",
          );
        const notes = run.samples
          .map((s) => checkFolioLayout(opts.folio, s))
          .filter((n): n is string => n !== null);
        if (run.samples.length !== opts.reps)
          notes.push(`${run.samples.length} samples for ${opts.reps} reps`);
        results.push({
          ...base,
          applicable: true,
          achieved: notes.length === 0,
          notes,
          median: medianOf(run.samples),
          samples: run.samples,
        });
      }
      return results;
    },
    opts.env,
  );
}
