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
import { PIPE_DEF_BUFFERS } from "../mm/kernel.ts";
import { MAP_FIXED, MAP_FIXED_NOREPLACE, MREMAP_DONTUNMAP, MREMAP_FIXED, PAGE_SIZE } from "../uapi.ts";
import {
  type AddrExpr,
  CONTENT_WORDS,
  type ContentExpect,
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
  checkKnownDiffs(src, body);
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

/** What a name bound by an op's `as` stands for. */
type NameKind = "address" | "write" | "pin" | "pipe";
const KINDS: Readonly<Record<NameKind, { a: string; example: string }>> = {
  address: { a: "an address", example: "{ op: mmap, ..., as: buf }" },
  write: { a: "the content of a write", example: "{ op: write, ..., as: A }" },
  pin: { a: "a pin", example: "{ op: pin, ..., as: p }" },
  pipe: { a: "a pipe", example: "{ op: vmsplice, ..., as: pipe }" },
};

/** A name as the static check tracks it. */
interface Binding {
  kind: NameKind;
  /** The op that bound it last. */
  op: number;
  /** The process that bound it: its pins and pipes go when it exits. */
  owner: string;
  /** The pages it covers (written, pinned, spliced) if the op takes all it asks for. */
  pages: number;
  /** Why a pin or pipe can no longer be used: the message's end and the hint. */
  gone?: { why: string; hint: string };
}

/** The name an op binds with `as`, its kind and how many pages it covers; null when none. */
function bindingOf(op: OpBody): { name: string; kind: NameKind; pages: number } | null {
  switch (op.op) {
    case "mmap":
    case "mremap":
      return op.as ? { name: op.as, kind: "address", pages: 0 } : null;
    case "write":
      return op.as ? { name: op.as, kind: "write", pages: pagesOf(op.addr, op.len) } : null;
    case "pin":
      return op.as ? { name: op.as, kind: "pin", pages: pagesOf(op.addr, op.len) } : null;
    case "vmsplice":
      return op.as
        ? { name: op.as, kind: "pipe", pages: Math.min(PIPE_DEF_BUFFERS, pagesOf(op.addr, op.len)) }
        : null;
    default:
      return null;
  }
}

/**
 * Checks the `diff.known` entries: a pid names a process of the scenario (listed, spawned or
 * forked), an addr's name is bound by some mmap or mremap.
 */
function checkKnownDiffs(src: Source, body: Omit<Scenario, "file" | "ops"> & { ops: OpBody[] }): void {
  const procs = new Set(body.processes);
  const addrs = new Set<string>();
  for (const op of body.ops) {
    if (op.op === "spawn") procs.add(op.pid);
    if (op.op === "fork") procs.add(op.child);
    const b = bindingOf(op);
    if (b?.kind === "address") addrs.add(b.name);
  }
  body.diff?.known.forEach((k, i) => {
    if (k.pid !== undefined && !procs.has(k.pid))
      throw src.error(
        ["diff", "known", i, "pid"],
        `unknown process '${k.pid}'`,
        `processes of this scenario: ${[...procs].join(", ")}${didYouMean(k.pid, [...procs])}`,
      );
    const base = k.addr?.base;
    if (base != null && !addrs.has(base))
      throw src.error(
        ["diff", "known", i, "addr"],
        `undefined address name '${base}'`,
        `address names of this scenario: ${[...addrs].join(", ") || "none"}${didYouMean(base, [...addrs])}`,
      );
  });
}

/** The pages [a, a + len) touches. Names are bound to page-aligned addresses, so the offset fixes the alignment. */
function pagesOf(a: AddrExpr, len: number): number {
  const first = ((a.offset % PAGE_SIZE) + PAGE_SIZE) % PAGE_SIZE;
  return len === 0 ? 0 : Math.ceil((first + len) / PAGE_SIZE);
}

/**
 * Checks, in op order, that process names are unique, every pid names a live process, spawn and
 * fork use a fresh name, every name an op uses (address, write, pin, pipe) was bound earlier by
 * an `as` of its kind and, for pins and pipes, is still held, and that content expectations list
 * one item per page; then checkOpAlone on each op. Throws the first failure.
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
  const bound = new Map<string, Binding>();

  ops.forEach((op, i) => {
    const at = (...rest: PropertyKey[]) => ["ops", i, ...rest];
    const fresh = (name: string, path: Path) => {
      if (used.has(name)) {
        const why = live.has(name) ? "is running" : "was used before";
        fail(
          path,
          `${op.op} needs a fresh name: '${name}' ${why}`,
          "pick a name not used earlier in the scenario",
        );
      }
      live.add(name);
      used.add(name);
    };
    const checkLive = (name: string, path: Path) => {
      if (live.has(name)) return;
      const exit = exitedBy.get(name);
      if (exit !== undefined) fail(path, `process '${name}' has exited`, `it exits at ${lineOf(exit)}`);
      const later = ops.findIndex(
        (o, j) => j > i && ((o.op === "spawn" && o.pid === name) || (o.op === "fork" && o.child === name)),
      );
      const hint =
        later >= 0
          ? `'${name}' is ${ops[later].op === "spawn" ? "spawned" : "forked"} later, at ${lineOf(later)}`
          : `processes at this point: ${[...live].join(", ") || "none"}${didYouMean(name, [...live])}`;
      fail(path, `unknown process '${name}'`, hint);
    };
    /** The binding name has as kind at this op; fails when it is unbound, another kind, or gone. */
    const use = (name: string, kind: NameKind, path: Path, extra: readonly string[] = []): Binding => {
      const b = bound.get(name);
      if (b === undefined) {
        const later = ops.findIndex(
          (o, j) => j > i && bindingOf(o)?.name === name && bindingOf(o)?.kind === kind,
        );
        const same = [...bound].filter(([, v]) => v.kind === kind).map(([n]) => n);
        const hint =
          later >= 0
            ? `'${name}' is bound later, by the ${ops[later].op} at ${lineOf(later)}`
            : same.length
              ? `${kind} names bound so far: ${same.join(", ")}${didYouMean(name, [...extra, ...same])}`
              : `bind a name with an earlier ${KINDS[kind].example}${didYouMean(name, extra)}`;
        return fail(path, `undefined ${kind} name '${name}'`, hint);
      }
      if (b.kind !== kind)
        fail(
          path,
          `'${name}' names ${KINDS[b.kind].a}, not ${KINDS[kind].a}`,
          `it is bound by the ${ops[b.op].op} at ${lineOf(b.op)}`,
        );
      if (b.gone) fail(path, `${kind} '${name}' ${b.gone.why}`, b.gone.hint);
      return b;
    };
    const checkAddr = (a: AddrExpr | undefined, path: Path) => {
      if (a?.base) use(a.base, "address", path);
    };
    /** Content lists one item per page: a tag is one page, a write name the pages it wrote. */
    const checkContent = (content: ContentExpect | undefined, pages: number, what: string, path: Path) => {
      if (!Array.isArray(content)) return;
      let n = 0;
      const named: string[] = [];
      content.forEach((item, j) => {
        if (typeof item === "number") n++;
        else if ((CONTENT_WORDS as readonly string[]).includes(item))
          fail(
            [...path, j],
            `'${item}' is not a page tag`,
            `${item} stands for every page: write content: ${item}, or list tags and write names`,
          );
        else {
          const w = use(item, "write", [...path, j], CONTENT_WORDS);
          n += w.pages;
          named.push(`${item} wrote ${plural(w.pages, "page")}`);
        }
      });
      if (n === pages) return;
      const lists = named.length
        ? `content stands for ${plural(n, "page")} (${named.join(", ")})`
        : `content lists ${plural(n, "page tag")}`;
      fail(
        path,
        `${lists}, but ${what} ${plural(pages, "page")}`,
        "give one tag per page from addr to addr+len; a write name stands for every page that write stored",
      );
    };

    if (op.op === "spawn") fresh(op.pid, at("pid"));
    else if ("pid" in op) checkLive(op.pid, at("pid"));
    if (op.op === "fork") fresh(op.child, at("child"));
    if (op.op === "exit") {
      live.delete(op.pid);
      exitedBy.set(op.pid, i);
      for (const b of bound.values()) {
        if ((b.kind === "pin" || b.kind === "pipe") && b.owner === op.pid && !b.gone) {
          const why = `was released when process '${op.pid}' exited`;
          b.gone = { why, hint: `it exits at ${lineOf(i)}, and exit releases its pins and pipes` };
        }
      }
    }

    if ("addr" in op) checkAddr(op.addr, at("addr"));
    if (op.op === "mremap") checkAddr(op.newAddr, at("newAddr"));
    if (op.op === "check") {
      for (const [j, s] of (op.smaps ?? []).entries()) checkAddr(s.addr, at("smaps", j, "addr"));
    }
    if (op.op === "read" || op.op === "write")
      checkContent(
        op.expect?.content,
        pagesOf(op.addr, op.len),
        "the access touches",
        at("expect", "content"),
      );
    if (op.op === "unpin") {
      use(op.pin, "pin", at("pin")).gone = {
        why: "was already unpinned",
        hint: `it is unpinned at ${lineOf(i)}`,
      };
    }
    if (op.op === "pinread") {
      const b = use(op.pin, "pin", at("pin"));
      checkContent(op.expect?.content, b.pages, "the pin holds", at("expect", "content"));
    }
    if (op.op === "piperead") {
      const b = use(op.pipe, "pipe", at("pipe"));
      checkContent(op.expect?.content, b.pages, "the pipe holds", at("expect", "content"));
      b.gone = {
        why: "was already read",
        hint: `a pipe is read once, and the piperead at ${lineOf(i)} emptied it`,
      };
    }

    const bind = bindingOf(op);
    if (bind !== null) {
      const old = bound.get(bind.name);
      if (old !== undefined && old.kind !== bind.kind)
        fail(
          at("as"),
          `'${bind.name}' already names ${KINDS[old.kind].a}`,
          `it is bound by the ${ops[old.op].op} at ${lineOf(old.op)}; pick another name`,
        );
      if (old?.kind === "pin" && !old.gone)
        fail(
          at("as"),
          `pin '${bind.name}' is still held`,
          `unpin it first (it is taken at ${lineOf(old.op)}), or pick another name`,
        );
      if (old?.kind === "pipe" && !old.gone)
        fail(
          at("as"),
          `pipe '${bind.name}' is still unread`,
          `piperead it first (it is filled at ${lineOf(old.op)}), or pick another name`,
        );
      bound.set(bind.name, { kind: bind.kind, op: i, owner: "pid" in op ? op.pid : "", pages: bind.pages });
    }
    checkOpAlone(op, (path, message, hint) => fail(at(...path), message, hint));
  });
}

/**
 * The rules on one op that its schema cannot state: fixed mappings have an addr, an mremap's
 * newAddr goes with fixed or dontunmap, and a check checks something. Calls fail (path within
 * the op).
 */
function checkOpAlone(op: OpBody, fail: (path: Path, message: string, hint: string) => never): void {
  if (op.op === "mmap") {
    const fixed = op.flags & MAP_FIXED_NOREPLACE ? "fixed_noreplace" : op.flags & MAP_FIXED ? "fixed" : null;
    if (fixed && op.addr === undefined) {
      fail(["flags"], `flag '${fixed}' needs addr`, "give the address to map at: addr: 0x7f0000000000");
    }
  }
  if (op.op === "mremap") {
    if (op.flags & MREMAP_FIXED && op.newAddr === undefined)
      fail(["flags"], "flag 'fixed' needs newAddr", "give the address to move to: newAddr: 0x7f0000000000");
    if (op.newAddr !== undefined && !(op.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)))
      fail(
        ["newAddr"],
        "newAddr is ignored without flag 'fixed' or 'dontunmap'",
        "add flags: [maymove, fixed], or remove newAddr",
      );
  }
  if (op.op === "check" && !op.status && !op.smaps && op.vmas === undefined && !op.events) {
    fail([], "check has nothing to check", "add status, smaps, vmas or events");
  }
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;
