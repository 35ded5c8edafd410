// End-to-end tests of the vmlab command: each spawns `node bin/vmlab.js ...` as a user would and
// checks the exit status, stdout and stderr. Results are memoized so that a command line runs once
// however many tests look at it (each spawn costs about half a second).

import { type SpawnSyncReturns, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DEFAULT = join(ROOT, "examples", "default.yaml");

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function spawn(args: readonly string[]): Run {
  const r: SpawnSyncReturns<string> = spawnSync(process.execPath, ["bin/vmlab.js", ...args], {
    cwd: ROOT,
    encoding: "utf8",
    env: { ...process.env, NO_COLOR: "1" },
    timeout: 60_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const memo = new Map<string, Run>();
/** Runs the CLI once per distinct argument list. */
function vmlab(...args: string[]): Run {
  const key = JSON.stringify(args);
  let r = memo.get(key);
  if (!r) {
    r = spawn(args);
    memo.set(key, r);
  }
  return r;
}

/** No node stack trace and no uncaught "Error:" report. */
function expectNoStackTrace(r: Run): void {
  expect(r.stderr).not.toMatch(/^ {4}at /m);
  expect(r.stderr).not.toMatch(/Error:/);
  expect(r.stdout).not.toMatch(/^ {4}at /m);
}

/** The "expectations: N passed, M failed" counts of a text report. */
function counts(text: string): { passed: number; failed: number } {
  const m = /^expectations: (\d+) passed, (\d+) failed$/m.exec(text);
  expect(m, `no expectations line in:\n${text}`).not.toBeNull();
  return { passed: Number(m![1]), failed: Number(m![2]) };
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

const tmp = mkdtempSync(join(tmpdir(), "vmlab-cli-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Writes a scenario into the temp dir and returns its absolute path. */
function scenario(name: string, text: string): string {
  const file = join(tmp, name);
  writeFileSync(file, text);
  return file;
}

const HEAD = "name: x\nmachine:\n  ram: 1GiB\nprocesses: [a]\nops:\n";

describe("vmlab run", () => {
  it("with no file runs examples/default.yaml, prints the op log and passes every expectation", () => {
    const r = vmlab("run");
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("(examples/default.yaml)");
    expect(r.stdout).toMatch(/^#1 +a: mmap\(NULL, 256KiB, PROT_READ\|PROT_WRITE, /m);
    expect(r.stdout).toMatch(/^#12 +a: write\(0x[0-9a-f]+, 4KiB\): 0 pages, then SIGSEGV$/m);
    expect(r.stdout).toContain("Final state:");
    const c = counts(r.stdout);
    expect(c.failed).toBe(0);
    expect(c.passed).toBeGreaterThan(0);
    expect(r.stdout).toMatch(/\nexpectations: \d+ passed, 0 failed\n$/);
  });

  it("FILE --json prints JSON with ops, processes (status, smaps) and events, and the same counts", () => {
    const r = vmlab("run", DEFAULT, "--json");
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const j = JSON.parse(r.stdout);
    const text = vmlab("run").stdout;
    const opLines = text.match(/^#\d+ /gm) ?? [];
    expect(j.file).toBe(DEFAULT);
    expect(Array.isArray(j.ops)).toBe(true);
    expect(j.ops).toHaveLength(opLines.length);
    for (const op of j.ops) {
      expect(typeof op.text).toBe("string");
      expect(op.failures).toEqual([]);
    }
    expect(j.ops[0].text).toMatch(/^a: mmap\(NULL, 256KiB, /);
    expect(j.processes).toHaveLength(1);
    const [p] = j.processes;
    expect(p.name).toBe("a");
    expect(p.status).toMatchObject({ RssAnon: expect.any(Number), VmPTE: expect.any(Number) });
    expect(Array.isArray(p.smaps)).toBe(true);
    expect(p.smaps.length).toBeGreaterThan(0);
    expect(typeof j.events).toBe("object");
    expect(j.events).not.toBeNull();
    expect(j.expectations).toEqual(counts(text));
  });

  it("is deterministic: the default scenario run twice prints byte-identical text and JSON", () => {
    expect(spawn(["run"]).stdout).toBe(vmlab("run").stdout);
    expect(spawn(["run", DEFAULT, "--json"]).stdout).toBe(vmlab("run", DEFAULT, "--json").stdout);
  });

  it("exits 1 and names a failed expectation with its file:line:col", () => {
    const file = scenario(
      "fail.yaml",
      `${HEAD}  - { op: mmap, pid: a, len: 4KiB, prot: rw, as: buf }\n` +
        "  - { op: munmap, pid: a, addr: buf, len: 4KiB, expect: { errno: EINVAL } }\n",
    );
    const r = vmlab("run", file);
    expect(r.status).toBe(1);
    expectNoStackTrace(r);
    expect(r.stdout).toContain(`${file}:7:5: expectation failed: expected -EINVAL, got 0`);
    expect(counts(r.stdout)).toEqual({ passed: 0, failed: 1 });
  });

  describe("rejects a malformed scenario with exit 2, FILE:LINE:COL: error and a hint", () => {
    const cases: { name: string; body: string; at: [number, number] | null; message: RegExp }[] = [
      {
        name: "bad YAML syntax",
        body: "name: x\nmachine:\n  ram: 1GiB\nprocesses: [a\nops: []\n",
        at: null,
        message: /\(document\): bad YAML: .*\]/,
      },
      {
        name: "an unknown key",
        body: `${HEAD}  - { op: mmap, pid: a, len: 4KiB, prot: rw, colour: red }\n`,
        at: [6, 46],
        message: /ops\[0\]\.colour: unknown key 'colour'/,
      },
      {
        name: "a wrong type",
        body: `${HEAD}  - { op: mmap, pid: a, len: [1], prot: rw }\n`,
        at: [6, 30],
        message: /ops\[0\]\.len: expected a size .*got a list/,
      },
      {
        name: "an unknown op",
        body: `${HEAD}  - { op: mlock, pid: a }\n`,
        at: [6, 11],
        message: /ops\[0\]\.op: unknown op 'mlock'/,
      },
      {
        name: "an undefined address name",
        body:
          `${HEAD}  - { op: mmap, pid: a, len: 4KiB, prot: rw, as: buf }\n` +
          "  - { op: munmap, pid: a, addr: bfu, len: 4KiB }\n",
        at: [7, 33],
        message: /ops\[1\]\.addr: undefined address name 'bfu'/,
      },
    ];
    for (const c of cases) {
      it(c.name, () => {
        const file = scenario(`${c.name.replace(/\W+/g, "-")}.yaml`, c.body);
        const r = vmlab("run", file);
        expect(r.status).toBe(2);
        expect(r.stdout).toBe("");
        expectNoStackTrace(r);
        const lines = r.stderr.trimEnd().split("\n");
        expect(lines).toHaveLength(2);
        const m = new RegExp(`^${escapeRe(file)}:(\\d+):(\\d+): error: (.*)$`).exec(lines[0]!);
        expect(m, r.stderr).not.toBeNull();
        const [line, col] = [Number(m![1]), Number(m![2])];
        if (c.at) expect([line, col]).toEqual(c.at);
        else expect(line).toBeGreaterThanOrEqual(4); // at or after the unclosed [
        expect(m![3]).toMatch(c.message);
        expect(lines[1]).toMatch(/^ {2}Hint: \S/);
      });
    }
  });

  it("exits 2 with a clear message for a missing file", () => {
    const file = join(tmp, "no-such-scenario.yaml");
    const r = vmlab("run", file);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe("");
    expectNoStackTrace(r);
    expect(r.stderr).toMatch(
      new RegExp(`^${escapeRe(file)}:1:1: error: .*cannot read the file \\(ENOENT\\)\n {2}Hint: \\S`),
    );
  });
});

describe("vmlab command line", () => {
  it("rejects an unknown command with commander's message and no stack trace", () => {
    const r = vmlab("frobnicate");
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("error: unknown command 'frobnicate'");
    expectNoStackTrace(r);
  });

  it("rejects an unknown option with commander's message and no stack trace", () => {
    const r = vmlab("run", "--frob");
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("error: unknown option '--frob'");
    expect(r.stdout).toBe("");
    expectNoStackTrace(r);
  });

  it("bench core --help describes its options and exits 0 without benchmarking", () => {
    const r = vmlab("bench", "core", "--help");
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("Usage: vmlab bench core");
    expect(r.stdout).toContain("--max-gib <n>");
    expect(r.stderr).toBe("");
  });

  it("fuzz checks random cases against the audit and the reference model and says how many", () => {
    const r = vmlab("fuzz", "--runs", "3", "--seed", "11");
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^fuzz: 3 cases, \d+ operations checked, cow modern, seed 11: all agree\n$/);
    // The same seed gives the same cases, so the same operation count.
    expect(spawn(["fuzz", "--runs", "3", "--seed", "11"]).stdout).toBe(r.stdout);
  });

  it("fuzz refuses a bad --runs with exit status 2", () => {
    const r = vmlab("fuzz", "--runs", "zero");
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("--runs take a positive integer");
    expectNoStackTrace(r);
  });
});
