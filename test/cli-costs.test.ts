// End-to-end tests of `vmlab run --costs` and of the calibrate command's refusals: each spawns
// `node bin/vmlab.js ...` as a user would. Results are memoized per argument list.

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

const memo = new Map<string, Run>();
function vmlab(...args: string[]): Run {
  const key = JSON.stringify(args);
  let r = memo.get(key);
  if (!r) {
    const p = spawnSync(process.execPath, ["bin/vmlab.js", ...args], {
      cwd: ROOT,
      encoding: "utf8",
      env: { ...process.env, NO_COLOR: "1" },
      timeout: 60_000,
    });
    if (p.error) throw p.error;
    r = { status: p.status, stdout: p.stdout, stderr: p.stderr };
    memo.set(key, r);
  }
  return r;
}

function expectNoStackTrace(r: Run): void {
  expect(r.stderr).not.toMatch(/^ {4}at /m);
  expect(r.stderr).not.toMatch(/Error:/);
}

const tmp = mkdtempSync(join(tmpdir(), "vmlab-cli-costs-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// A populated 1 MiB region of 4 KiB pages, then fork: the fork write-protects 256 PTEs in the
// parent and sets 256 in the child.
const FORK = join(tmp, "fork.yaml");
writeFileSync(
  FORK,
  `name: fork of a populated region
machine:
  ram: 1GiB
  thp: { enabled: never }
processes: [a]
ops:
  - { op: mmap, pid: a, len: 1MiB, prot: rw, as: buf }
  - { op: write, pid: a, addr: buf, len: 1MiB }
  - { op: fork, pid: a, child: b, expect: { ok: true } }
  - { op: check, pid: b, status: { RssAnon: 1024 } }
  - { op: write, pid: b, addr: buf, len: 4KiB }
`,
);

interface JsonOp {
  text: string;
  counts?: Record<string, number>;
  modeledNs?: number;
}
interface JsonRun {
  ops: JsonOp[];
  costs?: { totalNs: number; profile: { name: string }; breakdown: { items: { event: string }[] } };
}

describe("vmlab run --costs", () => {
  it("gives each op its event counts and modeled time; a fork of a populated region writes PTEs", () => {
    const r = vmlab("run", FORK, "--costs", "--json");
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const j = JSON.parse(r.stdout) as JsonRun;
    const fork = j.ops[2];
    expect(fork.text).toMatch(/fork\(\) = pid 2/);
    expect(fork.counts?.pte_write).toBeGreaterThanOrEqual(512);
    expect(fork.counts?.fork).toBe(1);
    expect(fork.modeledNs).toBeGreaterThan(0);
    // The check op causes no events and costs nothing.
    expect(j.ops[3].counts).toEqual({});
    expect(j.ops[3].modeledNs).toBe(0);
    expect(j.costs?.profile.name).toBe("default");
  });

  it("has a total equal to the sum of the per-op times", () => {
    const j = JSON.parse(vmlab("run", FORK, "--costs", "--json").stdout) as JsonRun;
    let sum = 0;
    for (const op of j.ops) sum += op.modeledNs ?? Number.NaN;
    expect(j.costs?.totalNs).toBe(sum);
    expect(sum).toBeGreaterThan(0);
  });

  it("prints a cost line under each op with events, and a modeled-time section with the total", () => {
    const r = vmlab("run", FORK, "--costs");
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(
      /^#3 +a: fork\(\) = pid 2 {2}\[b\]\n {6}cost [\d.]+ [µm]?s: fork \(1\) [\d.]+ [µm]?s, .*mapcount_update \(256\)/m,
    );
    expect(r.stdout).toMatch(/^Modeled time \(profile default: Linux .*\):$/m);
    expect(r.stdout).toMatch(/^ {2}#3 +a: fork +[\d.]+ [µm]?s$/m);
    expect(r.stdout).toMatch(/^ {2}total +[\d.]+ [µm]?s$/m);
    // The expectations line stays last.
    expect(r.stdout.trimEnd().split("\n").at(-1)).toBe("expectations: 2 passed, 0 failed");
  });

  it("is deterministic, and leaves the output without --costs as it was", () => {
    expect(vmlab("run", FORK, "--costs").stdout).toBe(
      spawnSync(process.execPath, ["bin/vmlab.js", "run", FORK, "--costs"], { cwd: ROOT, encoding: "utf8" })
        .stdout,
    );
    const plain = vmlab("run", FORK);
    expect(plain.stdout).not.toMatch(/^ +cost |^Modeled time/m);
    const j = JSON.parse(vmlab("run", FORK, "--json").stdout) as JsonRun;
    expect(j.costs).toBeUndefined();
    expect(j.ops.every((op) => op.counts === undefined && op.modeledNs === undefined)).toBe(true);
  });

  it("takes --profile as a path, and reports a bad profile with its file and exit 2", () => {
    const good = vmlab("run", FORK, "--profile", join(ROOT, "profiles", "default.json"), "--json");
    expect(good.status).toBe(0);
    expect((JSON.parse(good.stdout) as JsonRun).costs?.totalNs).toBe(
      (JSON.parse(vmlab("run", FORK, "--costs", "--json").stdout) as JsonRun).costs?.totalNs,
    );
    const bad = join(tmp, "bad.json");
    writeFileSync(
      bad,
      JSON.stringify({ name: "b", description: "", machine: "", fitted: null, ns: { fork: -5 } }),
    );
    const r = vmlab("run", FORK, "--profile", bad);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(/bad\.json: error: ns\.fork: .*\n {2}Hint: /);
    expectNoStackTrace(r);
    const missing = vmlab("run", FORK, "--profile", "nonesuch");
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/nonesuch\.json: error: no such profile file/);
    expectNoStackTrace(missing);
  });
});

describe("vmlab calibrate", () => {
  it("refuses bad options with exit 2 and a hint, before measuring anything", () => {
    for (const args of [
      ["--sizes", "3"],
      ["--sizes", "a,b"],
      ["--reps", "0"],
      ["--name", "../x"],
    ]) {
      const r = vmlab("calibrate", ...args);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/^vmlab calibrate: bad .*\n {2}Hint: /);
      expectNoStackTrace(r);
    }
  });
});
