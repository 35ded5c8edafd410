// The vmlab command line.

import { relative } from "node:path";
import { fileURLToPath } from "node:url";
import { SingleBar } from "cli-progress";
import { Command, CommanderError } from "commander";
import { benchCore, formatBenchCore } from "../bench/core.ts";
import { benchFork, formatBenchFork } from "../bench/fork.ts";
import { benchMadvise, formatBenchMadvise, MADVISE_FOLIOS } from "../bench/madvise.ts";
import {
  CALIBRATE_DEFAULTS,
  calibrate,
  checkCalibrateOptions,
  formatCalibration,
} from "../calibrate/calibrate.ts";
import { CalibrateRefusal, checkKnobAccess } from "../calibrate/knobs.ts";
import { fuzz } from "../check/fuzz.ts";
import { loadProfile, ProfileError } from "../cost/profile.ts";
import { checkLiveKernel, type DiffResult, diffScenario, formatDiff } from "../diff/diff.ts";
import { HelperError } from "../diff/helper.ts";
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
  .option("--costs", "count each operation's events and price them with a cost profile")
  .option("--profile <name|path>", "the cost profile for --costs (implies it): a name in profiles/ or a file")
  .action((file: string | undefined, opts: { json?: boolean; costs?: boolean; profile?: string }) => {
    const costs = opts.costs === true || opts.profile !== undefined;
    // Load the profile first: a bad one is reported before the scenario runs.
    const profile = costs ? loadProfile(opts.profile ?? "default") : undefined;
    const result = runScenario(loadScenario(file ?? relative(process.cwd(), DEFAULT_SCENARIO)), { profile });
    process.stdout.write(
      opts.json ? `${JSON.stringify(result, null, 2)}\n` : `${formatRun(result, profile)}\n`,
    );
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

/**
 * Whether a benchmark can add its live-kernel column: the THP knobs are readable and writable
 * (root, Linux). When not, says why on stderr, with a hint, and the benchmark runs without it.
 */
function liveKernelColumn(): boolean {
  try {
    checkKnobAccess([]);
    return true;
  } catch (e) {
    if (!(e instanceof CalibrateRefusal)) throw e;
    process.stderr.write(`no live-kernel column: ${e.message}\n  Hint: ${e.hint}\n`);
    return false;
  }
}

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

bench
  .command("fork")
  .description("the fork designs side by side: vmlab time, modeled time, child VmPTE, the live kernel's time")
  .option("--json", "print the rows as JSON")
  .option("--sizes <MiB,...>", "parent sizes, MiB (up to 65536 for vmlab alone)", "64,256,512,1024,4096")
  .option("--kernel-max-mib <n>", "measure the live kernel up to this size", "4096")
  .option("--no-kernel", "do not measure the live kernel (no root needed)")
  .option("--reps <n>", "repetitions per cell, the median is shown", "3")
  .option("--profile <name|path>", "cost profile for the modeled times", "default")
  .option("--snapshot-mib <n>", "size of the snapshot workload, MiB", "1024")
  .action(
    async (opts: {
      json?: boolean;
      sizes: string;
      kernelMaxMib: string;
      kernel: boolean;
      reps: string;
      profile: string;
      snapshotMib: string;
    }) => {
      const profile = loadProfile(opts.profile);
      const sizesMiB = opts.sizes.split(",").map((s) => Number(s.trim()));
      const reps = Number(opts.reps);
      const snap = Number(opts.snapshotMib);
      if (
        sizesMiB.some((s) => !Number.isInteger(s) || s < 2 || s % 2) ||
        !(reps >= 1) ||
        !(snap >= 2) ||
        snap % 2
      ) {
        process.stderr.write(
          "vmlab bench fork: sizes must be even whole MiB (>= 2) and --reps at least 1\n  Hint: e.g. --sizes 64,1024 --reps 3\n",
        );
        process.exitCode = 2;
        return;
      }
      const live = opts.kernel && liveKernelColumn();
      const rows = await benchFork({
        profile,
        sizesMiB,
        kernelMaxMiB: Number(opts.kernelMaxMib),
        reps,
        live,
        snapshot: { sizeMiB: snap, folios: ["4k", "64k"], ps: [0, 0.01, 0.1, 1] },
        progress: (s) => process.stderr.write(`${s}\n`),
      });
      process.stdout.write(
        opts.json ? `${JSON.stringify(rows, null, 2)}\n` : `${formatBenchFork(rows, profile)}\n`,
      );
    },
  );

bench
  .command("madvise")
  .description(
    "MADV_FREE under both designs (split, batched) and MADV_DONTNEED at every folio size: vmlab time, modeled time, splits, the live kernel's time",
  )
  .option("--json", "print the rows as JSON")
  .option("--mib <n>", "the populated range, MiB (even)", "1024")
  .option("--folios <list>", `folio sizes, from ${MADVISE_FOLIOS.join(",")}`, MADVISE_FOLIOS.join(","))
  .option("--no-kernel", "do not measure the live kernel (no root needed)")
  .option("--reps <n>", "repetitions per cell, the median is shown", "3")
  .option("--profile <name|path>", "cost profile for the modeled times", "default")
  .action(
    async (opts: {
      json?: boolean;
      mib: string;
      folios: string;
      kernel: boolean;
      reps: string;
      profile: string;
    }) => {
      const profile = loadProfile(opts.profile);
      const sizeMiB = Number(opts.mib);
      const reps = Number(opts.reps);
      const folios = opts.folios.split(",").map((s) => s.trim());
      const unknown = folios.filter((f) => !(MADVISE_FOLIOS as readonly string[]).includes(f));
      if (!Number.isInteger(sizeMiB) || sizeMiB < 2 || sizeMiB % 2 || !Number.isInteger(reps) || reps < 1) {
        process.stderr.write(
          "vmlab bench madvise: --mib must be an even whole number of MiB (>= 2) and --reps a positive integer\n  Hint: e.g. --mib 1024 --reps 3\n",
        );
        process.exitCode = 2;
        return;
      }
      if (unknown.length > 0 || folios.length === 0) {
        process.stderr.write(
          `vmlab bench madvise: unknown folio size ${unknown.join(", ") || "(none given)"}\n  Hint: --folios takes a comma-separated list of ${MADVISE_FOLIOS.join(", ")}\n`,
        );
        process.exitCode = 2;
        return;
      }
      const live = opts.kernel && liveKernelColumn();
      const rows = await benchMadvise({
        profile,
        sizeMiB,
        folios: MADVISE_FOLIOS.filter((f) => folios.includes(f)),
        reps,
        live,
        progress: (s) => process.stderr.write(`${s}\n`),
      });
      process.stdout.write(
        opts.json ? `${JSON.stringify(rows, null, 2)}\n` : `${formatBenchMadvise(rows, profile)}\n`,
      );
    },
  );

program
  .command("diff")
  .description(
    "run scenarios in vmlab and on the live kernel, and compare the page-level state after every op (root, Linux)",
  )
  .argument("<scenario...>", "scenario YAML files (examples/kernel/ has some)")
  .option("--json", "print the results as JSON")
  .action(async (files: string[], opts: { json?: boolean }) => {
    checkLiveKernel();
    let status = 0;
    const results: DiffResult[] = [];
    for (const file of files) {
      try {
        const r = await diffScenario(loadScenario(file));
        results.push(r);
        if (!opts.json) process.stdout.write(`${formatDiff(r)}\n`);
        if (r.unknown > 0) status = Math.max(status, 1);
      } catch (e) {
        // A bad scenario is reported and the others still run; the status says so at the end.
        if (e instanceof ScenarioError) process.stderr.write(`${e.format()}\n`);
        else if (e instanceof CalibrateRefusal || e instanceof HelperError)
          process.stderr.write(
            `vmlab diff: ${file}: ${e.message}${e instanceof CalibrateRefusal ? `\n  Hint: ${e.hint}` : ""}\n`,
          );
        else throw e;
        status = 2;
      }
    }
    if (opts.json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    if (files.length > 1 && !opts.json) {
      const same = results.filter((r) => r.unknown === 0).length;
      process.stdout.write(
        `diff: ${files.length} scenarios, ${same} match, ${results.length - same} differ, ${files.length - results.length} not run\n`,
      );
    }
    process.exitCode = status;
  });

program
  .command("calibrate")
  .description(
    "fit a cost profile to the live kernel: time microbenchmarks, count the same work in vmlab (root, Linux)",
  )
  .option("--name <name>", "profile name: writes profiles/NAME.json", "local")
  .option("--sizes <MiB,...>", `range sizes in MiB, even (default ${CALIBRATE_DEFAULTS.sizesMiB.join(",")})`)
  .option(
    "--reps <n>",
    `repetitions per measurement, the median is fitted (default ${CALIBRATE_DEFAULTS.reps})`,
  )
  .option(
    "--quick",
    `a rough profile in seconds: ${CALIBRATE_DEFAULTS.quick.sizesMiB.join(",")} MiB, ${CALIBRATE_DEFAULTS.quick.reps} reps`,
  )
  .action(async (opts: { name: string; sizes?: string; reps?: string; quick?: boolean }) => {
    const base = opts.quick ? CALIBRATE_DEFAULTS.quick : CALIBRATE_DEFAULTS;
    const sizesMiB =
      opts.sizes === undefined ? base.sizesMiB : opts.sizes.split(",").map((s) => Number(s.trim()));
    const reps = opts.reps === undefined ? base.reps : Number(opts.reps);
    checkCalibrateOptions({ name: opts.name, sizesMiB, reps });
    const t0 = performance.now();
    const { profile, file } = await calibrate({
      name: opts.name,
      sizesMiB,
      reps,
      progress: (line) => process.stderr.write(`${line}\n`),
    });
    process.stderr.write(`calibrated in ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
    process.stdout.write(`${formatCalibration(profile, relative(process.cwd(), file))}\n`);
  });

try {
  await program.parseAsync();
} catch (e) {
  if (e instanceof ScenarioError || e instanceof ProfileError) {
    process.stderr.write(`${e.format()}\n`);
    process.exitCode = 2;
  } else if (e instanceof CalibrateRefusal) {
    const msg = e.message.startsWith("vmlab ") ? e.message : `vmlab calibrate: ${e.message}`;
    process.stderr.write(`${msg}\n  Hint: ${e.hint}\n`);
    process.exitCode = 2;
  } else if (e instanceof CommanderError) {
    // commander printed its message already; --help and --version exit 0.
    process.exitCode = e.exitCode === 0 ? 0 : 2;
  } else {
    throw e;
  }
}
