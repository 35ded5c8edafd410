// The vmlab command line.

import { relative } from "node:path";
import { fileURLToPath } from "node:url";
import { SingleBar } from "cli-progress";
import { Command, CommanderError } from "commander";
import { benchCore, formatBenchCore } from "../bench/core.ts";
import { fuzz } from "../check/fuzz.ts";
import { loadScenario, ScenarioError } from "../scenario/load.ts";
import { formatRun, runScenario } from "../scenario/run.ts";

/** The scenario `vmlab run` and `npm start` use when no file is given. */
export const DEFAULT_SCENARIO = fileURLToPath(new URL("../../examples/default.yaml", import.meta.url));

const program = new Command()
  .name("vmlab")
  .description("An executable, deterministic model of Linux memory management")
  .exitOverride()
  .configureOutput({ writeErr: (s) => process.stderr.write(s) });

program
  .command("run")
  .description("run a scenario and print its operation log and final report")
  .argument("[file]", "scenario YAML file (default: the built-in examples/default.yaml)")
  .option("--json", "print the result as JSON")
  .action((file: string | undefined, opts: { json?: boolean }) => {
    const result = runScenario(loadScenario(file ?? relative(process.cwd(), DEFAULT_SCENARIO)));
    process.stdout.write(opts.json ? `${JSON.stringify(result, null, 2)}\n` : `${formatRun(result)}\n`);
    if (result.expectations.failed > 0) process.exitCode = 1;
  });

program
  .command("fuzz")
  .description("random machines and operations, with the audit and the reference model after every operation")
  .option("--ops <n>", "check at least this many operations, in batches of 50 cases (80-160 operations each)")
  .option(
    "--runs <n>",
    "check exactly this many cases from --seed instead (default: 20 when --ops is not given)",
  )
  .option("--seed <n>", "seed of the first batch (a failure prints the command that replays it)", "1")
  .option("--cow <reuse>", "COW reuse rule of the random machines: modern or legacy", "modern")
  .option("--path <path>", "replay one case and its shrink path, as printed by a failure")
  .action((opts: { ops?: string; runs?: string; seed: string; cow: string; path?: string }) => {
    const ops = opts.ops === undefined ? undefined : Number(opts.ops);
    const runs = opts.runs === undefined ? (ops === undefined ? 20 : undefined) : Number(opts.runs);
    const seed = Number(opts.seed);
    const bad =
      (ops !== undefined && (!Number.isSafeInteger(ops) || ops < 1)) ||
      (runs !== undefined && (!Number.isSafeInteger(runs) || runs < 1)) ||
      !Number.isSafeInteger(seed);
    if (bad || (opts.cow !== "modern" && opts.cow !== "legacy")) {
      process.stderr.write(
        "vmlab fuzz: --ops and --runs take a positive integer, --seed an integer, --cow modern or legacy\n",
      );
      process.exitCode = 2;
      return;
    }
    // The bar goes to stderr, and only on a terminal: CI logs and pipes stay clean.
    const bar =
      process.stderr.isTTY && ops !== undefined
        ? new SingleBar({
            format: "fuzz [{bar}] {value}/{total} operations {percentage}% eta {eta_formatted}",
          })
        : null;
    bar?.start(ops ?? 0, 0);
    const r = fuzz({
      ops,
      runs,
      seed,
      cow: opts.cow,
      path: opts.path,
      progress: (n) => {
        // The last batch runs to its end, past the budget: grow the bar with it.
        if (bar && n > bar.getTotal()) bar.setTotal(n);
        bar?.update(n);
      },
    });
    bar?.stop();
    if (r.ok) {
      process.stdout.write(
        `fuzz: ${r.runs} cases, ${r.operations} operations checked, cow ${opts.cow}, seed ${seed}: all agree\n`,
      );
      return;
    }
    process.stdout.write(`${r.report}\n`);
    process.stdout.write(`Hint: replay the shrunk case with: vmlab fuzz ${r.replay}\n`);
    process.exitCode = 1;
  });

const bench = program.command("bench").description("benchmarks (never run by the tests)");
bench
  .command("core")
  .description("fault cost, host memory per populated GiB, populate and exit times, largest run")
  .option("--json", "print the figures as JSON")
  .option("--max-gib <n>", "largest populated size to try, in GiB", "64")
  .action((opts: { json?: boolean; maxGib: string }) => {
    const r = benchCore({ maxGiB: Number(opts.maxGib), progress: (s) => process.stderr.write(`${s}\n`) });
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatBenchCore(r)}\n`);
  });

try {
  program.parse();
} catch (e) {
  if (e instanceof ScenarioError) {
    process.stderr.write(`${e.format()}\n`);
    process.exitCode = 2;
  } else if (e instanceof CommanderError) {
    // commander printed its message already; --help and --version exit 0.
    process.exitCode = e.exitCode === 0 ? 0 : 2;
  } else {
    throw e;
  }
}
