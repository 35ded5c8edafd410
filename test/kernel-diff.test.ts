// vmlab against the live kernel, page by page: every scenario in examples/kernel/ through
// `vmlab diff` (src/diff/diff.ts, diff/helper.c). Runs only where the machine allows it (Linux,
// root, pagemap readable, a C compiler); elsewhere each test says why it is skipped.

import { spawn, spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { knobLockPath, saveKnobs, THP_SYSFS_ROOT } from "../src/calibrate/knobs.ts";
import { diffScenario, formatDiff } from "../src/diff/diff.ts";
import { loadScenario } from "../src/scenario/load.ts";
import { withKnobLock } from "./knob-lock.ts";

/** Why the live kernel cannot be compared here, or null when it can. */
function liveSkipReason(): string | null {
  if (process.platform !== "linux") return `not Linux (${process.platform})`;
  if (process.getuid?.() !== 0) return "not root (pagemap PFNs and the THP knobs need it)";
  try {
    accessSync("/proc/self/pagemap", constants.R_OK);
    accessSync("/proc/kpageflags", constants.R_OK);
  } catch {
    return "pagemap or kpageflags not readable";
  }
  if (spawnSync("cc", ["--version"]).status !== 0) return "no cc";
  return null;
}
const skip = liveSkipReason();
const why = skip ? ` (skipped: ${skip})` : "";

const DIR = "examples/kernel";
const files = readdirSync(DIR)
  .filter((f) => f.endsWith(".yaml"))
  .sort();

describe("vmlab diff on the live kernel", () => {
  it("ships at least 15 kernel scenarios", () => {
    expect(files.length).toBeGreaterThanOrEqual(15);
  });

  it.skipIf(skip !== null).each(files)(`%s matches the live kernel${why}`, (file) =>
    withKnobLock(async () => {
      const before = saveKnobs();
      const r = await diffScenario(loadScenario(join(DIR, file)));
      expect(saveKnobs()).toEqual(before);
      expect(r.checkpoints.length).toBe(loadScenario(join(DIR, file)).ops.length);
      expect(r.checkpoints.reduce((s, c) => s + c.pages, 0)).toBeGreaterThan(0);
      expect(r.unknown, formatDiff(r)).toBe(0);
    }),
  );
});

/** Runs `vmlab diff ARGS` as a user would. */
function cli(...args: string[]) {
  return spawnSync(process.execPath, ["bin/vmlab.js", "diff", ...args], {
    encoding: "utf8",
    env: { ...process.env, NO_COLOR: "1" },
    timeout: 120_000,
  });
}

describe("a declared known difference", () => {
  it.skipIf(skip !== null)(`is reported as known, with its reason, and does not fail the run${why}`, () =>
    withKnobLock(async () => {
      const r = await diffScenario(loadScenario(join(DIR, "pageout-shmem.yaml")));
      expect(r.unknown).toBe(0);
      expect(r.known).toHaveLength(1);
      expect(r.known[0].matched).toBeGreaterThan(0);
      const known = r.checkpoints.flatMap((c) => c.differences.filter((d) => d.known !== undefined));
      expect(known.every((d) => d.process === "a" && d.field === "present")).toBe(true);
      expect(formatDiff(r)).toMatch(
        /match, apart from \d+ known differences?\n {2}known difference \(\d+ rows?\): vmlab keeps shmem unevictable/,
      );
    }),
  );
});

describe("vmlab diff on the command line", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmlab-diff-cli-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const pinning = join(dir, "pin.yaml");
  writeFileSync(
    pinning,
    "name: p\nmachine: { ram: 1GiB }\nprocesses: [a]\nops:\n  - { op: mmap, pid: a, len: 4KiB, prot: rw, as: buf }\n  - { op: pin, pid: a, addr: buf, len: 4KiB }\n",
  );

  it("refuses without a stack trace, exit status 2 (off Linux or without root: says so)", () => {
    const r = cli(pinning);
    expect(r.status).toBe(2);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    if (skip === null)
      expect(r.stderr).toMatch(/pin\.yaml:6:5: error: op: vmlab diff cannot replay 'pin'\n {2}Hint: /);
    else expect(r.stderr).toMatch(/vmlab diff .*\n {2}Hint: /);
  });

  it.skipIf(skip !== null)(`refuses a mapping over the helper's own stack, at its line${why}`, () => {
    const f = join(dir, "stack.yaml");
    writeFileSync(
      f,
      "name: s\nmachine: { ram: 1GiB }\nprocesses: [a]\nops:\n  - { op: mmap, pid: a, addr: 0x7ffffff00000, len: 64KiB, prot: rw, flags: [private, anonymous, fixed_noreplace] }\n",
    );
    const r = whenCliKnobsFree(() => cli(f));
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(
      /stack\.yaml:5:5: error: addr: the range would overlap the live helper's own mapping \[stack\]/,
    );
  });

  it.skipIf(skip !== null)(`runs the other scenarios when one is bad, and exits 2${why}`, () => {
    const r = whenCliKnobsFree(() => cli(pinning, join(DIR, "populate-4k.yaml")));
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(
      /populate-4k\.yaml: populate with 4 KiB pages\n {2}7 checkpoints \(after every op\), \d+ mapped pages compared: match\n/,
    );
    expect(r.stdout.trimEnd().split("\n").at(-1)).toBe("diff: 2 scenarios, 1 match, 0 differ, 1 not run");
  });

  it.skipIf(skip !== null)(`restores the knobs and leaves no process behind on Ctrl-C${why}`, async () => {
    // Long enough to interrupt: 64 MiB written page by page, dumped after every op.
    // The huge zero page knob tells this diff's settings from a calibration's (which leaves it).
    const zeroPage = saveKnobs().values.use_zero_page === "1";
    const target = zeroPage ? "0" : "1";
    const big = join(dir, "big.yaml");
    const ops = Array.from({ length: 40 }, () => "  - { op: write, pid: a, addr: buf, len: 64MiB }\n").join(
      "",
    );
    writeFileSync(
      big,
      `name: big\nmachine: { ram: 1GiB, thp: { useZeroPage: ${!zeroPage} } }\nprocesses: [a]\nops:\n  - { op: mmap, pid: a, len: 64MiB, prot: rw, as: buf }\n${ops}`,
    );
    // Start it once the knobs are free, and wait until the scenario's knobs are in place (the
    // diff is running); a start that lost the lock to another test process is retried.
    let child: ReturnType<typeof spawn>;
    let before: ReturnType<typeof saveKnobs>;
    for (;;) {
      while (existsSync(knobLockPath(THP_SYSFS_ROOT))) await new Promise((r) => setTimeout(r, 200));
      before = saveKnobs();
      const c = spawn(process.execPath, ["bin/vmlab.js", "diff", big], { stdio: "ignore" });
      const exited = new Promise<"exited">((r) => c.on("exit", () => r("exited")));
      const t0 = Date.now();
      let state: "running" | "exited" | "timeout" = "timeout";
      while (Date.now() - t0 < 60_000) {
        if (readKnobValue("use_zero_page") === target) {
          state = "running";
          break;
        }
        if ((await Promise.race([exited, new Promise((r) => setTimeout(r, 20))])) === "exited") {
          state = "exited";
          break;
        }
      }
      expect(state).not.toBe("timeout");
      if (state === "running") {
        child = c;
        break;
      }
    }
    child.kill("SIGINT");
    const code = await new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    expect(code).toBe(130);
    expect(saveKnobs()).toEqual(before);
    await new Promise((r) => setTimeout(r, 200));
    expect(spawnSync("pgrep", ["-f", "vmlab/diff/helper-"]).stdout.toString()).toBe("");
  });
});

const readKnobValue = (name: string) => saveKnobs().values[name];

/** Runs a CLI diff again while another test process holds the THP knobs. */
function whenCliKnobsFree(run: () => ReturnType<typeof cli>): ReturnType<typeof cli> {
  for (let tries = 0; ; tries++) {
    const r = run();
    if (!/another process/.test(r.stderr) || tries > 300) return r;
    spawnSync("sleep", ["1"]);
  }
}
