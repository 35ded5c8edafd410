// `vmlab diff`: runs a scenario in vmlab and, through diff/helper.c, the same system calls in real
// processes on the live kernel, then compares the page-level state of every process after every
// op (src/diff/compare.ts). vmlab runs first and records each op's concrete values (the address
// an mmap returned, the tags a write stored); the helper replays them: mappings land at vmlab's
// addresses (MAP_FIXED_NOREPLACE), writes store vmlab's tags. The THP knobs are set from the
// scenario's machine section and restored afterwards (src/calibrate/knobs.ts).

import { accessSync, constants, existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  CalibrateRefusal,
  type KnobEnv,
  type KnobSettings,
  listKnobs,
  otherKnobs,
  THP_SYSFS_ROOT,
  withKnobs,
} from "../calibrate/knobs.ts";
import { ScenarioError } from "../scenario/load.ts";
import { ADVICE_VALUES, type RunStep, runScenario } from "../scenario/run.ts";
import type { DiffField, Op, Scenario } from "../scenario/schema.ts";
import {
  ERRNO_NAMES,
  isErr,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
} from "../uapi.ts";
import { compareSnapshots, type Difference, formatDifferences, mergeDifferences } from "./compare.ts";
import { LiveHelper } from "./helper.ts";
import { modelState, parseKernelDump, type Snapshot, scenarioVmPTE, type TableSet } from "./state.ts";

/** The state after one op, on both sides, and how they differ. */
export interface Checkpoint {
  /** The op's index in the scenario and its line. */
  index: number;
  line: number;
  /** The op as vmlab's log shows it. */
  text: string;
  /** Processes compared, and their virtual pages with something mapped on either side. */
  processes: number;
  pages: number;
  differences: Difference[];
}

export interface DiffResult {
  name: string;
  file: string;
  checkpoints: Checkpoint[];
  /** Differences not declared known, over every checkpoint. */
  unknown: number;
  /** Each declared known difference: its reason and how many differences it covered. */
  known: { reason: string; matched: number }[];
  /** Large folio allocations the kernel could not satisfy during the run, by size (anon_fault_fallback). */
  fallbacks: Record<string, number>;
  /** vmlab's own expectation failures (the scenario's `expect` and `check` against vmlab). */
  expectationFailures: string[];
}

export interface DiffOptions {
  /** Where the THP knobs are (tests point it at a fake directory); the rest of KnobEnv too. */
  env?: KnobEnv;
  /** Where the compiled helper is cached. */
  cacheDir?: string;
}

/** The ops the live kernel cannot replay from user space, and why. */
const UNREPLAYABLE: Partial<Record<Op["op"], string>> = {
  pin: "pin_user_pages has no user-space system call (vmsplice takes FOLL_GET references: use vmsplice)",
  unpin: "pins cannot be replayed (see pin)",
  pinread: "pins cannot be replayed (see pin)",
  reclaim: "reclaim on the live kernel depends on the whole machine's memory, not the scenario's",
};

/**
 * Refuses, with a ScenarioError at the offending line, a scenario the live kernel cannot run as
 * vmlab does: an op with no user-space equivalent, or a design other than Linux 6.18's.
 */
export function checkReplayable(sc: Scenario): void {
  const designs: [string, string, string, string][] = [
    ["cow.reuse", sc.machine.cow.reuse, "modern", "the live kernel reuses pages as 6.18 does (modern)"],
    [
      "fork.ptCopy",
      sc.machine.fork.ptCopy,
      "batched",
      "the live kernel copies page tables as 6.18 does (batched)",
    ],
    ["madvise.free", sc.machine.madvise.free, "batched", "the live kernel runs 6.18's MADV_FREE (batched)"],
  ];
  for (const [key, value, linux, why] of designs)
    if (value !== linux && !(key === "fork.ptCopy" && value === "per-pte"))
      throw new ScenarioError(
        sc.file,
        1,
        1,
        `machine.${key}`,
        `vmlab diff cannot compare the ${value} design with Linux`,
        `${why}: remove machine.${key} or set it to ${linux}`,
      );
  if (sc.machine.swap > 0)
    throw new ScenarioError(
      sc.file,
      1,
      1,
      "machine.swap",
      "vmlab diff does not use swap",
      "the live machine's swap is its own; remove machine.swap",
    );
  for (const op of sc.ops) {
    const why = UNREPLAYABLE[op.op];
    if (why !== undefined)
      throw new ScenarioError(
        sc.file,
        op.at.line,
        op.at.col,
        "op",
        `vmlab diff cannot replay '${op.op}'`,
        why,
      );
  }
}

/**
 * Refuses (CalibrateRefusal) when the live kernel cannot be compared here: not Linux, not root,
 * pagemap or kpageflags unreadable.
 */
export function checkLiveKernel(env: KnobEnv = {}): void {
  const platform = env.platform ?? process.platform;
  const uid = env.uid ?? process.getuid?.() ?? -1;
  if (platform !== "linux")
    throw new CalibrateRefusal(
      `vmlab diff compares vmlab with the live Linux kernel, and this is ${platform}`,
      "run it on a Linux machine; `vmlab run` works anywhere",
    );
  if (uid !== 0)
    throw new CalibrateRefusal(
      `vmlab diff must run as root (uid is ${uid}): it reads page frame numbers from /proc/PID/pagemap and /proc/kpageflags, and sets the THP knobs`,
      "run it with sudo",
    );
  for (const f of ["/proc/self/pagemap", "/proc/kpageflags", "/proc/kpagecount"])
    try {
      accessSync(f, constants.R_OK);
    } catch (e) {
      throw new CalibrateRefusal(
        `cannot read ${f}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`,
        "the kernel needs CONFIG_PROC_PAGE_MONITOR",
      );
    }
}

/**
 * The THP knob values the scenario's machine section stands for: the global policy, the huge
 * zero page, and every per-size knob this kernel has (sizes the scenario cannot name: never);
 * every shmem policy never.
 * Throws CalibrateRefusal when the scenario sets a size to something other than never and this
 * kernel has no knob for it.
 */
export function knobSettings(sc: Scenario, root = THP_SYSFS_ROOT): KnobSettings {
  const settings: KnobSettings = { enabled: sc.machine.thp.enabled };
  for (const name of otherKnobs(root))
    if (name === "use_zero_page") settings[name] = sc.machine.thp.useZeroPage ? "1" : "0";
    // vmlab's shmem (MAP_SHARED|MAP_ANONYMOUS) folios are order 0, as with every shmem knob never.
    else settings[name] = "never";
  const available = listKnobs(root).filter((n) => n !== "enabled");
  for (const name of available) settings[name] = "never";
  for (const [size, policy] of Object.entries(sc.machine.thp.sizes)) {
    const name = `hugepages-${size}/enabled`;
    if (available.includes(name)) settings[name] = policy;
    else if (policy !== "never")
      throw new CalibrateRefusal(
        `this kernel has no THP knob ${join(root, name)} for the scenario's ${size}: ${policy}`,
        "mTHP sizes need Linux 6.8+; use the folio sizes this kernel offers",
      );
  }
  return settings;
}

/** anon_fault_fallback of every mTHP size, from the per-size stats. */
function readFallbacks(root: string): Record<string, number> {
  const out: Record<string, number> = {};
  if (!existsSync(root)) return out;
  for (const d of readdirSync(root)) {
    const f = join(root, d, "stats", "anon_fault_fallback");
    if (/^hugepages-\d+kB$/.test(d) && existsSync(f)) out[d.slice(10)] = Number(readFileSync(f, "utf8"));
  }
  return out;
}

/** What vmlab did at one op, kept for the replay. */
interface Recorded {
  step: Omit<RunStep, "kernel" | "pids" | "addrs">;
  pids: Map<string, number>;
  addrs: Map<string, number>;
  snapshot: Snapshot;
  tables: Map<string, TableSet>;
  /** vmlab's result of the op, as compared with the kernel's ("" when there is none). */
  result: string;
  /** Pages a vmsplice took. */
  spliced: number;
}

const hex = (n: number) => n.toString(16);
const errText = (ret: number) => `-${ERRNO_NAMES[-ret] ?? -ret}`;

/** vmlab's result of a step, in the words the kernel's answer is put in (kernelResult). */
function modelResult(step: Recorded["step"], spliced: number): string {
  const { op, call } = step;
  const ret = call.ret ?? 0;
  switch (op.op) {
    case "mmap":
    case "mremap":
      return isErr(ret) ? errText(ret) : `0x${hex(ret)}`;
    case "munmap":
    case "mprotect":
    case "madvise":
      return isErr(ret) ? errText(ret) : "0";
    case "fork":
      return isErr(ret) ? errText(ret) : "a child";
    case "vmsplice":
      return isErr(ret) ? errText(ret) : `${spliced} pages`;
    case "read":
    case "write": {
      const a = call.access;
      if (a === undefined) return "";
      return `${a.pages} pages${a.signal ? ", then a signal" : a.oom ? ", then VM_FAULT_OOM" : ""}`;
    }
    case "piperead":
      return (call.tags ?? []).join(" ");
    default:
      return "";
  }
}

/** The kernel's answer to a replayed op, in modelResult's words. */
function kernelResult(op: Op, answer: string): string {
  const [word, ...rest] = answer.split(" ");
  if (word === "err") return `-${ERRNO_NAMES[Number(rest[0])] ?? rest[0]}`;
  switch (op.op) {
    case "mmap":
    case "mremap":
      return `0x${rest[0]}`;
    case "munmap":
    case "mprotect":
    case "madvise":
      return "0";
    case "fork":
      return "a child";
    case "vmsplice":
      return `${Math.ceil(Number(rest[0]) / PAGE_SIZE)} pages`;
    case "read":
    case "write":
      return `${rest[0]} pages${word === "segv" ? ", then a signal" : ""}`;
    case "piperead":
      return rest.map((t) => Number.parseInt(t, 16)).join(" ");
    default:
      return "";
  }
}

/**
 * Runs `sc` in vmlab and on the live kernel and compares them after every op. Preconditions:
 * checkLiveKernel() passed. Throws ScenarioError for a scenario that cannot be replayed,
 * CalibrateRefusal for a knob that cannot be set or a helper that cannot be built, HelperError
 * when the helper fails. The knobs are restored whatever happens.
 */
export async function diffScenario(sc: Scenario, opts: DiffOptions = {}): Promise<DiffResult> {
  checkReplayable(sc);
  const root = opts.env?.root ?? THP_SYSFS_ROOT;
  const settings = knobSettings(sc, root);

  // vmlab first: every op's concrete values and the state after it.
  const recorded: Recorded[] = [];
  const run = runScenario(sc, {
    onStep: (s) => {
      const spliced =
        s.op.op === "vmsplice" && !isErr(s.call.ret ?? -1) ? s.kernel.pinned(s.call.ret ?? 0) : 0;
      const tables = new Map<string, TableSet>();
      const snapshot = modelState(s.kernel, s.pids, tables);
      const step = { index: s.index, op: s.op, call: s.call };
      recorded.push({
        step,
        pids: new Map(s.pids),
        addrs: new Map(s.addrs),
        snapshot,
        tables,
        result: modelResult(step, spliced),
        spliced,
      });
    },
  });

  return withKnobs(
    settings,
    async () => {
      const before = readFallbacks(root);
      const helper = await LiveHelper.start(opts.cacheDir);
      try {
        const checkpoints = await replay(
          sc,
          recorded,
          helper,
          run.ops.map((r) => r.text),
        );
        await helper.close();
        const after = readFallbacks(root);
        const fallbacks: Record<string, number> = {};
        for (const [size, n] of Object.entries(after))
          if (n - (before[size] ?? 0) > 0) fallbacks[size] = n - (before[size] ?? 0);
        const known = (sc.diff?.known ?? []).map((k) => ({
          reason: k.reason,
          matched: checkpoints.reduce(
            (s, c) => s + c.differences.filter((d) => d.known === k.reason).length,
            0,
          ),
        }));
        return {
          name: sc.name,
          file: sc.file,
          checkpoints,
          unknown: checkpoints.reduce(
            (s, c) => s + c.differences.filter((d) => d.known === undefined).length,
            0,
          ),
          known,
          fallbacks,
          expectationFailures: run.ops.flatMap((r) => r.failures),
        };
      } finally {
        helper.kill();
      }
    },
    { ...opts.env, who: "vmlab diff" },
  );
}

/** Replays the recorded ops on the helper and compares the state after each. */
async function replay(
  sc: Scenario,
  recorded: readonly Recorded[],
  helper: LiveHelper,
  texts: readonly string[],
): Promise<Checkpoint[]> {
  const slots = new Map<string, number>();
  const pipes = new Map<string, string>();
  const slotOf = (name: string) => {
    let s = slots.get(name);
    if (s === undefined) {
      s = slots.size;
      slots.set(name, s);
    }
    return s;
  };
  const ask = async (command: string, op?: Op): Promise<string> => {
    const answer = await helper.request(command);
    if (answer.startsWith("collide")) {
      const [, start, end, ...what] = answer.split(" ");
      throw new ScenarioError(
        sc.file,
        op?.at.line ?? 1,
        op?.at.col ?? 1,
        "addr",
        `the range would overlap the live helper's own mapping ${what.join(" ")} at 0x${start}-0x${end}`,
        "keep scenario mappings away from the helper's stack and libraries (below 0x7ffff7fff000 and above 0x7ff000000000 is free)",
      );
    }
    return answer;
  };
  for (const name of sc.processes) await ask(`spawn ${slotOf(name)}`);

  const checkpoints: Checkpoint[] = [];
  for (const rec of recorded) {
    const { op, call } = rec.step;
    const me = "pid" in op ? slotOf(op.pid) : -1;
    let answer = "";
    switch (op.op) {
      case "spawn":
        answer = await ask(`spawn ${me}`, op);
        break;
      case "mmap": {
        const ret = call.ret ?? 0;
        const ok = !isErr(ret);
        const flags = ok && !(op.flags & MAP_FIXED) ? op.flags | MAP_FIXED_NOREPLACE : op.flags;
        answer = await ask(
          `mmap ${me} ${hex(ok ? ret : (call.addr ?? 0))} ${hex(op.len)} ${hex(op.prot)} ${hex(flags)}`,
          op,
        );
        break;
      }
      case "munmap":
        answer = await ask(`munmap ${me} ${hex(call.addr ?? 0)} ${hex(op.len)}`, op);
        break;
      case "mprotect":
        answer = await ask(`mprotect ${me} ${hex(call.addr ?? 0)} ${hex(op.len)} ${hex(op.prot)}`, op);
        break;
      case "madvise":
        answer = await ask(
          `madvise ${me} ${hex(call.addr ?? 0)} ${hex(op.len)} ${hex(ADVICE_VALUES[op.advice])}`,
          op,
        );
        break;
      case "mremap": {
        const ret = call.ret ?? 0;
        const addr = call.addr ?? 0;
        let flags = op.flags;
        let newAddr = call.newAddr ?? 0;
        // A move to where vmlab put it: the kernel would pick its own place.
        if (!isErr(ret) && ret !== addr && flags & MREMAP_MAYMOVE && !(flags & MREMAP_FIXED)) {
          flags |= MREMAP_FIXED;
          newAddr = ret;
        }
        answer = await ask(
          `mremap ${me} ${hex(addr)} ${hex(op.len)} ${hex(op.newLen)} ${hex(flags)} ${hex(newAddr)}`,
          op,
        );
        break;
      }
      case "read":
      case "write": {
        const addr = call.addr ?? 0;
        const first = Math.floor(addr / PAGE_SIZE) * PAGE_SIZE;
        const pages = op.len === 0 ? 0 : Math.ceil((addr + op.len) / PAGE_SIZE) - first / PAGE_SIZE;
        const a = call.access;
        // A page vmlab did not write gets a tag vmlab never hands out.
        const tag = a !== undefined && a.pages > 0 ? a.firstTag : 2 ** 52 + rec.step.index * 2 ** 20;
        answer = await ask(
          op.op === "write"
            ? `write ${me} ${hex(first)} ${pages} ${hex(tag)}`
            : `read ${me} ${hex(first)} ${pages}`,
          op,
        );
        break;
      }
      case "fork":
        answer = await ask(`fork ${me} ${slotOf(op.child)}`, op);
        break;
      case "exit":
        answer = await ask(`exit ${me}`, op);
        break;
      case "vmsplice": {
        answer = await ask(`vmsplice ${me} ${hex(call.addr ?? 0)} ${hex(op.len)}`, op);
        const [word, , id] = answer.split(" ");
        if (word === "ok" && op.as !== undefined) pipes.set(op.as, `${me} ${id}`);
        break;
      }
      case "piperead": {
        const p = pipes.get(op.pipe);
        if (p !== undefined) answer = await ask(`piperead ${p}`, op);
        pipes.delete(op.pipe);
        break;
      }
      case "splitdeferred":
        answer = await ask("dropslab", op);
        break;
      default:
        break; // check, dump: a checkpoint only
    }

    const kernel: Snapshot = new Map();
    const base = new Map<string, TableSet>();
    for (const name of rec.pids.keys()) {
      const slot = slots.get(name);
      if (slot === undefined) continue;
      const d = parseKernelDump(name, await helper.dump(slot));
      kernel.set(name, d.state);
      base.set(name, d.base);
    }
    // vmlab's VmPTE counts only the tables the live process's own mappings do not need already.
    for (const [name, p] of rec.snapshot) {
      const t = rec.tables.get(name);
      const b = base.get(name);
      if (t && b) p.counters.VmPTE = scenarioVmPTE(t, b);
    }
    const { processes, pages, compared } = compareSnapshots(rec.snapshot, kernel);
    const got = answer === "" ? "" : kernelResult(op, answer);
    if (rec.result !== got && answer !== "")
      processes.unshift({
        process: "pid" in op ? op.pid : "-",
        field: "result",
        vmlab: rec.result,
        kernel: got,
      });
    const known = knownMatcher(sc, rec.addrs);
    for (const d of processes) {
      const k = known(d.process, d.field);
      if (k !== undefined) d.known = k;
    }
    for (const d of pages) {
      const k = known(d.process, d.field, d.addr);
      if (k !== undefined) d.known = k;
    }
    checkpoints.push({
      index: rec.step.index,
      line: op.at.line,
      text: texts[rec.step.index],
      processes: kernel.size,
      pages: compared,
      differences: [...processes, ...mergeDifferences(pages)],
    });
  }
  return checkpoints;
}

/**
 * The reason of the first `diff.known` entry that covers a difference of `field` in `process`
 * (at page `addr`, for page fields), with address names as bound at this checkpoint.
 */
function knownMatcher(
  sc: Scenario,
  addrs: ReadonlyMap<string, number>,
): (process: string, field: DiffField, addr?: number) => string | undefined {
  const entries = (sc.diff?.known ?? []).map((k) => {
    let range: [number, number] | null = null;
    if (k.addr !== undefined && k.len !== undefined) {
      const base = k.addr.base === null ? 0 : addrs.get(k.addr.base);
      range = base === undefined ? [0, 0] : [base + k.addr.offset, base + k.addr.offset + k.len];
    }
    return { ...k, range };
  });
  return (process, field, addr) =>
    entries.find(
      (k) =>
        (k.pid === undefined || k.pid === process) &&
        (k.fields === undefined || k.fields.includes(field)) &&
        (addr === undefined || k.range === null || (addr >= k.range[0] && addr < k.range[1])),
    )?.reason;
}

/** The report of one scenario: a match line, or the checkpoints that differ as tables. */
export function formatDiff(r: DiffResult, maxCheckpoints = 3): string {
  const out: string[] = [];
  const differing = r.checkpoints.filter((c) => c.differences.some((d) => d.known === undefined));
  const n = (k: number, noun: string) => `${k} ${noun}${k === 1 ? "" : "s"}`;
  const known = r.known.reduce((s, k) => s + k.matched, 0);
  const verdict =
    r.unknown > 0
      ? `${n(r.unknown, "difference")} at ${n(differing.length, "checkpoint")}`
      : known > 0
        ? `match, apart from ${n(known, "known difference")}`
        : "match";
  out.push(`${r.file}: ${r.name}`);
  const pages = r.checkpoints.reduce((s, c) => s + c.pages, 0);
  out.push(
    `  ${r.checkpoints.length} checkpoints (after every op), ${pages} mapped pages compared: ${verdict}`,
  );
  for (const c of differing.slice(0, maxCheckpoints)) {
    out.push(`  after op ${c.index + 1} (line ${c.line}): ${c.text}`);
    out.push(formatDifferences(c.differences.filter((d) => d.known === undefined)).replace(/^/gm, "  "));
  }
  if (differing.length > maxCheckpoints)
    out.push(`  ... ${differing.length - maxCheckpoints} more checkpoints differ`);
  for (const k of r.known)
    out.push(
      k.matched > 0
        ? `  known difference (${n(k.matched, "row")}): ${k.reason}`
        : `  known difference did not occur this time: ${k.reason}`,
    );
  const fb = Object.entries(r.fallbacks);
  if (fb.length > 0)
    out.push(
      `  note: the kernel could not allocate some large folios (anon_fault_fallback ${fb.map(([s, n]) => `${s} +${n}`).join(", ")}): folio differences may come from that`,
    );
  if (r.expectationFailures.length > 0)
    out.push(
      `  note: ${r.expectationFailures.length} of the scenario's own expectations failed in vmlab (vmlab run shows them)`,
    );
  return out.join("\n");
}
