import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
} from "../uapi.ts";
import { SCHEMA_FILE, scenarioJsonSchemaText } from "./export-schema.ts";
import { loadScenario, parseScenario, ScenarioError } from "./load.ts";
import { formatRun, runScenario } from "./run.ts";
import type { OpOf } from "./schema.ts";

const MiB = 2 ** 20;

// The example of docs/scenarios.md.
const EXAMPLE = `name: THP populate then split by mprotect
description: A PMD-mapped THP is split when mprotect covers half of it.
machine:
  ram: 4GiB
  thp:
    enabled: madvise
    useZeroPage: true
    sizes:
      64kB: always
processes: [a]
ops:
  - { op: mmap, pid: a, len: 4MiB, prot: rw, flags: [private, anonymous], as: buf }
  - { op: madvise, pid: a, addr: buf, len: 4MiB, advice: hugepage }
  - { op: write, pid: a, addr: buf, len: 2MiB }
  - { op: mprotect, pid: a, addr: buf+1MiB, len: 1MiB, prot: r }
  - { op: read, pid: a, addr: buf+3MiB, len: 4KiB, expect: { content: zero } }
  - { op: write, pid: a, addr: buf, len: 4KiB, expect: { signal: SIGSEGV } }
  - { op: munmap, pid: a, addr: 0x1001, len: 4KiB, expect: { errno: EINVAL } }
  - { op: check, pid: a, status: { VmRSS: 2048, VmPTE: 12 }, smaps: [ { addr: buf, AnonHugePages: 0, Rss: 1024 } ] }
  - { op: dump, pid: a, addr: buf, len: 64KiB }
  - { op: spawn, pid: b }
  - { op: exit, pid: a }
`;

/** A small scenario whose ops start on line 5; tests append op lines to it. */
const HEAD = "name: t\nmachine: { ram: 64MiB }\nprocesses: [a]\nops:\n";
const MMAP = "  - { op: mmap, pid: a, len: 1MiB, prot: rw, as: buf }\n";

function errorOf(text: string): ScenarioError {
  try {
    parseScenario(text, "t.yaml");
  } catch (e) {
    if (e instanceof ScenarioError) return e;
    throw e;
  }
  throw new Error("errorOf: the scenario parsed without error");
}

/** The error's fields in one object, so a failing test shows all of them. */
function fields(e: ScenarioError) {
  return { line: e.line, col: e.col, path: e.path, message: e.message, hint: e.hint };
}

describe("parseScenario on a valid file", () => {
  const s = parseScenario(EXAMPLE, "example.yaml");
  const op = <K extends (typeof s.ops)[number]["op"]>(i: number, kind: K) => {
    expect(s.ops[i].op).toBe(kind);
    return s.ops[i] as OpOf<K>;
  };

  it("resolves the machine, filling THP defaults", () => {
    expect(s.file).toBe("example.yaml");
    expect(s.machine).toEqual({
      ram: 4 * 2 ** 30,
      thp: {
        enabled: "madvise",
        useZeroPage: true,
        sizes: {
          "16kB": "never",
          "32kB": "never",
          "64kB": "always",
          "128kB": "never",
          "256kB": "never",
          "512kB": "never",
          "1024kB": "never",
          "2048kB": "inherit",
        },
      },
      swap: 0,
      cow: { reuse: "modern" },
      fork: { ptCopy: "batched" },
      madvise: { free: "batched" },
    });
    expect(s.processes).toEqual(["a"]);
  });

  it("turns sizes, prot and flags into numbers and bits", () => {
    const mmap = op(0, "mmap");
    expect(mmap.len).toBe(4 * MiB);
    expect(mmap.prot).toBe(PROT_READ | PROT_WRITE);
    expect(mmap.flags).toBe(MAP_PRIVATE | MAP_ANONYMOUS);
    expect(mmap.as).toBe("buf");
    expect(mmap.addr).toBeUndefined();
    expect(op(3, "mprotect").prot).toBe(PROT_READ);
    expect(op(8, "dump").len).toBe(64 * 1024);
  });

  it("keeps an address as a name plus an offset", () => {
    expect(op(1, "madvise").addr).toEqual({ base: "buf", offset: 0 });
    expect(op(3, "mprotect").addr).toEqual({ base: "buf", offset: MiB });
    expect(op(6, "munmap").addr).toEqual({ base: null, offset: 0x1001 });
    expect(op(7, "check").smaps?.[0].addr).toEqual({ base: "buf", offset: 0 });
  });

  it("keeps expectations as names", () => {
    expect(op(4, "read").expect).toEqual({ content: "zero" });
    expect(op(5, "write").expect).toEqual({ signal: "SIGSEGV" });
    expect(op(6, "munmap").expect).toEqual({ errno: "EINVAL" });
    expect(op(7, "check").status).toEqual({ VmRSS: 2048, VmPTE: 12 });
  });

  it("records where each op was written", () => {
    expect(s.ops.map((o) => o.at.line)).toEqual([12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]);
    expect(s.ops[0].at).toEqual({ line: 12, col: 5 });
  });

  it("accepts every size, address and prot spelling", () => {
    const t = parseScenario(
      `${HEAD}${MMAP}` +
        "  - { op: mmap, pid: a, addr: 0x7f0000000000, len: 0x1000, prot: [read, exec], flags: [shared, anonymous, fixed] }\n" +
        "  - { op: munmap, pid: a, addr: buf - 0x1000, len: 64kB }\n" +
        "  - { op: munmap, pid: a, addr: 'buf + 2MiB', len: 1 GiB }\n" +
        '  - { op: mprotect, pid: a, addr: "0x7f0000001000", len: 4096, prot: none }\n' +
        "  - op: mprotect\n    pid: a\n    addr: 0x10\n    len: 3B\n    prot: rwx\n",
      "t.yaml",
    );
    const [, mmap, un1, un2, mp1, mp2] = t.ops;
    expect(mmap).toMatchObject({ addr: { base: null, offset: 0x7f0000000000 }, len: 4096 });
    expect(mmap).toMatchObject({
      prot: PROT_READ | PROT_EXEC,
      flags: MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
    });
    expect(un1).toMatchObject({ addr: { base: "buf", offset: -4096 }, len: 64 * 1024 });
    expect(un2).toMatchObject({ addr: { base: "buf", offset: 2 * MiB }, len: 2 ** 30 });
    expect(mp1).toMatchObject({ addr: { base: null, offset: 0x7f0000001000 }, prot: 0 });
    expect(mp2).toMatchObject({
      addr: { base: null, offset: 16 },
      len: 3,
      prot: 7,
      at: { line: 10, col: 5 },
    });
  });

  it("accepts the example of docs/scenarios.md, which is this file's EXAMPLE", () => {
    const doc = readFileSync(new URL("../../docs/scenarios.md", import.meta.url), "utf8");
    expect(/```yaml\n(.*?)```/s.exec(doc)?.[1]).toBe(EXAMPLE);
  });

  it("reads a file from disk and names it in the result", () => {
    const dir = mkdtempSync(join(tmpdir(), "vmlab-"));
    const path = join(dir, "ok.yaml");
    writeFileSync(path, EXAMPLE);
    try {
      expect(loadScenario(path).file).toBe(path);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("parseScenario on a malformed file", () => {
  it("formats an error as file:line:col, path, message and a hint line", () => {
    const e = errorOf(`${HEAD}  - { op: munmap, pid: a, addr: 0, len: 4XB }\n`);
    expect(e.format()).toBe(
      "t.yaml:5:41: error: ops[0].len: expected a size like 4KiB, 2MiB or a number of bytes, got '4XB'\n" +
        "  Hint: unknown unit 'XB': use B, KiB, MiB, GiB or TiB (kB, MB, GB mean KiB, MiB, GiB); did you mean 'B'?",
    );
  });

  it("points at the bad YAML syntax", () => {
    expect(fields(errorOf(`${HEAD}  - { op: exit, pid: a\n`))).toEqual({
      line: 6,
      col: 1,
      path: "(document)",
      message: "bad YAML: Flow map in block collection must be sufficiently indented and end with a }",
      hint: "check the indentation and that every [ and { is closed",
    });
    expect(fields(errorOf("name: a\nname: b\n"))).toMatchObject({
      line: 2,
      col: 1,
      hint: "each key may appear once in a mapping",
    });
  });

  it("points at an unknown key and suggests the closest allowed one", () => {
    expect(fields(errorOf(`${HEAD}  - { op: munmap, pid: a, addr: 0, lenn: 4KiB }\n`))).toEqual({
      line: 5,
      col: 36,
      path: "ops[0].lenn",
      message: "unknown key 'lenn'",
      hint: "allowed keys here: op, pid, addr, len, expect; did you mean 'len'?",
    });
  });

  it("rejects an unsupported THP knob at its key", () => {
    const e = errorOf(
      "name: t\nmachine:\n  ram: 1GiB\n  thp:\n    defrag: always\nprocesses: [a]\nops: []\n",
    );
    expect(fields(e)).toEqual({
      line: 5,
      col: 5,
      path: "machine.thp.defrag",
      message: "unknown key 'defrag'",
      hint: "allowed keys here: enabled, useZeroPage, sizes",
    });
  });

  it("names the expected and the actual type", () => {
    expect(fields(errorOf("name: t\nmachine: { ram: true }\nprocesses: [a]\nops: []\n"))).toEqual({
      line: 2,
      col: 17,
      path: "machine.ram",
      message: "expected a size like 4KiB, 2MiB or a number of bytes, got true",
      hint: "write bytes (4096, 0x1000) or a whole number with a unit: B, KiB, MiB, GiB, TiB, kB, MB, GB",
    });
    expect(fields(errorOf("name: t\nmachine: { ram: 1GiB }\nprocesses: a\nops: []\n"))).toMatchObject({
      line: 3,
      col: 12,
      path: "processes",
      message: "expected a list of process names like [a, b], got 'a'",
    });
  });

  it("rejects a size that is negative, fractional or beyond 2**53", () => {
    const len = (v: string) => fields(errorOf(`${HEAD}  - { op: munmap, pid: a, addr: 0, len: ${v} }\n`));
    expect(len("-1")).toMatchObject({ col: 41, path: "ops[0].len", hint: "it cannot be negative" });
    expect(len("1.5")).toMatchObject({
      message: "expected a size like 4KiB, 2MiB or a number of bytes, got 1.5",
    });
    expect(len("9007199254740993")).toMatchObject({ hint: "numbers must be below 2**53 (9007199254740992)" });
    expect(len("8192TiB")).toMatchObject({ message: "size '8192TiB' is too large" });
    expect(errorOf("name: t\nmachine: { ram: 4097 }\nprocesses: [a]\nops: []\n").message).toBe(
      "ram must be a positive multiple of 4KiB",
    );
  });

  it("reports a missing key at the mapping that lacks it", () => {
    expect(fields(errorOf(`${HEAD}  - { op: munmap, pid: a, addr: 0 }\n`))).toEqual({
      line: 5,
      col: 5,
      path: "ops[0].len",
      message: "missing key 'len'",
      hint: "add len: a size like 4KiB, 2MiB or a number of bytes",
    });
  });

  it("reports a misspelled key rather than the key it leaves missing", () => {
    expect(fields(errorOf(`${HEAD}  - op: munmap\n    pid: a\n    addr: 0\n    lenn: 1\n`))).toMatchObject({
      line: 8,
      col: 5,
      message: "unknown key 'lenn'",
    });
  });

  it("reports the first problem in the file when there are several", () => {
    const e = errorOf(
      `${HEAD}  - { op: munmap, pid: a, addr: 0, len: x }\n  - { op: munmap, pid: a, addr: y+, len: 1 }\n`,
    );
    expect([e.line, e.path]).toEqual([5, "ops[0].len"]);
  });

  it("lists the ops for an unknown op", () => {
    expect(fields(errorOf(`${HEAD}  - { op: mmapp, pid: a, len: 4KiB, prot: rw }\n`))).toEqual({
      line: 5,
      col: 11,
      path: "ops[0].op",
      message: "unknown op 'mmapp'",
      hint: "ops are: mmap, munmap, mprotect, madvise, mremap, read, write, check, dump, spawn, fork, exit, pin, unpin, pinread, vmsplice, piperead, reclaim, splitdeferred; did you mean 'mmap'?",
    });
  });

  it("lists the allowed values for an unknown enum value", () => {
    expect(
      fields(errorOf(`${HEAD}${MMAP}  - { op: madvise, pid: a, addr: buf, len: 4KiB, advice: hugepages }\n`)),
    ).toEqual({
      line: 6,
      col: 58,
      path: "ops[1].advice",
      message: "unknown advice 'hugepages'",
      hint: "advice is one of: hugepage, nohugepage, normal, dontfork, dofork, wipeonfork, keeponfork, dontneed, free, cold, pageout, populate_read, populate_write; did you mean 'hugepage'?",
    });
    expect(fields(errorOf(`${HEAD}  - { op: mmap, pid: a, len: 4KiB, prot: [read, wrte] }\n`))).toMatchObject(
      {
        path: "ops[0].prot",
        message: "unknown prot 'wrte'",
      },
    );
  });

  it("rejects a pid that names no process", () => {
    expect(fields(errorOf(`${HEAD}  - { op: exit, pid: c }\n`))).toEqual({
      line: 5,
      col: 22,
      path: "ops[0].pid",
      message: "unknown process 'c'",
      hint: "processes at this point: a",
    });
    expect(errorOf(`${HEAD}  - { op: exit, pid: b }\n  - { op: spawn, pid: b }\n`).hint).toBe(
      "'b' is spawned later, at ops[1] (line 6)",
    );
  });

  it("rejects a pid used after its process exited", () => {
    expect(fields(errorOf(`${HEAD}  - { op: exit, pid: a }\n  - { op: dump, pid: a }\n`))).toEqual({
      line: 6,
      col: 22,
      path: "ops[1].pid",
      message: "process 'a' has exited",
      hint: "it exits at ops[0] (line 5)",
    });
  });

  it("rejects a spawn of a name already used", () => {
    expect(fields(errorOf(`${HEAD}  - { op: spawn, pid: a }\n`))).toMatchObject({
      path: "ops[0].pid",
      message: "spawn needs a fresh name: 'a' is running",
    });
  });

  it("rejects an address name no earlier mmap bound", () => {
    expect(fields(errorOf(`${HEAD}${MMAP}  - { op: munmap, pid: a, addr: bufx+4KiB, len: 4KiB }\n`))).toEqual(
      {
        line: 6,
        col: 33,
        path: "ops[1].addr",
        message: "undefined address name 'bufx'",
        hint: "address names bound so far: buf; did you mean 'buf'?",
      },
    );
    const early = errorOf(`${HEAD}  - { op: check, pid: a, smaps: [ { addr: buf, Rss: 0 } ] }\n${MMAP}`);
    expect(fields(early)).toMatchObject({
      path: "ops[0].smaps[0].addr",
      hint: "'buf' is bound later, by the mmap at ops[1] (line 6)",
    });
  });

  it("rejects a duplicate process name", () => {
    expect(fields(errorOf("name: t\nmachine: { ram: 1GiB }\nprocesses: [a, b, a]\nops: []\n"))).toEqual({
      line: 3,
      col: 19,
      path: "processes[2]",
      message: "duplicate process 'a'",
      hint: "process names must be unique",
    });
  });

  it("checks expectations that the schema alone cannot", () => {
    const pages = errorOf(
      `${HEAD}${MMAP}  - { op: read, pid: a, addr: buf+2KiB, len: 4KiB, expect: { content: [1] } }\n`,
    );
    expect(fields(pages)).toMatchObject({
      path: "ops[1].expect.content",
      message: "content lists 1 page tag, but the access touches 2 pages",
    });
    const both = errorOf(
      `${HEAD}  - { op: munmap, pid: a, addr: 0, len: 1, expect: { errno: EINVAL, ok: true } }\n`,
    );
    expect(both.message).toBe("expect needs exactly one of errno or ok");
    expect(
      errorOf(`${HEAD}  - { op: mmap, pid: a, len: 1, prot: r, flags: [private, fixed] }\n`).message,
    ).toBe("flag 'fixed' needs addr");
  });

  it("reports an empty file and an unreadable file at 1:1", () => {
    expect(fields(errorOf(""))).toMatchObject({ line: 1, col: 1, path: "(document)" });
    const e = (() => {
      try {
        loadScenario("/nonexistent/x.yaml");
      } catch (err) {
        return err as ScenarioError;
      }
    })();
    expect(e?.format()).toBe(
      "/nonexistent/x.yaml:1:1: error: (document): cannot read the file (ENOENT)\n  Hint: check the path and its permissions",
    );
  });
});

/** HEAD, MMAP and one more line: the ops of the tests of fork, GUP and mremap start on line 6. */
const at6 = (...lines: string[]) => `${HEAD}${MMAP}${lines.map((l) => `  - ${l}\n`).join("")}`;

describe("parseScenario on fork, pin, vmsplice, mremap and the fork advice", () => {
  const s = parseScenario(
    "name: t\nmachine: { ram: 64MiB, cow: { reuse: legacy } }\nprocesses: [a]\nops:\n" +
      MMAP +
      "  - { op: write, pid: a, addr: buf, len: 8KiB, as: A }\n" +
      "  - { op: madvise, pid: a, addr: buf, len: 4KiB, advice: wipeonfork }\n" +
      "  - { op: fork, pid: a, child: b, expect: { ok: true } }\n" +
      "  - { op: pin, pid: b, addr: buf, len: 8KiB, write: true, longterm: true, fast: true, as: p, expect: { ok: true, pages: 2 } }\n" +
      "  - { op: pinread, pin: p, expect: { content: A } }\n" +
      "  - { op: unpin, pin: p }\n" +
      "  - { op: vmsplice, pid: b, addr: buf+4KiB, len: 4KiB, as: pipe }\n" +
      "  - { op: piperead, pipe: pipe, expect: { content: [7] } }\n" +
      "  - { op: mremap, pid: a, addr: buf, len: 4KiB, newLen: 4KiB, flags: [maymove, fixed], newAddr: 0x7f0000000000, as: moved }\n" +
      "  - { op: mremap, pid: a, addr: moved, len: 4KiB, newLen: 4KiB, flags: [maymove, dontunmap] }\n" +
      "  - { op: read, pid: b, addr: buf, len: 12KiB, expect: { content: [A, 0] } }\n",
    "t.yaml",
  );

  it("reads the COW reuse rule, modern by default", () => {
    expect(s.machine.cow).toEqual({ reuse: "legacy" });
    expect(parseScenario(`${HEAD.replace("ops:\n", "ops: []\n")}`, "t.yaml").machine.cow).toEqual({
      reuse: "modern",
    });
  });

  it("keeps names for the child, the pin, the pipe and the write", () => {
    expect(s.ops[3]).toMatchObject({ op: "fork", pid: "a", child: "b", expect: { ok: true } });
    expect(s.ops[4]).toMatchObject({
      op: "pin",
      write: true,
      longterm: true,
      fast: true,
      as: "p",
      expect: { ok: true, pages: 2 },
    });
    expect(s.ops[1]).toMatchObject({ op: "write", as: "A" });
    expect(s.ops[6]).toEqual({ op: "unpin", pin: "p", at: { line: 11, col: 5 } });
    expect(s.ops[7]).toMatchObject({ op: "vmsplice", as: "pipe" });
  });

  it("turns a content write name into a one-item list and keeps lists as written", () => {
    expect(s.ops[5]).toMatchObject({ op: "pinread", expect: { content: ["A"] } });
    expect(s.ops[8]).toMatchObject({ op: "piperead", expect: { content: [7] } });
    expect(s.ops[11]).toMatchObject({ op: "read", expect: { content: ["A", 0] } });
  });

  it("turns mremap flags into bits, none by default", () => {
    expect(s.ops[9]).toMatchObject({
      flags: MREMAP_MAYMOVE | MREMAP_FIXED,
      newAddr: { offset: 0x7f0000000000 },
    });
    expect(s.ops[10]).toMatchObject({ flags: MREMAP_MAYMOVE | MREMAP_DONTUNMAP, addr: { base: "moved" } });
    const plain = parseScenario(at6("{ op: mremap, pid: a, addr: buf, len: 4KiB, newLen: 8KiB }"), "t.yaml");
    expect(plain.ops[1]).toMatchObject({ flags: 0, newLen: 8192 });
  });

  it("rejects a bad pin, pipe or write name at its as", () => {
    expect(fields(errorOf(at6("{ op: pin, pid: a, addr: buf, len: 4KiB, as: 1p }")))).toEqual({
      line: 6,
      col: 50,
      path: "ops[1].as",
      message: "expected a pin name like p, got '1p'",
      hint: "names use letters, digits and _, and do not start with a digit; '-' means minus",
    });
    expect(fields(errorOf(at6("{ op: vmsplice, pid: a, addr: buf, len: 4KiB, as: my-pipe }")))).toMatchObject(
      {
        path: "ops[1].as",
        message: "expected a pipe name like pipe, got 'my-pipe'",
      },
    );
    expect(fields(errorOf(at6("{ op: write, pid: a, addr: buf, len: 4KiB, as: zero }")))).toEqual({
      line: 6,
      col: 52,
      path: "ops[1].as",
      message: "a write cannot be named 'zero'",
      hint: "zero and nonzero are content words; pick another name, like A",
    });
  });

  it("rejects a pin or pipe name no earlier op bound, with the names there are", () => {
    const typo = errorOf(
      at6("{ op: pin, pid: a, addr: buf, len: 4KiB, as: buf1 }", "{ op: unpin, pin: buf2 }"),
    );
    expect(fields(typo)).toEqual({
      line: 7,
      col: 23,
      path: "ops[2].pin",
      message: "undefined pin name 'buf2'",
      hint: "pin names bound so far: buf1; did you mean 'buf1'?",
    });
    expect(fields(errorOf(at6("{ op: piperead, pipe: q }")))).toEqual({
      line: 6,
      col: 27,
      path: "ops[1].pipe",
      message: "undefined pipe name 'q'",
      hint: "bind a name with an earlier { op: vmsplice, ..., as: pipe }",
    });
    const early = errorOf(at6("{ op: pinread, pin: p }", "{ op: pin, pid: a, addr: buf, len: 4KiB, as: p }"));
    expect(early.hint).toBe("'p' is bound later, by the pin at ops[2] (line 7)");
  });

  it("rejects a name of another kind: an address is not a pin, a pin is not an address", () => {
    expect(fields(errorOf(at6("{ op: pinread, pin: buf }")))).toEqual({
      line: 6,
      col: 25,
      path: "ops[1].pin",
      message: "'buf' names an address, not a pin",
      hint: "it is bound by the mmap at ops[0] (line 5)",
    });
    const rebind = errorOf(
      at6(
        "{ op: pin, pid: a, addr: buf, len: 4KiB, as: p }",
        "{ op: mmap, pid: a, len: 4KiB, prot: r, as: p }",
      ),
    );
    expect(fields(rebind)).toMatchObject({
      line: 7,
      path: "ops[2].as",
      message: "'p' already names a pin",
      hint: "it is bound by the pin at ops[1] (line 6); pick another name",
    });
  });

  it("rejects a pin or pipe used after it was released, read or its process exited", () => {
    const pin = "{ op: pin, pid: a, addr: buf, len: 4KiB, as: p }";
    expect(fields(errorOf(at6(pin, "{ op: unpin, pin: p }", "{ op: pinread, pin: p }")))).toEqual({
      line: 8,
      col: 25,
      path: "ops[3].pin",
      message: "pin 'p' was already unpinned",
      hint: "it is unpinned at ops[2] (line 7)",
    });
    const pipe = "{ op: vmsplice, pid: a, addr: buf, len: 4KiB, as: q }";
    expect(
      fields(errorOf(at6(pipe, "{ op: piperead, pipe: q }", "{ op: piperead, pipe: q }"))),
    ).toMatchObject({
      path: "ops[3].pipe",
      message: "pipe 'q' was already read",
      hint: "a pipe is read once, and the piperead at ops[2] (line 7) emptied it",
    });
    const exited = errorOf(
      at6(
        "{ op: fork, pid: a, child: b }",
        "{ op: pin, pid: b, addr: buf, len: 4KiB, as: p }",
        "{ op: exit, pid: b }",
        "{ op: unpin, pin: p }",
      ),
    );
    expect(fields(exited)).toEqual({
      line: 9,
      col: 23,
      path: "ops[4].pin",
      message: "pin 'p' was released when process 'b' exited",
      hint: "it exits at ops[3] (line 8), and exit releases its pins and pipes",
    });
    expect(errorOf(at6(pin, pin)).message).toBe("pin 'p' is still held");
    expect(errorOf(at6(pipe, pipe)).message).toBe("pipe 'q' is still unread");
  });

  it("rejects a pid on the ops that act for the holder of a pin or pipe", () => {
    expect(fields(errorOf(at6("{ op: unpin, pid: a, pin: p }")))).toEqual({
      line: 6,
      col: 18,
      path: "ops[1].pid",
      message: "unknown key 'pid'",
      hint: "this op acts for the process that holds the pin or pipe: remove pid",
    });
  });

  it("rejects bad pin options and expectations", () => {
    expect(fields(errorOf(at6("{ op: pin, pid: a, addr: buf, len: 4KiB, write: yes }")))).toEqual({
      line: 6,
      col: 53,
      path: "ops[1].write",
      message: "expected true or false, got 'yes'",
      hint: "write: true or write: false (yes and no are strings)",
    });
    expect(
      fields(errorOf(at6("{ op: pin, pid: a, addr: buf, len: 4KiB, expect: { errno: EFAULT, pages: 1 } }"))),
    ).toMatchObject({
      path: "ops[1].expect",
      message: "expect needs errno, or ok and/or pages, not both",
    });
  });

  it("rejects an unknown or misplaced mremap flag", () => {
    const mremap = (rest: string) =>
      at6(`{ op: mremap, pid: a, addr: buf, len: 4KiB, newLen: 8KiB, ${rest} }`);
    expect(fields(errorOf(mremap("flags: [maymove, fixd]")))).toEqual({
      line: 6,
      col: 80,
      path: "ops[1].flags[1]",
      message: "unknown mremap flag 'fixd'",
      hint: "mremap flag is one of: maymove, fixed, dontunmap; did you mean 'fixed'?",
    });
    expect(fields(errorOf(mremap("flags: maymove")))).toMatchObject({
      col: 70,
      message: "expected a list of mremap flags like [maymove], got 'maymove'",
    });
    expect(fields(errorOf(mremap("flags: [maymove, fixed]")))).toEqual({
      line: 6,
      col: 70,
      path: "ops[1].flags",
      message: "flag 'fixed' needs newAddr",
      hint: "give the address to move to: newAddr: 0x7f0000000000",
    });
    expect(fields(errorOf(mremap("newAddr: buf+2MiB")))).toMatchObject({
      path: "ops[1].newAddr",
      message: "newAddr is ignored without flag 'fixed' or 'dontunmap'",
    });
    expect(fields(errorOf(mremap("flags: [maymove, fixed], newAddr: bfu")))).toMatchObject({
      path: "ops[1].newAddr",
      message: "undefined address name 'bfu'",
    });
  });

  it("rejects a fork into a name in use, and points at the fork that makes a name", () => {
    expect(fields(errorOf(`${HEAD}  - { op: fork, pid: a, child: a }\n`))).toEqual({
      line: 5,
      col: 32,
      path: "ops[0].child",
      message: "fork needs a fresh name: 'a' is running",
      hint: "pick a name not used earlier in the scenario",
    });
    expect(errorOf(`${HEAD}  - { op: dump, pid: b }\n  - { op: fork, pid: a, child: b }\n`).hint).toBe(
      "'b' is forked later, at ops[1] (line 6)",
    );
  });

  it("rejects an unknown COW reuse rule", () => {
    const e = errorOf("name: t\nmachine: { ram: 64MiB, cow: { reuse: legacyy } }\nprocesses: [a]\nops: []\n");
    expect(fields(e)).toEqual({
      line: 2,
      col: 38,
      path: "machine.cow.reuse",
      message: "unknown reuse rule 'legacyy'",
      hint: "reuse rule is one of: modern, legacy; did you mean 'legacy'?",
    });
  });

  it("checks that content names earlier writes and lists one item per page", () => {
    const write = "{ op: write, pid: a, addr: buf, len: 8KiB, as: A }";
    expect(
      fields(errorOf(at6(write, "{ op: read, pid: a, addr: buf, len: 8KiB, expect: { content: C } }"))),
    ).toEqual({
      line: 7,
      col: 66,
      path: "ops[2].expect.content[0]",
      message: "undefined write name 'C'",
      hint: "write names bound so far: A",
    });
    expect(errorOf(at6("{ op: read, pid: a, addr: buf, len: 4KiB, expect: { content: zeros } }")).hint).toBe(
      "bind a name with an earlier { op: write, ..., as: A }; did you mean 'zero'?",
    );
    const pinread = errorOf(
      at6(
        write,
        "{ op: pin, pid: a, addr: buf, len: 4KiB, as: p }",
        "{ op: pinread, pin: p, expect: { content: A } }",
      ),
    );
    expect(fields(pinread)).toMatchObject({
      path: "ops[3].expect.content",
      message: "content stands for 2 pages (A wrote 2 pages), but the pin holds 1 page",
    });
    expect(
      fields(errorOf(at6("{ op: read, pid: a, addr: buf, len: 4KiB, expect: { content: [A-1] } }"))),
    ).toMatchObject({
      path: "ops[1].expect.content[0]",
      message: "bad page tag 'A-1'",
      hint: "each item is a whole number >= 0 (a tag) or the name of an earlier write (its tags)",
    });
  });
});

describe("runScenario on fork, pin, vmsplice and mremap", () => {
  /** The text of a run, or the ScenarioError it throws, formatted. */
  const run = (text: string) => {
    try {
      return formatRun(runScenario(parseScenario(text, "t.yaml")));
    } catch (e) {
      if (e instanceof ScenarioError) return e.format();
      throw e;
    }
  };

  it("logs each op readably and reports the forked child in the final state", () => {
    const out = run(
      at6(
        "{ op: write, pid: a, addr: buf, len: 4KiB, as: A }",
        "{ op: fork, pid: a, child: b, expect: { ok: true } }",
        "{ op: pin, pid: a, addr: buf, len: 4KiB, fast: true, as: p, expect: { ok: true, pages: 1 } }",
        "{ op: pinread, pin: p, expect: { content: A } }",
        "{ op: unpin, pin: p }",
        "{ op: vmsplice, pid: b, addr: buf, len: 4KiB, as: q }",
        "{ op: piperead, pipe: q, expect: { content: A } }",
        "{ op: madvise, pid: b, addr: buf, len: 4KiB, advice: dontfork }",
        "{ op: mremap, pid: b, addr: buf, len: 4KiB, newLen: 8KiB, flags: [maymove], as: big }",
      ),
    );
    expect(out).toContain("#2   a: write(0x7ffff7eff000, 4KiB): 1 pages, stored [1 (A)]\n");
    expect(out).toContain("#3   a: fork() = pid 2  [b]\n");
    expect(out).toContain("#4   a: pin_user_pages_fast(0x7ffff7eff000, 4KiB, FOLL_PIN) = 1 page  [p]\n");
    expect(out).toContain("#5   a: pinread(p): 1 page [1 (A)]\n");
    expect(out).toContain("#6   a: unpin_user_pages(p) = 0\n");
    expect(out).toContain("#7   b: vmsplice(0x7ffff7eff000, 4KiB) = 1 page  [q]\n");
    expect(out).toContain("#8   b: piperead(q): 1 page [1 (A)]\n");
    expect(out).toContain("#9   b: madvise(0x7ffff7eff000, 4KiB, MADV_DONTFORK) = 0\n");
    expect(out).toMatch(
      /^#10 {2}b: mremap\(0x7ffff7eff000, 4KiB, 8KiB, MREMAP_MAYMOVE\) = 0x[0-9a-f]+ {2}\[big\]$/m,
    );
    expect(out).toContain("pid 2 (b)\nVmSize:");
    expect(out).toMatch(/pid 2 \(b\)\n(?:.*\n)*VmFlags: rd wr mr mw me (?:ac )?dc/);
    expect(out).toContain("expectations: 5 passed, 0 failed");
  });

  it("names the writes a failed content expectation expected and got", () => {
    const out = run(
      at6(
        "{ op: write, pid: a, addr: buf, len: 4KiB, as: A }",
        "{ op: write, pid: a, addr: buf, len: 4KiB, as: B }",
        "{ op: read, pid: a, addr: buf, len: 4KiB, expect: { content: A } }",
      ),
    );
    expect(out).toContain("t.yaml:8:5: expectation failed: expected A = [1 (A)], got [2 (B)]");
  });

  it("stops with file:line:col at a name whose fork or pin failed, naming the errno", () => {
    expect(
      run(
        at6(
          "{ op: pin, pid: a, addr: 0x1000, len: 4KiB, as: p, expect: { errno: EFAULT } }",
          "{ op: unpin, pin: p }",
        ),
      ),
    ).toBe(
      "t.yaml:7:5: error: ops[2].pin: pin 'p' was not taken\n  Hint: the pin at line 6 that binds 'p' returned -EFAULT",
    );
    const fork =
      "name: t\nmachine: { ram: 28KiB }\nprocesses: [a]\nops:\n" +
      "  - { op: mmap, pid: a, len: 4KiB, prot: rw, as: buf }\n" +
      "  - { op: write, pid: a, addr: buf, len: 4KiB }\n" +
      "  - { op: fork, pid: a, child: b, expect: { errno: ENOMEM } }\n" +
      "  - { op: check, pid: b, vmas: 0 }\n";
    expect(run(fork)).toBe(
      "t.yaml:8:5: error: ops[3].pid: process 'b' does not exist\n  Hint: the fork at line 7 that binds 'b' returned -ENOMEM",
    );
  });
});

describe("parseScenario on MADV_FREE, reclaim, swap and event checks", () => {
  const s = parseScenario(
    "name: t\nmachine: { ram: 16MiB, swap: 8MiB, madvise: { free: split } }\nprocesses: [a]\nops:\n" +
      MMAP +
      "  - { op: madvise, pid: a, addr: buf, len: 64KiB, advice: free }\n" +
      "  - { op: madvise, pid: a, addr: buf, len: 64KiB, advice: populate_write }\n" +
      "  - { op: reclaim, pages: 64, expect: { freed: 16 } }\n" +
      "  - { op: reclaim, pages: 1MiB }\n" +
      "  - { op: splitdeferred, expect: { split: 0 } }\n" +
      "  - op: check\n    pid: a\n    status: { VmSwap: 0 }\n    smaps: [{ addr: buf, LazyFree: 64, Swap: 0 }]\n" +
      "    events: { pglazyfreed: 16, hugepages-64kB/split_deferred: { min: 1 }, pswpout: { min: 1, max: 9 } }\n",
    "t.yaml",
  );

  it("reads the swap size and the MADV_FREE design, no swap and batched by default", () => {
    expect(s.machine).toMatchObject({ swap: 8 * MiB, madvise: { free: "split" } });
    const bare = parseScenario(`${HEAD.replace("ops:\n", "ops: []\n")}`, "t.yaml").machine;
    expect(bare).toMatchObject({ swap: 0, madvise: { free: "batched" } });
  });

  it("keeps the new advice by name", () => {
    expect(s.ops[1]).toMatchObject({ op: "madvise", advice: "free" });
    expect(s.ops[2]).toMatchObject({ op: "madvise", advice: "populate_write" });
  });

  it("takes reclaim's amount as pages or as a size with a unit, without a pid", () => {
    expect(s.ops[3]).toMatchObject({ op: "reclaim", pages: 64, expect: { freed: 16 } });
    expect(s.ops[4]).toMatchObject({ op: "reclaim", pages: 256 });
    expect(s.ops[4]).not.toHaveProperty("pid");
    expect(s.ops[5]).toMatchObject({ op: "splitdeferred", expect: { split: 0 } });
  });

  it("keeps VmSwap, smaps Swap and LazyFree, and event counts exact or as ranges", () => {
    expect(s.ops[6]).toMatchObject({
      op: "check",
      status: { VmSwap: 0 },
      smaps: [{ LazyFree: 64, Swap: 0 }],
      events: { pglazyfreed: 16, "hugepages-64kB/split_deferred": { min: 1 }, pswpout: { min: 1, max: 9 } },
    });
  });

  it("rejects a bad advice name, suggesting the spelling with an underscore", () => {
    expect(
      fields(
        errorOf(`${HEAD}${MMAP}  - { op: madvise, pid: a, addr: buf, len: 4KiB, advice: populate-read }\n`),
      ),
    ).toEqual({
      line: 6,
      col: 58,
      path: "ops[1].advice",
      message: "unknown advice 'populate-read'",
      hint: "advice is one of: hugepage, nohugepage, normal, dontfork, dofork, wipeonfork, keeponfork, dontneed, free, cold, pageout, populate_read, populate_write; did you mean 'populate_read'?",
    });
  });

  it("rejects a reclaim of nothing, of part of a page, of a quoted number, or with a pid", () => {
    expect(fields(errorOf(`${HEAD}  - { op: reclaim, pages: 0 }\n`))).toEqual({
      line: 5,
      col: 27,
      path: "ops[0].pages",
      message: "reclaim needs at least 1 page",
      hint: "write pages: 64 (a number of pages) or pages: 256KiB (a whole number of 4 KiB pages)",
    });
    expect(fields(errorOf(`${HEAD}  - { op: reclaim, pages: 6KiB }\n`))).toMatchObject({
      path: "ops[0].pages",
      message: "'6KiB' is not a whole number of 4 KiB pages",
      hint: "write 4KiB or 8KiB",
    });
    expect(fields(errorOf(`${HEAD}  - { op: reclaim, pages: "64" }\n`))).toMatchObject({
      message: "expected a number of pages, or a size with a unit like 256KiB, got '64'",
      hint: "a plain number counts pages: write pages: 64 without quotes, or a size with a unit: 256KiB",
    });
    expect(fields(errorOf(`${HEAD}  - { op: reclaim, pages: -3 }\n`))).toMatchObject({
      message: "expected a number of pages, got -3",
      hint: "it cannot be negative",
    });
    expect(fields(errorOf(`${HEAD}  - { op: reclaim, pid: a, pages: 1 }\n`))).toEqual({
      line: 5,
      col: 20,
      path: "ops[0].pid",
      message: "unknown key 'pid'",
      hint: "this op acts on the whole machine, not on one process: remove pid",
    });
    expect(fields(errorOf(`${HEAD}  - { op: reclaim, pages: 1, expect: { pages: 1 } }\n`))).toMatchObject({
      path: "ops[0].expect.pages",
      hint: "allowed keys here: freed",
    });
  });

  it("rejects an unknown event at its key, and an empty or upside-down range", () => {
    expect(fields(errorOf(`${HEAD}  - { op: check, pid: a, events: { pglazyfred: 1 } }\n`))).toEqual({
      line: 5,
      col: 36,
      path: "ops[0].events.pglazyfred",
      message: "unknown event 'pglazyfred'",
      hint: "events are the counters the report's Events section lists: vmstat names like pglazyfreed, mTHP stats like hugepages-64kB/split_deferred; did you mean 'pglazyfree'?",
    });
    const range = (r: string) => errorOf(`${HEAD}  - { op: check, pid: a, events: { oom: ${r} } }\n`);
    expect(range("{}").message).toBe("the range has no bound");
    expect(range("{ min: 3, max: 1 }").message).toBe("min 3 is above max 1");
    expect(fields(range("{ mn: 1 }"))).toMatchObject({
      path: "ops[0].events.oom.mn",
      hint: "allowed keys here: min, max; did you mean 'min'?",
    });
  });

  it("rejects a bad swap size and an unknown MADV_FREE design", () => {
    const machine = (m: string) =>
      errorOf(`name: t\nmachine: { ram: 64MiB, ${m} }\nprocesses: [a]\nops: []\n`);
    expect(fields(machine("swap: 5000"))).toMatchObject({
      path: "machine.swap",
      message: "swap must be a multiple of 4KiB",
    });
    expect(fields(machine("madvise: { free: splitt }"))).toMatchObject({
      path: "machine.madvise.free",
      message: "unknown MADV_FREE design 'splitt'",
      hint: "MADV_FREE design is one of: batched, split; did you mean 'split'?",
    });
  });

  it("rejects zero or nonzero as one item of a content list", () => {
    expect(
      fields(
        errorOf(
          `${HEAD}${MMAP}  - { op: read, pid: a, addr: buf, len: 4KiB, expect: { content: [nonzero] } }\n`,
        ),
      ),
    ).toMatchObject({
      path: "ops[1].expect.content[0]",
      message: "'nonzero' is not a page tag",
      hint: "nonzero stands for every page: write content: nonzero, or list tags and write names",
    });
  });
});

describe("runScenario on MADV_FREE, reclaim and event checks", () => {
  /** A mapping whose 64 KiB blocks are aligned, so that each holds one whole mTHP folio. */
  const ALIGNED = "  - { op: mmap, pid: a, addr: 0x7f0000000000, len: 1MiB, prot: rw, as: buf }\n";
  const run = (ops: string[], machine = "{ ram: 16MiB, thp: { sizes: { 64kB: always } } }") =>
    formatRun(
      runScenario(
        parseScenario(
          `name: t\nmachine: ${machine}\nprocesses: [a]\nops:\n${ALIGNED}${ops.map((l) => `  - ${l}\n`).join("")}`,
          "t.yaml",
        ),
      ),
    );

  it("logs reclaim and the deferred split scan without a process, and checks what they return", () => {
    const out = run([
      "{ op: write, pid: a, addr: buf, len: 128KiB }",
      "{ op: madvise, pid: a, addr: buf, len: 64KiB, advice: free }",
      "{ op: madvise, pid: a, addr: buf+68KiB, len: 4KiB, advice: dontneed }",
      "{ op: reclaim, pages: 16, expect: { freed: 16 } }",
      "{ op: splitdeferred, expect: { split: 1 } }",
      "{ op: check, pid: a, events: { pglazyfreed: 16, hugepages-64kB/split: { min: 1 } } }",
      "{ op: splitdeferred, expect: { split: 1 } }",
    ]);
    expect(out).toContain("#3   a: madvise(0x7f0000000000, 64KiB, MADV_FREE) = 0\n");
    expect(out).toContain("#5   reclaim(16 pages) = 16 freed\n");
    expect(out).toContain("#6   deferred_split_scan() = 1 folio split\n");
    expect(out).toContain("#7   a: check pglazyfreed=16 hugepages-64kB/split=1\n");
    expect(out).toContain("t.yaml:12:5: expectation failed: expected 1 folio split, got 0");
    expect(out).toContain("expectations: 4 passed, 1 failed");
  });

  it("names the event and the range a failed event check expected", () => {
    const out = run(["{ op: check, pid: a, events: { pglazyfree: { min: 1 }, oom: 2 } }"]);
    expect(out).toContain("expectation failed: event pglazyfree is 0, expected at least 1");
    expect(out).toContain("expectation failed: event oom is 0, expected 2");
  });

  it("boots the machine with the swap and the MADV_FREE design the scenario names", () => {
    const out = run(
      [
        "{ op: write, pid: a, addr: buf, len: 64KiB }",
        "{ op: madvise, pid: a, addr: buf, len: 64KiB, advice: pageout }",
        "{ op: check, pid: a, status: { VmSwap: 64 }, smaps: [{ addr: buf, Swap: 64, Rss: 0 }] }",
      ],
      "{ ram: 16MiB, swap: 1MiB }",
    );
    expect(out).toContain("expectations: 3 passed, 0 failed");
    expect(out).toContain("VmSwap:         64 kB");
  });
});

describe("schema/scenario.schema.json", () => {
  it("matches the zod schema (run npm run schema after changing schema.ts)", () => {
    expect(readFileSync(SCHEMA_FILE, "utf8")).toBe(scenarioJsonSchemaText());
  });
});
