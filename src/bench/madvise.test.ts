// `vmlab bench madvise` at 16 MiB, without the live kernel: the designs split what they must, the
// shipped profile prices every event of both calls, the summary compares with the seed, and the
// command prints the documented rows and refuses bad options. Times are never asserted.

import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { FOLIO_KIB } from "../calibrate/live.ts";
import { bootForFolio, prepare } from "../calibrate/model.ts";
import { countsDelta, loadProfile } from "../cost/profile.ts";
import { MADV_DONTNEED } from "../uapi.ts";
import {
  benchMadvise,
  formatBenchMadvise,
  MADVISE_FOLIOS,
  type MadviseRow,
  madviseChanges,
  SEED_MADV_FREE,
} from "./madvise.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const MIB = 16;
const profile = loadProfile("default");
const rows = await benchMadvise({ profile, sizeMiB: MIB, reps: 1, live: false });

const row = (advice: string, design: string, folio: string): MadviseRow => {
  const r = rows.find((x) => x.advice === advice && x.design === design && x.folio === folio);
  if (r === undefined) throw new Error(`no row ${advice} ${design} ${folio}`);
  return r;
};
/** PTE-mapped large folios: 16 KiB to 1 MiB. */
const MTHP = MADVISE_FOLIOS.filter((f) => f !== "4k" && f !== "pmd");

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

describe("vmlab bench madvise", () => {
  it("has MADV_FREE under both designs and MADV_DONTNEED once (design '-') for every folio size", () => {
    expect(rows).toHaveLength(3 * MADVISE_FOLIOS.length);
    for (const folio of MADVISE_FOLIOS)
      expect(rows.filter((r) => r.folio === folio).map((r) => `${r.advice}/${r.design}`)).toEqual([
        "free/split",
        "free/batched",
        "dontneed/-",
      ]);
  });

  it("splits every PTE-mapped large folio under the split design and none when batched", () => {
    for (const folio of MTHP) {
      const pagesPerFolio = FOLIO_KIB[folio] / 4;
      const split = row("free", "split", folio);
      expect(split.splits).toBe((MIB * 256) / pagesPerFolio);
      expect(split.counts[`hugepages-${FOLIO_KIB[folio]}kB/split`]).toBe(split.splits);
      expect(row("free", "batched", folio).splits).toBe(0);
      // Each split page is then made lazyfree on its own: one LRU move per page, not per folio.
      expect(split.counts.lru_move).toBe(MIB * 256);
      expect(row("free", "batched", folio).counts.lru_move).toBe((MIB * 256) / pagesPerFolio);
    }
  });

  it("splits nothing for 4 KiB pages or whole PMD THPs, so both designs count the same events", () => {
    for (const folio of ["4k", "pmd"]) {
      expect(row("free", "split", folio).splits).toBe(0);
      expect(row("free", "split", folio).counts).toEqual(row("free", "batched", folio).counts);
    }
    // A whole PMD-mapped THP is made lazyfree by its PMD: pglazyfree counts all of its pages.
    expect(row("free", "batched", "pmd").counts.pglazyfree).toBe(MIB * 256);
    expect(row("free", "batched", "pmd").counts.pte_write ?? 0).toBe(0);
  });

  it("splits nothing under MADV_DONTNEED, whose events do not depend on the MADV_FREE design", () => {
    for (const folio of MADVISE_FOLIOS) {
      expect(row("dontneed", "-", folio).splits).toBe(0);
      const counts = (["split", "batched"] as const).map((design) => {
        const k = bootForFolio(folio, MIB, "batched", design);
        const pid = k.createProcess();
        const addr = prepare(k, pid, MIB * 2 ** 20, folio);
        const before = k.machine.stat.snapshot();
        expect(k.madvise(pid, addr, MIB * 2 ** 20, MADV_DONTNEED)).toBe(0);
        return countsDelta(before, k.machine.stat.snapshot());
      });
      expect(counts[0]).toEqual(counts[1]);
      expect(counts[0]).toEqual(row("dontneed", "-", folio).counts);
    }
  });

  it("prices every event of both calls with the shipped profile, and the split design costs more", () => {
    for (const r of rows) {
      expect(r.unpriced, `${r.advice} ${r.design} ${r.folio}`).toEqual([]);
      expect(r.modeledMs).toBeGreaterThan(0);
      expect(r.simMs).toBeGreaterThanOrEqual(0);
      expect(r.kernelMs).toBeNull(); // live: false
    }
    for (const folio of MTHP)
      expect(row("free", "batched", folio).modeledMs).toBeLessThan(row("free", "split", folio).modeledMs);
  });

  it("sets the batched-against-split change beside the seed's, 0 % where nothing splits", () => {
    const changes = madviseChanges(rows);
    expect(changes.map((c) => c.folio)).toEqual([...MADVISE_FOLIOS]);
    for (const c of changes) {
      const seed = SEED_MADV_FREE[c.folioKiB];
      expect(c.seedExactPct).toBeCloseTo((100 * (seed.new - seed.old)) / seed.old, 10);
      // The cover letter's own percentages are rounded either way.
      expect(Math.abs(c.seedExactPct - seed.pct)).toBeLessThan(1);
      expect(c.points).toBeCloseTo(c.modeledPct - c.seedExactPct, 10);
    }
    expect(changes[0].modeledPct).toBe(0);
    expect(changes.at(-1)?.modeledPct).toBe(0);
    const text = formatBenchMadvise(rows, profile);
    expect(text).toMatch(/^MADV_FREE, batched against split/m);
    expect(text).toMatch(/sizes within ±5 points of the seed/);
    expect(text).not.toMatch(/unpriced/);
  });
});

describe("vmlab bench madvise, the command", () => {
  const r = vmlab("bench", "madvise", "--json", "--no-kernel", "--mib", "4", "--reps", "1");

  it("prints the rows as JSON with the documented fields", () => {
    expect(r.status).toBe(0);
    const json = JSON.parse(r.stdout) as MadviseRow[];
    expect(json).toHaveLength(3 * MADVISE_FOLIOS.length);
    for (const x of json) {
      for (const key of ["advice", "design", "folio", "folioKiB", "sizeMiB", "modeledMs", "simMs", "splits"])
        expect(x).toHaveProperty(key);
      expect(x.kernelMs).toBeNull();
      expect(x.sizeMiB).toBe(4);
    }
    expect(json.find((x) => x.design === "split" && x.folio === "16k")?.splits).toBe(256);
  });

  it("prints a table and the comparison with the seed", () => {
    const t = vmlab("bench", "madvise", "--no-kernel", "--mib", "2", "--reps", "1", "--folios", "4k,16k");
    expect(t.status).toBe(0);
    expect(t.stdout).toMatch(/^advice +design +folio +KiB +sim ms +modeled ms +kernel ms +splits/m);
    expect(t.stdout).toMatch(/^free +split +16k +16 .* 128 /m);
    expect(t.stdout).toMatch(/^4k +4 +\+0\.0 %/m);
    expect(t.stdout).toMatch(/ of 2 sizes within ±5 points of the seed/);
  });

  it("refuses a bad size or folio with a hint and status 2", () => {
    const odd = vmlab("bench", "madvise", "--no-kernel", "--mib", "3");
    expect(odd.status).toBe(2);
    expect(odd.stderr).toMatch(/--mib must be an even/);
    expect(odd.stderr).toMatch(/Hint:/);
    const folio = vmlab("bench", "madvise", "--no-kernel", "--folios", "4k,8k");
    expect(folio.status).toBe(2);
    expect(folio.stderr).toMatch(/unknown folio size 8k/);
    expect(folio.stderr).toMatch(/Hint: --folios takes/);
  });
});
