// Runs a loaded scenario on a fresh Kernel: executes each op, checks its expectations, and
// builds the operation log and the final report (status, smaps, event counts).

import { Kernel } from "../mm/kernel.ts";
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
import { ERRNO_NAMES, isErr, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_NORMAL, PAGE_SIZE } from "../uapi.ts";
import { ScenarioError } from "./load.ts";
import type { AddrExpr, Op, Scenario, SyscallExpect } from "./schema.ts";

/** One op's line in the log, and the expectations it failed. */
export interface OpRecord {
  index: number;
  line: number;
  text: string;
  failures: string[];
  /** A page dump (dump ops only). */
  dump?: string;
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
  });
}

/**
 * Runs every op in order. Expectation failures are recorded, not thrown; a problem only the
 * run can find (an address name whose mmap failed) throws ScenarioError at the op.
 */
export function runScenario(sc: Scenario): RunResult {
  const k = bootScenario(sc);
  const pids = new Map<string, number>();
  const names = new Map<number, string>();
  const addrs = new Map<string, number>();
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
    names.set(pid, name);
  };
  for (const name of sc.processes) spawn(name);
  const records: OpRecord[] = [];
  let passed = 0;
  let failed = 0;

  sc.ops.forEach((op, index) => {
    const where = `ops[${index}]`;
    const resolve = (a: AddrExpr): number => {
      if (a.base === null) return a.offset;
      const base = addrs.get(a.base);
      if (base === undefined) {
        throw new ScenarioError(
          sc.file,
          op.at.line,
          op.at.col,
          `${where}.addr`,
          `address name '${a.base}' is not bound`,
          `the mmap that names '${a.base}' failed; give it expect: { ok: true } to see why`,
        );
      }
      return base + a.offset;
    };
    const pid = pids.get(op.pid) ?? -1;
    const rec: OpRecord = { index, line: op.at.line, text: "", failures: [] };
    const check = (ok: boolean, msg: string) => {
      if (ok) passed++;
      else {
        failed++;
        rec.failures.push(`${sc.file}:${op.at.line}:${op.at.col}: expectation failed: ${msg}`);
      }
    };
    const sysResult = (ret: number, expect: SyscallExpect | undefined) => {
      const text = isErr(ret) ? `-${ERRNO_NAMES[-ret] ?? -ret}` : ret === 0 ? "0" : hex(ret);
      if (expect !== undefined) {
        if ("ok" in expect) check(!isErr(ret), `expected success, got ${text}`);
        else check(ret === -errnoValue(expect.errno), `expected -${expect.errno}, got ${text}`);
      }
      return text;
    };
    switch (op.op) {
      case "mmap": {
        const addr = op.addr ? resolve(op.addr) : 0;
        const ret = k.mmap(pid, addr, op.len, op.prot, op.flags);
        if (op.as !== undefined) {
          if (isErr(ret)) addrs.delete(op.as);
          else addrs.set(op.as, ret);
        }
        rec.text = `mmap(${addr ? hex(addr) : "NULL"}, ${fmtSize(op.len)}, ${protText(op.prot)}, ${mapFlagsText(op.flags)}) = ${sysResult(ret, op.expect)}${op.as && !isErr(ret) ? `  [${op.as}]` : ""}`;
        break;
      }
      case "munmap": {
        const addr = resolve(op.addr);
        rec.text = `munmap(${hex(addr)}, ${fmtSize(op.len)}) = ${sysResult(k.munmap(pid, addr, op.len), op.expect)}`;
        break;
      }
      case "mprotect": {
        const addr = resolve(op.addr);
        const ret = k.mprotect(pid, addr, op.len, op.prot);
        rec.text = `mprotect(${hex(addr)}, ${fmtSize(op.len)}, ${protText(op.prot)}) = ${sysResult(ret, op.expect)}`;
        break;
      }
      case "madvise": {
        const addr = resolve(op.addr);
        const advice = { hugepage: MADV_HUGEPAGE, nohugepage: MADV_NOHUGEPAGE, normal: MADV_NORMAL }[
          op.advice
        ];
        const ret = k.madvise(pid, addr, op.len, advice);
        rec.text = `madvise(${hex(addr)}, ${fmtSize(op.len)}, MADV_${op.advice.toUpperCase()}) = ${sysResult(ret, op.expect)}`;
        break;
      }
      case "read":
      case "write": {
        const addr = resolve(op.addr);
        const r = op.op === "read" ? k.read(pid, addr, op.len) : k.write(pid, addr, op.len);
        const stop = r.signal ?? (r.oom ? "VM_FAULT_OOM" : null);
        const tags = op.op === "read" ? r.tags : Array.from({ length: r.pages }, (_, i) => r.firstTag + i);
        rec.text = `${op.op}(${hex(addr)}, ${fmtSize(op.len)}): ${r.pages} pages${stop ? `, then ${stop}` : ""}${op.op === "read" ? ` ${tagsText(r.tags)}` : ""}`;
        const e = op.expect;
        if (e?.signal !== undefined)
          check((r.signal ?? "none") === e.signal, `expected signal ${e.signal}, got ${r.signal ?? "none"}`);
        if (e?.content !== undefined) {
          if (e.content === "zero")
            check(tags.length > 0 && tags.every((t) => t === 0), `expected zeros, read ${tagsText(tags)}`);
          else if (e.content === "nonzero")
            check(
              tags.length > 0 && tags.every((t) => t !== 0),
              `expected non-zero content, read ${tagsText(tags)}`,
            );
          else
            check(
              JSON.stringify(tags) === JSON.stringify(e.content),
              `expected tags ${JSON.stringify(e.content)}, got ${JSON.stringify(tags)}`,
            );
        }
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
      case "exit":
        k.exit(pid);
        pids.delete(op.pid);
        rec.text = "exit";
        break;
    }
    rec.text = `${op.op === "spawn" ? op.pid : op.pid}: ${rec.text}`;
    records.push(rec);
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
    expectations: { passed, failed },
  };
}

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

/** Content tags, runs of zeros folded: "[0 x3, 7, 8]". */
function tagsText(tags: number[]): string {
  const out: string[] = [];
  for (let i = 0; i < tags.length; ) {
    let n = 1;
    while (tags[i + n] === 0 && tags[i] === 0) n++;
    out.push(n > 1 ? `0 x${n}` : String(tags[i]));
    i += n;
  }
  if (out.length > 12) return `[${out.slice(0, 10).join(", ")}, ... ${out.length - 10} more]`;
  return `[${out.join(", ")}]`;
}

/** The human report: the op log with failures, the final state of each process, the events. */
export function formatRun(r: RunResult): string {
  const lines: string[] = [`${r.name}  (${r.file})`, ""];
  for (const op of r.ops) {
    lines.push(`#${String(op.index + 1).padEnd(3)} ${op.text}`);
    if (op.dump) lines.push(...op.dump.split("\n").map((l) => `      ${l}`));
    for (const f of op.failures) lines.push(`      ${f}`);
  }
  lines.push("", "Final state:");
  for (const p of r.processes) {
    lines.push("", `pid ${p.pid} (${p.name})`, formatStatus(p.status));
    for (const s of p.smaps) lines.push("", formatSmaps(s));
  }
  lines.push("", "Events:");
  for (const [name, n] of Object.entries(r.events)) lines.push(`  ${name.padEnd(40)} ${n}`);
  lines.push("", `expectations: ${r.expectations.passed} passed, ${r.expectations.failed} failed`);
  return lines.join("\n");
}
