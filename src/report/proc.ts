// /proc-style reports (fs/proc/task_mmu.c, fs/proc/array.c): status, smaps, and a page-level
// dump in the spirit of pagemap + kpageflags + kpagecount.

import { MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS, type Mm } from "../mm/mm.ts";
import {
  _PAGE_DIRTY,
  _PAGE_PRESENT,
  _PAGE_PSE,
  _PAGE_RW,
  _PAGE_SPECIAL,
  pgdIndex,
  pmdIndex,
  pteIndex,
  pteMapped,
  pudIndex,
} from "../mm/pgtable.ts";
import { isSwapPte, pteSwpExclusive, swapEntryContent, swapPteSlot } from "../mm/swap.ts";
import { VM_EXEC, VM_READ, VM_SHARED, VM_WRITE, type Vma, vmFlagsString } from "../mm/vma.ts";
import { PG_anon, PG_anon_exclusive, PG_dirty, PG_swapbacked } from "../phys/memmap.ts";
import { PAGE_SIZE, PMD_SIZE } from "../uapi.ts";

/** The memory lines of /proc/PID/status, in kB. */
export interface Status {
  VmSize: number;
  VmRSS: number;
  RssAnon: number;
  RssFile: number;
  RssShmem: number;
  VmPTE: number;
  /** MM_SWAPENTS: the swap entries in the page tables. */
  VmSwap: number;
}

/** task_mem: sizes in kB from the VMAs, the RSS counters (MM_SWAPENTS too) and mm_pgtables_bytes. */
export function status(mm: Mm): Status {
  let vm = 0;
  for (const v of mm.vmas) vm += v.end - v.start;
  const anon = mm.rss[MM_ANONPAGES] * 4;
  const file = mm.rss[MM_FILEPAGES] * 4;
  const shmem = mm.rss[MM_SHMEMPAGES] * 4;
  return {
    VmSize: vm / 1024,
    VmRSS: anon + file + shmem,
    RssAnon: anon,
    RssFile: file,
    RssShmem: shmem,
    VmPTE: mm.pgtablesBytes / 1024,
    VmSwap: mm.rss[MM_SWAPENTS] * 4,
  };
}

/** One VMA of /proc/PID/smaps, sizes in kB. */
export interface SmapsEntry {
  start: number;
  end: number;
  perms: string;
  /** The maps line's device, inode and name: "00:00 0" for private anon, shmem's "/dev/zero (deleted)". */
  backing: string;
  Size: number;
  Rss: number;
  Anonymous: number;
  AnonHugePages: number;
  LazyFree: number;
  /** Swap entries in the VMA's page tables. */
  Swap: number;
  VmFlags: string;
}

/**
 * show_smap: walks the VMA's page tables as smaps_pte_range does. The zero page and the huge
 * zero page count nowhere (vm_normal_page is NULL for them); a PMD-mapped anon THP counts in
 * AnonHugePages (PTE-mapped mTHP folios do not); an anon page of a folio that is not
 * swap-backed (lazyfree), clean in its PTE or PMD and in the folio, counts in LazyFree
 * (smaps_account); a swap entry counts in Swap (SwapPss is not shown).
 */
export function smapsVma(mm: Mm, vma: Vma): SmapsEntry {
  const m = mm.machine;
  const mem = m.memmap;
  let rss = 0;
  let anon = 0;
  let thp = 0;
  let lazy = 0;
  let swap = 0;
  for (let addr = vma.start; addr < vma.end; ) {
    const pmd = mm.pgd.child(pgdIndex(addr))?.child(pudIndex(addr));
    const pmdEnd = Math.min(vma.end, (Math.floor(addr / PMD_SIZE) + 1) * PMD_SIZE);
    if (pmd === undefined || pmd.none(pmdIndex(addr))) {
      addr = pmdEnd;
      continue;
    }
    const i = pmdIndex(addr);
    if (pmd.lo(i) & _PAGE_PSE) {
      // smaps_pmd_entry: the whole folio at once, dirty from the PMD.
      const head = pmd.pfnAt(i);
      if (head !== m.hugeZeroPfn) {
        rss += 2048;
        if (mem.test(head, PG_anon)) {
          anon += 2048;
          thp += 2048;
          if (!mem.test(head, PG_swapbacked) && !(pmd.lo(i) & _PAGE_DIRTY) && !mem.test(head, PG_dirty))
            lazy += 2048;
        }
      }
      addr = pmdEnd;
      continue;
    }
    const pte = pmd.child(i);
    // Under cow-pte-deferred a shared table's pages are charged to its owner only (cow-pte.ts).
    if (pte?.cow?.deferred && pte.cow.owner !== mm) {
      addr = pmdEnd;
      continue;
    }
    for (; addr < pmdEnd; addr += PAGE_SIZE) {
      const lo = pte?.lo(pteIndex(addr)) ?? 0;
      if (!pteMapped(lo)) {
        if (pte !== undefined && isSwapPte(lo, pte.hi(pteIndex(addr)))) swap += 4;
        continue;
      }
      if (lo & _PAGE_SPECIAL) continue;
      // Non-null: a mapped entry was read from this table.
      const pfn = pte!.pfnAt(pteIndex(addr));
      const head = mem.folioHead(pfn);
      rss += 4;
      if (mem.test(head, PG_anon)) {
        anon += 4;
        if (!mem.test(head, PG_swapbacked) && !(lo & _PAGE_DIRTY) && !mem.test(head, PG_dirty)) lazy += 4;
      }
    }
  }
  const f = vma.flags;
  const perms = `${f & VM_READ ? "r" : "-"}${f & VM_WRITE ? "w" : "-"}${f & VM_EXEC ? "x" : "-"}${f & VM_SHARED ? "s" : "p"}`;
  return {
    start: vma.start,
    end: vma.end,
    perms,
    backing: vma.shmem === null ? "00:00 0" : `00:01 ${vma.shmem.id}  /dev/zero (deleted)`,
    Size: (vma.end - vma.start) / 1024,
    Rss: rss,
    Anonymous: anon,
    AnonHugePages: thp,
    LazyFree: lazy,
    Swap: swap,
    VmFlags: vmFlagsString(f),
  };
}

/** smaps for every VMA of the mm. */
export function smaps(mm: Mm): SmapsEntry[] {
  return mm.vmas.map((v) => smapsVma(mm, v));
}

/** One virtual page of the page-level dump. */
export interface PageInfo {
  addr: number;
  /**
   * "none" unmapped, "zero"/"hugezero" the shared zero pages, "anon" or "shmem" a folio page,
   * "swap" a swap entry (pagemap's PM_SWAP).
   */
  kind: "none" | "zero" | "hugezero" | "anon" | "shmem" | "swap";
  pfn: number;
  /** The folio head's pfn and order (0 for order-0 folios). */
  head: number;
  order: number;
  /** Mapped by a PMD leaf rather than a PTE. */
  pmd: boolean;
  /**
   * pagemap's PM_MMAP_EXCLUSIVE (bit 56): the page is mapped exactly once
   * (__folio_page_mapped_exclusively with CONFIG_PAGE_MAPCOUNT, as on our 6.18 machines: its
   * precise mapcount is 1). Under a PMD the head page's count speaks for all 512, as
   * pagemap_pmd_range computes it once. Not PageAnonExclusive: see anonExclusive.
   */
  exclusive: boolean;
  /**
   * PageAnonExclusive (kpageflags bit 34 on x86-64), the head's for a PMD-mapped THP; for a swap
   * entry, its exclusive bit (pte_swp_exclusive), which keeps PageAnonExclusive while the page
   * is out.
   */
  anonExclusive: boolean;
  writable: boolean;
  dirty: boolean;
  present: boolean;
  mapcount: number;
  refcount: number;
  /** The content tag (of the swapped-out page for a swap entry). */
  tag: number;
  /** The swap slot of a swap entry, else -1. */
  swap: number;
}

/** The page-level picture of [start, end): what maps each virtual page (pagemap-like). */
export function pageDump(mm: Mm, start: number, end: number): PageInfo[] {
  const m = mm.machine;
  const mem = m.memmap;
  const out: PageInfo[] = [];
  for (let addr = start; addr < end; addr += PAGE_SIZE) {
    const info: PageInfo = {
      addr,
      kind: "none",
      pfn: -1,
      head: -1,
      order: 0,
      pmd: false,
      exclusive: false,
      anonExclusive: false,
      writable: false,
      dirty: false,
      present: false,
      mapcount: 0,
      refcount: 0,
      tag: 0,
      swap: -1,
    };
    out.push(info);
    const pmd = mm.pgd.child(pgdIndex(addr))?.child(pudIndex(addr));
    if (pmd === undefined) continue;
    const i = pmdIndex(addr);
    let lo: number;
    let pfn: number;
    if (pmd.lo(i) & _PAGE_PSE) {
      lo = pmd.lo(i);
      pfn = pmd.pfnAt(i) + pteIndex(addr);
      info.pmd = true;
    } else {
      const pte = pmd.child(i);
      if (pte === undefined) continue;
      lo = pte.lo(pteIndex(addr));
      const hi = pte.hi(pteIndex(addr));
      if (isSwapPte(lo, hi)) {
        info.kind = "swap";
        info.swap = swapPteSlot(lo, hi);
        info.anonExclusive = pteSwpExclusive(lo);
        info.tag = swapEntryContent(m, info.swap);
        continue;
      }
      if (!pteMapped(lo)) continue;
      pfn = pte.pfnAt(pteIndex(addr));
    }
    info.pfn = pfn;
    info.present = (lo & _PAGE_PRESENT) !== 0;
    // A shared PTE table sits under a read-only PMD entry (cow-pte.ts), which x86 honours.
    info.writable = (lo & _PAGE_RW) !== 0 && (pmd.lo(i) & _PAGE_RW) !== 0;
    info.dirty = (lo & _PAGE_DIRTY) !== 0;
    if (pfn === m.zeroPfn) {
      info.kind = "zero";
      continue;
    }
    if (pfn - pteIndex(addr) === m.hugeZeroPfn && info.pmd) {
      info.kind = "hugezero";
      info.head = m.hugeZeroPfn;
      info.order = 9;
      continue;
    }
    const head = mem.folioHead(pfn);
    info.kind = mem.test(head, PG_anon) ? "anon" : "shmem";
    info.head = head;
    info.order = mem.order(head);
    const precise = (page: number) => mem.mapcount(page) + (info.order > 0 ? mem.entireMapcount(head) : 0);
    info.mapcount = precise(pfn);
    info.exclusive = precise(info.pmd ? head : pfn) === 1;
    info.anonExclusive = info.kind === "anon" && mem.test(info.pmd ? head : pfn, PG_anon_exclusive);
    info.refcount = mem.ref(head);
    info.tag = mem.tag(pfn);
  }
  return out;
}

const hex = (n: number): string => n.toString(16).padStart(12, "0");

/** The smaps text of one VMA, as the kernel prints it (the fields vmlab models). */
export function formatSmaps(e: SmapsEntry): string {
  const kb = (name: string, v: number) => `${`${name}:`.padEnd(16)}${String(v).padStart(8)} kB`;
  return [
    `${hex(e.start)}-${hex(e.end)} ${e.perms} 00000000 ${e.backing}`,
    kb("Size", e.Size),
    kb("Rss", e.Rss),
    kb("Anonymous", e.Anonymous),
    kb("LazyFree", e.LazyFree),
    kb("AnonHugePages", e.AnonHugePages),
    kb("Swap", e.Swap),
    `VmFlags: ${e.VmFlags}`,
  ].join("\n");
}

/** The status lines, as the kernel prints them. */
export function formatStatus(s: Status): string {
  return (Object.keys(s) as (keyof Status)[])
    .map((k) => `${`${k}:`.padEnd(10)}${String(s[k]).padStart(8)} kB`)
    .join("\n");
}

/**
 * The page dump as text: runs of pages that continue one another (same kind and flags,
 * consecutive pfns in one folio) fold into one line.
 */
export function formatPageDump(pages: PageInfo[]): string {
  const lines: string[] = [
    "address          pages  kind      pfn        folio          map  excl ae wr dirty",
  ];
  for (let i = 0; i < pages.length; ) {
    const p = pages[i];
    let n = 1;
    while (i + n < pages.length && continues(pages[i + n - 1], pages[i + n])) n++;
    const folio = p.head < 0 ? "-" : `${p.head.toString(16)}/o${p.order}${p.pmd ? " pmd" : ""}`;
    const pfn = p.kind === "swap" ? `swp:${p.swap.toString(16)}` : p.pfn < 0 ? "-" : p.pfn.toString(16);
    const yes = (b: boolean) => (b ? "y" : "-");
    lines.push(
      `${hex(p.addr)}  ${String(n).padStart(5)}  ${p.kind.padEnd(8)}  ${pfn.padEnd(9)}  ${folio.padEnd(13)}  ${String(p.mapcount).padStart(3)}  ${yes(p.exclusive).padStart(4)} ${yes(p.anonExclusive).padStart(2)} ${yes(p.writable).padStart(2)} ${yes(p.dirty).padStart(5)}`,
    );
    i += n;
  }
  return lines.join("\n");
}

function continues(a: PageInfo, b: PageInfo): boolean {
  if (a.kind !== b.kind || a.pmd !== b.pmd || a.exclusive !== b.exclusive || a.writable !== b.writable)
    return false;
  if (a.anonExclusive !== b.anonExclusive) return false;
  if (a.dirty !== b.dirty || a.mapcount !== b.mapcount) return false;
  if (a.kind === "none" || a.kind === "zero") return true;
  if (a.kind === "swap") return b.swap === a.swap + 1;
  return b.pfn === a.pfn + 1 && a.head === b.head;
}
