// Runs a loaded scenario on a fresh Kernel: executes each op, checks its expectations, and
// builds the operation log and the final report (status, smaps, event counts). With a cost
// profile (`vmlab run --costs`) each op also gets its event counts and their modeled time.

import {
  type CostBreakdown,
  type CostProfile,
  costBreakdown,
  countsDelta,
  formatNs,
} from "../cost/profile.ts";
import { type AccessResult, Kernel } from "../mm/kernel.ts";
import type { ThpPolicy } from "../mm/machine.ts";
import {
  formatPageDump,
  formatSmaps,
  formatStatus,
  pageDump,
  type SmapsEntry,
  type Status,
  smaps,
  smapsVma,
  status,
} from "../report/proc.ts";
import {
  ERRNO_NAMES,
  isErr,
  MADV_COLD,
  MADV_DOFORK,
  MADV_DONTFORK,
  MADV_DONTNEED,
  MADV_FREE,
  MADV_HUGEPAGE,
  MADV_KEEPONFORK,
  MADV_NOHUGEPAGE,
  MADV_NORMAL,
  MADV_PAGEOUT,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MADV_WIPEONFORK,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
} from "../uapi.ts";
import { ScenarioError } from "./load.ts";
import type {
  AddrExpr,
  Advice,
  ContentExpect,
  CountExpect,
  GupExpect,
  Op,
  Scenario,
  SyscallExpect,
} from "./schema.ts";

/** The MADV_* value of each scenario advice. */
export const ADVICE_VALUES: Readonly<Record<Advice, number>> = {
  hugepage: MADV_HUGEPAGE,
  nohugepage: MADV_NOHUGEPAGE,
  normal: MADV_NORMAL,
  dontfork: MADV_DONTFORK,
  dofork: MADV_DOFORK,
  wipeonfork: MADV_WIPEONFORK,
  keeponfork: MADV_KEEPONFORK,
  dontneed: MADV_DONTNEED,
  free: MADV_FREE,
  cold: MADV_COLD,
  pageout: MADV_PAGEOUT,
  populate_read: MADV_POPULATE_READ,
  populate_write: MADV_POPULATE_WRITE,
};

/** One op's line in the log, and the expectations it failed. */
export interface OpRecord {
  index: number;
  line: number;
  text: string;
  failures: string[];
  /** A page dump (dump ops only). */
  dump?: string;
  /** With a cost profile (RunOptions.profile): the op's event counts (non-zero only). */
  counts?: Record<string, number>;
  /** With a cost profile: the op's modeled time, ns. */
  modeledNs?: number;
}

/** What `--costs` adds to a run: the profile used, the total, and its breakdown by event. */
export interface RunCosts {
  profile: { name: string; machine: string; fitted: string | null };
  /** The sum of every op's modeledNs, in op order. */
  totalNs: number;
  /** The events of all ops together, priced (largest first) and unpriced. */
  breakdown: CostBreakdown;
}

export interface RunOptions {
  /** Price every op's events with this profile (`vmlab run --costs`). */
  profile?: CostProfile;
  /** Called after each op with the kernel and the op's concrete values (`vmlab diff` replays them). */
  onStep?: (step: RunStep) => void;
}

/**
 * One op as it ran: the addresses it resolved to and what the kernel returned. Fields are set
 * where the op has them: `addr` (and mremap's `newAddr`), `ret` (a syscall's return value, a
 * pin or pipe handle), `access` (read, write), `tags` (pinread, piperead).
 */
export interface StepCall {
  addr?: number;
  newAddr?: number;
  ret?: number;
  access?: AccessResult;
  tags?: number[];
}

/** What RunOptions.onStep gets after each op; the maps are the run's, live (do not keep them). */
export interface RunStep {
  index: number;
  op: Op;
  kernel: Kernel;
  /** Process names to pids, after the op. */
  pids: ReadonlyMap<string, number>;
  /** Address names to addresses, after the op. */
  addrs: ReadonlyMap<string, number>;
  call: StepCall;
}

export interface ProcessReport {
  name: string;
  pid: number;
  status: Status;
  smaps: SmapsEntry[];
}

export interface RunResult {
  name: string;
  file: string;
  ops: OpRecord[];
  processes: ProcessReport[];
  events: Record<string, number>;
  /** Present only with RunOptions.profile. */
  costs?: RunCosts;
  expectations: { passed: number; failed: number };
}

const SIZE_ORDER: Record<string, number> = {
  "16kB": 2,
  "32kB": 3,
  "64kB": 4,
  "128kB": 5,
  "256kB": 6,
  "512kB": 7,
  "1024kB": 8,
  "2048kB": 9,
};

const hex = (n: number): string => `0x${n.toString(16)}`;

function fmtSize(n: number): string {
  for (const [unit, b] of [
    ["GiB", 2 ** 30],
    ["MiB", 2 ** 20],
    ["KiB", 2 ** 10],
  ] as const) {
    if (n >= b && n % b === 0) return `${n / b}${unit}`;
  }
  return String(n);
}

/** The Kernel a scenario's machine section describes. */
export function bootScenario(sc: Scenario): Kernel {
  const orders: Partial<Record<number, ThpPolicy>> = {};
  for (const [size, policy] of Object.entries(sc.machine.thp.sizes))
    orders[SIZE_ORDER[size]] = policy as ThpPolicy;
  return new Kernel({
    ramBytes: sc.machine.ram,
    thp: { enabled: sc.machine.thp.enabled, useZeroPage: sc.machine.thp.useZeroPage, orders },
    cow: sc.machine.cow.reuse,
    fork: { ptCopy: sc.machine.fork.ptCopy },
    madvise: { free: sc.machine.madvise.free },
    swapBytes: sc.machine.swap,
  });
}

/**
 * Runs every op in order. Expectation failures are recorded, not thrown; a problem only the
 * run can find (a name whose binding op failed: an mmap's address, a fork's child, a pin, a
 * pipe) throws ScenarioError at the op that uses it. With opts.profile, each op also gets the
 * event counts it caused and their modeled time, and the result gets `costs`.
 */
export function runScenario(sc: Scenario, opts: RunOptions = {}): RunResult {
  const k = bootScenario(sc);
  const pids = new Map<string, number>();
  const addrs = new Map<string, number>();
  /** The tags each named write stored, and the write name of each such tag (for the log). */
  const writes = new Map<string, number[]>();
  const labels = new Map<number, string>();
  /** Pin and pipe handles by name, with the process that holds them. */
  const pins = new Map<string, { handle: number; owner: string }>();
  const pipes = new Map<string, { handle: number; owner: string }>();
  /** Names whose binding op failed at run time: that op's name, line and -errno. */
  const unbound = new Map<string, { op: string; line: number; ret: number }>();
  const spawn = (name: string, op?: Op) => {
    const pid = k.createProcess();
    if (pid < 0)
      throw new ScenarioError(
        sc.file,
        op?.at.line ?? 1,
        op?.at.col ?? 1,
        "processes",
        "no memory for a new process",
        "give the machine more ram",
      );
    pids.set(name, pid);
  };
  for (const name of sc.processes) spawn(name);
  const records: OpRecord[] = [];
  let passed = 0;
  let failed = 0;

  sc.ops.forEach((op, index) => {
    const where = `ops[${index}]`;
    /** A name used at this op whose binding failed at run time: a ScenarioError that says which op. */
    const notBound = (key: string, message: string, name: string): ScenarioError => {
      const by = unbound.get(name);
      const hint = by
        ? `the ${by.op} at line ${by.line} that binds '${name}' returned -${ERRNO_NAMES[-by.ret] ?? -by.ret}`
        : `bind '${name}' earlier`;
      return new ScenarioError(sc.file, op.at.line, op.at.col, `${where}.${key}`, message, hint);
    };
    const resolve = (a: AddrExpr, key = "addr"): number => {
      if (a.base === null) return a.offset;
      const base = addrs.get(a.base);
      if (base === undefined) throw notBound(key, `address name '${a.base}' is not bound`, a.base);
      return base + a.offset;
    };
    const pidOf = (name: string): number => {
      const pid = pids.get(name);
      if (pid === undefined) throw notBound("pid", `process '${name}' does not exist`, name);
      return pid;
    };
    const handleOf = (table: typeof pins, kind: string, name: string) => {
      const h = table.get(name);
      if (h === undefined) throw notBound(kind, `${kind} '${name}' was not taken`, name);
      return h;
    };
    const statBefore = opts.profile ? k.machine.stat.snapshot() : undefined;
    const pid = op.op === "spawn" || !("pid" in op) ? -1 : pidOf(op.pid);
    let who = "pid" in op ? op.pid : "";
    const rec: OpRecord = { index, line: op.at.line, text: "", failures: [] };
    const call: StepCall = {};
    const check = (ok: boolean, msg: string) => {
      if (ok) passed++;
      else {
        failed++;
        rec.failures.push(`${sc.file}:${op.at.line}:${op.at.col}: expectation failed: ${msg}`);
      }
    };
    /** The log text of a syscall's return value (success shown by show), checked against expect. */
    const sysResult = (
      ret: number,
      expect: SyscallExpect | undefined,
      show = (r: number) => (r === 0 ? "0" : hex(r)),
    ) => {
      const text = isErr(ret) ? `-${ERRNO_NAMES[-ret] ?? -ret}` : show(ret);
      if (expect !== undefined) {
        if ("ok" in expect) check(!isErr(ret), `expected success, got ${text}`);
        else check(ret === -errnoValue(expect.errno), `expected -${expect.errno}, got ${text}`);
      }
      return text;
    };
    /** The log text of a pin or vmsplice result, checked against expect (pages taken included). */
    const gupResult = (ret: number, expect: GupExpect | undefined, name: string | undefined) => {
      const pages = isErr(ret) ? 0 : k.pinned(ret);
      const stop = isErr(ret) ? 0 : k.gupStoppedBy(ret);
      const text = sysResult(
        ret,
        expect,
        () =>
          `${plural(pages, "page")}${stop ? `, stopped by ${ERRNO_NAMES[stop] ?? stop}` : ""}${name ? `  [${name}]` : ""}`,
      );
      if (expect?.pages !== undefined && !isErr(ret))
        check(pages === expect.pages, `expected ${plural(expect.pages, "page")} taken, got ${pages}`);
      return text;
    };
    /** Checks tags (what pages hold) against a content expectation, write names expanded. */
    const checkContent = (tags: number[], content: ContentExpect | undefined) => {
      if (content === "zero")
        check(
          tags.length > 0 && tags.every((t) => t === 0),
          `expected zeros, read ${tagsText(tags, labels)}`,
        );
      else if (content === "nonzero")
        check(
          tags.length > 0 && tags.every((t) => t !== 0),
          `expected non-zero content, read ${tagsText(tags, labels)}`,
        );
      else if (content !== undefined) {
        // Safe: the static check bound every name to an earlier write, and every write binds its name.
        const want = content.flatMap((t) => (typeof t === "number" ? [t] : writes.get(t)!));
        const named = content.some((t) => typeof t === "string");
        check(
          JSON.stringify(tags) === JSON.stringify(want),
          named
            ? `expected ${content.join(", ")} = ${tagsText(want, labels)}, got ${tagsText(tags, labels)}`
            : `expected tags ${JSON.stringify(want)}, got ${JSON.stringify(tags)}`,
        );
      }
    };
    const bindAddr = (name: string | undefined, ret: number) => {
      if (name === undefined) return;
      if (isErr(ret)) {
        addrs.delete(name);
        unbound.set(name, { op: op.op, line: op.at.line, ret });
      } else addrs.set(name, ret);
    };
    switch (op.op) {
      case "mmap": {
        const addr = op.addr ? resolve(op.addr) : 0;
        const ret = k.mmap(pid, addr, op.len, op.prot, op.flags);
        Object.assign(call, { addr, ret });
        bindAddr(op.as, ret);
        rec.text = `mmap(${addr ? hex(addr) : "NULL"}, ${fmtSize(op.len)}, ${protText(op.prot)}, ${mapFlagsText(op.flags)}) = ${sysResult(ret, op.expect)}${op.as && !isErr(ret) ? `  [${op.as}]` : ""}`;
        break;
      }
      case "munmap": {
        const addr = resolve(op.addr);
        const ret = k.munmap(pid, addr, op.len);
        Object.assign(call, { addr, ret });
        rec.text = `munmap(${hex(addr)}, ${fmtSize(op.len)}) = ${sysResult(ret, op.expect)}`;
        break;
      }
      case "mprotect": {
        const addr = resolve(op.addr);
        const ret = k.mprotect(pid, addr, op.len, op.prot);
        Object.assign(call, { addr, ret });
        rec.text = `mprotect(${hex(addr)}, ${fmtSize(op.len)}, ${protText(op.prot)}) = ${sysResult(ret, op.expect)}`;
        break;
      }
      case "madvise": {
        const addr = resolve(op.addr);
        const ret = k.madvise(pid, addr, op.len, ADVICE_VALUES[op.advice]);
        Object.assign(call, { addr, ret });
        rec.text = `madvise(${hex(addr)}, ${fmtSize(op.len)}, MADV_${op.advice.toUpperCase()}) = ${sysResult(ret, op.expect)}`;
        break;
      }
      case "mremap": {
        const addr = resolve(op.addr);
        const newAddr = op.newAddr ? resolve(op.newAddr, "newAddr") : 0;
        const ret = k.mremap(pid, addr, op.len, op.newLen, op.flags, newAddr);
        Object.assign(call, { addr, newAddr, ret });
        bindAddr(op.as, ret);
        const extra = op.newAddr ? `, ${hex(newAddr)}` : "";
        rec.text = `mremap(${hex(addr)}, ${fmtSize(op.len)}, ${fmtSize(op.newLen)}, ${mremapFlagsText(op.flags)}${extra}) = ${sysResult(ret, op.expect)}${op.as && !isErr(ret) ? `  [${op.as}]` : ""}`;
        break;
      }
      case "read":
      case "write": {
        const addr = resolve(op.addr);
        const r = op.op === "read" ? k.read(pid, addr, op.len) : k.write(pid, addr, op.len);
        Object.assign(call, { addr, access: r });
        const stop = r.signal ?? (r.oom ? "VM_FAULT_OOM" : null);
        const tags = op.op === "read" ? r.tags : Array.from({ length: r.pages }, (_, i) => r.firstTag + i);
        if (op.op === "write" && op.as !== undefined) {
          writes.set(op.as, tags);
          for (const t of tags) labels.set(t, op.as);
        }
        const shown =
          op.op === "read"
            ? ` ${tagsText(r.tags, labels)}`
            : op.as !== undefined
              ? `, stored ${tagsText(tags, labels)}`
              : "";
        rec.text = `${op.op}(${hex(addr)}, ${fmtSize(op.len)}): ${r.pages} pages${stop ? `, then ${stop}` : ""}${shown}`;
        const e = op.expect;
        if (e?.signal !== undefined)
          check((r.signal ?? "none") === e.signal, `expected signal ${e.signal}, got ${r.signal ?? "none"}`);
        checkContent(tags, e?.content);
        break;
      }
      case "check": {
        const mm = k.mm(pid);
        const parts: string[] = [];
        if (op.status) {
          const st = status(mm);
          for (const [field, want] of Object.entries(op.status)) {
            const got = st[field as keyof Status];
            check(got === want, `${field} is ${got} kB, expected ${want} kB`);
            parts.push(`${field}=${got}`);
          }
        }
        for (const want of op.smaps ?? []) {
          const addr = resolve(want.addr);
          const vma = mm.vmaLookup(addr);
          if (vma === undefined) {
            check(false, `no VMA contains ${hex(addr)}`);
            continue;
          }
          const got = smapsVma(mm, vma);
          for (const [field, w] of Object.entries(want)) {
            if (field === "addr") continue;
            const g = got[field as keyof SmapsEntry];
            check(g === w, `smaps ${hex(vma.start)} ${field} is ${g}, expected ${w}`);
            parts.push(`${hex(vma.start)}.${field}=${g}`);
          }
        }
        if (op.vmas !== undefined) {
          check(mm.vmas.length === op.vmas, `${mm.vmas.length} VMAs, expected ${op.vmas}`);
          parts.push(`vmas=${mm.vmas.length}`);
        }
        if (op.events) {
          const now = k.machine.stat.snapshot();
          for (const [event, want] of Object.entries(op.events)) {
            // Safe: partialRecord's entries hold a value for every key they list.
            const w = want!;
            const got = now[event] ?? 0;
            check(countMatches(got, w), `event ${event} is ${got}, expected ${countText(w)}`);
            parts.push(`${event}=${got}`);
          }
        }
        rec.text = `check ${parts.join(" ")}`;
        break;
      }
      case "dump": {
        const mm = k.mm(pid);
        const start = op.addr ? resolve(op.addr) : (mm.vmas[0]?.start ?? 0);
        const len = op.len ?? (op.addr ? PAGE_SIZE : (mm.vmas.at(-1)?.end ?? 0) - start);
        const first = Math.floor(start / PAGE_SIZE) * PAGE_SIZE;
        const end = Math.ceil((start + len) / PAGE_SIZE) * PAGE_SIZE;
        rec.text = `dump(${hex(first)}, ${fmtSize(end - first)})`;
        rec.dump = formatPageDump(pageDump(mm, first, end));
        break;
      }
      case "spawn":
        spawn(op.pid, op);
        rec.text = `spawn = pid ${pids.get(op.pid)}`;
        break;
      case "fork": {
        const ret = k.fork(pid);
        call.ret = ret;
        if (isErr(ret)) unbound.set(op.child, { op: "fork", line: op.at.line, ret });
        else pids.set(op.child, ret);
        rec.text = `fork() = ${sysResult(ret, op.expect, (r) => `pid ${r}  [${op.child}]`)}`;
        break;
      }
      case "exit":
        k.exit(pid);
        pids.delete(op.pid);
        // exit_files: the kernel released the process's pins and pipes.
        for (const table of [pins, pipes])
          for (const [name, h] of table) if (h.owner === op.pid) table.delete(name);
        rec.text = "exit";
        break;
      case "pin": {
        const addr = resolve(op.addr);
        const ret = k.pin(pid, addr, op.len, { write: op.write, longterm: op.longterm, fast: op.fast });
        Object.assign(call, { addr, ret });
        if (op.as !== undefined) {
          if (isErr(ret)) unbound.set(op.as, { op: "pin", line: op.at.line, ret });
          else pins.set(op.as, { handle: ret, owner: op.pid });
        }
        const foll = ["FOLL_PIN", op.write && "FOLL_WRITE", op.longterm && "FOLL_LONGTERM"].filter(Boolean);
        rec.text = `pin_user_pages${op.fast ? "_fast" : ""}(${hex(addr)}, ${fmtSize(op.len)}, ${foll.join("|")}) = ${gupResult(ret, op.expect, op.as)}`;
        break;
      }
      case "unpin": {
        const h = handleOf(pins, "pin", op.pin);
        who = h.owner;
        pins.delete(op.pin);
        rec.text = `unpin_user_pages(${op.pin}) = ${sysResult(k.unpin(h.handle), undefined)}`;
        break;
      }
      case "pinread": {
        const h = handleOf(pins, "pin", op.pin);
        who = h.owner;
        const tags = k.pinRead(h.handle);
        call.tags = tags;
        rec.text = `pinread(${op.pin}): ${plural(tags.length, "page")} ${tagsText(tags, labels)}`;
        checkContent(tags, op.expect?.content);
        break;
      }
      case "vmsplice": {
        const addr = resolve(op.addr);
        const ret = k.vmsplice(pid, addr, op.len);
        Object.assign(call, { addr, ret });
        if (op.as !== undefined) {
          if (isErr(ret)) unbound.set(op.as, { op: "vmsplice", line: op.at.line, ret });
          else pipes.set(op.as, { handle: ret, owner: op.pid });
        }
        rec.text = `vmsplice(${hex(addr)}, ${fmtSize(op.len)}) = ${gupResult(ret, op.expect, op.as)}`;
        break;
      }
      case "piperead": {
        const h = handleOf(pipes, "pipe", op.pipe);
        who = h.owner;
        pipes.delete(op.pipe);
        const tags = k.pipeRead(h.handle);
        call.tags = tags;
        rec.text = `piperead(${op.pipe}): ${plural(tags.length, "page")} ${tagsText(tags, labels)}`;
        checkContent(tags, op.expect?.content);
        break;
      }
      case "reclaim": {
        const freed = k.reclaim(op.pages);
        // Safe: the schema admits only whole page counts >= 1, which reclaim() accepts.
        if (isErr(freed)) throw new Error(`runScenario: reclaim(${op.pages}) returned ${freed}`);
        if (op.expect)
          check(freed === op.expect.freed, `expected ${op.expect.freed} pages freed, got ${freed}`);
        rec.text = `reclaim(${plural(op.pages, "page")}) = ${freed} freed`;
        break;
      }
      case "splitdeferred": {
        const split = k.splitDeferred();
        if (op.expect)
          check(
            split === op.expect.split,
            `expected ${plural(op.expect.split, "folio")} split, got ${split}`,
          );
        rec.text = `deferred_split_scan() = ${plural(split, "folio")} split`;
        break;
      }
    }
    // Machine-wide ops (reclaim, splitdeferred) act for no process.
    if (who) rec.text = `${who}: ${rec.text}`;
    if (opts.profile && statBefore) {
      rec.counts = countsDelta(statBefore, k.machine.stat.snapshot());
      rec.modeledNs = costBreakdown(rec.counts, opts.profile).totalNs;
    }
    records.push(rec);
    opts.onStep?.({ index, op, kernel: k, pids, addrs, call });
  });

  const processes = [...pids.entries()].map(([name, pid]) => ({
    name,
    pid,
    status: status(k.mm(pid)),
    smaps: smaps(k.mm(pid)),
  }));
  return {
    name: sc.name,
    file: sc.file,
    ops: records,
    processes,
    events: k.machine.stat.snapshot(),
    ...(opts.profile ? { costs: runCosts(records, opts.profile) } : {}),
    expectations: { passed, failed },
  };
}

/** The total and the per-event breakdown of every op's counts under profile. */
function runCosts(records: readonly OpRecord[], profile: CostProfile): RunCosts {
  const all: Record<string, number> = {};
  let totalNs = 0;
  for (const r of records) {
    totalNs += r.modeledNs ?? 0;
    for (const [e, n] of Object.entries(r.counts ?? {})) all[e] = (all[e] ?? 0) + n;
  }
  return {
    profile: { name: profile.name, machine: profile.machine, fitted: profile.fitted },
    totalNs,
    breakdown: costBreakdown(all, profile),
  };
}

/** An op's cost line: its time and its largest events, "cost 3.21 µs: pte_write (1024) 2.10 µs, ...". */
function formatOpCost(counts: Record<string, number>, profile: CostProfile): string {
  const b = costBreakdown(counts, profile);
  const shown = b.items.slice(0, 4).map((i) => `${i.event} (${i.count}) ${formatNs(i.ns)}`);
  const rest = b.items.length - shown.length + b.unpriced.length;
  if (rest > 0) shown.push(`+${rest} more`);
  return `cost ${formatNs(b.totalNs)}${shown.length ? `: ${shown.join(", ")}` : ""}`;
}

/** Whether an event count meets what a check expects of it: exactly, or within the range. */
function countMatches(got: number, want: CountExpect): boolean {
  if (typeof want === "number") return got === want;
  return got >= (want.min ?? 0) && got <= (want.max ?? Number.POSITIVE_INFINITY);
}

/** "7", "at least 1", "at most 3", "between 1 and 3". */
function countText(want: CountExpect): string {
  if (typeof want === "number") return String(want);
  if (want.max === undefined) return `at least ${want.min}`;
  if (want.min === undefined) return `at most ${want.max}`;
  return `between ${want.min} and ${want.max}`;
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;

function errnoValue(name: string): number {
  for (const [v, n] of Object.entries(ERRNO_NAMES)) if (n === name) return Number(v);
  throw new Error(`errnoValue: unknown errno ${name}`);
}

function protText(prot: number): string {
  if (prot === 0) return "PROT_NONE";
  const parts = [];
  if (prot & 1) parts.push("PROT_READ");
  if (prot & 2) parts.push("PROT_WRITE");
  if (prot & 4) parts.push("PROT_EXEC");
  return parts.join("|");
}

function mapFlagsText(flags: number): string {
  const names: [number, string][] = [
    [0x01, "MAP_SHARED"],
    [0x02, "MAP_PRIVATE"],
    [0x10, "MAP_FIXED"],
    [0x20, "MAP_ANONYMOUS"],
    [0x4000, "MAP_NORESERVE"],
    [0x8000, "MAP_POPULATE"],
    [0x100000, "MAP_FIXED_NOREPLACE"],
  ];
  return names
    .filter(([bit]) => (flags & bit) === bit)
    .map(([, n]) => n)
    .join("|");
}

/** MREMAP_* flag names joined by |, or 0. */
function mremapFlagsText(flags: number): string {
  const names: [number, string][] = [
    [MREMAP_MAYMOVE, "MREMAP_MAYMOVE"],
    [MREMAP_FIXED, "MREMAP_FIXED"],
    [MREMAP_DONTUNMAP, "MREMAP_DONTUNMAP"],
  ];
  const set = names.filter(([bit]) => flags & bit).map(([, n]) => n);
  return set.length ? set.join("|") : "0";
}

/**
 * Content tags, runs of zeros folded, a tag a named write stored followed by that name:
 * "[0 x3, 7 (A), 8]".
 */
function tagsText(tags: number[], labels?: ReadonlyMap<number, string>): string {
  const out: string[] = [];
  for (let i = 0; i < tags.length; ) {
    let n = 1;
    while (tags[i + n] === 0 && tags[i] === 0) n++;
    const label = labels?.get(tags[i]);
    out.push(n > 1 ? `0 x${n}` : label ? `${tags[i]} (${label})` : String(tags[i]));
    i += n;
  }
  if (out.length > 12) return `[${out.slice(0, 10).join(", ")}, ... ${out.length - 10} more]`;
  return `[${out.join(", ")}]`;
}

/**
 * The human report: the op log with failures, the final state of each process, the events. A
 * run with costs (and the profile that priced it) also has a cost line under each op that caused
 * events, and a "Modeled time" section before the expectations.
 */
export function formatRun(r: RunResult, profile?: CostProfile): string {
  const lines: string[] = [`${r.name}  (${r.file})`, ""];
  for (const op of r.ops) {
    lines.push(`#${String(op.index + 1).padEnd(3)} ${op.text}`);
    if (op.dump) lines.push(...op.dump.split("\n").map((l) => `      ${l}`));
    for (const f of op.failures) lines.push(`      ${f}`);
    if (r.costs && profile && op.counts && Object.keys(op.counts).length > 0)
      lines.push(`      ${formatOpCost(op.counts, profile)}`);
  }
  lines.push("", "Final state:");
  for (const p of r.processes) {
    lines.push("", `pid ${p.pid} (${p.name})`, formatStatus(p.status));
    for (const s of p.smaps) lines.push("", formatSmaps(s));
  }
  lines.push("", "Events:");
  // The longest names (hugepages-2048kB/nr_anon_partially_mapped) widen the column.
  const width = Math.max(40, ...Object.keys(r.events).map((n) => n.length));
  for (const [name, n] of Object.entries(r.events)) lines.push(`  ${name.padEnd(width)} ${n}`);
  if (r.costs) lines.push("", ...formatCosts(r));
  lines.push("", `expectations: ${r.expectations.passed} passed, ${r.expectations.failed} failed`);
  return lines.join("\n");
}

/** The "Modeled time" section: each op's time, the total, the events that make it, the unpriced. */
function formatCosts(r: RunResult): string[] {
  // Non-null: called only for a run with costs.
  const c = r.costs!;
  const fitted = c.profile.fitted ? `, fitted ${c.profile.fitted.slice(0, 10)}` : "";
  const lines = [`Modeled time (profile ${c.profile.name}: ${c.profile.machine}${fitted}):`];
  for (const op of r.ops) {
    if (!op.modeledNs) continue;
    const name = op.text.replace(/^((?:\S+: )?\w+).*$/, "$1");
    lines.push(
      `  #${String(op.index + 1).padEnd(3)} ${name.padEnd(34)} ${formatNs(op.modeledNs).padStart(10)}`,
    );
  }
  lines.push(`  ${"total".padEnd(39)} ${formatNs(c.totalNs).padStart(10)}`);
  lines.push("  by event:");
  for (const i of c.breakdown.items) {
    if (i.ns === 0) continue;
    const pct = c.totalNs > 0 ? ((100 * i.ns) / c.totalNs).toFixed(1) : "0.0";
    lines.push(
      `    ${i.event.padEnd(36)} ${formatNs(i.ns).padStart(10)}  ${`${pct} %`.padStart(7)}  (${i.count} x ${formatNs(i.nsPerEvent)})`,
    );
  }
  if (c.breakdown.unpriced.length > 0)
    lines.push(`  unpriced (0 ns): ${c.breakdown.unpriced.map((u) => `${u.event} ${u.count}`).join(", ")}`);
  return lines;
}
