// `vmlab bench core`: the core model's speed and host-memory figures. A benchmark, never a
// timed test. Times are host wall-clock medians over repetitions in one run.

import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Kernel } from "../mm/kernel.ts";
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../uapi.ts";

const GiB = 2 ** 30;

export interface BenchCore {
  /** Simulated 4 KiB anonymous write faults: median host ns per fault, warm host memory. */
  faultNsPer4k: number;
  /** The fastest warm repetition: the VMs here are noisy, so the median swings between runs. */
  bestFaultNsPer4k: number;
  /** The same for the first repetition, which first-touches the host memory. */
  coldFaultNsPer4k: number;
  /** Host memory (V8 heap + array buffers) per populated simulated GiB, MiB. */
  hostMiBPerPopulatedGiB: { "4k": number; "64k": number };
  /** Median host ms to populate (write-fault) 1 GiB of 4 KiB pages. */
  populate1GiBMs: number;
  /** Median host ms for the exit of a process with 1 GiB of 4 KiB pages populated. */
  exit1GiBMs: number;
  /** The largest populated size completed, GiB (4 KiB pages), and what it cost. */
  largestPopulatedGiB: number;
  largestHostMiB: number;
  largestPopulateS: number;
  /** Host memory of a booted 1 TiB machine with nothing populated, MiB. */
  emptyTiBHostMiB: number;
  repetitions: number;
  node: string;
}

/** The median of xs (the mean of the middle two for an even count). */
export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const now = (): number => performance.now();

let gcFn: (() => void) | undefined;
/** A full GC, so that memory figures measure live data only (and timings skip a pending GC). */
export function gc(): void {
  if (gcFn === undefined) {
    setFlagsFromString("--expose-gc");
    gcFn = runInNewContext("gc") as () => void;
  }
  gcFn();
  gcFn();
}

function hostBytes(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** Boots a machine, maps `gib` GiB and write-faults it in 1 GiB steps. Returns [kernel, pid, ms]. */
function populate(
  gib: number,
  ramGiB: number,
  orders: Record<number, "always" | "never">,
): [Kernel, number, number] {
  const k = new Kernel({ ramBytes: ramGiB * GiB, thp: { enabled: "never", orders } });
  const pid = k.createProcess();
  const addr = k.mmap(pid, 0, gib * GiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
  if (addr < 0) throw new Error(`bench: mmap failed with ${addr}`);
  const t0 = now();
  for (let g = 0; g < gib; g++) {
    const r = k.write(pid, addr + g * GiB, GiB);
    if (r.pages !== GiB / 4096) throw new Error(`bench: populate stopped after ${r.pages} pages`);
  }
  return [k, pid, now() - t0];
}

/**
 * Runs the core benchmark: fault cost and populate/exit times over `reps` repetitions of
 * 1 GiB in one machine (the first, cold repetition first-touches the host memory and is
 * reported apart), host memory per populated GiB at 4 KiB and 64 KiB mTHP (4 GiB populated),
 * and the largest populated size (maxGiB).
 */
export function benchCore(
  opts: { maxGiB?: number; reps?: number; progress?: (s: string) => void } = {},
): BenchCore {
  const reps = opts.reps ?? 7;
  const say = opts.progress ?? (() => {});
  const faultNs: number[] = [];
  const popMs: number[] = [];
  const exitMs: number[] = [];
  const k = new Kernel({ ramBytes: 2 * GiB, thp: { enabled: "never" } });
  let coldNs = 0;
  for (let i = 0; i <= reps; i++) {
    const pid = k.createProcess();
    const addr = k.mmap(pid, 0, GiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    const t0 = now();
    const r = k.write(pid, addr, GiB);
    const ms = now() - t0;
    if (r.pages !== GiB / 4096) throw new Error(`bench: populate stopped after ${r.pages} pages`);
    const t1 = now();
    k.exit(pid);
    const ems = now() - t1;
    say(
      `rep ${i}/${reps}${i === 0 ? " (cold)" : ""}: populate 1 GiB ${ms.toFixed(0)} ms, exit ${ems.toFixed(0)} ms`,
    );
    if (i === 0) {
      coldNs = (ms * 1e6) / (GiB / 4096);
      continue;
    }
    popMs.push(ms);
    exitMs.push(ems);
    faultNs.push((ms * 1e6) / (GiB / 4096));
  }
  const perGiB = (orders: Record<number, "always" | "never">): number => {
    const before = hostBytes();
    const [k] = populate(4, 5, orders);
    const after = hostBytes();
    // Keep k alive until measured.
    if (k.pids().length !== 1) throw new Error("bench: lost the process");
    return (after - before) / 4 / 2 ** 20;
  };
  const b0 = hostBytes();
  const tib = new Kernel({ ramBytes: 1024 * GiB });
  const emptyTiB = (hostBytes() - b0) / 2 ** 20;
  if (tib.pids().length !== 0) throw new Error("bench: a fresh machine has processes");
  say(`booted a 1 TiB machine: ${emptyTiB.toFixed(2)} MiB of host memory`);
  const mem4k = perGiB({});
  const mem64k = perGiB({ 4: "always" });
  say(`host memory per populated GiB: 4k ${mem4k.toFixed(2)} MiB, 64k ${mem64k.toFixed(2)} MiB`);
  const maxGiB = opts.maxGiB ?? 64;
  const before = hostBytes();
  const [big, , bigMs] = populate(maxGiB, maxGiB + 1, {});
  const bigHost = (hostBytes() - before) / 2 ** 20;
  if (big.pids().length !== 1) throw new Error("bench: lost the process");
  say(`populated ${maxGiB} GiB in ${(bigMs / 1000).toFixed(1)} s, host ${bigHost.toFixed(0)} MiB`);
  const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
  return {
    faultNsPer4k: round(median(faultNs)),
    bestFaultNsPer4k: round(Math.min(...faultNs)),
    coldFaultNsPer4k: round(coldNs),
    hostMiBPerPopulatedGiB: { "4k": round(mem4k, 2), "64k": round(mem64k, 2) },
    populate1GiBMs: round(median(popMs)),
    exit1GiBMs: round(median(exitMs)),
    largestPopulatedGiB: maxGiB,
    largestHostMiB: round(bigHost, 0),
    largestPopulateS: round(bigMs / 1000),
    emptyTiBHostMiB: round(emptyTiB, 2),
    repetitions: reps,
    node: process.version,
  };
}

/** The figures as a short table, with the targets from the core-model issue. */
export function formatBenchCore(r: BenchCore): string {
  return [
    `faultNsPer4k            ${r.faultNsPer4k} ns   (target <= 200; median of ${r.repetitions} x 262144 faults; best ${r.bestFaultNsPer4k} ns; cold first run ${r.coldFaultNsPer4k} ns)`,
    `hostMiBPerPopulatedGiB  4k ${r.hostMiBPerPopulatedGiB["4k"]} MiB, 64k ${r.hostMiBPerPopulatedGiB["64k"]} MiB   (target <= 8)`,
    `populate1GiBMs          ${r.populate1GiBMs} ms`,
    `exit1GiBMs              ${r.exit1GiBMs} ms`,
    `largestPopulatedGiB     ${r.largestPopulatedGiB} GiB in ${r.largestPopulateS} s, ${r.largestHostMiB} MiB host   (target 64)`,
    `emptyTiBHostMiB         ${r.emptyTiBHostMiB} MiB for a booted 1 TiB machine with nothing populated`,
  ].join("\n");
}
