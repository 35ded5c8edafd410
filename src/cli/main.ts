// The vmlab command line.

import { relative } from "node:path";
import { fileURLToPath } from "node:url";
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
  .option("--runs <n>", "number of random cases (each 80-160 operations)", "20")
  .option("--seed <n>", "seed of the random cases (a failure prints the seed and path that replay it)", "1")
  .option("--path <path>", "replay one case and its shrink path, as printed by a failure")
  .action((opts: { runs: string; seed: string; path?: string }) => {
    const runs = Number(opts.runs);
    const seed = Number(opts.seed);
    if (!Number.isSafeInteger(runs) || runs < 1 || !Number.isSafeInteger(seed)) {
      process.stderr.write("vmlab fuzz: --runs takes a positive integer and --seed an integer\n");
      process.exitCode = 2;
      return;
    }
    const r = fuzz({ runs, seed, path: opts.path });
    if (r.ok) {
      process.stdout.write(
        `fuzz: ${r.runs} cases, ${r.operations} operations checked, seed ${r.seed}: all agree\n`,
      );
      return;
    }
    process.stdout.write(`${r.report}\n`);
    process.stdout.write(
      `Hint: replay the shrunk case with: vmlab fuzz --seed ${seed} --runs ${runs} --path ${r.path}\n`,
    );
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
