// Random machines and operation sequences for model-based checking, shared by the property
// test and `vmlab fuzz`.

import fc from "fast-check";
import { type ForkPtCopy, Kernel } from "../mm/kernel.ts";
import type { CowReuse, MadviseFreeDesign, ThpGlobal, ThpPolicy } from "../mm/machine.ts";
import { type AbstractOp, Lockstep } from "./driver.ts";

const nat = (max: number) => fc.nat({ max });
const pagesArb = fc.oneof(
  fc.integer({ min: 1, max: 40 }),
  fc.constantFrom(512, 1024, 1536),
  fc.integer({ min: 1, max: 1100 }),
);
/** mremap joins the random operations once Kernel.mremap exists. */
const MREMAP_OPS = "mremap" in Kernel.prototype;
const mremapArb = {
  weight: 2,
  arbitrary: fc.record({
    kind: fc.constant("mremap" as const),
    proc: nat(7),
    vma: nat(15),
    off: nat(2000),
    len: fc.oneof(fc.integer({ min: 0, max: 20 }), fc.constantFrom(256, 512, 1024)),
    newLen: fc.oneof(fc.integer({ min: 0, max: 20 }), fc.constantFrom(256, 512, 1024)),
    mode: fc.constantFrom("inplace", "maymove", "maymove", "fixed"),
    target: nat(15),
  }),
};

export const opArb: fc.Arbitrary<AbstractOp> = fc.oneof(
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
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("fork" as const), proc: nat(7) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant("pin" as const),
      proc: nat(7),
      vma: nat(15),
      off: nat(2000),
      len: fc.integer({ min: 0, max: 20 }),
      write: fc.boolean(),
      longterm: fc.boolean(),
      fast: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("vmsplice" as const),
      proc: nat(7),
      vma: nat(15),
      off: nat(2000),
      len: fc.integer({ min: 0, max: 20 }),
    }),
  },
  ...(["unpin", "pinread", "piperead"] as const).map((kind) => ({
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant(kind), which: nat(15) }),
  })),
  ...(MREMAP_OPS ? [mremapArb] : []),
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("reclaim" as const),
      pages: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 4096 })),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: "splitDeferred" } as const) },
);

const policyArb = fc.constantFrom<ThpPolicy>("never", "always", "madvise", "inherit");

/**
 * RAM and swap sizes, MiB. RAM + swap stays >= 2048 pages, so no mprotect here outgrows the
 * commit limit; the small ones run out of memory and reclaim (swap-out, lazyfree discard,
 * deferred split) all the time.
 */
const MEMORY: [number, number][] = [
  [8, 0],
  [16, 0],
  [64, 0],
  [4, 4],
  [4, 16],
  [2, 8],
  [8, 8],
];

/** Random machines with the given COW reuse rule. */
export const machineArbOf = (cow: CowReuse) =>
  fc
    .record({
      cow: fc.constant(cow),
      ptCopy: fc.constantFrom<ForkPtCopy>("per-pte", "batched", "cow-pte", "cow-pte-deferred"),
      memory: fc.constantFrom(...MEMORY),
      madviseFree: fc.constantFrom<MadviseFreeDesign>("batched", "split"),
      enabled: fc.constantFrom("always", "madvise", "never") as fc.Arbitrary<"always" | "madvise" | "never">,
      useZeroPage: fc.boolean(),
      orders: fc.record({ 2: policyArb, 4: policyArb, 6: policyArb, 9: policyArb }),
    })
    .map(({ memory, ...rest }): MachineCase => ({ ...rest, ramMiB: memory[0], swapMiB: memory[1] }));

/** Random machines under today's COW rules. */
export const machineArb = machineArbOf("modern");

export type MachineCase = {
  cow: CowReuse;
  ptCopy: ForkPtCopy;
  ramMiB: number;
  swapMiB: number;
  madviseFree: MadviseFreeDesign;
  enabled: ThpGlobal;
  useZeroPage: boolean;
  orders: Record<number, ThpPolicy>;
};

/** The kernel a random machine describes. */
export function bootCase(mc: MachineCase): Kernel {
  return new Kernel({
    ramBytes: mc.ramMiB * 2 ** 20,
    swapBytes: mc.swapMiB * 2 ** 20,
    madvise: { free: mc.madviseFree },
    thp: { enabled: mc.enabled, useZeroPage: mc.useZeroPage, orders: mc.orders },
    cow: mc.cow,
    fork: { ptCopy: mc.ptCopy },
  });
}

/** One checked run: boots the machine, runs the operations in lockstep, exits every process. */
export function runCase(mc: MachineCase, ops: AbstractOp[]): Lockstep {
  const run = new Lockstep(bootCase(mc));
  run.step({ kind: "spawn" });
  for (const op of ops) run.step(op);
  for (const pid of [...run.pids]) run.step({ kind: "exit", proc: run.pids.indexOf(pid) });
  return run;
}

/** Operation sequences of 10 to 160 operations (short ones shrink to readable counterexamples). */
export const opsArb = fc.array(opArb, { minLength: 10, maxLength: 160, size: "max" });
