// Compares two snapshots of the same checkpoint (src/diff/state.ts): vmlab's and the live
// kernel's. Per process: its VMAs and counters; per virtual page: how it is mapped, its content
// tag, which other (process, page) pairs share its frame (compared as partitions, since frame
// numbers differ between the sides), the exclusive bit, the folio order and index, the mapcount.
// Differences of neighbouring pages that follow one pattern are merged into page ranges.

import type { DiffField } from "../scenario/schema.ts";
import { PAGE_SIZE } from "../uapi.ts";
import type { PageState, ProcessState, Snapshot } from "./state.ts";

/** One difference: a process-level field (no addr), or a field of `pages` pages from addr. */
export interface Difference {
  process: string;
  field: DiffField;
  addr?: number;
  pages?: number;
  vmlab: string;
  kernel: string;
  /** The reason the scenario gives for it (a known difference), else undefined. */
  known?: string;
}

/** A per-page difference before merging: values as numbers where a run may step by one. */
export interface PageDifference {
  process: string;
  field: DiffField;
  addr: number;
  vmlab: string | number;
  kernel: string | number;
  known?: string;
}

const hex = (n: number) => `0x${n.toString(16)}`;

/**
 * For every mapped page of every process, the other (process, page) pairs that map the same
 * frame, written relative to the page: "b" is process b at the same address, "b@+2MiB" at an
 * offset, "a@-4KiB"; "alone" when none. Equal strings on both sides for every page mean equal
 * partitions.
 */
export function sharing(snap: Snapshot): Map<string, Map<number, string>> {
  const byFrame = new Map<number, { proc: string; addr: number }[]>();
  for (const p of snap.values())
    for (const [addr, page] of p.pages) {
      if (page.mapped !== "page") continue;
      const list = byFrame.get(page.frame);
      if (list) list.push({ proc: p.name, addr });
      else byFrame.set(page.frame, [{ proc: p.name, addr }]);
    }
  const out = new Map<string, Map<number, string>>();
  for (const p of snap.values()) out.set(p.name, new Map());
  for (const members of byFrame.values())
    for (const m of members) {
      const others = members
        .filter((o) => o !== m)
        .map((o) => (o.addr === m.addr ? o.proc : `${o.proc}@${offsetText(o.addr - m.addr)}`))
        .sort();
      out.get(m.proc)?.set(m.addr, others.length ? others.join(", ") : "alone");
    }
  return out;
}

function offsetText(d: number): string {
  const sign = d < 0 ? "-" : "+";
  const a = Math.abs(d);
  for (const [unit, b] of [
    ["GiB", 2 ** 30],
    ["MiB", 2 ** 20],
    ["KiB", 2 ** 10],
  ] as const)
    if (a % b === 0) return `${sign}${a / b}${unit}`;
  return `${sign}${a}`;
}

const mappedText = (p: PageState | undefined): string => (p === undefined ? "none" : p.mapped);

/**
 * Every difference between the two snapshots, page differences one per page (see
 * mergeDifferences). Processes present on one side only differ in "vmas".
 */
export function compareSnapshots(
  vmlab: Snapshot,
  kernel: Snapshot,
): {
  processes: Difference[];
  pages: PageDifference[];
  /** How many virtual pages had something mapped on either side, over all processes. */
  compared: number;
} {
  const processes: Difference[] = [];
  const pages: PageDifference[] = [];
  let compared = 0;
  const shareV = sharing(vmlab);
  const shareK = sharing(kernel);
  const names = [...new Set([...vmlab.keys(), ...kernel.keys()])];
  for (const name of names) {
    const v = vmlab.get(name);
    const k = kernel.get(name);
    if (v === undefined || k === undefined) {
      processes.push({
        process: name,
        field: "vmas",
        vmlab: v ? "process exists" : "no process",
        kernel: k ? "process exists" : "no process",
      });
      continue;
    }
    processes.push(...compareProcess(v, k));
    const addrs = [...new Set([...v.pages.keys(), ...k.pages.keys()])].sort((a, b) => a - b);
    compared += addrs.length;
    for (const addr of addrs) {
      const pv = v.pages.get(addr);
      const pk = k.pages.get(addr);
      const add = (field: DiffField, a: string | number, b: string | number) => {
        if (a !== b) pages.push({ process: name, field, addr, vmlab: a, kernel: b });
      };
      add("present", mappedText(pv), mappedText(pk));
      if (pv?.mapped !== "page" || pk?.mapped !== "page") continue;
      add("content", pv.tag, pk.tag);
      add("shares", shareV.get(name)?.get(addr) ?? "alone", shareK.get(name)?.get(addr) ?? "alone");
      add("exclusive", pv.exclusive ? "yes" : "no", pk.exclusive ? "yes" : "no");
      add("folio", folioText(pv), folioText(pk));
      add("mapcount", pv.mapcount, pk.mapcount);
    }
  }
  return { processes, pages, compared };
}

const folioText = (p: PageState) => (p.order === 0 ? "order 0" : `order ${p.order} page ${p.index}`);

function compareProcess(v: ProcessState, k: ProcessState): Difference[] {
  const out: Difference[] = [];
  const vmaText = (s: ProcessState) => s.vmas.map((m) => `${hex(m.start)}-${hex(m.end)} ${m.perms}`);
  const vv = vmaText(v);
  const kv = vmaText(k);
  const onlyV = vv.filter((t) => !kv.includes(t));
  const onlyK = kv.filter((t) => !vv.includes(t));
  if (onlyV.length || onlyK.length)
    out.push({
      process: v.name,
      field: "vmas",
      vmlab: onlyV.join("; ") || "(the same)",
      kernel: onlyK.join("; ") || "(the same)",
    });
  for (const field of ["RssAnon", "VmPTE", "AnonHugePages", "LazyFree"] as const)
    if (v.counters[field] !== k.counters[field])
      out.push({
        process: v.name,
        field,
        vmlab: `${v.counters[field]} kB`,
        kernel: `${k.counters[field]} kB`,
      });
  return out;
}

/**
 * Merges per-page differences of neighbouring pages into ranges: same process, field and known
 * reason, and on each side values that repeat or (numbers) count up by one per page.
 */
export function mergeDifferences(diffs: readonly PageDifference[]): Difference[] {
  const sorted = [...diffs].sort(
    (a, b) => a.process.localeCompare(b.process) || a.field.localeCompare(b.field) || a.addr - b.addr,
  );
  type Step = 0 | 1;
  const at = (x: string | number, step: Step, n: number) => (typeof x === "number" ? x + step * n : x);
  const stepOf = (x: string | number, y: string | number): Step | null =>
    x === y ? 0 : typeof x === "number" && y === x + 1 ? 1 : null;
  const out: Difference[] = [];
  let run: { first: PageDifference; n: number; sv: Step; sk: Step } | null = null;
  const flush = () => {
    if (run === null) return;
    const { first, n, sv, sk } = run;
    const show = (x: string | number, step: Step) => (step === 0 ? String(x) : `${x}..${at(x, step, n - 1)}`);
    out.push({
      process: first.process,
      field: first.field,
      addr: first.addr,
      pages: n,
      vmlab: show(first.vmlab, sv),
      kernel: show(first.kernel, sk),
      ...(first.known !== undefined ? { known: first.known } : {}),
    });
    run = null;
  };
  for (const d of sorted) {
    if (
      run !== null &&
      d.process === run.first.process &&
      d.field === run.first.field &&
      d.known === run.first.known &&
      d.addr === run.first.addr + run.n * PAGE_SIZE
    ) {
      if (run.n === 1) {
        const sv = stepOf(run.first.vmlab, d.vmlab);
        const sk = stepOf(run.first.kernel, d.kernel);
        if (sv !== null && sk !== null) {
          Object.assign(run, { sv, sk, n: 2 });
          continue;
        }
      } else if (
        d.vmlab === at(run.first.vmlab, run.sv, run.n) &&
        d.kernel === at(run.first.kernel, run.sk, run.n)
      ) {
        run.n++;
        continue;
      }
    }
    flush();
    run = { first: d, n: 1, sv: 0, sk: 0 };
  }
  flush();
  return out;
}

/** The differences as a table: process, pages, field, vmlab, kernel (and the reason when known). */
export function formatDifferences(diffs: readonly Difference[], limit = 40): string {
  const rows = diffs
    .slice(0, limit)
    .map((d) => [
      d.process,
      d.addr === undefined
        ? "(process)"
        : `${hex(d.addr)}-${hex(d.addr + (d.pages ?? 1) * PAGE_SIZE)} (${d.pages})`,
      d.field,
      d.vmlab,
      d.kernel,
      d.known === undefined ? "" : `known: ${d.known}`,
    ]);
  const head = ["process", "pages", "field", "vmlab", "kernel", ""];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    `  ${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ")}`.trimEnd();
  const more = diffs.length > limit ? [`  ... ${diffs.length - limit} more`] : [];
  return [line(head), ...rows.map(line), ...more].join("\n");
}
