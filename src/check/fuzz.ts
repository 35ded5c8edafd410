// `vmlab fuzz`: the model-based check as a command. Random machines and operation sequences,
// the audit and the reference comparison after every operation; a failure is shrunk and
// printed with the command that replays it.
//
// A budget of operations is spent in batches of cases: batch b draws its cases from seed + b,
// so a failure replays as one fast-check run (`--seed S --runs R --path P`) however large the
// budget was.

import fc from "fast-check";
import type { CowReuse } from "../mm/machine.ts";
import { machineArbOf, opsArb, runCase } from "./arbitraries.ts";

/** Cases per batch: each batch is one fast-check run with its own seed. */
export const FUZZ_BATCH = 50;

export interface FuzzOptions {
  seed: number;
  cow: CowReuse;
  /** Stop once this many operations were checked (whole batches). */
  ops?: number;
  /** Or run exactly this many cases from `seed` (one batch; with `path`, a replay). */
  runs?: number;
  path?: string;
  /** Called after every case with the operations checked so far. */
  progress?: (operations: number) => void;
}

export interface FuzzResult {
  ok: boolean;
  runs: number;
  operations: number;
  /** The seed of the batch that failed (or the first seed). */
  seed: number;
  /**
   * On failure: the check's message ("audit: ...", "reference: ..."), how it was found and
   * shrunk, and the shrunk case: the machine, then one operation per line.
   */
  report: string;
  /** On failure: the command-line arguments that replay the shrunk case. */
  replay: string;
}

/** Runs random cases. Never throws for a model failure: it is in the result. */
export function fuzz(opts: FuzzOptions): FuzzResult {
  let operations = 0;
  let runs = 0;
  const prop = fc.property(machineArbOf(opts.cow), opsArb, (mc, ops) => {
    operations += runCase(mc, ops).ops;
    opts.progress?.(operations);
  });
  for (let batch = 0; ; batch++) {
    const seed = opts.seed + batch;
    const numRuns = opts.runs ?? FUZZ_BATCH;
    const details = fc.check(prop, { numRuns, seed, path: opts.path });
    if (details.failed) {
      const err =
        details.errorInstance instanceof Error
          ? details.errorInstance.message
          : String(details.errorInstance);
      return {
        ok: false,
        runs: runs + details.numRuns,
        operations,
        seed,
        report: formatFailure(err, details.numRuns, details.numShrinks, details.counterexample),
        replay: `--cow ${opts.cow} --seed ${seed} --runs ${numRuns} --path ${details.counterexamplePath ?? ""}`,
      };
    }
    runs += details.numRuns;
    if (opts.runs !== undefined || operations >= (opts.ops ?? 0))
      return { ok: true, runs, operations, seed: opts.seed, report: "", replay: "" };
  }
}

function formatFailure(err: string, runs: number, shrinks: number, example: unknown): string {
  const [machine, ops] = (example ?? [{}, []]) as [unknown, unknown[]];
  return [
    err,
    `found by case ${runs}, shrunk ${shrinks} times to ${ops.length} operations:`,
    `  machine ${JSON.stringify(machine)}`,
    ...ops.map((op, i) => `  ${String(i + 1).padStart(3)} ${JSON.stringify(op)}`),
  ].join("\n");
}
