// Model-based property test: random operation sequences on random machines, with the audit
// and the reference comparison after every operation (Lockstep.step).

import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { Kernel } from "../mm/kernel.ts";
import type { ThpPolicy } from "../mm/machine.ts";
import { type AbstractOp, Lockstep } from "./driver.ts";

const nat = (max: number) => fc.nat({ max });
const pagesArb = fc.oneof(
  fc.integer({ min: 1, max: 40 }),
  fc.constantFrom(512, 1024, 1536),
  fc.integer({ min: 1, max: 1100 }),
);
const opArb: fc.Arbitrary<AbstractOp> = fc.oneof(
  { weight: 1, arbitrary: fc.constant({ kind: "spawn" } as const) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("exit" as const), proc: nat(7) }) },
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("mmap" as const),
      proc: nat(7),
      pages: pagesArb,
      prot: fc.constantFrom(0, 1, 2, 3, 3, 3, 4, 5, 7),
      shared: fc.constantFrom(false, false, false, true),
      populate: fc.boolean(),
      place: fc.constantFrom("any", "any", "fixed", "noreplace"),
      vma: nat(15),
      off: nat(2000),
    }),
  },
  ...(["munmap", "mprotect", "madvise", "read", "write", "write"] as const).map((kind) => ({
    weight: kind === "write" || kind === "read" ? 6 : 3,
    arbitrary: fc.record({
      kind: fc.constant(kind),
      proc: nat(7),
      vma: nat(15),
      off: nat(2000),
      len: fc.oneof(fc.integer({ min: 0, max: 20 }), fc.integer({ min: 1, max: 1100 })),
      prot: nat(7),
    }),
  })),
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("bad" as const), proc: nat(7), which: nat(10) }) },
);

const policyArb = fc.constantFrom<ThpPolicy>("never", "always", "madvise", "inherit");
const machineArb = fc.record({
  ramMiB: fc.constantFrom(8, 16, 64), // >= 2048 pages: no mprotect here outgrows the commit limit
  enabled: fc.constantFrom("always", "madvise", "never") as fc.Arbitrary<"always" | "madvise" | "never">,
  useZeroPage: fc.boolean(),
  orders: fc.record({ 2: policyArb, 4: policyArb, 6: policyArb, 9: policyArb }),
});

let totalOps = 0;
/** Event counts summed over all runs, to show which mechanisms the runs reached. */
const reached: Record<string, number> = {};

describe("vmlab against the reference model", () => {
  it("agrees on every read, audit and errno over random operation sequences", () => {
    fc.assert(
      fc.property(machineArb, fc.array(opArb, { minLength: 80, maxLength: 160, size: "max" }), (mc, ops) => {
        const k = new Kernel({
          ramBytes: mc.ramMiB * 2 ** 20,
          thp: { enabled: mc.enabled, useZeroPage: mc.useZeroPage, orders: mc.orders },
        });
        const run = new Lockstep(k);
        run.step({ kind: "spawn" });
        for (const op of ops) run.step(op);
        for (const pid of [...run.pids]) run.step({ kind: "exit", proc: run.pids.indexOf(pid) });
        totalOps += run.ops;
        const counts = { ...k.machine.stat.snapshot(), ...run.seen };
        for (const [name, n] of Object.entries(counts)) reached[name] = (reached[name] ?? 0) + n;
      }),
      { numRuns: Number(process.env.VMLAB_FUZZ_RUNS ?? 100), seed: 20261122 },
    );
  });

  afterAll(() => {
    // The issue asks for at least 10 000 checked operations per `npm test`.
    expect(totalOps).toBeGreaterThanOrEqual(10_000);
    // A run that never reached these paths would prove little about them.
    for (const path of [
      "thp_fault_alloc",
      "thp_zero_page_alloc",
      "thp_split_pmd",
      "thp_deferred_split_page",
      "hugepages-64kB/anon_fault_alloc",
      "hugepages-16kB/anon_fault_fallback",
      "vma_merge",
      "vma_split",
      "oom",
      "segv",
      "errno",
      "sharedMaps",
    ]) {
      expect(reached[path] ?? 0, path).toBeGreaterThan(0);
    }
  });
});
