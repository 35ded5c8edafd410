// Every scenario in examples/ runs clean: no expectation fails, and each file checks something,
// so that an example cannot silently stop teaching what its comments claim.

import { readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { loadScenario } from "../src/scenario/load.ts";
import { runScenario } from "../src/scenario/run.ts";

const EXAMPLES = fileURLToPath(new URL("../examples/", import.meta.url));
/** examples/*.yaml and examples/kernel/*.yaml (the `vmlab diff` scenarios), as paths under examples/. */
const files = ["", "kernel/"].flatMap((dir) =>
  readdirSync(`${EXAMPLES}${dir}`)
    .filter((f) => f.endsWith(".yaml"))
    .sort()
    .map((f) => `${dir}${f}`),
);

describe("examples/*.yaml and examples/kernel/*.yaml", () => {
  it("finds the example scenarios", () => {
    expect(files.length).toBeGreaterThanOrEqual(7);
  });

  it.each(files)("%s passes every expectation it states", (file) => {
    const result = runScenario(loadScenario(`${EXAMPLES}${file}`));
    // The failure messages (file:line:col and what differed) are the useful diff on failure.
    expect(result.ops.flatMap((op) => op.failures)).toEqual([]);
    expect(result.expectations.failed).toBe(0);
    expect(result.expectations.passed, `${file} checks nothing`).toBeGreaterThan(0);
  });
});
