import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CalibrateRefusal } from "../calibrate/knobs.ts";
import { parseScenario, ScenarioError } from "../scenario/load.ts";
import { checkLiveKernel, checkReplayable, knobSettings } from "./diff.ts";

const scenario = (machine: string, ops: string, extra = "") =>
  parseScenario(
    `name: t\nmachine: { ram: 1GiB${machine} }\nprocesses: [a]\nops:\n  - { op: mmap, pid: a, len: 2MiB, prot: rw, as: buf }\n${ops}${extra}`,
    "t.yaml",
  );

describe("checkReplayable", () => {
  it("accepts the kernel's designs and replayable ops", () => {
    expect(() => checkReplayable(scenario(", fork: { ptCopy: per-pte }", ""))).not.toThrow();
  });

  it.each([
    [", cow: { reuse: legacy }", "", /legacy design/],
    [", fork: { ptCopy: cow-pte }", "", /cow-pte design/],
    [", madvise: { free: split }", "", /split design/],
    [", swap: 8MiB", "", /swap/],
    ["", "  - { op: pin, pid: a, addr: buf, len: 4KiB }\n", /cannot replay 'pin'/],
    ["", "  - { op: reclaim, pages: 8 }\n", /cannot replay 'reclaim'/],
  ])("refuses %s %s", (machine, ops, msg) => {
    const sc = scenario(machine, ops);
    expect(() => checkReplayable(sc)).toThrow(ScenarioError);
    expect(() => checkReplayable(sc)).toThrow(msg);
  });

  it("points at the op it cannot replay", () => {
    try {
      checkReplayable(scenario("", "  - { op: reclaim, pages: 8 }\n"));
      expect.unreachable();
    } catch (e) {
      expect((e as ScenarioError).format()).toMatch(
        /^t\.yaml:6:5: error: op: vmlab diff cannot replay 'reclaim'/,
      );
    }
  });
});

describe("diff.known in a scenario", () => {
  it("checks pid and address names", () => {
    const known = (k: string) => () => scenario("", "", `diff:\n  known:\n    - ${k}\n`);
    expect(known("{ reason: r, pid: a, addr: buf, len: 4KiB, fields: [folio] }")).not.toThrow();
    expect(known("{ reason: r, pid: z }")).toThrow(/unknown process 'z'/);
    expect(known("{ reason: r, addr: nope, len: 4KiB }")).toThrow(/undefined address name 'nope'/);
    expect(known("{ reason: r, addr: buf }")).toThrow(/addr and len go together/);
    expect(known("{ reason: r, fields: [colour] }")).toThrow(/diff field/);
  });
});

describe("knobSettings", () => {
  const root = mkdtempSync(join(tmpdir(), "vmlab-diff-fake-thp-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  writeFileSync(join(root, "enabled"), "always [madvise] never\n");
  writeFileSync(join(root, "use_zero_page"), "1\n");
  writeFileSync(join(root, "shmem_enabled"), "always within_size advise [never] deny force\n");
  for (const kb of [16, 32, 64, 2048]) {
    mkdirSync(join(root, `hugepages-${kb}kB`));
    writeFileSync(join(root, `hugepages-${kb}kB`, "enabled"), "always inherit madvise [never]\n");
  }
  writeFileSync(join(root, "hugepages-16kB", "shmem_enabled"), "always inherit within_size advise [never]\n");

  it("sets the global policy, the huge zero page and every size the kernel has", () => {
    const sc = scenario(", thp: { enabled: always, useZeroPage: false, sizes: { 64kB: always } }", "");
    expect(knobSettings(sc, root)).toEqual({
      enabled: "always",
      use_zero_page: "0",
      "hugepages-16kB/enabled": "never",
      "hugepages-32kB/enabled": "never",
      "hugepages-64kB/enabled": "always",
      "hugepages-2048kB/enabled": "inherit",
      shmem_enabled: "never",
      "hugepages-16kB/shmem_enabled": "never",
    });
  });

  it("refuses a size the kernel has no knob for", () => {
    const sc = scenario(", thp: { sizes: { 128kB: always } }", "");
    expect(() => knobSettings(sc, root)).toThrow(CalibrateRefusal);
    expect(() => knobSettings(sc, root)).toThrow(/hugepages-128kB/);
  });
});

describe("checkLiveKernel", () => {
  it("refuses off Linux and without root, with a hint", () => {
    expect(() => checkLiveKernel({ platform: "darwin", uid: 0 })).toThrow(/this is darwin/);
    expect(() => checkLiveKernel({ platform: "linux", uid: 1000 })).toThrow(
      /must run as root \(uid is 1000\)/,
    );
  });
});
