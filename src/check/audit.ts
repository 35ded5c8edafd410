// The invariant audit: recomputes everything derivable from the page tables and the VMA trees
// and compares it with what the model stores. Any disagreement throws "audit: reason".
// Tests and the fuzzer run it after every operation; benchmarks never do.
//
// Checked:
//   allocator   every online frame is in exactly one free block or allocated; nr_free per
//               order matches the lists; once no process is left, nr_free equals boot's
//   tables      every table page is PG_table with refcount 1, reachable once; VmPTE = 4 KiB x
//               (PUD + PMD + PTE tables + deposited tables) of the mm
//   folios      refcount = PTE maps + PMD maps + 1 page-cache ref for shmem + every GUP
//               reference (GUP_PIN_COUNTING_BIAS per pin of a small folio, 1 per pin of a
//               large one, which also counts in _pincount; 1 per pipe buffer); per-page
//               mapcount = PTE maps; entire and large mapcounts; no allocated folio unreferenced
//   mm ids      a large folio's mm id slots name distinct mms and never count more mappings
//               than that mm has; a folio mapped by two mms is marked maybe-shared; a folio
//               not so marked is mapped by one mm only, whose slot counts every mapping
//   exclusive   an anon page mapped by two mms is not AnonExclusive; a writable PTE in a
//               private VMA maps an AnonExclusive page; under the modern rule a pinned anon
//               page that is mapped is AnonExclusive (so no other mm can see it change)
//   rmap        anon_vma chains and trees agree both ways, with their active-VMA and child
//               counts; rmapWalk of every mapped anon folio finds exactly the mappings the
//               page tables hold
//   mappings    every entry lies inside a VMA and agrees with its protection; huge PMDs map
//               order-9 folios (or the huge zero page) and have a deposited, empty table
//   RSS         MM_ANONPAGES and MM_SHMEMPAGES equal the mapped pages found
//   VMAs        sorted, disjoint, page aligned, anon_vma and shmem user counts add up
//   cow-pte     a shared PTE table is reached by exactly its sharers (two or more), through
//               read-only PMD entries at its address, inside one COW VMA of each; it never
//               changes without its generation changing (a walker that forgot to break COW);
//               v4 keeps its entries read-only; no page under it is pinned; VmPTE counts it for
//               its owner only, and under deferred accounting so do the folio counts and RSS
//   deferred    queued folios are large anon folios, marked partly mapped or new PMD THPs; every
//               partly mapped large anon folio is marked and queued
//   swap        a swap entry is well formed, in a private anon VMA with an anon_vma, never in a
//               shared PTE table, and names a slot in use; MM_SWAPENTS equals the swap entries of
//               each mm; each slot's count equals the swap entries naming it across all mms, an
//               exclusive entry's slot has no other and no mapped cached folio; `inuse` counts the
//               slots referenced or cached, and a free slot holds no content; the swap cache and
//               folio->swap agree both ways; a cached folio is an order-0 anon swap-backed folio
//               with PG_swapcache and one reference for the cache (in the folio refcounts above),
//               not AnonExclusive while swap entries name its slot, and, while clean and mapped by
//               no dirty PTE, holds exactly its slot's content; after the last exit no slot is used
//   LRU         each list is a well-linked chain of allocated PG_lru folio heads whose flags name
//               that list, with its page and folio counts; every anon and shmem folio is on one;
//               a lazyfree anon folio (not swap-backed) is not in the swap cache (it may be
//               dirty: GUP's FOLL_TOUCH writes dirty the folio, not the PTE);
//               nr_anon_partially_mapped per size equals the marked folios on the split queue

import { FOLL_PIN } from "../mm/gup.ts";
import type { Kernel } from "../mm/kernel.ts";
import { folioLruList, LRU_NAMES, NR_LRU_LISTS } from "../mm/lru.ts";
import { MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS, type Mm } from "../mm/mm.ts";
import {
  _PAGE_ACCESSED,
  _PAGE_DIRTY,
  _PAGE_NX_HI,
  _PAGE_PRESENT,
  _PAGE_PROTNONE,
  _PAGE_PSE,
  _PAGE_RW,
  _PAGE_SPECIAL,
  _PAGE_USER,
  HPAGE_PMD_NR,
  LO_FLAGS,
  type PageTable,
  PGDIR_SIZE,
} from "../mm/pgtable.ts";
import { GUP_PIN_COUNTING_BIAS, rmapWalk } from "../mm/rmap.ts";
import { _PAGE_SWP_EXCLUSIVE, _PAGE_SWP_SOFT_DIRTY, pteSwpExclusive, swapPteSlot } from "../mm/swap.ts";
import type { AnonVma, Vma } from "../mm/vma.ts";
import { VM_ACCESS_FLAGS, VM_EXEC, VM_MAYWRITE, VM_SHARED, VM_WRITE } from "../mm/vma.ts";
import { ANON_ORDERS } from "../mm/vmstat.ts";
import {
  PAGES_PER_SECTION,
  PG_anon,
  PG_anon_exclusive,
  PG_buddy,
  PG_dirty,
  PG_head,
  PG_lru,
  PG_mm_ids_shared,
  PG_partially_mapped,
  PG_reserved,
  PG_shmem,
  PG_swapbacked,
  PG_swapcache,
  PG_table,
  PG_tail,
} from "../phys/memmap.ts";
import { PMD_SIZE, PUD_SIZE } from "../uapi.ts";

class Expect {
  /** pfn -> PTE mappings of that page. */
  readonly pteMaps = new Map<number, number>();
  /** head pfn -> PMD mappings. */
  readonly pmdMaps = new Map<number, number>();
  /** pfn -> set of pids mapping it (anon pages only, for the exclusive rule). */
  readonly mappers = new Map<number, Set<number>>();
  /** table pfns seen, to catch a table reachable twice. */
  readonly tables = new Set<number>();
  /** heads of the large anon folios found while walking the frames. */
  readonly largeAnon: number[] = [];
  /** large folio head -> pid -> mappings (PTE + PMD) by that mm. */
  readonly mmMaps = new Map<number, Map<number, number>>();
  /** anon folio head -> its mappings as "pid:addr:pfn" (PTE) or "pid:addr:pmd". */
  readonly anonMaps = new Map<number, string[]>();
  /** head -> references held by GUP (pins and pipes). */
  readonly gupRef = new Map<number, number>();
  /** large folio head -> FOLL_PIN references (_pincount). */
  readonly pincount = new Map<number, number>();
  /** pfns under a FOLL_PIN. */
  readonly pinned = new Set<number>();
  /** shared PTE table -> the mms reaching it. */
  readonly sharedSeen = new Map<PageTable, Mm[]>();
  /** pfns mapped through a shared PTE table. */
  readonly underShared = new Set<number>();
  /** swap slot -> swap entries naming it. */
  readonly swapRefs = new Map<number, number>();
  /** swap slots named by an exclusive swap entry. */
  readonly swapExclusive = new Set<number>();
  /** swap-cache folios mapped by a dirty PTE (their content may differ from their slot's). */
  readonly dirtyMapped = new Set<number>();
  /** heads of the allocated folios with PG_lru, found while walking the frames. */
  readonly onLru = new Set<number>();
}

/** The generation and checksum of each shared table when the audit last saw it. */
const seals = new WeakMap<PageTable, { gen: number; sum: number }>();

/** FNV-1a over a table's words, accessed bits masked: the MMU may set those in place. */
function tableChecksum(t: PageTable): number {
  let h = 0x811c9dc5;
  for (let w = 0; w < t.e.length; w++) {
    h ^= w % 2 === 0 ? t.e[w] & ~_PAGE_ACCESSED : t.e[w];
    h = Math.imul(h, 16777619);
  }
  return h >>> 0;
}

function fail(msg: string): never {
  throw new Error(`audit: ${msg}`);
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/** Runs every check on the whole machine. Throws "audit: ..." on the first violation. */
export function audit(k: Kernel): void {
  const m = k.machine;
  const ex = new Expect();
  const anonVmaUse = new Map<AnonVma, number>();
  const shmemUse = new Map<number, number>();
  const live = new Set<Vma>();
  collectGupRefs(k, ex);
  for (const pid of k.pids()) {
    const mm = k.mm(pid);
    auditVmas(mm, anonVmaUse, shmemUse);
    for (const v of mm.vmas) live.add(v);
    auditTables(k, mm, ex);
  }
  auditAnonVmas(k, anonVmaUse, live);
  auditSharedTables(ex);
  for (const [id, obj] of m.shmemObjects) {
    const n = shmemUse.get(id) ?? 0;
    if (obj.users !== n) fail(`shmem object ${id} has ${obj.users} users, found ${n} VMAs`);
    if (n === 0) fail(`shmem object ${id} outlived its last VMA`);
  }
  for (const id of shmemUse.keys())
    if (!m.shmemObjects.has(id)) fail(`VMA refers to freed shmem object ${id}`);
  auditFrames(k, ex);
  auditSwap(k, ex);
  auditDeferredSplit(k, ex);
  auditLru(k, ex);
  auditPins(k, ex);
  if (k.pids().length === 0) {
    if (m.shmemObjects.size !== 0) fail(`${m.shmemObjects.size} shmem objects left after the last exit`);
    if (m.anonVmas.size !== 0) fail(`${m.anonVmas.size} anon_vmas left after the last exit`);
    if (m.gupRefs.size !== 0) fail(`${m.gupRefs.size} pins or pipes left after the last exit`);
    if (m.swap.inuse !== 0 || m.swap.cache.size !== 0)
      fail(`${m.swap.inuse} swap slots and ${m.swap.cache.size} swap-cache folios left after the last exit`);
    for (let o = 0; o < m.buddy.nrFree.length; o++) {
      if (m.buddy.nrFree[o] !== m.buddy.bootNrFree[o]) {
        fail(`after the last exit nr_free[${o}] = ${m.buddy.nrFree[o]}, at boot ${m.buddy.bootNrFree[o]}`);
      }
    }
  }
}

function auditVmas(mm: Mm, anonVmaUse: Map<AnonVma, number>, shmemUse: Map<number, number>): void {
  let prevEnd = 0;
  for (const v of mm.vmas) {
    if (v.start % 4096 !== 0 || v.end % 4096 !== 0 || v.start >= v.end) {
      fail(`pid ${mm.pid}: bad VMA [${hex(v.start)}, ${hex(v.end)})`);
    }
    if (v.start < prevEnd) fail(`pid ${mm.pid}: VMA at ${hex(v.start)} overlaps the previous one`);
    prevEnd = v.end;
    if (v.mm !== mm) fail(`pid ${mm.pid}: VMA at ${hex(v.start)} belongs to another mm`);
    if (v.anonVma) anonVmaUse.set(v.anonVma, (anonVmaUse.get(v.anonVma) ?? 0) + 1);
    if (
      (v.anonVma === null) !== (v.anonVmaChain.length === 0) ||
      (v.anonVma && !v.anonVmaChain.includes(v.anonVma))
    )
      fail(`pid ${mm.pid}: VMA at ${hex(v.start)}: its anon_vma is not on its chain`);
    for (const av of v.anonVmaChain) {
      if (!av.vmas.has(v))
        fail(`pid ${mm.pid}: VMA at ${hex(v.start)} chains anon_vma ${av.id}, which lacks it`);
      if (av.parent !== av && !v.anonVmaChain.includes(av.parent))
        fail(`pid ${mm.pid}: VMA at ${hex(v.start)} chains anon_vma ${av.id} but not its parent`);
    }
    if (v.shmem) shmemUse.set(v.shmem.id, (shmemUse.get(v.shmem.id) ?? 0) + 1);
  }
}

function auditTables(k: Kernel, mm: Mm, ex: Expect): void {
  const m = k.machine;
  const rss = [0, 0, 0, 0];
  let tables = 0;
  const seeTable = (t: PageTable, what: string) => {
    if (t.cow !== null) {
      const seen = ex.sharedSeen.get(t) ?? [];
      if (seen.includes(mm)) fail(`pid ${mm.pid}: shared table pfn ${t.pfn} reachable twice`);
      ex.sharedSeen.set(t, [...seen, mm]);
      if (seen.length > 0) return;
    }
    if (ex.tables.has(t.pfn)) fail(`pid ${mm.pid}: ${what} table pfn ${t.pfn} reachable twice`);
    ex.tables.add(t.pfn);
    if (!m.memmap.test(t.pfn, PG_table) || m.memmap.ref(t.pfn) !== 1) {
      fail(`pid ${mm.pid}: ${what} table pfn ${t.pfn} is not a PG_table page with refcount 1`);
    }
    let used = 0;
    for (let i = 0; i < 512; i++) if (!t.none(i)) used++;
    if (used !== t.used)
      fail(`pid ${mm.pid}: ${what} table pfn ${t.pfn} counts ${t.used} entries, has ${used}`);
  };
  seeTable(mm.pgd, "pgd");
  for (let g = 0; g < 512; g++) {
    const pud = mm.pgd.child(g);
    if (mm.pgd.none(g) !== (pud === undefined)) fail(`pid ${mm.pid}: pgd entry ${g} and its table disagree`);
    if (pud === undefined) continue;
    if (mm.pgd.pfnAt(g) !== pud.pfn) fail(`pid ${mm.pid}: pgd entry ${g} points at the wrong pfn`);
    seeTable(pud, "pud");
    tables++;
    for (let u = 0; u < 512; u++) {
      const pmd = pud.child(u);
      if (pud.none(u) !== (pmd === undefined)) fail(`pid ${mm.pid}: pud entry ${u} and its table disagree`);
      if (pmd === undefined) continue;
      seeTable(pmd, "pmd");
      tables++;
      for (let d = 0; d < 512; d++) {
        const addr = g * PGDIR_SIZE + u * PUD_SIZE + d * PMD_SIZE;
        const lower = pmd.child(d);
        if (pmd.none(d)) {
          if (lower !== undefined) fail(`pid ${mm.pid}: empty PMD at ${hex(addr)} keeps a table`);
          continue;
        }
        if (lower === undefined) fail(`pid ${mm.pid}: PMD at ${hex(addr)} has no table`);
        seeTable(lower, "pte");
        if (lower.cow === null || lower.cow.owner === mm) tables++;
        if (lower.cow !== null) auditSharedTable(mm, pmd, d, lower, addr);
        if (pmd.lo(d) & _PAGE_PSE) {
          if (lower.used !== 0) fail(`pid ${mm.pid}: deposited table at ${hex(addr)} is not empty`);
          auditHugePmd(k, mm, pmd, d, addr, ex, rss);
        } else {
          if (pmd.pfnAt(d) !== lower.pfn) fail(`pid ${mm.pid}: PMD at ${hex(addr)} points at the wrong pfn`);
          auditPteTable(k, mm, lower, addr, ex, rss);
        }
      }
    }
  }
  if (tables * 4096 !== mm.pgtablesBytes) {
    fail(
      `pid ${mm.pid}: VmPTE is ${mm.pgtablesBytes / 1024} kB but ${tables} tables (${tables * 4} kB) exist`,
    );
  }
  const names = ["MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES", "MM_SWAPENTS"];
  for (const c of [MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES, MM_SWAPENTS]) {
    if (rss[c] !== mm.rss[c]) fail(`pid ${mm.pid}: ${names[c]} is ${mm.rss[c]}, page tables map ${rss[c]}`);
  }
}

/** The VMA containing addr, checked to agree with an entry's protection bits. */
function vmaFor(mm: Mm, addr: number, lo: number, hi: number): Vma {
  const vma = mm.vmaLookup(addr);
  if (vma === undefined) fail(`pid ${mm.pid}: entry at ${hex(addr)} lies outside every VMA`);
  const accessible = (vma.flags & VM_ACCESS_FLAGS) !== 0;
  if (lo & _PAGE_PRESENT && !accessible)
    fail(`pid ${mm.pid}: present entry at ${hex(addr)} in a PROT_NONE VMA`);
  if (lo & _PAGE_PROTNONE && !(lo & _PAGE_PRESENT) && accessible) {
    fail(`pid ${mm.pid}: PROT_NONE entry at ${hex(addr)} in an accessible VMA`);
  }
  if (lo & _PAGE_RW && !(vma.flags & VM_WRITE)) {
    fail(`pid ${mm.pid}: writable entry at ${hex(addr)} in a VMA without VM_WRITE`);
  }
  if (lo & _PAGE_PRESENT && !(lo & _PAGE_USER))
    fail(`pid ${mm.pid}: present entry at ${hex(addr)} without _PAGE_USER`);
  if (((hi & _PAGE_NX_HI) !== 0) !== !(vma.flags & VM_EXEC))
    fail(`pid ${mm.pid}: NX at ${hex(addr)} disagrees with VM_EXEC`);
  return vma;
}

function addMmMap(ex: Expect, head: number, pid: number): void {
  let per = ex.mmMaps.get(head);
  if (per === undefined) {
    per = new Map();
    ex.mmMaps.set(head, per);
  }
  per.set(pid, (per.get(pid) ?? 0) + 1);
}

function addAnonMap(ex: Expect, head: number, what: string): void {
  const l = ex.anonMaps.get(head);
  if (l === undefined) ex.anonMaps.set(head, [what]);
  else l.push(what);
}

/** GUP references by folio, from the machine's pins and pipes. */
function collectGupRefs(k: Kernel, ex: Expect): void {
  const m = k.machine;
  for (const [handle, refs] of m.gupRefs) {
    if (!k.pids().includes(refs.pid)) fail(`pin or pipe ${handle} outlived process ${refs.pid}`);
    for (const pfn of refs.pfns) {
      if (pfn === m.zeroPfn || (pfn >= m.hugeZeroPfn && pfn < m.hugeZeroPfn + 512)) continue;
      const head = m.memmap.folioHead(pfn);
      const large = m.memmap.order(head) > 0;
      let n = 1;
      if (refs.flags & FOLL_PIN) {
        ex.pinned.add(pfn);
        if (large) ex.pincount.set(head, (ex.pincount.get(head) ?? 0) + 1);
        else n = GUP_PIN_COUNTING_BIAS;
      }
      ex.gupRef.set(head, (ex.gupRef.get(head) ?? 0) + n);
    }
  }
}

/** The anon_vma registry against the VMAs: trees, active counts, children. */
function auditAnonVmas(k: Kernel, active: Map<AnonVma, number>, live: Set<Vma>): void {
  const m = k.machine;
  const children = new Map<AnonVma, number>();
  for (const av of m.anonVmas.values()) {
    if (av.parent !== av) children.set(av.parent, (children.get(av.parent) ?? 0) + 1);
    if (av.root !== av.parent.root) fail(`anon_vma ${av.id} has a different root from its parent`);
  }
  for (const [id, av] of m.anonVmas) {
    if (av.id !== id) fail(`anon_vma registered as ${id} is ${av.id}`);
    if (av.vmas.size === 0) fail(`anon_vma ${id} is linked to no VMA but still registered`);
    for (const v of av.vmas) {
      if (!live.has(v)) fail(`anon_vma ${id} is linked to a VMA that left its mm`);
      if (!v.anonVmaChain.includes(av)) fail(`anon_vma ${id} is linked to a VMA whose chain lacks it`);
    }
    if (av.numActiveVmas !== (active.get(av) ?? 0))
      fail(`anon_vma ${id} counts ${av.numActiveVmas} active VMAs, found ${active.get(av) ?? 0}`);
    const want = (av.parent === av ? 1 : 0) + (children.get(av) ?? 0);
    if (av.numChildren !== want) fail(`anon_vma ${id} counts ${av.numChildren} children, found ${want}`);
  }
  for (const av of active.keys()) if (!m.anonVmas.has(av.id)) fail(`a VMA uses freed anon_vma ${av.id}`);
}

/** Pins under the modern rule: a pinned anon page still mapped is exclusive to its mm. */
function auditPins(k: Kernel, ex: Expect): void {
  const m = k.machine;
  for (const pfn of ex.pinned)
    if (ex.underShared.has(pfn)) fail(`pinned page ${pfn} is mapped through a shared PTE table`);
  if (m.cow !== "modern") return;
  for (const pfn of ex.pinned) {
    const head = m.memmap.folioHead(pfn);
    if (!m.memmap.test(head, PG_anon)) continue;
    const pmdMapped = (ex.pmdMaps.get(head) ?? 0) > 0;
    const mapped = (ex.pteMaps.get(pfn) ?? 0) > 0 || pmdMapped;
    if (!mapped) continue;
    const bit = pmdMapped && m.memmap.mapcount(pfn) === 0 ? head : pfn;
    if (!m.memmap.test(bit, PG_anon_exclusive))
      fail(`pinned anon page ${pfn} is mapped but not AnonExclusive`);
  }
}

function addMapper(ex: Expect, pfn: number, pid: number): void {
  const s = ex.mappers.get(pfn);
  if (s === undefined) ex.mappers.set(pfn, new Set([pid]));
  else s.add(pid);
}

function auditHugePmd(
  k: Kernel,
  mm: Mm,
  pmd: PageTable,
  d: number,
  addr: number,
  ex: Expect,
  rss: number[],
): void {
  const m = k.machine;
  const lo = pmd.lo(d);
  const head = pmd.pfnAt(d);
  const vma = vmaFor(mm, addr, lo, pmd.hi(d));
  if (addr < vma.start || addr + PMD_SIZE > vma.end)
    fail(`pid ${mm.pid}: huge PMD at ${hex(addr)} crosses its VMA`);
  if (head === m.hugeZeroPfn) {
    if (!(lo & _PAGE_SPECIAL) || lo & _PAGE_RW)
      fail(`pid ${mm.pid}: huge zero PMD at ${hex(addr)} has bad bits`);
    return;
  }
  if (m.memmap.order(head) !== 9 || !m.memmap.test(head, PG_head)) {
    fail(`pid ${mm.pid}: huge PMD at ${hex(addr)} maps pfn ${head}, not an order-9 folio head`);
  }
  if (!m.memmap.test(head, PG_anon)) fail(`pid ${mm.pid}: huge PMD at ${hex(addr)} maps a non-anon folio`);
  if (vma.anonVma === null)
    fail(`pid ${mm.pid}: anon folio mapped at ${hex(addr)} in a VMA without anon_vma`);
  ex.pmdMaps.set(head, (ex.pmdMaps.get(head) ?? 0) + 1);
  addMapper(ex, head, mm.pid);
  addMmMap(ex, head, mm.pid);
  addAnonMap(ex, head, `${mm.pid}:${hex(addr)}:pmd`);
  if (lo & _PAGE_RW && !(vma.flags & VM_SHARED) && !m.memmap.test(head, PG_anon_exclusive)) {
    fail(`pid ${mm.pid}: writable huge PMD at ${hex(addr)} maps a folio that is not AnonExclusive`);
  }
  rss[MM_ANONPAGES] += HPAGE_PMD_NR;
}

/** One sharer's view of a shared PTE table (cow-pte.ts): entry, address, VMA, seal. */
function auditSharedTable(mm: Mm, pmd: PageTable, d: number, t: PageTable, addr: number): void {
  // Non-null: called for shared tables.
  const c = t.cow!;
  const where = `pid ${mm.pid}: shared table at ${hex(addr)}`;
  if (pmd.lo(d) & (_PAGE_PSE | _PAGE_RW)) fail(`${where} sits under a writable or huge PMD entry`);
  if (c.addr !== addr) fail(`${where} is recorded at ${hex(c.addr)}`);
  if (!c.sharers.includes(mm)) fail(`${where} does not list this mm as a sharer`);
  if (!c.sharers.includes(c.owner)) fail(`${where} is owned by pid ${c.owner.pid}, not a sharer`);
  if (c.deferred !== (mm.machine.cowPte === "deferred")) fail(`${where} has the other design's accounting`);
  const vma = mm.vmaLookup(addr);
  if (
    vma === undefined ||
    vma.end < addr + PMD_SIZE ||
    (vma.flags & (VM_SHARED | VM_MAYWRITE)) !== VM_MAYWRITE
  )
    fail(`${where} is not inside one COW VMA`);
  if (!c.deferred)
    for (let j = 0; j < 512; j++) if (t.lo(j) & _PAGE_RW) fail(`${where} holds a writable entry`);
  const sum = tableChecksum(t);
  const last = seals.get(t);
  if (last !== undefined && last.gen === c.gen && last.sum !== sum)
    fail(`${where} changed while shared (a walker did not break COW)`);
  seals.set(t, { gen: c.gen, sum });
}

/** Every shared table is reached by exactly its sharers, two or more. */
function auditSharedTables(ex: Expect): void {
  for (const [t, seen] of ex.sharedSeen) {
    // Non-null: only shared tables are recorded.
    const c = t.cow!;
    const want = c.sharers.map((mm) => mm.pid).sort((a, b) => a - b);
    const got = seen.map((mm) => mm.pid).sort((a, b) => a - b);
    if (want.length < 2 || want.join() !== got.join() || new Set(want).size !== want.length)
      fail(`shared table pfn ${t.pfn} lists sharers [${want}], reached by [${got}]`);
  }
}

function auditPteTable(k: Kernel, mm: Mm, pte: PageTable, base: number, ex: Expect, rss: number[]): void {
  const m = k.machine;
  // A table shared with deferred accounting maps its pages once, for its owner.
  const counted = pte.cow === null || !pte.cow.deferred || pte.cow.owner === mm;
  for (let j = 0; j < 512; j++) {
    const lo = pte.lo(j);
    if (lo === 0 && pte.hi(j) === 0) continue;
    const addr = base + j * 4096;
    if (!(lo & (_PAGE_PRESENT | _PAGE_PROTNONE))) {
      auditSwapPte(k, mm, pte, j, addr, ex, rss);
      continue;
    }
    const vma = vmaFor(mm, addr, lo, pte.hi(j));
    const pfn = pte.pfnAt(j);
    if (lo & _PAGE_SPECIAL) {
      if (pfn !== m.zeroPfn)
        fail(`pid ${mm.pid}: special PTE at ${hex(addr)} maps pfn ${pfn}, not the zero page`);
      if (lo & _PAGE_RW) fail(`pid ${mm.pid}: zero page mapped writable at ${hex(addr)}`);
      if (!vma.isAnonymous()) fail(`pid ${mm.pid}: zero page in a shared mapping at ${hex(addr)}`);
      continue;
    }
    if (!m.memmap.isOnline(pfn) || m.memmap.test(pfn, PG_buddy) || m.memmap.test(pfn, PG_table)) {
      fail(`pid ${mm.pid}: PTE at ${hex(addr)} maps pfn ${pfn}, which is not a folio page`);
    }
    if (pte.cow !== null) ex.underShared.add(pfn);
    if (!counted) continue;
    const head = m.memmap.folioHead(pfn);
    const anon = m.memmap.test(head, PG_anon);
    if (anon !== vma.isAnonymous()) fail(`pid ${mm.pid}: PTE at ${hex(addr)} maps the wrong kind of folio`);
    if (anon) {
      if (vma.anonVma === null)
        fail(`pid ${mm.pid}: anon page mapped at ${hex(addr)} in a VMA without anon_vma`);
      addMapper(ex, pfn, mm.pid);
      addAnonMap(ex, head, `${mm.pid}:${hex(addr)}:${pfn}`);
      if (lo & _PAGE_RW && !m.memmap.test(pfn, PG_anon_exclusive)) {
        fail(`pid ${mm.pid}: writable PTE at ${hex(addr)} maps pfn ${pfn}, which is not AnonExclusive`);
      }
      if (lo & _PAGE_DIRTY && m.memmap.test(head, PG_swapcache)) ex.dirtyMapped.add(head);
    } else {
      // Non-null: a non-anonymous VMA always has its shmem object.
      const index = vma.pgoff + (addr - vma.start) / 4096;
      if (vma.shmem!.pages.get(index) !== pfn)
        fail(`pid ${mm.pid}: PTE at ${hex(addr)} is not the page-cache page`);
    }
    ex.pteMaps.set(pfn, (ex.pteMaps.get(pfn) ?? 0) + 1);
    if (m.memmap.order(head) > 0) addMmMap(ex, head, mm.pid);
    rss[anon ? MM_ANONPAGES : MM_SHMEMPAGES]++;
  }
}

/** A swap entry of mm at addr (pte[j]): its form, its place, its slot; counted in ex and rss. */
function auditSwapPte(
  k: Kernel,
  mm: Mm,
  pte: PageTable,
  j: number,
  addr: number,
  ex: Expect,
  rss: number[],
): void {
  const swap = k.machine.swap;
  const lo = pte.lo(j);
  if (lo & LO_FLAGS & ~(_PAGE_SWP_EXCLUSIVE | _PAGE_SWP_SOFT_DIRTY))
    fail(`pid ${mm.pid}: PTE at ${hex(addr)} is neither none, mapped nor a swap entry (${hex(lo)})`);
  if (pte.cow !== null) fail(`pid ${mm.pid}: swap entry at ${hex(addr)} in a shared PTE table`);
  const vma = mm.vmaLookup(addr);
  if (vma === undefined) fail(`pid ${mm.pid}: swap entry at ${hex(addr)} lies outside every VMA`);
  if (!vma.isAnonymous() || vma.anonVma === null)
    fail(`pid ${mm.pid}: swap entry at ${hex(addr)} in a VMA that is not private anon with an anon_vma`);
  const slot = swapPteSlot(lo, pte.hi(j));
  if (slot < 0 || slot >= swap.nrSlots)
    fail(`pid ${mm.pid}: swap entry at ${hex(addr)} names slot ${slot}, beyond the device`);
  ex.swapRefs.set(slot, (ex.swapRefs.get(slot) ?? 0) + 1);
  if (pteSwpExclusive(lo)) ex.swapExclusive.add(slot);
  rss[MM_SWAPENTS]++;
}

/** The swap device and the swap cache against the swap entries and folios found. */
function auditSwap(k: Kernel, ex: Expect): void {
  const m = k.machine;
  const swap = m.swap;
  const mem = m.memmap;
  let inuse = 0;
  for (let s = 0; s < swap.nrSlots; s++) {
    const refs = ex.swapRefs.get(s) ?? 0;
    if (swap.count[s] !== refs)
      fail(`swap slot ${s} counts ${swap.count[s]} swap entries, the page tables hold ${refs}`);
    if (refs > 0 || swap.cache.has(s)) inuse++;
    else if (swap.tag[s] !== 0) fail(`free swap slot ${s} still holds content ${swap.tag[s]}`);
  }
  if (swap.inuse !== inuse) fail(`swap inuse is ${swap.inuse}, ${inuse} slots are referenced or cached`);
  for (const s of ex.swapExclusive) {
    if (swap.count[s] !== 1)
      fail(`an exclusive swap entry names slot ${s}, which ${swap.count[s]} entries name`);
    const pfn = swap.cache.get(s);
    if (pfn !== undefined && mem.mapcount(pfn) !== 0)
      fail(`an exclusive swap entry names slot ${s}, whose cached folio ${pfn} is still mapped`);
  }
  if (swap.slotOf.size !== swap.cache.size)
    fail(`the swap cache holds ${swap.cache.size} slots but ${swap.slotOf.size} folios`);
  for (const [s, pfn] of swap.cache) {
    if (swap.slotOf.get(pfn) !== s)
      fail(`swap cache slot ${s} holds folio ${pfn}, whose folio->swap is ${swap.slotOf.get(pfn)}`);
    if (!mem.isOnline(pfn) || mem.ref(pfn) <= 0 || !mem.test(pfn, PG_swapcache))
      fail(`swap cache slot ${s} holds pfn ${pfn}, not an allocated PG_swapcache folio`);
    if (mem.order(pfn) !== 0 || !mem.test(pfn, PG_anon) || !mem.test(pfn, PG_swapbacked))
      fail(`swap cache folio ${pfn} is not an order-0 anon swap-backed folio`);
    if (swap.count[s] > 0 && mem.test(pfn, PG_anon_exclusive))
      fail(`swap cache folio ${pfn} is AnonExclusive while swap entries name its slot ${s}`);
    if (!mem.test(pfn, PG_dirty) && !ex.dirtyMapped.has(pfn) && mem.tag(pfn) !== swap.tag[s]) {
      fail(
        `clean swap cache folio ${pfn} holds ${mem.tag(pfn)}, its slot ${s} ${swap.tag[s]} (a write was lost or never written)`,
      );
    }
  }
}

/** Walks every online frame and checks the allocator and the folio counters against `ex`. */
function auditFrames(k: Kernel, ex: Expect): void {
  const m = k.machine;
  const mm = m.memmap;
  const buddy = m.buddy;
  // Free blocks from the lists.
  const freeOwner = new Map<number, number>(); // first pfn -> order
  const perOrder = new Array<number>(buddy.nrFree.length).fill(0);
  buddy.forEachFreeBlock((pfn, order) => {
    if (freeOwner.has(pfn)) fail(`free block ${pfn} is on the lists twice`);
    if (pfn % (1 << order) !== 0) fail(`free block ${pfn} of order ${order} is misaligned`);
    freeOwner.set(pfn, order);
    perOrder[order]++;
  });
  const [pLo, pHi] = buddy.pristineRange();
  perOrder[perOrder.length - 1] += (pHi - pLo) / 1024;
  for (let o = 0; o < perOrder.length; o++) {
    if (perOrder[o] !== buddy.nrFree[o])
      fail(`nr_free[${o}] is ${buddy.nrFree[o]}, the lists hold ${perOrder[o]}`);
  }
  const shmemPages = new Set<number>();
  for (const obj of m.shmemObjects.values()) for (const pfn of obj.pages.values()) shmemPages.add(pfn);
  const limit = Math.min(pLo, buddy.nrPages);
  for (let pfn = 0; pfn < buddy.nrPages; ) {
    if (pfn >= pLo && pfn < pHi) {
      pfn = pHi;
      continue;
    }
    if (!mm.isOnline(pfn)) {
      if (pfn < limit) fail(`pfn ${pfn} below the pristine range is not online`);
      pfn += PAGES_PER_SECTION - (pfn % PAGES_PER_SECTION);
      continue;
    }
    const freeOrder = freeOwner.get(pfn);
    if (freeOrder !== undefined) {
      if (!mm.test(pfn, PG_buddy)) fail(`free block ${pfn} lacks PG_buddy`);
      for (let i = 1; i < 1 << freeOrder; i++) {
        if (mm.flags(pfn + i) !== 0 || mm.ref(pfn + i) !== 0)
          fail(`page ${pfn + i} of free block ${pfn} is in use`);
      }
      pfn += 1 << freeOrder;
      continue;
    }
    const f = mm.flags(pfn);
    if (f & PG_buddy) fail(`pfn ${pfn} has PG_buddy but is on no free list`);
    if (f & PG_tail) fail(`pfn ${pfn} is a tail page without its head`);
    if (f & PG_table) {
      if (!ex.tables.has(pfn)) fail(`page-table page ${pfn} is reachable from no mm (leak)`);
      pfn++;
      continue;
    }
    if (f & PG_reserved) fail(`reserved pfn ${pfn} inside RAM`);
    auditFolio(k, pfn, ex, shmemPages);
    pfn += 1 << mm.order(pfn);
  }
  for (const t of ex.tables) if (!mm.test(t, PG_table)) fail(`table pfn ${t} is not PG_table`);
  if (mm.ref(m.zeroPfn) !== 1 || mm.mapcount(m.zeroPfn) !== 0) fail("the zero page's counters changed");
}

function auditFolio(k: Kernel, head: number, ex: Expect, shmemPages: Set<number>): void {
  const mm = k.machine.memmap;
  const order = mm.order(head);
  const nr = 1 << order;
  const f = mm.flags(head);
  if (order > 0 && !(f & PG_head)) fail(`folio ${head} of order ${order} lacks PG_head`);
  let pteTotal = 0;
  for (let i = 0; i < nr; i++) {
    const p = head + i;
    if (i > 0 && (!(mm.flags(p) & PG_tail) || mm.order(p) !== order))
      fail(`page ${p} is not a tail of folio ${head}`);
    if (i > 3 && mm.ref(p) !== 0) fail(`tail page ${p} has refcount ${mm.ref(p)}`);
    const want = ex.pteMaps.get(p) ?? 0;
    if (mm.mapcount(p) !== want)
      fail(`pfn ${p} mapcount is ${mm.mapcount(p)}, page tables map it ${want} times`);
    pteTotal += want;
    const mappers = ex.mappers.get(p);
    if (mappers !== undefined && mappers.size > 1 && mm.test(p, PG_anon_exclusive)) {
      fail(`pfn ${p} is AnonExclusive but mapped by pids ${[...mappers].join(",")}`);
    }
  }
  const pmdMaps = ex.pmdMaps.get(head) ?? 0;
  if (order > 1 && f & PG_anon) ex.largeAnon.push(head);
  if (order > 0) {
    if (order < 2) fail(`folio ${head} has order 1, which anon and shmem folios never have here`);
    if (mm.entireMapcount(head) !== pmdMaps)
      fail(`folio ${head} entire mapcount ${mm.entireMapcount(head)}, found ${pmdMaps}`);
    if (mm.largeMapcount(head) !== pteTotal + pmdMaps) {
      fail(`folio ${head} large mapcount ${mm.largeMapcount(head)}, found ${pteTotal + pmdMaps}`);
    }
  }
  if (f & PG_shmem && !shmemPages.has(head)) fail(`shmem folio ${head} is in no page cache`);
  if (f & PG_lru) ex.onLru.add(head);
  else if (f & (PG_anon | PG_shmem)) fail(`folio ${head} is anon or shmem but on no LRU list`);
  // A lazyfree folio may be dirty: GUP's FOLL_TOUCH marks the folio dirty, and reclaim then
  // makes it swap-backed again instead of discarding it.
  if (f & PG_anon && !(f & PG_swapbacked) && f & PG_swapcache)
    fail(`lazyfree folio ${head} is in the swap cache`);
  if (f & PG_swapcache && k.machine.swap.slotOf.get(head) === undefined)
    fail(`folio ${head} has PG_swapcache but no swap cache slot`);
  const cache = (f & PG_shmem ? 1 : 0) + (f & PG_swapcache ? 1 : 0);
  const gup = ex.gupRef.get(head) ?? 0;
  const want = pteTotal + pmdMaps + cache + gup;
  if (mm.ref(head) !== want)
    fail(`folio ${head} refcount ${mm.ref(head)}, expected ${want} (maps + cache + ${gup} GUP)`);
  if (want === 0) fail(`folio ${head} is allocated but unreferenced (leak)`);
  if (order > 1) {
    const pins = ex.pincount.get(head) ?? 0;
    if (mm.pincount(head) !== pins) fail(`folio ${head} pincount ${mm.pincount(head)}, ${pins} pins found`);
    auditMmIds(k, head, ex);
  }
  if (f & PG_anon && pteTotal + pmdMaps > 0) auditRmap(k, head, ex);
}

/** The mm id slots of a large folio against the mappings found per mm. */
function auditMmIds(k: Kernel, head: number, ex: Expect): void {
  const mem = k.machine.memmap;
  const per = ex.mmMaps.get(head) ?? new Map<number, number>();
  const ids = [mem.mmId(head, 0), mem.mmId(head, 1)];
  if (ids[0] !== 0 && ids[0] === ids[1]) fail(`folio ${head}: both mm id slots hold mm ${ids[0]}`);
  for (const slot of [0, 1]) {
    const id = ids[slot];
    const c = mem.mmIdMapcount(head, slot);
    if (id === 0) {
      if (c !== 0) fail(`folio ${head}: empty mm id slot ${slot} counts ${c}`);
      continue;
    }
    const real = per.get(id) ?? 0;
    if (c <= 0 || c > real)
      fail(`folio ${head}: slot ${slot} says mm ${id} maps it ${c} times, found ${real}`);
  }
  const shared = mem.test(head, PG_mm_ids_shared);
  if (per.size > 1 && !shared) fail(`folio ${head} is mapped by ${per.size} mms but not marked maybe-shared`);
  if (!shared && per.size === 1) {
    const [[pid, n]] = [...per];
    const slot = ids.indexOf(pid);
    if (slot < 0 || mem.mmIdMapcount(head, slot) !== n)
      fail(`folio ${head} is not marked shared, but mm ${pid}'s slot does not count its ${n} mappings`);
  }
}

/** rmapWalk must find exactly the mappings of an anon folio that the page tables hold. */
function auditRmap(k: Kernel, head: number, ex: Expect): void {
  const want = (ex.anonMaps.get(head) ?? []).sort();
  const got = rmapWalk(k.machine, head)
    .map((h) => `${h.mm.pid}:${hex(h.addr)}:${h.pmd ? "pmd" : h.pfn}`)
    .sort();
  if (want.join(" ") !== got.join(" "))
    fail(`rmapWalk of folio ${head} finds [${got.join(" ")}], the page tables map [${want.join(" ")}]`);
}

function auditDeferredSplit(k: Kernel, ex: Expect): void {
  const mm = k.machine.memmap;
  for (const head of k.machine.deferredSplit) {
    if (!mm.test(head, PG_anon) || mm.order(head) < 2)
      fail(`deferred split queue holds ${head}, not a large anon folio`);
    if (!mm.test(head, PG_partially_mapped) && mm.order(head) !== 9) {
      fail(
        `deferred split queue holds unmarked folio ${head} of order ${mm.order(head)}; only new PMD THPs go there unmarked`,
      );
    }
  }
  // Every large anon folio mapped only in part, by PTEs, is marked and queued (__folio_remove_rmap).
  for (const head of ex.largeAnon) {
    if (mm.entireMapcount(head) > 0) continue;
    const nr = 1 << mm.order(head);
    let mapped = 0;
    for (let i = 0; i < nr; i++) if (mm.mapcount(head + i) > 0) mapped++;
    if (
      mapped > 0 &&
      mapped < nr &&
      !(mm.test(head, PG_partially_mapped) && k.machine.deferredSplit.has(head))
    ) {
      fail(`folio ${head} is partly mapped (${mapped}/${nr} pages) but not queued for deferred split`);
    }
    if (mapped === nr && mm.test(head, PG_partially_mapped))
      fail(`fully mapped folio ${head} is marked partially mapped`);
  }
}

/** The LRU lists against the PG_lru folios the frame walk found, and the partly-mapped gauge. */
function auditLru(k: Kernel, ex: Expect): void {
  const m = k.machine;
  const mem = m.memmap;
  const lru = m.lru;
  const seen = new Set<number>();
  for (let l = 0; l < NR_LRU_LISTS; l++) {
    let pages = 0;
    let folios = 0;
    let newer = -1;
    for (let p = lru.first[l]; p !== -1; p = lru.next(p)) {
      if (seen.has(p)) fail(`folio ${p} is on the LRU lists twice (or a list loops)`);
      seen.add(p);
      if (!ex.onLru.has(p)) fail(`${LRU_NAMES[l]} holds ${p}, not an allocated PG_lru folio head`);
      if (folioLruList(mem.flags(p)) !== l)
        fail(`folio ${p} is on ${LRU_NAMES[l]}, its flags name ${LRU_NAMES[folioLruList(mem.flags(p))]}`);
      if (lru.prev(p) !== newer)
        fail(`folio ${p} on ${LRU_NAMES[l]}: its prev link is ${lru.prev(p)}, not ${newer}`);
      newer = p;
      pages += 1 << mem.order(p);
      folios++;
    }
    if (lru.last[l] !== newer) fail(`${LRU_NAMES[l]}: last is ${lru.last[l]}, the chain ends at ${newer}`);
    if (lru.nrPages[l] !== pages || lru.nrFolios[l] !== folios)
      fail(
        `${LRU_NAMES[l]} counts ${lru.nrPages[l]} pages in ${lru.nrFolios[l]} folios, holds ${pages} in ${folios}`,
      );
  }
  for (const head of ex.onLru) if (!seen.has(head)) fail(`PG_lru folio ${head} is on no LRU list`);
  for (const order of ANON_ORDERS) {
    let marked = 0;
    for (const head of m.deferredSplit)
      if (mem.order(head) === order && mem.test(head, PG_partially_mapped)) marked++;
    const gauge = m.stat.getOrder("nr_anon_partially_mapped", order);
    if (gauge !== marked)
      fail(`nr_anon_partially_mapped for order ${order} is ${gauge}, ${marked} queued folios are marked`);
  }
}
