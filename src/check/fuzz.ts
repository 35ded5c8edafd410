// `vmlab fuzz`: the model-based check as a command. Random machines and operation sequences,
// the audit and the reference comparison after every operation; a failure is shrunk and
// printed with the seed and path that replay it.

import fc from "fast-check";
import { machineArb, opsArb, runCase } from "./arbitraries.ts";

export interface FuzzResult {
  ok: boolean;
  runs: number;
  operations: number;
  seed: number;
  /** On failure: the check's message ("audit: ...", "reference: ..."), then fast-check's report. */
  report: string;
  /** On failure: the path that replays the shrunk case with the same seed. */
  path: string;
}

/** Runs `runs` random cases from `seed`. Never throws for a model failure: it is in the result. */
export function fuzz(opts: { runs: number; seed: number; path?: string }): FuzzResult {
  let operations = 0;
  const prop = fc.property(machineArb, opsArb, (mc, ops) => {
    operations += runCase(mc, ops).ops;
  });
  const details = fc.check(prop, { numRuns: opts.runs, seed: opts.seed, path: opts.path });
  if (!details.failed)
    return { ok: true, runs: details.numRuns, operations, seed: opts.seed, report: "", path: "" };
  const err =
    details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
  const report = `${err}\n${fc.defaultReportMessage(details) ?? ""}`;
  return {
    ok: false,
    runs: details.numRuns,
    operations,
    seed: opts.seed,
    report,
    path: details.counterexamplePath ?? "",
  };
}
