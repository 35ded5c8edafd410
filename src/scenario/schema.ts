// The scenario file format: zod schemas for what people type in YAML, transformed into what the
// runner consumes (sizes and addresses as numbers, prot and flags as uapi bits).
//
// Every message a schema raises is written for a human and carries a hint, joined by withHint();
// load.ts splits them again and adds file:line:col. Cross-op rules (a pid must exist, an address
// name must be defined earlier) need the whole op list and live in load.ts.

import * as z from "zod";
import { VmStat } from "../mm/vmstat.ts";
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_NORESERVE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
} from "../uapi.ts";

/** Separates a message from its hint inside one zod issue message. */
export const HINT_SEP = "\nHint: ";

/** Joins a message and its hint into one zod issue message (split again on HINT_SEP). */
export function withHint(message: string, hint: string): string {
  return message + HINT_SEP + hint;
}

/** "; did you mean 'x'?" when word is a likely typo of one candidate, else "". */
export function didYouMean(word: string, candidates: readonly string[]): string {
  let best = "";
  let bestDist = Math.max(1, Math.floor(word.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    // A distance equal to the length replaces the whole word: not a typo ('c' for 'a').
    if (d < bestDist && d < Math.max(word.length, c.length)) [best, bestDist] = [c, d];
  }
  return best ? `; did you mean '${best}'?` : "";
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

/** A value as a message shows it: 'text', 42, true, a list, a mapping, an empty value. */
export function describe(v: unknown): string {
  if (v === null || v === undefined) return "an empty value";
  if (typeof v === "string") return `'${v}'`;
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return String(v);
}

// ---------------------------------------------------------------------------------------------
// Error functions: each schema names what it expects, so that zod's generic messages never show.

type ErrorFn = (iss: z.core.$ZodRawIssue) => string | undefined;

const keyOf = (iss: z.core.$ZodRawIssue) => String(iss.path?.at(-1) ?? "value");
const missing = (iss: z.core.$ZodRawIssue, what: string) =>
  withHint(`missing key '${keyOf(iss)}'`, `add ${keyOf(iss)}: ${what}`);

/** "missing key 'k'" when absent, else "expected WHAT, got V" with hint. */
function expected(what: string, hint: string): ErrorFn {
  return (iss) =>
    iss.input === undefined
      ? missing(iss, what)
      : withHint(`expected ${what}, got ${describe(iss.input)}`, hint);
}

/** For enums: "unknown WHAT 'v'" with the allowed values and the closest one. */
function oneOf(what: string, values: readonly string[]): ErrorFn {
  const list = values.join(", ");
  return (iss) =>
    iss.input === undefined
      ? missing(iss, `one of ${list}`)
      : withHint(
          `unknown ${what} ${describe(iss.input)}`,
          `${what} is one of: ${list}${didYouMean(String(iss.input), values)}`,
        );
}

/** For whole numbers: names the safe-integer and sign limits in the hint. */
function count(what: string): ErrorFn {
  return (iss) => {
    const v = iss.input;
    if (typeof v !== "number") return expected(what, `write ${what}`)(iss);
    const why = !Number.isInteger(v)
      ? "it must be a whole number"
      : v < 0
        ? "it cannot be negative"
        : "numbers must be below 2**53 (9007199254740992)";
    return withHint(`expected ${what}, got ${v}`, why);
  };
}

/**
 * z.strictObject whose unknown keys are reported with the allowed keys and the closest one, or
 * with keyHints' hint for a key people are likely to add by mistake.
 */
function strict<S extends z.core.$ZodLooseShape>(
  shape: S,
  what: string,
  keyHints: Readonly<Record<string, string>> = {},
) {
  const keys = Object.keys(shape);
  const notObject = expected(what, `write ${what}`);
  return z.strictObject(shape, {
    error: (iss) => {
      if (iss.code !== "unrecognized_keys") return notObject(iss);
      const bad = iss.keys.map((k) => `'${k}'`).join(", ");
      return withHint(
        `unknown key${iss.keys.length > 1 ? "s" : ""} ${bad}`,
        keyHints[iss.keys[0]] ?? `allowed keys here: ${keys.join(", ")}${didYouMean(iss.keys[0], keys)}`,
      );
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Sizes and addresses.

const SIZE_UNITS: Readonly<Record<string, number>> = {
  B: 1,
  KiB: 2 ** 10,
  MiB: 2 ** 20,
  GiB: 2 ** 30,
  TiB: 2 ** 40,
  // The kernel's "kB" means KiB; MB and GB follow it.
  kB: 2 ** 10,
  MB: 2 ** 20,
  GB: 2 ** 30,
};
const SIZE_SRC = `0x[0-9a-fA-F]+|[0-9]+ *(?:${Object.keys(SIZE_UNITS).join("|")})?`;
const SIZE_RE = new RegExp(`^ *(?:${SIZE_SRC}) *$`);
const NAME_SRC = "[A-Za-z_][A-Za-z0-9_]*";
const NAME_RE = new RegExp(`^${NAME_SRC}$`);
const ADDR_RE = new RegExp(`^ *(?:(${NAME_SRC})|(0x[0-9a-fA-F]+)) *(?:([+-]) *(${SIZE_SRC}))? *$`);
const PID_RE = /^[a-z][a-z0-9_-]*$/i;
const SIZE_WHAT = "a size like 4KiB, 2MiB or a number of bytes";

/**
 * The number of bytes a size string names: "4096", "0x1000", "4KiB", "2 MiB", "64kB" (binary).
 * Returns null when text is not a size or the result is not a safe integer.
 */
export function parseSize(text: string): number | null {
  const m = /^ *(?:0x([0-9a-fA-F]+)|([0-9]+) *([A-Za-z]*)) *$/.exec(text);
  if (!m) return null;
  const unit = m[3] ? SIZE_UNITS[m[3]] : 1;
  const n = m[1] !== undefined ? Number.parseInt(m[1], 16) : Number(m[2]) * (unit ?? Number.NaN);
  return Number.isSafeInteger(n) ? n : null;
}

/** The unit a size string like "4 KB" uses, when it has one. */
const unitOf = (v: unknown) => (typeof v === "string" ? /^ *[0-9]+ *([A-Za-z]+) *$/.exec(v)?.[1] : undefined);
const unitHint = (unit: string) =>
  `unknown unit '${unit}': use B, KiB, MiB, GiB or TiB (kB, MB, GB mean KiB, MiB, GiB)${didYouMean(unit, Object.keys(SIZE_UNITS))}`;

const sizeError: ErrorFn = (iss) => {
  const v = iss.input;
  if (typeof v === "number") return count(SIZE_WHAT)(iss);
  const unit = unitOf(v);
  const hint = unit
    ? unitHint(unit)
    : "write bytes (4096, 0x1000) or a whole number with a unit: B, KiB, MiB, GiB, TiB, kB, MB, GB";
  return iss.input === undefined
    ? missing(iss, SIZE_WHAT)
    : withHint(`expected ${SIZE_WHAT}, got ${describe(v)}`, hint);
};

/** A size: non-negative bytes, typed as a number or a string with a unit. */
const size = z
  .union(
    [
      z.int({ error: sizeError }).min(0, { error: sizeError }),
      z.string({ error: sizeError }).regex(SIZE_RE, { error: sizeError }),
    ],
    {
      error: sizeError,
    },
  )
  .transform((v, ctx) => {
    const n = typeof v === "number" ? v : parseSize(v);
    if (n !== null) return n;
    ctx.issues.push({
      code: "custom",
      input: v,
      message: withHint(`size '${v}' is too large`, "sizes must be below 2**53 bytes"),
    });
    return z.NEVER;
  })
  .meta({ id: "Size", description: `${SIZE_WHAT}; units B KiB MiB GiB TiB, and kB MB GB as binary` });

/** An address before resolution: the runner adds the address bound to base (if any) to offset. */
export type AddrExpr = { base: string | null; offset: number };

const ADDR_WHAT = "an address: a number, 0x..., or a name from an earlier mmap 'as', optionally +/- a size";
const addrError = expected(ADDR_WHAT, "for example 0x7f0000000000, buf, buf+4KiB, buf - 0x1000");

/** An address: a number, "0x...", or "name", "name+size", "name - size". */
const addr = z
  .union(
    [
      z.int({ error: count(ADDR_WHAT) }).min(0, { error: count(ADDR_WHAT) }),
      z.string({ error: addrError }).regex(ADDR_RE, { error: addrError }),
    ],
    {
      error: addrError,
    },
  )
  .transform((v, ctx): AddrExpr => {
    if (typeof v === "number") return { base: null, offset: v };
    const [, name, hex, sign, delta] = ADDR_RE.exec(v) ?? [];
    const d = delta === undefined ? 0 : parseSize(delta);
    const offset = (hex ? Number.parseInt(hex, 16) : 0) + (sign === "-" ? -1 : 1) * (d ?? Number.NaN);
    if (Number.isSafeInteger(offset) && (name || offset >= 0)) return { base: name ?? null, offset };
    ctx.issues.push({
      code: "custom",
      input: v,
      message: withHint(`address '${v}' is out of range`, "addresses must be in [0, 2**53)"),
    });
    return z.NEVER;
  })
  .meta({ id: "Address", description: ADDR_WHAT });

/** A name an op's `as` binds: what it names (for messages) and an example. */
function bindName(what: string, example: string) {
  const err = expected(
    `${what} like ${example}`,
    "names use letters, digits and _, and do not start with a digit; '-' means minus",
  );
  return z.string({ error: expected(`${what} like ${example}`, `write as: ${example}`) }).regex(NAME_RE, {
    error: err,
  });
}

const addrName = bindName("an address name", "buf");
/** The words content expectations reserve; a write cannot take them as its name. */
export const CONTENT_WORDS = ["zero", "nonzero"] as const;
const writeName = bindName("a write name", "A").refine(
  (n) => !(CONTENT_WORDS as readonly string[]).includes(n),
  {
    error: (iss) =>
      withHint(
        `a write cannot be named ${describe(iss.input)}`,
        "zero and nonzero are content words; pick another name, like A",
      ),
  },
);
const pinName = bindName("a pin name", "p");
const pipeName = bindName("a pipe name", "pipe");

const processName = z.string({ error: expected("a process name like a", "write pid: a") }).regex(PID_RE, {
  error: expected(
    "a process name like a or worker-1",
    "names start with a letter and use letters, digits, _ and -",
  ),
});

// ---------------------------------------------------------------------------------------------
// prot, flags, expectations.

const PROT_WORDS = ["read", "write", "exec", "none"] as const;
const PROT_BITS: Readonly<Record<string, number>> = {
  r: PROT_READ,
  w: PROT_WRITE,
  x: PROT_EXEC,
  read: PROT_READ,
  write: PROT_WRITE,
  exec: PROT_EXEC,
  none: 0,
};
const PROT_WHAT = "a prot like r, rw, rx, rwx or none, or a list like [read, write]";
const protError: ErrorFn = (iss) => {
  const bad = Array.isArray(iss.input) ? iss.input.find((w) => !PROT_WORDS.includes(w)) : undefined;
  if (bad === undefined)
    return expected(
      PROT_WHAT,
      "letters r, w, x in that order, or none; or a list of read, write, exec, none",
    )(iss);
  return withHint(
    `unknown prot ${describe(bad)}`,
    `prot is one of: ${PROT_WORDS.join(", ")}${didYouMean(String(bad), PROT_WORDS)}`,
  );
};

const prot = z
  .union(
    [
      z.string({ error: protError }).regex(/^(?:none|rw?x?|wx?|x)$/, { error: protError }),
      z.array(z.enum(PROT_WORDS, { error: oneOf("prot", PROT_WORDS) })),
    ],
    { error: protError },
  )
  .transform((v) => {
    const parts = typeof v === "string" && v !== "none" ? [...v] : v;
    return [parts].flat().reduce((bits, p) => bits | PROT_BITS[p], 0);
  })
  .meta({ id: "Prot", description: PROT_WHAT });

const MAP_FLAG_NAMES = [
  "private",
  "shared",
  "anonymous",
  "fixed",
  "fixed_noreplace",
  "populate",
  "noreserve",
] as const;
const MAP_FLAG_BITS: Readonly<Record<(typeof MAP_FLAG_NAMES)[number], number>> = {
  private: MAP_PRIVATE,
  shared: MAP_SHARED,
  anonymous: MAP_ANONYMOUS,
  fixed: MAP_FIXED,
  fixed_noreplace: MAP_FIXED_NOREPLACE,
  populate: MAP_POPULATE,
  noreserve: MAP_NORESERVE,
};

const flags = z
  .array(z.enum(MAP_FLAG_NAMES, { error: oneOf("flag", MAP_FLAG_NAMES) }), {
    error: expected("a list of flags like [private, anonymous]", `flags are: ${MAP_FLAG_NAMES.join(", ")}`),
  })
  .default(["private", "anonymous"])
  .transform((names) => names.reduce((bits, n) => bits | MAP_FLAG_BITS[n], 0))
  .describe("mmap flags; default [private, anonymous]");

/** The errno names a syscall expectation may name. */
export const SCENARIO_ERRNOS = [
  "EINVAL",
  "ENOMEM",
  "EEXIST",
  "EPERM",
  "EACCES",
  "EFAULT",
  "EOVERFLOW",
  "EOPNOTSUPP",
  "EAGAIN",
] as const;
export type ErrnoName = (typeof SCENARIO_ERRNOS)[number];
/** What a syscall must return: success, or failure with this errno. */
export type SyscallExpect = { ok: true } | { errno: ErrnoName };

const SYS_EXPECT_HINT = "write expect: { errno: EINVAL } or expect: { ok: true }";
const sysExpect = strict(
  {
    errno: z.enum(SCENARIO_ERRNOS, { error: oneOf("errno", SCENARIO_ERRNOS) }).optional(),
    ok: z.literal(true, { error: expected("true", SYS_EXPECT_HINT) }).optional(),
  },
  "{ errno: NAME } or { ok: true }",
)
  .transform((e, ctx): SyscallExpect => {
    if (e.errno !== undefined && e.ok === undefined) return { errno: e.errno };
    if (e.errno === undefined && e.ok) return { ok: true };
    ctx.issues.push({
      code: "custom",
      input: e,
      message: withHint("expect needs exactly one of errno or ok", SYS_EXPECT_HINT),
    });
    return z.NEVER;
  })
  .meta({ id: "SyscallExpect", description: "{ errno: NAME } or { ok: true }" });

/**
 * What pages must hold: "zero", "nonzero", or one entry per page, each a content tag or the
 * name of an earlier write, which stands for the tags that write stored (one per page it wrote).
 */
export type ContentExpect = "zero" | "nonzero" | TagRef[];
/** A page content tag, or a write name standing for the tags that write stored. */
export type TagRef = number | string;

const CONTENT_WHAT = "zero, nonzero, a write name, or a list of page tags and write names";
const isTagRef = (t: unknown) =>
  (typeof t === "number" && Number.isSafeInteger(t) && t >= 0) || (typeof t === "string" && NAME_RE.test(t));
const contentError: ErrorFn = (iss) => {
  const bad = Array.isArray(iss.input)
    ? iss.input.find((t) => !isTagRef(t))
    : iss.path?.length && typeof iss.path.at(-1) === "number"
      ? iss.input // an item of the list
      : undefined;
  if (bad !== undefined)
    return withHint(
      `bad page tag ${describe(bad)}`,
      "each item is a whole number >= 0 (a tag) or the name of an earlier write (its tags)",
    );
  return expected(CONTENT_WHAT, "content: A (the tags write A stored), or [0, A, 7]: one item per page")(iss);
};
// The options carry the error too: zod reports an option's own issue when only that option's type matched.
const tagRef = z.union(
  [
    z.int({ error: contentError }).min(0, { error: contentError }),
    z.string({ error: contentError }).regex(NAME_RE, { error: contentError }),
  ],
  { error: contentError },
);
const content = z
  .union(
    [
      z.enum(CONTENT_WORDS, { error: contentError }),
      z.string({ error: contentError }).regex(NAME_RE, { error: contentError }),
      z.array(tagRef, { error: contentError }),
    ],
    { error: contentError },
  )
  .transform((c): ContentExpect => (c === "zero" || c === "nonzero" ? c : typeof c === "string" ? [c] : c))
  .describe("zero | nonzero | a write name | one content tag or write name per page");

const accessExpect = strict(
  {
    content: content.optional(),
    signal: z.enum(["SIGSEGV", "none"], { error: oneOf("signal", ["SIGSEGV", "none"]) }).optional(),
  },
  "{ content: zero } or { signal: SIGSEGV }",
);

/** What pinread and piperead must return: the content of the pages the pin or pipe holds. */
const heldExpect = strict({ content }, "{ content: A }");

/** What a pin or vmsplice must return: a syscall expectation, and how many pages it took. */
export type GupExpect = SyscallExpect & { pages?: number };
const GUP_EXPECT_HINT = "write expect: { ok: true }, { ok: true, pages: 2 } or { errno: EFAULT }";
const gupExpect = strict(
  {
    errno: z.enum(SCENARIO_ERRNOS, { error: oneOf("errno", SCENARIO_ERRNOS) }).optional(),
    ok: z.literal(true, { error: expected("true", GUP_EXPECT_HINT) }).optional(),
    pages: z
      .int({ error: count("a number of pages") })
      .min(1, { error: withHint("pages must be at least 1", "a failed call takes no pages: use errno") })
      .optional()
      .describe("the number of pages taken (fewer than the range when it stopped short)"),
  },
  "{ ok: true, pages: N } or { errno: NAME }",
).transform((e, ctx): GupExpect => {
  if (e.errno !== undefined && e.ok === undefined && e.pages === undefined) return { errno: e.errno };
  if (e.errno === undefined && (e.ok || e.pages !== undefined))
    return e.pages === undefined ? { ok: true } : { ok: true, pages: e.pages };
  ctx.issues.push({
    code: "custom",
    input: e,
    message: withHint("expect needs errno, or ok and/or pages, not both", GUP_EXPECT_HINT),
  });
  return z.NEVER;
});

// ---------------------------------------------------------------------------------------------
// Ops.

const OP_WHAT = "an op like { op: mmap, pid: a, len: 4KiB, prot: rw }";
const pid = z.string({
  error: expected("a process name", "a pid names a process from processes or an earlier spawn"),
});
const kB = z.int({ error: count("a number of kB") }).min(0, { error: count("a number of kB") });
const opt = <T extends z.ZodType>(t: T) => t.optional();

const mmapOp = strict(
  {
    op: z.literal("mmap"),
    pid,
    addr: addr.optional(),
    len: size,
    prot,
    flags,
    as: addrName.optional(),
    expect: sysExpect.optional(),
  },
  OP_WHAT,
);
const munmapOp = strict(
  { op: z.literal("munmap"), pid, addr, len: size, expect: sysExpect.optional() },
  OP_WHAT,
);
const mprotectOp = strict(
  { op: z.literal("mprotect"), pid, addr, len: size, prot, expect: sysExpect.optional() },
  OP_WHAT,
);
const ADVICE = [
  "hugepage",
  "nohugepage",
  "normal",
  "dontfork",
  "dofork",
  "wipeonfork",
  "keeponfork",
  "dontneed",
  "free",
  "cold",
  "pageout",
  "populate_read",
  "populate_write",
] as const;
export type Advice = (typeof ADVICE)[number];
const madviseOp = strict(
  {
    op: z.literal("madvise"),
    pid,
    addr,
    len: size,
    advice: z.enum(ADVICE, { error: oneOf("advice", ADVICE) }),
    expect: sysExpect.optional(),
  },
  OP_WHAT,
);
const readOp = strict(
  { op: z.literal("read"), pid, addr, len: size, expect: accessExpect.optional() },
  OP_WHAT,
);
const writeOp = strict(
  {
    op: z.literal("write"),
    pid,
    addr,
    len: size,
    as: writeName.optional().describe("names the content tags this write stores, for later expectations"),
    expect: accessExpect.optional(),
  },
  OP_WHAT,
);

const MREMAP_FLAG_NAMES = ["maymove", "fixed", "dontunmap"] as const;
const MREMAP_FLAG_BITS: Readonly<Record<(typeof MREMAP_FLAG_NAMES)[number], number>> = {
  maymove: MREMAP_MAYMOVE,
  fixed: MREMAP_FIXED,
  dontunmap: MREMAP_DONTUNMAP,
};
const mremapFlags = z
  .array(z.enum(MREMAP_FLAG_NAMES, { error: oneOf("mremap flag", MREMAP_FLAG_NAMES) }), {
    error: expected("a list of mremap flags like [maymove]", `flags are: ${MREMAP_FLAG_NAMES.join(", ")}`),
  })
  .default([])
  .transform((names) => names.reduce((bits, n) => bits | MREMAP_FLAG_BITS[n], 0))
  .describe("mremap flags; default []");
const mremapOp = strict(
  {
    op: z.literal("mremap"),
    pid,
    addr,
    len: size.describe("old_len"),
    newLen: size,
    flags: mremapFlags,
    newAddr: addr.optional().describe("new_addr: with fixed the target, with dontunmap a hint"),
    as: addrName.optional(),
    expect: sysExpect.optional(),
  },
  OP_WHAT,
);

const bool = (key: string) =>
  z
    .boolean({ error: expected("true or false", `${key}: true or ${key}: false (yes and no are strings)`) })
    .optional();
const pinOp = strict(
  {
    op: z.literal("pin"),
    pid,
    addr,
    len: size,
    write: bool("write").describe("FOLL_WRITE"),
    longterm: bool("longterm").describe("FOLL_LONGTERM"),
    fast: bool("fast").describe("pin_user_pages_fast: gup_fast first"),
    as: pinName.optional(),
    expect: gupExpect.optional(),
  },
  OP_WHAT,
);
const PIN_WHAT = "a pin name like p";
const pinRef = z
  .string({ error: expected(PIN_WHAT, "write pin: p, naming an earlier pin's as") })
  .regex(NAME_RE, {
    error: expected(PIN_WHAT, "write pin: p, naming an earlier pin's as"),
  });
const NO_PID = {
  pid: "this op acts for the process that holds the pin or pipe: remove pid",
} as const;
const unpinOp = strict({ op: z.literal("unpin"), pin: pinRef }, OP_WHAT, NO_PID);
const pinreadOp = strict(
  { op: z.literal("pinread"), pin: pinRef, expect: heldExpect.optional() },
  OP_WHAT,
  NO_PID,
);
const vmspliceOp = strict(
  { op: z.literal("vmsplice"), pid, addr, len: size, as: pipeName.optional(), expect: gupExpect.optional() },
  OP_WHAT,
);
const PIPE_WHAT = "a pipe name like pipe";
const pipeRef = z
  .string({ error: expected(PIPE_WHAT, "write pipe: pipe, naming an earlier vmsplice's as") })
  .regex(NAME_RE, { error: expected(PIPE_WHAT, "write pipe: pipe, naming an earlier vmsplice's as") });
const pipereadOp = strict(
  { op: z.literal("piperead"), pipe: pipeRef, expect: heldExpect.optional() },
  OP_WHAT,
  NO_PID,
);

// reclaim and splitdeferred act on the whole machine, as writing memory.reclaim or
// drop_caches does: they have no pid.
const MACHINE_WIDE = { pid: "this op acts on the whole machine, not on one process: remove pid" } as const;

const RECLAIM_WHAT = "a number of pages, or a size with a unit like 256KiB";
const RECLAIM_HINT = "write pages: 64 (a number of pages) or pages: 256KiB (a whole number of 4 KiB pages)";
const UNIT_SIZE_RE = new RegExp(`^ *[0-9]+ *(?:${Object.keys(SIZE_UNITS).join("|")}) *$`);
const reclaimError: ErrorFn = (iss) => {
  const v = iss.input;
  if (v === 0) return withHint("reclaim needs at least 1 page", RECLAIM_HINT);
  if (typeof v === "number") return count("a number of pages")(iss);
  if (typeof v === "string" && /^ *(?:[0-9]+|0x[0-9a-fA-F]+) *$/.test(v))
    return withHint(
      `expected ${RECLAIM_WHAT}, got '${v}'`,
      "a plain number counts pages: write pages: 64 without quotes, or a size with a unit: 256KiB",
    );
  const unit = unitOf(v);
  return expected(RECLAIM_WHAT, unit ? unitHint(unit) : RECLAIM_HINT)(iss);
};
/** What reclaim asks for: a number of pages, or a size with a unit that is whole pages. */
const reclaimPages = z
  .union(
    [
      z.int({ error: reclaimError }).min(1, { error: reclaimError }),
      z.string({ error: reclaimError }).regex(UNIT_SIZE_RE, { error: reclaimError }),
    ],
    { error: reclaimError },
  )
  .transform((v, ctx) => {
    if (typeof v === "number") return v;
    const bytes = parseSize(v);
    if (bytes !== null && bytes > 0 && bytes % PAGE_SIZE === 0) return bytes / PAGE_SIZE;
    const kib = (n: number) => `${(n * PAGE_SIZE) / 1024}KiB`;
    const below = bytes === null ? 0 : Math.floor(bytes / PAGE_SIZE);
    ctx.issues.push({
      code: "custom",
      input: v,
      message:
        bytes === null
          ? withHint(`size '${v}' is too large`, "sizes must be below 2**53 bytes")
          : bytes === 0
            ? withHint("reclaim needs at least 1 page", RECLAIM_HINT)
            : withHint(
                `'${v}' is not a whole number of 4 KiB pages`,
                below > 0 ? `write ${kib(below)} or ${kib(below + 1)}` : "write 4KiB, or pages: 1",
              ),
    });
    return z.NEVER;
  })
  .meta({ id: "ReclaimPages", description: RECLAIM_WHAT });

/** A whole number a machine-wide op must return, for its expect. */
const result = (what: string) =>
  z.int({ error: count(`a number of ${what}`) }).min(0, { error: count(`a number of ${what}`) });
const reclaimOp = strict(
  {
    op: z.literal("reclaim"),
    pages: reclaimPages.describe("how much to reclaim, as memory.reclaim asks"),
    expect: strict({ freed: result("pages") }, "{ freed: N }")
      .optional()
      .describe("the pages reclaim freed"),
  },
  OP_WHAT,
  MACHINE_WIDE,
);
const splitdeferredOp = strict(
  {
    op: z.literal("splitdeferred"),
    expect: strict({ split: result("folios") }, "{ split: N }")
      .optional()
      .describe("the folios the deferred split shrinker split"),
  },
  OP_WHAT,
  MACHINE_WIDE,
);

const status = strict(
  {
    VmSize: opt(kB),
    VmRSS: opt(kB),
    RssAnon: opt(kB),
    RssFile: opt(kB),
    RssShmem: opt(kB),
    VmPTE: opt(kB),
    VmSwap: opt(kB),
  },
  "a mapping of /proc/pid/status fields in kB, like { VmRSS: 2048 }",
);
const VMFLAGS_WHAT = "VmFlags like 'rd wr mr mw me ac'";
const smapsEntry = strict(
  {
    addr,
    Size: opt(kB),
    Rss: opt(kB),
    Anonymous: opt(kB),
    AnonHugePages: opt(kB),
    LazyFree: opt(kB),
    Swap: opt(kB),
    VmFlags: z
      .string({ error: expected(VMFLAGS_WHAT, "two-letter mnemonics separated by spaces") })
      .regex(/^ *[a-z0-9]{2}(?: +[a-z0-9]{2})* *$/, {
        error: expected(VMFLAGS_WHAT, "two-letter mnemonics separated by spaces"),
      })
      .transform((s) => s.trim().split(/ +/).join(" "))
      .optional(),
  },
  "a mapping like { addr: buf, Rss: 1024 }",
);
/**
 * Every counter the report's Events section can list: vmstat names, the mTHP stats by size
 * (hugepages-64kB/split_deferred) and the model's events. snapshot() names the counters that
 * are not zero, so with every counter set it names them all.
 */
export const EVENT_NAMES = (() => {
  const all = new VmStat();
  all.count.fill(1);
  return Object.keys(all.snapshot()) as [string, ...string[]];
})();
const EVENTS_WHAT = "a mapping of event counts like { pglazyfreed: 16 }";
const eventsError: ErrorFn = (iss) => {
  if (iss.code !== "unrecognized_keys")
    return expected(EVENTS_WHAT, "write events: { pglazyfreed: 16 }")(iss);
  return withHint(
    `unknown event '${iss.keys[0]}'`,
    `events are the counters the report's Events section lists: vmstat names like pglazyfreed, mTHP stats like hugepages-64kB/split_deferred${didYouMean(iss.keys[0], EVENT_NAMES)}`,
  );
};
/** What a check expects of one event count: exactly n, or at least min and at most max. */
export type CountExpect = number | { min?: number; max?: number };
const COUNT_WHAT = "a count, or a range like { min: 1 }";
const COUNT_HINT = "write pswpout: 12 (exactly), or pswpout: { min: 1 } ({ min, max }, either bound)";
const countInt = z.int({ error: count("a count") }).min(0, { error: count("a count") });
const eventCount = z.union(
  [
    countInt,
    strict({ min: countInt.optional(), max: countInt.optional() }, COUNT_WHAT)
      // `when`: an unknown key (mn) is reported as such, not as a range without bounds.
      .refine((c) => c.min !== undefined || c.max !== undefined, {
        error: withHint("the range has no bound", COUNT_HINT),
        when: (p) => p.issues.length === 0,
      })
      .refine((c) => c.min === undefined || c.max === undefined || c.min <= c.max, {
        error: (iss) => {
          const c = iss.input as { min: number; max: number };
          return withHint(`min ${c.min} is above max ${c.max}`, "no count can be in that range");
        },
        when: (p) => p.issues.length === 0,
      }),
  ],
  { error: expected(COUNT_WHAT, COUNT_HINT) },
);
const events = z.partialRecord(z.enum(EVENT_NAMES, { error: eventsError }), eventCount, {
  error: eventsError,
});
const checkOp = strict(
  {
    op: z.literal("check"),
    pid,
    status: status.optional().describe("/proc/pid/status fields, in kB"),
    smaps: z
      .array(smapsEntry, {
        error: expected("a list of smaps entries", "write smaps: [ { addr: buf, Rss: 1024 } ]"),
      })
      .optional()
      .describe("/proc/pid/smaps fields of the VMA that contains addr, in kB"),
    vmas: z
      .int({ error: count("a number of VMAs") })
      .min(0, { error: count("a number of VMAs") })
      .optional(),
    events: events.optional().describe("machine-wide event counts since boot, as the report's Events"),
  },
  OP_WHAT,
);
const dumpOp = strict({ op: z.literal("dump"), pid, addr: addr.optional(), len: size.optional() }, OP_WHAT);
const spawnOp = strict({ op: z.literal("spawn"), pid: processName }, OP_WHAT);
const forkOp = strict(
  { op: z.literal("fork"), pid, child: processName, expect: sysExpect.optional() },
  OP_WHAT,
);
const exitOp = strict({ op: z.literal("exit"), pid }, OP_WHAT);

const OPS = [
  mmapOp,
  munmapOp,
  mprotectOp,
  madviseOp,
  mremapOp,
  readOp,
  writeOp,
  checkOp,
  dumpOp,
  spawnOp,
  forkOp,
  exitOp,
  pinOp,
  unpinOp,
  pinreadOp,
  vmspliceOp,
  pipereadOp,
  reclaimOp,
  splitdeferredOp,
] as const;
/** The op names, in documentation order. */
export const OP_NAMES = OPS.map((o) => o.shape.op.value);

/** One op of the ops list (without its source position, which load.ts adds). */
export const opSchema = z.discriminatedUnion("op", OPS, {
  error: (iss) => {
    if (iss.code !== "invalid_union")
      return expected(OP_WHAT, "each item of ops is a mapping with an op key")(iss);
    const op = (iss.input as { op?: unknown }).op;
    if (op === undefined) return withHint("missing key 'op'", `add op: one of ${OP_NAMES.join(", ")}`);
    return withHint(
      `unknown op ${describe(op)}`,
      `ops are: ${OP_NAMES.join(", ")}${didYouMean(String(op), OP_NAMES)}`,
    );
  },
});

// ---------------------------------------------------------------------------------------------
// Machine and scenario.

const THP_POLICIES = ["always", "madvise", "never"] as const;
const THP_SIZE_POLICIES = ["always", "inherit", "madvise", "never"] as const;
const sizePolicy = z.enum(THP_SIZE_POLICIES, { error: oneOf("policy", THP_SIZE_POLICIES) });
const thpSizes = strict(
  {
    "16kB": sizePolicy.default("never"),
    "32kB": sizePolicy.default("never"),
    "64kB": sizePolicy.default("never"),
    "128kB": sizePolicy.default("never"),
    "256kB": sizePolicy.default("never"),
    "512kB": sizePolicy.default("never"),
    "1024kB": sizePolicy.default("never"),
    "2048kB": sizePolicy.default("inherit"),
  },
  "a mapping like { 64kB: always }",
)
  .prefault({})
  .describe("per-size anon mTHP policy, as /sys/kernel/mm/transparent_hugepage/hugepages-*kB/enabled");

const thp = strict(
  {
    enabled: z.enum(THP_POLICIES, { error: oneOf("policy", THP_POLICIES) }).default("madvise"),
    useZeroPage: z.boolean({ error: expected("true or false", "write useZeroPage: true") }).default(true),
    sizes: thpSizes,
  },
  "a mapping like { enabled: madvise }",
).prefault({});

const COW_REUSE = ["modern", "legacy"] as const;
const cow = strict(
  {
    reuse: z
      .enum(COW_REUSE, { error: oneOf("reuse rule", COW_REUSE) })
      .default("modern")
      .describe("modern: Linux 6.18 (PageAnonExclusive); legacy: before 5.8 (reuse when mapcount is 1)"),
  },
  "a mapping like { reuse: legacy }",
).prefault({});

const PT_COPY = ["batched", "per-pte", "cow-pte", "cow-pte-deferred"] as const;
const fork = strict(
  {
    ptCopy: z
      .enum(PT_COPY, { error: oneOf("fork design", PT_COPY) })
      .default("batched")
      .describe(
        "batched: Linux 6.9+ (folio_pte_batch); per-pte: one entry at a time, as before 6.9; cow-pte: PTE tables shared at fork, per-page work at fork (v4); cow-pte-deferred: shared, per-page work deferred to the break (RFC v2 / ODF)",
      ),
  },
  "a mapping like { ptCopy: per-pte }",
).prefault({});

const MADV_FREE_DESIGNS = ["batched", "split"] as const;
const madvise = strict(
  {
    free: z
      .enum(MADV_FREE_DESIGNS, { error: oneOf("MADV_FREE design", MADV_FREE_DESIGNS) })
      .default("batched")
      .describe(
        "batched: Linux 6.10+ (a large folio the range covers whole becomes lazyfree unsplit); split: before 6.10 (every large folio is split first)",
      ),
  },
  "a mapping like { free: split }",
).prefault({});

const machine = strict(
  {
    ram: size.refine((n) => n > 0 && n % PAGE_SIZE === 0, {
      error: withHint("ram must be a positive multiple of 4KiB", "write ram: 4GiB"),
    }),
    swap: size
      .refine((n) => n % PAGE_SIZE === 0, {
        error: withHint("swap must be a multiple of 4KiB", "write swap: 64MiB, or 0 for no swap"),
      })
      .default(0)
      .describe("size of the swap device; default 0 (no swap)"),
    thp,
    cow,
    fork,
    madvise,
  },
  "a mapping like { ram: 4GiB }",
);

/**
 * What `vmlab diff` compares (src/diff/compare.ts): per process, its VMAs, each op's result and
 * the counters; per page, the rest.
 */
export const DIFF_FIELDS = [
  "result",
  "vmas",
  "RssAnon",
  "VmPTE",
  "AnonHugePages",
  "LazyFree",
  "present",
  "content",
  "shares",
  "exclusive",
  "folio",
  "mapcount",
] as const;
export type DiffField = (typeof DIFF_FIELDS)[number];

/** A difference from the live kernel that the scenario declares it cannot match, and why. */
const knownDiff = strict(
  {
    reason: z.string({ error: expected("a reason", "write reason: why vmlab and Linux differ here") }).min(1),
    pid: processName.optional().describe("only this process (default: every process)"),
    addr: addr.optional().describe("only pages from here (with len; default: every page)"),
    len: size.optional().describe("the length of the range that starts at addr"),
    fields: z
      .array(z.enum(DIFF_FIELDS, { error: oneOf("diff field", DIFF_FIELDS) }))
      .min(1)
      .optional()
      .describe("only these fields (default: every field)"),
  },
  "a mapping like { reason: ..., pid: a, addr: buf, len: 2MiB, fields: [folio] }",
).refine((k) => (k.addr === undefined) === (k.len === undefined), {
  error: withHint("addr and len go together", "give both, or neither for every page"),
});

const diffSection = strict(
  {
    known: z
      .array(knownDiff, { error: expected("a list of known differences", "write known: [{ reason: ... }]") })
      .default([]),
  },
  "a mapping like { known: [...] }",
).describe("for `vmlab diff`: the differences from the live kernel this scenario declares known");

/** A whole scenario file, as typed (input) and as the runner gets it (output, minus `at` and `file`). */
export const scenarioSchema = strict(
  {
    name: z.string({ error: expected("a name", "write name: what this scenario shows") }),
    description: z
      .string({ error: expected("a description", "write description: one or two sentences") })
      .optional(),
    machine,
    processes: z
      .array(processName, { error: expected("a list of process names like [a, b]", "write processes: [a]") })
      .min(1, { error: withHint("processes is empty", "name at least one process: processes: [a]") }),
    ops: z.array(opSchema, {
      error: expected("a list of ops", "write ops: followed by - { op: ... } items"),
    }),
    diff: diffSection.optional(),
  },
  "a scenario mapping with name, machine, processes and ops",
);

/** A 1-based source position. */
export type SourcePos = { line: number; col: number };
export type OpBody = z.output<typeof opSchema>;
/** One op as the runner gets it: fields resolved to numbers, plus where it was written. */
export type Op = OpBody & { at: SourcePos };
export type OpName = Op["op"];
export type OpOf<K extends OpName> = Extract<Op, { op: K }>;
export type ThpPolicy = (typeof THP_POLICIES)[number];
export type ThpSizePolicy = (typeof THP_SIZE_POLICIES)[number];
/** A scenario as the runner gets it; file is the name given to the loader. */
export type Scenario = Omit<z.output<typeof scenarioSchema>, "ops"> & { file: string; ops: Op[] };
