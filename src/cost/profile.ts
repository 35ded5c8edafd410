// Cost profiles: nanoseconds per model event, fitted to the live kernel by `vmlab calibrate`
// (docs/calibrate.md). The modeled time of a run is the dot product of its event counts (VmStat
// snapshot deltas) with a profile's `ns`. Fixed costs are events too: `syscall` once per system
// call, `pgfault` once per fault, `fork` once per fork call.
//
//   counts {pte_write: 1024, fork: 1, ...}  x  profile.ns {pte_write: 2.1, fork: 90000, ...}
//     --> modeledNs (a number) and costBreakdown (per event, largest first; unpriced events listed)
//
// Event names are VmStat's (src/mm/vmstat.ts), taken from VmStat itself, so events added there
// can be priced without changing this file.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as z from "zod";
import { VmStat } from "../mm/vmstat.ts";
import { didYouMean } from "../scenario/schema.ts";

/** The directory of shipped profiles: `loadProfile("default")` reads profiles/default.json. */
export const PROFILES_DIR = fileURLToPath(new URL("../../profiles/", import.meta.url));

/** Every event name VmStat can report (global events, then mTHP per-size stats), in its order. */
export function eventNames(): string[] {
  const s = new VmStat();
  s.count.fill(1);
  return Object.keys(s.snapshot());
}

const nsPerEvent = z.number().finite().nonnegative();

/** One row of a profile's fit table: a calibration sample, measured and modeled. */
export const FitRowSchema = z.strictObject({
  workload: z.string(),
  folio: z.string(),
  sizeMiB: z.number().int().nonnegative(),
  /** Median live time of the timed section, ns. */
  measuredNs: z.number().nonnegative(),
  /** The profile's time for the model's event counts of the same section, ns (null: not modelled). */
  modeledNs: z.number().nonnegative().nullable(),
  /** 100 * (modeled - measured) / measured (null: not modelled). */
  errorPct: z.number().nullable(),
  /** Whether the row was a row of the fit (false: not modelled, or its layout was not achieved). */
  fitted: z.boolean(),
  note: z.string().optional(),
});
export type FitRow = z.infer<typeof FitRowSchema>;

/** How a profile was fitted: the calibration settings, the error table and what to know about it. */
export const FitReportSchema = z.strictObject({
  sizesMiB: z.array(z.number().int().nonnegative()),
  reps: z.number().int().positive(),
  /** Events the workloads always produced in fixed proportion: each group shares one ns per event. */
  aliased: z.array(z.array(z.string())),
  rows: z.array(FitRowSchema),
  notes: z.array(z.string()),
});
export type FitReport = z.infer<typeof FitReportSchema>;

/** A cost profile as stored in profiles/NAME.json. */
export const CostProfileSchema = z.strictObject({
  name: z.string().min(1),
  description: z.string(),
  /** Where it was fitted: `uname -r` and the CPU model. */
  machine: z.string(),
  /** When it was fitted (ISO 8601), or null for a hand-written profile. */
  fitted: z.union([z.iso.datetime({ offset: true }), z.iso.date()]).nullable(),
  /** Nanoseconds per event, by VmStat event name. Events not listed cost 0 and are "unpriced". */
  ns: z.record(z.string(), nsPerEvent),
  fit: FitReportSchema.optional(),
});
export type CostProfile = z.infer<typeof CostProfileSchema>;

/** A profile file that cannot be used: the CLI prints format() and exits with status 2. */
export class ProfileError extends Error {
  constructor(
    readonly file: string,
    message: string,
    readonly hint: string,
  ) {
    super(message);
    this.name = "ProfileError";
  }

  /** "FILE: error: MESSAGE" and a "  Hint: HINT" line. */
  format(): string {
    return `${this.file}: error: ${this.message}\n  Hint: ${this.hint}`;
  }
}

const issuePath = (path: readonly PropertyKey[]): string =>
  path.reduce<string>(
    (s, k) => (typeof k === "number" ? `${s}[${k}]` : s ? `${s}.${String(k)}` : String(k)),
    "",
  ) || "(document)";

/**
 * Validates profile data read from `file`. Returns the profile. Throws ProfileError naming the
 * first problem: a wrong type, an unknown key, a negative or non-finite ns, or an event name that
 * VmStat does not have (with the nearest known name).
 */
export function parseProfile(data: unknown, file: string): CostProfile {
  const r = CostProfileSchema.safeParse(data);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issuePath(issue.path);
    const hint =
      issue.path[0] === "ns"
        ? "ns maps event names to nanoseconds per event, each a finite number >= 0"
        : "a profile has name, description, machine, fitted (ISO date or null), ns and optionally fit";
    throw new ProfileError(file, `${where}: ${issue.message}`, hint);
  }
  const known = eventNames();
  for (const event of Object.keys(r.data.ns)) {
    if (!known.includes(event))
      throw new ProfileError(
        file,
        `ns.${event}: unknown event '${event}'${didYouMean(event, known)}`,
        `events are VmStat names (src/mm/vmstat.ts), such as ${known.slice(0, 4).join(", ")}, hugepages-64kB/anon_fault_alloc`,
      );
  }
  return r.data;
}

/**
 * The file a profile argument names: a bare name (no '/', no ".json") is profiles/NAME.json, so
 * "default" is the shipped profile; anything else is a path.
 */
export function profilePath(nameOrPath: string): string {
  return /[/\\]/.test(nameOrPath) || nameOrPath.endsWith(".json")
    ? nameOrPath
    : join(PROFILES_DIR, `${nameOrPath}.json`);
}

/**
 * Reads and validates a profile by name or path (see profilePath). Throws ProfileError when the
 * file is missing or unreadable, is not JSON, or is not a valid profile.
 */
export function loadProfile(nameOrPath: string): CostProfile {
  const file = profilePath(nameOrPath);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new ProfileError(
      file,
      code === "ENOENT" ? "no such profile file" : `cannot read it (${code})`,
      file === nameOrPath
        ? "give a profile name from profiles/ (such as default) or the path of a profile JSON file"
        : `'${nameOrPath}' is looked up as ${file}; run \`vmlab calibrate --name ${nameOrPath}\` to make it, or use default`,
    );
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new ProfileError(file, `not valid JSON: ${(e as Error).message}`, "check the JSON syntax");
  }
  return parseProfile(data, file);
}

/** Modeled nanoseconds of `counts`: the sum of count x ns per event; unpriced events cost 0. */
export function modeledNs(counts: Readonly<Record<string, number>>, profile: CostProfile): number {
  let total = 0;
  for (const [event, n] of Object.entries(counts)) total += n * (profile.ns[event] ?? 0);
  return total;
}

/** One event's share of a modeled time. */
export interface CostItem {
  event: string;
  count: number;
  nsPerEvent: number;
  ns: number;
}

export interface CostBreakdown {
  /** The same number modeledNs gives. */
  totalNs: number;
  /** Priced events with a non-zero count, largest ns first (ties by name). */
  items: CostItem[];
  /** Events with a non-zero count that the profile does not price, by name. */
  unpriced: { event: string; count: number }[];
}

/** The per-event breakdown of modeledNs(counts, profile). */
export function costBreakdown(counts: Readonly<Record<string, number>>, profile: CostProfile): CostBreakdown {
  const items: CostItem[] = [];
  const unpriced: { event: string; count: number }[] = [];
  for (const [event, count] of Object.entries(counts)) {
    if (count === 0) continue;
    const per = profile.ns[event];
    if (per === undefined) unpriced.push({ event, count });
    else items.push({ event, count, nsPerEvent: per, ns: count * per });
  }
  items.sort((a, b) => b.ns - a.ns || (a.event < b.event ? -1 : a.event > b.event ? 1 : 0));
  unpriced.sort((a, b) => (a.event < b.event ? -1 : a.event > b.event ? 1 : 0));
  return { totalNs: modeledNs(counts, profile), items, unpriced };
}

/** counts `after` minus `before` (VmStat snapshots), non-zero entries only, in `after`'s order. */
export function countsDelta(
  before: Readonly<Record<string, number>>,
  after: Readonly<Record<string, number>>,
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [event, n] of Object.entries(after)) {
    const d = n - (before[event] ?? 0);
    if (d !== 0) out[event] = d;
  }
  for (const [event, n] of Object.entries(before)) if (!(event in after)) out[event] = -n;
  return out;
}

/** A duration for people: "0 ns", "850 ns", "12.3 µs", "4.56 ms", "1.23 s" (3 significant digits). */
export function formatNs(ns: number): string {
  const sig = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
  if (ns < 999.5) return `${ns < 10 && ns !== Math.round(ns) ? ns.toFixed(2) : Math.round(ns)} ns`;
  if (ns < 999.5e3) return `${sig(ns / 1e3)} µs`;
  if (ns < 999.5e6) return `${sig(ns / 1e6)} ms`;
  return `${sig(ns / 1e9)} s`;
}
