// vmlab against the live kernel, page by page: every scenario in examples/kernel/ through
// `vmlab diff` (src/diff/diff.ts, diff/helper.c). Runs only where the machine allows it (Linux,
// root, pagemap readable, a C compiler); elsewhere each test says why it is skipped.

import { spawnSync } from "node:child_process";
import { accessSync, constants, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CalibrateRefusal, saveKnobs } from "../src/calibrate/knobs.ts";
import { diffScenario, formatDiff } from "../src/diff/diff.ts";
import { loadScenario } from "../src/scenario/load.ts";

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

/** Runs fn, waiting while another test process (calibrate's live tests) holds the THP knobs. */
async function whenKnobsFree<T>(fn: () => Promise<T>): Promise<T> {
  for (let tries = 0; ; tries++) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof CalibrateRefusal && /another process/.test(e.message)) || tries > 300) throw e;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

describe("vmlab diff on the live kernel", () => {
  it("ships at least 15 kernel scenarios", () => {
    expect(files.length).toBeGreaterThanOrEqual(15);
  });

  it.skipIf(skip !== null).each(files)(`%s matches the live kernel${why}`, async (file) => {
    const before = saveKnobs();
    const r = await whenKnobsFree(() => diffScenario(loadScenario(join(DIR, file))));
    expect(saveKnobs()).toEqual(before);
    expect(r.checkpoints.length).toBe(loadScenario(join(DIR, file)).ops.length);
    expect(r.unknown, formatDiff(r)).toBe(0);
  });
});
