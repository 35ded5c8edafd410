// The invariant audit: recomputes everything derivable from the page tables and the VMA trees
// and compares it with what the model stores. Any disagreement throws "audit: reason".
// Tests and the fuzzer run it after every operation; benchmarks never do.
//
// Checked:
//   allocator   every online frame is in exactly one free block or allocated; nr_free per
//               order matches the lists; once no process is left, nr_free equals boot's
//   tables      every table page is PG_table with refcount 1, reachable once; VmPTE = 4 KiB x
//               (PUD + PMD + PTE tables + deposited tables) of the mm
//   folios      refcount = PTE maps + PMD maps (+ 1 page-cache ref for shmem); per-page
//               mapcount = PTE maps; entire and large mapcounts; no allocated folio unreferenced
//   exclusive   an anon page mapped by two mms is not AnonExclusive; a writable PTE in a
//               private VMA maps an AnonExclusive page
//   mappings    every entry lies inside a VMA and agrees with its protection; huge PMDs map
//               order-9 folios (or the huge zero page) and have a deposited, empty table
//   RSS         MM_ANONPAGES and MM_SHMEMPAGES equal the mapped pages found
//   VMAs        sorted, disjoint, page aligned, anon_vma and shmem user counts add up
//   deferred    queued folios are large anon folios, marked partly mapped or new PMD THPs; every
//               partly mapped large anon folio is marked and queued

import type { Kernel } from "../mm/kernel.ts";
import { MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, type Mm } from "../mm/mm.ts";
import {
  _PAGE_NX_HI,
  _PAGE_PRESENT,
  _PAGE_PROTNONE,
  _PAGE_PSE,
  _PAGE_RW,
  _PAGE_SPECIAL,
  _PAGE_USER,
  HPAGE_PMD_NR,
  type PageTable,
  PGDIR_SIZE,
} from "../mm/pgtable.ts";
import type { AnonVma, Vma } from "../mm/vma.ts";
import { VM_ACCESS_FLAGS, VM_EXEC, VM_SHARED, VM_WRITE } from "../mm/vma.ts";
import {
  PAGES_PER_SECTION,
  PG_anon,
  PG_anon_exclusive,
  PG_buddy,
  PG_head,
  PG_partially_mapped,
  PG_reserved,
  PG_shmem,
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
  for (const pid of k.pids()) {
    const mm = k.mm(pid);
    auditVmas(mm, anonVmaUse, shmemUse);
    auditTables(k, mm, ex);
  }
  for (const [av, n] of anonVmaUse)
    if (av.vmas !== n) fail(`anon_vma ${av.id} counts ${av.vmas} VMAs, found ${n}`);
  for (const [id, obj] of m.shmemObjects) {
    const n = shmemUse.get(id) ?? 0;
    if (obj.users !== n) fail(`shmem object ${id} has ${obj.users} users, found ${n} VMAs`);
    if (n === 0) fail(`shmem object ${id} outlived its last VMA`);
  }
  for (const id of shmemUse.keys())
    if (!m.shmemObjects.has(id)) fail(`VMA refers to freed shmem object ${id}`);
  auditFrames(k, ex);
  auditDeferredSplit(k, ex);
  if (k.pids().length === 0) {
    if (m.shmemObjects.size !== 0) fail(`${m.shmemObjects.size} shmem objects left after the last exit`);
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
    if (v.anonVma) anonVmaUse.set(v.anonVma, (anonVmaUse.get(v.anonVma) ?? 0) + 1);
    if (v.shmem) shmemUse.set(v.shmem.id, (shmemUse.get(v.shmem.id) ?? 0) + 1);
  }
}

function auditTables(k: Kernel, mm: Mm, ex: Expect): void {
  const m = k.machine;
  const rss = [0, 0, 0];
  let tables = 0;
  const seeTable = (t: PageTable, what: string) => {
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
        tables++;
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
  const names = ["MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES"];
  for (const c of [MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES]) {
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
  if (lo & _PAGE_RW && !(vma.flags & VM_SHARED) && !m.memmap.test(head, PG_anon_exclusive)) {
    fail(`pid ${mm.pid}: writable huge PMD at ${hex(addr)} maps a folio that is not AnonExclusive`);
  }
  rss[MM_ANONPAGES] += HPAGE_PMD_NR;
}

function auditPteTable(k: Kernel, mm: Mm, pte: PageTable, base: number, ex: Expect, rss: number[]): void {
  const m = k.machine;
  for (let j = 0; j < 512; j++) {
    const lo = pte.lo(j);
    if (lo === 0 && pte.hi(j) === 0) continue;
    const addr = base + j * 4096;
    if (!(lo & (_PAGE_PRESENT | _PAGE_PROTNONE)))
      fail(`pid ${mm.pid}: PTE at ${hex(addr)} is neither none nor mapped`);
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
    const head = m.memmap.folioHead(pfn);
    const anon = m.memmap.test(head, PG_anon);
    if (anon !== vma.isAnonymous()) fail(`pid ${mm.pid}: PTE at ${hex(addr)} maps the wrong kind of folio`);
    if (anon) {
      if (vma.anonVma === null)
        fail(`pid ${mm.pid}: anon page mapped at ${hex(addr)} in a VMA without anon_vma`);
      addMapper(ex, pfn, mm.pid);
      if (lo & _PAGE_RW && !m.memmap.test(pfn, PG_anon_exclusive)) {
        fail(`pid ${mm.pid}: writable PTE at ${hex(addr)} maps pfn ${pfn}, which is not AnonExclusive`);
      }
    } else {
      // Non-null: a non-anonymous VMA always has its shmem object.
      const index = vma.pgoff + (addr - vma.start) / 4096;
      if (vma.shmem!.pages.get(index) !== pfn)
        fail(`pid ${mm.pid}: PTE at ${hex(addr)} is not the page-cache page`);
    }
    ex.pteMaps.set(pfn, (ex.pteMaps.get(pfn) ?? 0) + 1);
    rss[anon ? MM_ANONPAGES : MM_SHMEMPAGES]++;
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
    if (i > 2 && mm.ref(p) !== 0) fail(`tail page ${p} has refcount ${mm.ref(p)}`);
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
  const cache = f & PG_shmem ? 1 : 0;
  if (cache === 1 && !shmemPages.has(head)) fail(`shmem folio ${head} is in no page cache`);
  const want = pteTotal + pmdMaps + cache;
  if (mm.ref(head) !== want) fail(`folio ${head} refcount ${mm.ref(head)}, expected ${want} (maps + cache)`);
  if (want === 0) fail(`folio ${head} is allocated but unreferenced (leak)`);
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
