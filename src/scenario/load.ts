// Loading a scenario file: YAML text in, a validated Scenario out, or one ScenarioError that points
// at file:line:col with a data path, a message and a hint.
//
//   YAML text --parseDocument--> Document --toJS--> plain data --scenarioSchema--> body
//                  |                                                     |
//                  +---- LineCounter: any data path -> line:col <--------+-- staticCheck: pids, names
//
// When several things are wrong, the first one in the file is reported.

import { readFileSync } from "node:fs";
import { type Document, isMap, isScalar, isSeq, LineCounter, type Node, parseDocument } from "yaml";
import type * as z from "zod";
import { MAP_FIXED, MAP_FIXED_NOREPLACE, PAGE_SIZE } from "../uapi.ts";
import {
  type AddrExpr,
  didYouMean,
  HINT_SEP,
  type Op,
  type OpBody,
  type Scenario,
  type SourcePos,
  scenarioSchema,
} from "./schema.ts";

type Path = readonly PropertyKey[];

/** Bad user input in a scenario file; format() gives the one-error report the CLI prints. */
export class ScenarioError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly col: number,
    /** Where in the data, like "ops[3].len"; "(document)" for the file as a whole. */
    readonly path: string,
    message: string,
    readonly hint: string,
  ) {
    super(message);
    this.name = "ScenarioError";
  }

  /** "FILE:LINE:COL: error: PATH: MESSAGE" and a "  Hint: HINT" line. */
  format(): string {
    return `${this.file}:${this.line}:${this.col}: error: ${this.path}: ${this.message}\n  Hint: ${this.hint}`;
  }
}

/**
 * Parses and validates scenario text; file names it in errors and in the result.
 * Returns the Scenario with every op's source position in `at`.
 * Throws ScenarioError for bad YAML, a wrong type, an unknown key, a bad value or a failed static check.
 */
export function parseScenario(text: string, file: string): Scenario {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  const src = new Source(file, doc, lineCounter);
  const yamlError = doc.errors[0];
  if (yamlError) {
    const { line, col } = lineCounter.linePos(yamlError.pos[0]);
    const hint =
      YAML_HINTS[yamlError.code] ?? "check the YAML syntax near here; quote values that contain ': ' or ' #'";
    throw new ScenarioError(file, line, col, "(document)", `bad YAML: ${yamlError.message}`, hint);
  }
  let data: unknown;
  try {
    data = doc.toJS();
  } catch (e) {
    throw src.error([], `bad YAML: ${(e as Error).message}`, "avoid deep alias (*name) chains");
  }
  const parsed = scenarioSchema.safeParse(data);
  if (!parsed.success) throw firstIssue(src, parsed.error.issues);
  const body = parsed.data;
  staticCheck(src, body.processes, body.ops);
  const ops: Op[] = body.ops.map((op, i) => ({ ...op, at: src.pos(["ops", i]) }));
  return { ...body, file, ops };
}

/** Reads and parses the scenario at path (see parseScenario); an unreadable file is a ScenarioError too. */
export function loadScenario(path: string): Scenario {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "";
    throw new ScenarioError(
      path,
      1,
      1,
      "(document)",
      `cannot read the file (${code})`,
      "check the path and its permissions",
    );
  }
  return parseScenario(text, path);
}

const YAML_HINTS: Readonly<Record<string, string>> = {
  BAD_INDENT: "check the indentation and that every [ and { is closed",
  TAB_AS_INDENT: "indent with spaces, not tabs",
  DUPLICATE_KEY: "each key may appear once in a mapping",
  MISSING_CHAR: "close the quote, ] or } that starts earlier",
  MULTIPLE_DOCS: "a scenario file holds one document: remove the extra ---",
  BLOCK_AS_IMPLICIT_KEY:
    "put a nested mapping on its own indented lines, or quote a value that contains ': '",
};

// ---------------------------------------------------------------------------------------------
// Positions.

/** Maps data paths to YAML nodes and builds positioned errors. */
class Source {
  constructor(
    readonly file: string,
    readonly doc: Document,
    readonly lineCounter: LineCounter,
  ) {}

  /**
   * The node path points at and whether all of it was found. A missing key resolves to its nearest
   * present ancestor; an empty value (`len:`) and, with atKey, any value resolve to the key itself.
   */
  find(path: Path, atKey = false): { node: Node | null; found: boolean } {
    let node = this.doc.contents as Node | null;
    for (const [i, k] of path.entries()) {
      let next: Node | null | undefined;
      if (isMap(node)) {
        const pair = node.items.find((p) => String(isScalar(p.key) ? p.key.value : p.key) === String(k));
        const value = pair?.value as Node | null | undefined;
        const empty = !value || (isScalar(value) && value.range?.[0] === value.range?.[1]);
        next = pair && ((atKey && i === path.length - 1) || empty) ? (pair.key as Node) : value;
      } else if (isSeq(node) && typeof k === "number") {
        next = node.items[k] as Node | undefined;
      }
      if (!next) return { node, found: false };
      node = next;
    }
    return { node, found: true };
  }

  /** The 1-based position of the node at path (see find). */
  pos(path: Path, atKey = false): SourcePos {
    const { node } = this.find(path, atKey);
    return this.lineCounter.linePos(node?.range?.[0] ?? 0);
  }

  /** A ScenarioError at path. */
  error(path: Path, message: string, hint: string, atKey = false): ScenarioError {
    const { line, col } = this.pos(path, atKey);
    return new ScenarioError(this.file, line, col, formatPath(path), message, hint);
  }
}

/** ["ops", 3, "len"] -> "ops[3].len"; [] -> "(document)". */
function formatPath(path: Path): string {
  let s = "";
  for (const k of path) s += typeof k === "number" ? `[${k}]` : s ? `.${String(k)}` : String(k);
  return s || "(document)";
}

/**
 * The zod issue that comes first in the file, as a ScenarioError. An issue about an absent key sorts
 * at the end of the mapping that lacks it, so that a misspelled key is reported before the missing one.
 */
function firstIssue(src: Source, issues: readonly z.core.$ZodIssue[]): ScenarioError {
  let best: { at: number; err: ScenarioError } | undefined;
  for (const iss of issues) {
    const atKey = iss.code === "unrecognized_keys";
    const path = atKey ? [...iss.path, iss.keys[0]] : iss.path;
    const { node, found } = src.find(path, atKey);
    const at = (found ? node?.range?.[0] : node?.range?.[1]) ?? 0;
    const [message, hint = "see docs/scenarios.md"] = iss.message.split(HINT_SEP);
    if (!best || at < best.at) best = { at, err: src.error(path, message, hint, atKey) };
  }
  // Safe: safeParse failed, so there is at least one issue.
  return best!.err;
}

// ---------------------------------------------------------------------------------------------
// Static checks: the rules that need the whole op list.

/**
 * Checks, in op order, that process names are unique, every pid names a live process, spawn uses a
 * fresh name and every address name was bound by an earlier mmap's `as`; then checkOpAlone on each
 * op. Throws the first failure.
 */
function staticCheck(src: Source, processes: readonly string[], ops: readonly OpBody[]): void {
  const fail = (path: Path, message: string, hint: string): never => {
    throw src.error(path, message, hint);
  };
  const lineOf = (i: number) => `ops[${i}] (line ${src.pos(["ops", i]).line})`;
  const live = new Set<string>();
  const exitedBy = new Map<string, number>();
  processes.forEach((p, i) => {
    if (live.has(p)) fail(["processes", i], `duplicate process '${p}'`, "process names must be unique");
    live.add(p);
  });
  const used = new Set(live);
  const names = new Set<string>();

  ops.forEach((op, i) => {
    const at = (...rest: PropertyKey[]) => ["ops", i, ...rest];
    if (op.op === "spawn") {
      if (used.has(op.pid)) {
        const why = live.has(op.pid) ? "is running" : "was used before";
        fail(
          at("pid"),
          `spawn needs a fresh name: '${op.pid}' ${why}`,
          "pick a name not used earlier in the scenario",
        );
      }
      live.add(op.pid);
      used.add(op.pid);
    } else if (!live.has(op.pid)) {
      const exit = exitedBy.get(op.pid);
      if (exit !== undefined)
        fail(at("pid"), `process '${op.pid}' has exited`, `it exits at ${lineOf(exit)}`);
      const later = ops.findIndex((o, j) => j > i && o.op === "spawn" && o.pid === op.pid);
      const hint =
        later >= 0
          ? `'${op.pid}' is spawned later, at ${lineOf(later)}`
          : `processes at this point: ${[...live].join(", ") || "none"}${didYouMean(op.pid, [...live])}`;
      fail(at("pid"), `unknown process '${op.pid}'`, hint);
    }
    if (op.op === "exit") {
      live.delete(op.pid);
      exitedBy.set(op.pid, i);
    }

    const checkAddr = (a: AddrExpr | undefined, path: Path) => {
      if (!a?.base || names.has(a.base)) return;
      const later = ops.findIndex((o, j) => j > i && o.op === "mmap" && o.as === a.base);
      const hint =
        later >= 0
          ? `'${a.base}' is bound later, by the mmap at ${lineOf(later)}`
          : names.size
            ? `names bound so far: ${[...names].join(", ")}${didYouMean(a.base, [...names])}`
            : "bind a name with an earlier mmap: { op: mmap, ..., as: buf }";
      fail(path, `undefined address name '${a.base}'`, hint);
    };
    if ("addr" in op) checkAddr(op.addr, at("addr"));
    if (op.op === "check") {
      for (const [j, s] of (op.smaps ?? []).entries()) checkAddr(s.addr, at("smaps", j, "addr"));
    }
    if (op.op === "mmap" && op.as) names.add(op.as);
    checkOpAlone(op, (path, message, hint) => fail(at(...path), message, hint));
  });
}

/**
 * The rules on one op that its schema cannot state: fixed mappings have an addr, read/write content
 * lists one tag per page touched, and a check checks something. Calls fail (path within the op).
 */
function checkOpAlone(op: OpBody, fail: (path: Path, message: string, hint: string) => never): void {
  if (op.op === "mmap") {
    const fixed = op.flags & MAP_FIXED_NOREPLACE ? "fixed_noreplace" : op.flags & MAP_FIXED ? "fixed" : null;
    if (fixed && op.addr === undefined) {
      fail(["flags"], `flag '${fixed}' needs addr`, "give the address to map at: addr: 0x7f0000000000");
    }
  }
  if ((op.op === "read" || op.op === "write") && Array.isArray(op.expect?.content)) {
    // Names are bound to mmap results, which are page-aligned, so the offset fixes the alignment.
    const first = ((op.addr.offset % PAGE_SIZE) + PAGE_SIZE) % PAGE_SIZE;
    const pages = op.len === 0 ? 0 : Math.ceil((first + op.len) / PAGE_SIZE);
    const n = op.expect.content.length;
    if (n !== pages) {
      const msg = `content lists ${plural(n, "page tag")}, but the access touches ${plural(pages, "page")}`;
      fail(["expect", "content"], msg, "give one tag per page from addr to addr+len");
    }
  }
  if (op.op === "check" && !op.status && !op.smaps && op.vmas === undefined) {
    fail([], "check has nothing to check", "add status, smaps or vmas");
  }
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;
