// `vmlab bench fork` at a tiny size, without the live kernel: the rows have the documented
// fields, the designs differ where they must (VmPTE, per-page work at fork), and bad options get
// a clear error with status 2. The figures themselves are benchmarks, never asserted here.

import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import type { BenchForkRow, ForkRow, SnapshotRow } from "../src/bench/fork.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

function vmlab(...args: string[]) {
  const p = spawnSync(process.execPath, ["bin/vmlab.js", ...args], {
    cwd: ROOT,
    encoding: "utf8",
    env: { ...process.env, NO_COLOR: "1" },
    timeout: 120_000,
  });
  if (p.error) throw p.error;
  return p;
}

describe("vmlab bench fork", () => {
  const r = vmlab(
    "bench",
    "fork",
    "--json",
    "--no-kernel",
    "--sizes",
    "4",
    "--reps",
    "1",
    "--snapshot-mib",
    "4",
  );
  const rows = JSON.parse(r.stdout) as BenchForkRow[];
  const forks = rows.filter((x): x is ForkRow => x.workload === "fork");
  const snaps = rows.filter((x): x is SnapshotRow => x.workload === "snapshot");
  const cell = (design: string, folio: string) =>
    forks.find((x) => x.design === design && x.folio === folio)!;

  it("prints one row per design x folio x size, with the fields the issue names", () => {
    expect(r.status).toBe(0);
    expect(forks).toHaveLength(4 * 5);
    for (const row of forks) {
      for (const key of ["design", "folioKiB", "sizeMiB", "simMs", "modeledMs", "kernelMs", "childVmPteKiB"])
        expect(row).toHaveProperty(key);
      expect(row.kernelMs).toBeNull(); // --no-kernel
      expect(row.modeledMs).toBeGreaterThan(0);
    }
  });

  it("shows the designs' differences: shared tables at fork, per-page work moved to the break", () => {
    // 4 MiB = 2 PTE tables: the child of a COW-PTE fork has none of its own.
    expect(cell("batched", "4k").childVmPteKiB - cell("cow-pte", "4k").childVmPteKiB).toBe(8);
    expect(cell("cow-pte", "4k").counts.cow_pte_share).toBe(2);
    expect(cell("cow-pte", "4k").counts.ref_update).toBe(1024);
    expect(cell("cow-pte-deferred", "4k").counts.ref_update).toBe(0);
    // Batching: one refcount update per 64 KiB folio instead of per page.
    expect(cell("per-pte", "64k").counts.ref_update).toBe(1024);
    expect(cell("batched", "64k").counts.ref_update).toBe(64);
    // Deferred does no per-page work at fork: only fork's fixed cost and a few table updates.
    expect(cell("cow-pte-deferred", "4k").counts.pte_write).toBe(0);
    expect(cell("cow-pte-deferred", "4k").modeledMs).toBeLessThan(cell("per-pte", "4k").modeledMs);
  });

  it("runs the snapshot workload for every design and p, with the parent's writes paying the breaks", () => {
    expect(snaps).toHaveLength(2 * 4 * 4);
    const s = (design: string, p: number) =>
      snaps.find((x) => x.design === design && x.p === p && x.folio === "4k")!;
    expect(s("cow-pte-deferred", 0).phases.parentWrites).toBe(0);
    expect(s("cow-pte-deferred", 1).phases.parentWrites).toBeGreaterThan(s("per-pte", 1).phases.parentWrites);
  });

  it("refuses bad sizes with a hint and status 2", () => {
    const bad = vmlab("bench", "fork", "--no-kernel", "--sizes", "3");
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/sizes must be even/);
    expect(bad.stderr).toMatch(/Hint:/);
  });
});
