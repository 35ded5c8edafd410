import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  type CostProfile,
  costBreakdown,
  countsDelta,
  eventNames,
  formatNs,
  loadProfile,
  modeledNs,
  ProfileError,
  profilePath,
} from "./profile.ts";

const profile: CostProfile = {
  name: "test",
  description: "hand-written",
  machine: "none",
  fitted: null,
  ns: { pte_write: 2, fork: 100_000, pgfault: 1000, syscall: 0 },
};

const tmp = mkdtempSync(join(tmpdir(), "vmlab-profile-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Writes text to a temp file and returns the ProfileError that loading it throws. */
function loadError(text: string): ProfileError {
  const file = join(tmp, `p${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, text);
  try {
    loadProfile(file);
  } catch (e) {
    expect(e).toBeInstanceOf(ProfileError);
    return e as ProfileError;
  }
  throw new Error("loadProfile did not throw");
}

describe("cost profiles", () => {
  it("price counts by ns per event, with unpriced events costing nothing", () => {
    const counts = { pte_write: 1024, fork: 1, cow_pte_share: 3, syscall: 1 };
    expect(modeledNs(counts, profile)).toBe(1024 * 2 + 100_000);
    const b = costBreakdown(counts, profile);
    expect(b.totalNs).toBe(102_048);
    expect(b.items.map((i) => i.event)).toEqual(["fork", "pte_write", "syscall"]);
    expect(b.items[1]).toEqual({ event: "pte_write", count: 1024, nsPerEvent: 2, ns: 2048 });
    expect(b.unpriced).toEqual([{ event: "cow_pte_share", count: 3 }]);
  });

  it("take the difference of two VmStat snapshots, non-zero entries only", () => {
    expect(countsDelta({ pgfault: 3, fork: 1 }, { pgfault: 5, fork: 1, pte_write: 7 })).toEqual({
      pgfault: 2,
      pte_write: 7,
    });
  });

  it("know every VmStat event, mTHP per-size stats included", () => {
    const names = eventNames();
    expect(names).toContain("pte_write");
    expect(names).toContain("fork");
    expect(names).toContain("hugepages-64kB/anon_fault_alloc");
    expect(names).toContain("hugepages-2048kB/split_deferred");
  });

  it("resolve a bare name to profiles/NAME.json and anything else as a path", () => {
    expect(profilePath("default")).toMatch(/profiles[/\\]default\.json$/);
    expect(profilePath("./mine.json")).toBe("./mine.json");
    expect(profilePath("other.json")).toBe("other.json");
  });

  it("load the shipped default profile, fitted on a live kernel", () => {
    const p = loadProfile("default");
    expect(p.name).toBe("default");
    expect(p.fitted).not.toBeNull();
    expect(p.ns.pte_write).toBeGreaterThan(0);
    expect(p.fit?.rows.some((r) => r.fitted)).toBe(true);
  });

  it("report a missing profile with the file it looked for and how to make it", () => {
    try {
      loadProfile("no-such-profile");
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ProfileError);
      const text = (e as ProfileError).format();
      expect(text).toMatch(/no-such-profile\.json: error: no such profile file/);
      expect(text).toMatch(/Hint: .*vmlab calibrate --name no-such-profile/);
    }
  });

  it("report bad JSON with the parser's position, not a stack trace", () => {
    const e = loadError('{"name": "x",');
    expect(e.message).toMatch(/^not valid JSON: /);
    expect(e.format()).toMatch(/\.json: error: not valid JSON: .*\n {2}Hint: check the JSON syntax$/);
  });

  it("report a negative cost, a missing field, an unknown key and an unknown event by path", () => {
    const base = { name: "x", description: "", machine: "", fitted: null, ns: {} };
    const bad = (over: object) => loadError(JSON.stringify({ ...base, ...over })).message;
    expect(bad({ ns: { pte_write: -1 } })).toMatch(/^ns\.pte_write: /);
    expect(bad({ name: undefined })).toMatch(/^name: /);
    expect(bad({ colour: "red" })).toMatch(/colour/);
    expect(bad({ fitted: "yesterday" })).toMatch(/^fitted: /);
    expect(bad({ ns: { pte_writes: 1 } })).toBe(
      "ns.pte_writes: unknown event 'pte_writes'; did you mean 'pte_write'?",
    );
  });

  it("format durations for people", () => {
    expect(formatNs(0)).toBe("0 ns");
    expect(formatNs(2.5)).toBe("2.50 ns");
    expect(formatNs(850)).toBe("850 ns");
    expect(formatNs(12_345)).toBe("12.3 µs");
    expect(formatNs(4_560_000)).toBe("4.56 ms");
    expect(formatNs(1.234e9)).toBe("1.23 s");
    expect(formatNs(999_700)).toBe("1.00 ms");
  });
});
