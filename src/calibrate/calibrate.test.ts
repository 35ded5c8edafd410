import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { withKnobLock } from "../../test/knob-lock.ts";
import { type CostProfile, loadProfile } from "../cost/profile.ts";
import { CALIBRATE_DEFAULTS, calibrate, checkCalibrateOptions, formatCalibration } from "./calibrate.ts";
import { CalibrateRefusal, listKnobs, THP_SYSFS_ROOT } from "./knobs.ts";

describe("vmlab calibrate, without the kernel", () => {
  it("refuses without root or off Linux before measuring or writing anything", async () => {
    const outDir = join(tmpdir(), `vmlab-calibrate-never-${process.pid}`);
    const base = { name: "x", sizesMiB: [2], reps: 1, outDir };
    await expect(calibrate({ ...base, env: { uid: 1000, platform: "linux" } })).rejects.toThrow(
      /must run as root/,
    );
    await expect(calibrate({ ...base, env: { uid: 0, platform: "darwin" } })).rejects.toThrow(
      CalibrateRefusal,
    );
    expect(existsSync(outDir)).toBe(false);
  });

  it("checks names, sizes and repetitions", () => {
    const ok = { name: "default", sizesMiB: [2, 64], reps: 3 };
    expect(() => checkCalibrateOptions(ok)).not.toThrow();
    expect(() => checkCalibrateOptions({ ...ok, name: "../etc" })).toThrow(/bad profile name/);
    expect(() => checkCalibrateOptions({ ...ok, sizesMiB: [3] })).toThrow(/bad --sizes 3/);
    expect(() => checkCalibrateOptions({ ...ok, sizesMiB: [] })).toThrow(/bad --sizes/);
    expect(() => checkCalibrateOptions({ ...ok, reps: 0 })).toThrow(/bad --reps 0/);
  });

  it("prints each sample's error, the unfitted ones with the reason, and ns per event", () => {
    const profile: CostProfile = {
      name: "t",
      description: "",
      machine: "Linux 6.18 on a test CPU (2 CPUs)",
      fitted: "2025-01-01T00:00:00.000Z",
      ns: { pgfault: 900, folio_alloc: 900, pte_write: 2.5 },
      fit: {
        sizesMiB: [2],
        reps: 1,
        aliased: [["folio_alloc", "pgfault"]],
        rows: [
          {
            workload: "fork",
            folio: "4k",
            sizeMiB: 2,
            measuredNs: 300_000,
            modeledNs: 330_000,
            errorPct: 10,
            fitted: true,
          },
          {
            workload: "dontneed",
            folio: "4k",
            sizeMiB: 2,
            measuredNs: 80_000,
            modeledNs: null,
            errorPct: null,
            fitted: false,
            note: "not modelled: no MADV_DONTNEED",
          },
        ],
        notes: ["1 of 2 samples fitted; rms relative error 10.0 %"],
      },
    };
    const text = formatCalibration(profile, "profiles/t.json");
    expect(text).toMatch(/^fork +4k +2 MiB +300 µs +330 µs +\+10\.0 %$/m);
    expect(text).toMatch(/^dontneed +4k +2 MiB +80\.0 µs +- +not fitted: not modelled$/m);
    expect(text).toMatch(/^ {2}pgfault +900 {2}\(same as folio_alloc: always seen together\)$/m);
    expect(text).toMatch(/^ {2}pte_write +2\.5$/m);
    expect(text.trimEnd().split("\n").at(-1)).toBe("wrote profiles/t.json");
  });
});

/** Why the live calibration cannot run here, or null when it can. */
function liveSkipReason(): string | null {
  if (process.platform !== "linux") return `not Linux (${process.platform})`;
  if (process.getuid?.() !== 0) return "not root (microbench reads /proc/kpageflags)";
  if (spawnSync("cc", ["--version"]).status !== 0) return "no cc";
  return null;
}
const skipLive = liveSkipReason();

/**
 * A fake THP sysfs with the real knobs' names and values. Calibrating against it runs microbench
 * on the live kernel with the real knobs untouched, and takes a lock of its own: this test cannot
 * disturb the machine's THP settings or a live test that holds the real knobs (live.test.ts).
 */
function fakeSysfsLikeReal(): string {
  const root = mkdtempSync(join(tmpdir(), "vmlab-calibrate-fake-thp-"));
  for (const name of listKnobs(THP_SYSFS_ROOT)) {
    mkdirSync(dirname(join(root, name)), { recursive: true });
    writeFileSync(join(root, name), readFileSync(join(THP_SYSFS_ROOT, name), "utf8"));
  }
  writeFileSync(join(root, "hpage_pmd_size"), `${2 << 20}\n`);
  return root;
}

describe("vmlab calibrate on this kernel", () => {
  it.skipIf(skipLive !== null)(
    `measures 2 MiB samples of every folio mode, fits those whose layout was achieved and writes the profile${skipLive ? ` (skipped: ${skipLive})` : ""}`,
    () =>
      withKnobLock(async () => {
        const raw = () => listKnobs().map((k) => readFileSync(join(THP_SYSFS_ROOT, k), "utf8"));
        const before = raw();
        const root = fakeSysfsLikeReal();
        const outDir = mkdtempSync(join(tmpdir(), "vmlab-calibrate-"));
        try {
          const lines: string[] = [];
          const { profile, file } = await calibrate({
            name: "tiny",
            sizesMiB: [2],
            reps: 1,
            outDir,
            env: { root, handlers: false },
            progress: (l) => lines.push(l),
          });
          expect(file).toBe(join(outDir, "tiny.json"));
          expect(loadProfile(file)).toEqual(profile);
          expect(lines[0]).toMatch(/^4k 0 MiB: fork /);
          expect(lines).toHaveLength(1 + CALIBRATE_DEFAULTS.folios.length);
          const rows = profile.fit?.rows ?? [];
          for (const folio of CALIBRATE_DEFAULTS.folios)
            for (const workload of ["fork", "madv_free", "madv_free_split"])
              expect(rows.some((r) => r.folio === folio && r.workload === workload)).toBe(true);
          // The real knobs decided the folios: a sample is fitted, or out with its reason.
          for (const r of rows) {
            if (r.fitted) expect(r.modeledNs).toBeGreaterThanOrEqual(0);
            else expect(r.note).toMatch(/^(layout not achieved|not modelled)/);
          }
          // Fork's fixed cost (an empty range) has no layout to miss.
          expect(rows.find((r) => r.sizeMiB === 0)?.fitted).toBe(true);
          expect(Object.values(profile.ns).some((v) => v > 0)).toBe(true);
        } finally {
          rmSync(outDir, { recursive: true, force: true });
          rmSync(root, { recursive: true, force: true });
        }
        expect(raw()).toEqual(before);
      }),
  );
});
