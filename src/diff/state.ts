// The page-level state `vmlab diff` compares, in one form for both sides: what vmlab holds
// (modelState, from the Kernel) and what the live kernel showed (parseKernelDump, from the dump
// of diff/helper.c: pagemap, kpageflags, kpagecount, smaps, status). Frames are side-specific
// numbers: only which pages share one is compared (src/diff/compare.ts), never the numbers.

import type { Kernel } from "../mm/kernel.ts";
import type { Mm } from "../mm/mm.ts";
import { pageDump, smaps, status } from "../report/proc.ts";

/** How a virtual page is mapped: not at all, by a swap entry, the zero pages, or a page of memory. */
export type Mapped = "none" | "swap" | "zero" | "huge zero" | "page";

/** One virtual page with something mapped (a "none" page is left out of ProcessState.pages). */
export interface PageState {
  mapped: Exclude<Mapped, "none">;
  /** The tag in the page's first bytes ("page" only; 0 is a zeroed page). */
  tag: number;
  /** The frame, as this side numbers it ("page" only, else -1). */
  frame: number;
  /** pagemap's PM_MMAP_EXCLUSIVE (bit 56): the page is mapped exactly once. */
  exclusive: boolean;
  /** The folio's order and the page's index in it ("page" only). */
  order: number;
  index: number;
  /** The page's precise mapcount, as /proc/kpagecount shows it ("page" only). */
  mapcount: number;
}

/** One VMA as /proc/PID/maps prints it. */
export interface VmaState {
  start: number;
  end: number;
  perms: string;
}

/** Page-table pages by the region each covers: PTE tables per 2 MiB, PMD per 1 GiB, PUD per 512 GiB. */
export interface TableSet {
  pte: Set<number>;
  pmd: Set<number>;
  pud: Set<number>;
}

/** The counters compared per process, kB. */
export interface Counters {
  RssAnon: number;
  VmPTE: number;
  AnonHugePages: number;
  LazyFree: number;
}

export interface ProcessState {
  name: string;
  vmas: VmaState[];
  /** Virtual page address to its state; pages with nothing mapped are absent. */
  pages: Map<number, PageState>;
  counters: Counters;
}

/** Every live process of the scenario at one checkpoint, by name. */
export type Snapshot = Map<string, ProcessState>;

/**
 * The page-table pages of mm, keyed by the region each covers (a deposited PTE table counts for
 * its PMD's 2 MiB, as mm_pgtables_bytes counts it). Throws when the walk disagrees with VmPTE.
 */
export function modelTables(mm: Mm): TableSet {
  const t: TableSet = { pte: new Set(), pmd: new Set(), pud: new Set() };
  for (let i = 0; i < 512; i++) {
    const pud = mm.pgd.child(i);
    if (pud === undefined) continue;
    t.pud.add(i);
    for (let j = 0; j < 512; j++) {
      const pmd = pud.child(j);
      if (pmd === undefined) continue;
      t.pmd.add(i * 512 + j);
      for (let k = 0; k < 512; k++) if (pmd.child(k) !== undefined) t.pte.add((i * 512 + j) * 512 + k);
    }
  }
  const n = t.pte.size + t.pmd.size + t.pud.size;
  if (n * 4096 !== mm.pgtablesBytes)
    throw new Error(`modelTables: ${n} tables walked, mm_pgtables_bytes says ${mm.pgtablesBytes / 4096}`);
  return t;
}

/**
 * The VmPTE, in kB, of the tables in `tables` that the live process's own mappings (`base`, its
 * tables at the same moment) do not already need: what the scenario adds on Linux.
 */
export function scenarioVmPTE(tables: TableSet, base: TableSet): number {
  let n = 0;
  for (const level of ["pte", "pmd", "pud"] as const)
    for (const key of tables[level]) if (!base[level].has(key)) n++;
  return n * 4;
}

/**
 * vmlab's state of every process in `pids` (name to pid), in the form parseKernelDump gives the
 * live kernel's. VmPTE counts every table; each process's tables go to `tables` (by name) for
 * scenarioVmPTE once the live process's own are known.
 */
export function modelState(
  k: Kernel,
  pids: ReadonlyMap<string, number>,
  tables: Map<string, TableSet> = new Map(),
): Snapshot {
  const out: Snapshot = new Map();
  for (const [name, pid] of pids) {
    const mm = k.mm(pid);
    const pages = new Map<number, PageState>();
    for (const vma of mm.vmas) {
      for (const p of pageDump(mm, vma.start, vma.end)) {
        if (p.kind === "none") continue;
        const page = p.kind === "anon" || p.kind === "shmem";
        pages.set(p.addr, {
          mapped: page ? "page" : p.kind === "hugezero" ? "huge zero" : (p.kind as "swap" | "zero"),
          tag: page ? p.tag : 0,
          frame: page ? p.pfn : -1,
          exclusive: page && p.exclusive,
          order: page ? p.order : 0,
          index: page ? p.pfn - p.head : 0,
          mapcount: page ? p.mapcount : 0,
        });
      }
    }
    const sm = smaps(mm);
    const t = modelTables(mm);
    tables.set(name, t);
    out.set(name, {
      name,
      vmas: sm.map((e) => ({ start: e.start, end: e.end, perms: e.perms })),
      pages,
      counters: {
        RssAnon: status(mm).RssAnon,
        VmPTE: status(mm).VmPTE,
        AnonHugePages: sm.reduce((s, e) => s + e.AnonHugePages, 0),
        LazyFree: sm.reduce((s, e) => s + e.LazyFree, 0),
      },
    });
  }
  return out;
}

/** /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h). */
const KPF_THP = 22;
const KPF_ZERO_PAGE = 24;
/** pagemap bits (Documentation/admin-guide/mm/pagemap.rst). */
const PM_PRESENT = 63n;
const PM_SWAP = 62n;
const PM_MMAP_EXCLUSIVE = 56n;

/** One process's dump from diff/helper.c, parsed: its state and its own mappings' tables. */
export interface KernelDump {
  state: ProcessState;
  base: TableSet;
}

/**
 * Parses the lines of one `dump` answer of diff/helper.c (between the command and `end`) for the
 * process `name`. Throws "parseKernelDump: ..." on a line that does not fit (a bug: the C and
 * this parser disagree).
 */
export function parseKernelDump(name: string, lines: readonly string[]): KernelDump {
  const fail = (line: string, why: string): never => {
    throw new Error(`parseKernelDump: ${why}: ${JSON.stringify(line)}`);
  };
  const hexList = (rest: string[]) => rest.map((h) => Number.parseInt(h, 16));
  const state: ProcessState = {
    name,
    vmas: [],
    pages: new Map(),
    counters: { RssAnon: 0, VmPTE: 0, AnonHugePages: 0, LazyFree: 0 },
  };
  const base: TableSet = { pte: new Set(), pmd: new Set(), pud: new Set() };
  let rssAnon = Number.NaN;
  let vmPte = Number.NaN;
  let baseAnon = Number.NaN;
  for (const line of lines) {
    const [kind, ...f] = line.trim().split(/\s+/);
    switch (kind) {
      case "status":
        [rssAnon, vmPte] = f.map(Number);
        break;
      case "baseline":
        baseAnon = Number(f[0]);
        break;
      case "btables":
        for (const g of hexList(f)) base.pte.add(g);
        break;
      case "bpmds":
        for (const g of hexList(f)) base.pmd.add(g);
        break;
      case "bpuds":
        for (const g of hexList(f)) base.pud.add(g);
        break;
      case "vma": {
        if (f.length !== 7) fail(line, "a vma line has 7 fields");
        state.vmas.push({ start: Number.parseInt(f[0], 16), end: Number.parseInt(f[1], 16), perms: f[2] });
        state.counters.AnonHugePages += Number(f[5]);
        state.counters.LazyFree += Number(f[6]);
        break;
      }
      case "p": {
        if (f.length !== 7) fail(line, "a page line has 7 fields");
        const addr = Number.parseInt(f[0], 16);
        const pm = BigInt(`0x${f[1]}`);
        const bit = (b: bigint) => ((pm >> b) & 1n) === 1n;
        if (bit(PM_SWAP)) {
          state.pages.set(addr, { ...NO_PAGE_FIELDS, mapped: "swap" });
          continue;
        }
        if (!bit(PM_PRESENT)) continue;
        if (f[2] === "-") fail(line, "a present page without its kpageflags");
        const flags = BigInt(`0x${f[2]}`);
        const flag = (b: number) => ((flags >> BigInt(b)) & 1n) === 1n;
        if (flag(KPF_ZERO_PAGE)) {
          state.pages.set(addr, { ...NO_PAGE_FIELDS, mapped: flag(KPF_THP) ? "huge zero" : "zero" });
          continue;
        }
        state.pages.set(addr, {
          mapped: "page",
          tag: f[6] === "-" ? -1 : Number.parseInt(f[6], 16), // "-": /proc/PID/mem could not read it
          frame: Number(pm & ((1n << 55n) - 1n)),
          exclusive: bit(PM_MMAP_EXCLUSIVE),
          order: Number(f[4]),
          index: Number(f[5]),
          mapcount: Number(f[3]),
        });
        break;
      }
      default:
        fail(line, "unknown line");
    }
  }
  if (Number.isNaN(rssAnon) || Number.isNaN(vmPte) || Number.isNaN(baseAnon))
    throw new Error(`parseKernelDump: no status or baseline line for ${name}`);
  state.counters.RssAnon = rssAnon - baseAnon;
  state.counters.VmPTE = vmPte - 4 * (base.pte.size + base.pmd.size + base.pud.size);
  return { state, base };
}

/** The fields of a mapping that is not a page of memory (swap, the zero pages); `mapped` is set by each use. */
const NO_PAGE_FIELDS: PageState = {
  mapped: "page",
  tag: 0,
  frame: -1,
  exclusive: false,
  order: 0,
  index: 0,
  mapcount: 0,
};
