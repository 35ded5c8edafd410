// The naive reference model (DESIGN.md): what each process must read, derived without page
// tables, folios or VMAs. Each process has a map from virtual page to its protection and its
// backing: private pages hold their own content tag; shared pages write through to a shared
// object. vmlab must agree with it on every read, under every design.
//
// It also predicts the errno of the simple argument errors and where an access stops with
// SIGSEGV. It cannot predict memory exhaustion: when vmlab reports VM_FAULT_OOM, the model
// accepts the pages completed before it.

import {
  EEXIST,
  EINVAL,
  ENOMEM,
  EPERM,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  MAP_TYPE,
  PAGE_SIZE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  TASK_SIZE,
} from "../uapi.ts";

interface RefPage {
  prot: number;
  /** 0 for a private page, else the id of the shared object. */
  obj: number;
  /** Page index in the shared object. */
  index: number;
}

interface RefProc {
  pages: Map<number, RefPage>;
  /** Content of private pages that were written (absent = zero). */
  priv: Map<number, number>;
}

/** What an access did: pages completed, tags read or written, and what stopped it. */
export interface RefAccess {
  pages: number;
  tags: number[];
  firstTag: number;
  signal: "SIGSEGV" | null;
  oom: boolean;
}

function fail(msg: string): never {
  throw new Error(`reference: ${msg}`);
}

export class RefModel {
  private readonly procs = new Map<number, RefProc>();
  private readonly objects = new Map<number, Map<number, number>>();
  private nextObj = 1;
  private lastTag = 0;

  spawn(pid: number): void {
    this.procs.set(pid, { pages: new Map(), priv: new Map() });
  }

  exit(pid: number): void {
    this.proc(pid);
    this.procs.delete(pid);
  }

  private proc(pid: number): RefProc {
    const p = this.procs.get(pid);
    if (p === undefined) fail(`no process ${pid}`);
    return p;
  }

  /** @param ramPages total RAM, for the overcommit heuristic (vm.overcommit_memory = 0). */
  constructor(private readonly ramPages: number) {}

  /**
   * The errno mmap must return for these arguments; null when it must succeed; "unknown" when
   * the model cannot tell (a MAP_FIXED mapping over memory whose commit charge it does not track).
   */
  mmapErrno(pid: number, addr: number, len: number, prot: number, flags: number): number | null | "unknown" {
    const type = flags & MAP_TYPE;
    if (len === 0) return EINVAL;
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
      if (addr > TASK_SIZE - size) return ENOMEM;
      if (addr % PAGE_SIZE !== 0) return EINVAL;
      if (addr < 65536) return EPERM;
      if (flags & MAP_FIXED_NOREPLACE && this.anyMapped(pid, addr, addr + size)) return EEXIST;
    }
    if (type !== MAP_SHARED && type !== MAP_PRIVATE) return EINVAL;
    const accounted = type === MAP_SHARED || prot & PROT_WRITE;
    if (accounted && !(flags & MAP_NORESERVE) && size / PAGE_SIZE > this.ramPages) {
      // Linux charges a private MAP_FIXED mapping only for pages not charged already.
      return type === MAP_PRIVATE && flags & MAP_FIXED ? "unknown" : ENOMEM;
    }
    return null;
  }

  private anyMapped(pid: number, start: number, end: number): boolean {
    const p = this.proc(pid);
    for (let a = start; a < end; a += PAGE_SIZE) if (p.pages.has(a / PAGE_SIZE)) return true;
    return false;
  }

  /**
   * Applies a failed mmap: a shared MAP_FIXED mapping that failed its commit charge has already
   * unmapped the old range (Linux leaves a hole there).
   */
  mmapFailed(pid: number, addr: number, len: number, flags: number, errno: number): void {
    if (errno === ENOMEM && (flags & MAP_TYPE) === MAP_SHARED && flags & MAP_FIXED)
      this.munmap(pid, addr, len);
  }

  /**
   * Applies a successful mmap that returned `ret`. Checks that the address is aligned, in
   * range, equal to addr for MAP_FIXED, and overlaps nothing otherwise.
   */
  mmap(pid: number, addr: number, len: number, prot: number, flags: number, ret: number): void {
    const p = this.proc(pid);
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    if (ret % PAGE_SIZE !== 0 || ret < 65536 || ret + size > TASK_SIZE)
      fail(`mmap returned bad address ${ret}`);
    const fixed = (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) !== 0;
    if (fixed && ret !== addr) fail(`MAP_FIXED mmap at ${addr} returned ${ret}`);
    if (!fixed && this.anyMapped(pid, ret, ret + size))
      fail(`mmap returned ${ret}, which overlaps a mapping`);
    const shared = (flags & MAP_TYPE) !== MAP_PRIVATE;
    const obj = shared ? this.nextObj++ : 0;
    if (shared) this.objects.set(obj, new Map());
    for (let i = 0; i < size / PAGE_SIZE; i++) {
      const vpn = ret / PAGE_SIZE + i;
      p.pages.set(vpn, { prot: prot & (PROT_READ | PROT_WRITE | PROT_EXEC), obj, index: i });
      p.priv.delete(vpn);
    }
  }

  /** munmap's result for these arguments, applying it when it succeeds. */
  munmap(pid: number, addr: number, len: number): number {
    if (addr % PAGE_SIZE !== 0 || addr > TASK_SIZE || len > TASK_SIZE - addr) return -EINVAL;
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    if (size === 0) return -EINVAL;
    const p = this.proc(pid);
    for (let a = addr; a < addr + size; a += PAGE_SIZE) {
      p.pages.delete(a / PAGE_SIZE);
      p.priv.delete(a / PAGE_SIZE);
    }
    return 0;
  }

  /**
   * mprotect's result, applied page by page from addr up to the first unmapped page, as
   * Linux changes the VMAs before a hole and then fails with ENOMEM.
   */
  mprotect(pid: number, addr: number, len: number, prot: number): number {
    if (addr % PAGE_SIZE !== 0) return -EINVAL;
    if (len === 0) return 0;
    if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) return -EINVAL;
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    const p = this.proc(pid);
    for (let a = addr; a < addr + size; a += PAGE_SIZE) {
      const page = p.pages.get(a / PAGE_SIZE);
      if (page === undefined) return -ENOMEM;
      page.prot = prot;
    }
    return 0;
  }

  /** madvise's result for advice that does not change content: ENOMEM when a page is unmapped. */
  madvise(pid: number, addr: number, len: number): number {
    if (addr % PAGE_SIZE !== 0) return -EINVAL;
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    if (size === 0) return 0;
    return this.anyUnmapped(pid, addr, addr + size) ? -ENOMEM : 0;
  }

  private anyUnmapped(pid: number, start: number, end: number): boolean {
    const p = this.proc(pid);
    for (let a = start; a < end; a += PAGE_SIZE) if (!p.pages.has(a / PAGE_SIZE)) return true;
    return false;
  }

  /** The content the process reads at the page containing addr, or null when unmapped. */
  content(pid: number, addr: number): number | null {
    const p = this.proc(pid);
    const vpn = Math.floor(addr / PAGE_SIZE);
    const page = p.pages.get(vpn);
    if (page === undefined) return null;
    if (page.obj === 0) return p.priv.get(vpn) ?? 0;
    // Non-null: shared pages always refer to a live object.
    return this.objects.get(page.obj)!.get(page.index) ?? 0;
  }

  /**
   * Checks an access vmlab performed against the model and applies it. A read must return the
   * model's content; a write must stop where the model says and use fresh tags, which the
   * model then stores (through to the shared object for shared pages).
   */
  access(pid: number, addr: number, len: number, write: boolean, got: RefAccess): void {
    const p = this.proc(pid);
    if (len <= 0) {
      if (got.pages !== 0) fail(`an empty access touched ${got.pages} pages`);
      return;
    }
    const first = Math.floor(addr / PAGE_SIZE);
    const end = Math.ceil((addr + len) / PAGE_SIZE);
    let expectSegv = false;
    let n = 0;
    for (let vpn = first; vpn < end; vpn++, n++) {
      const page = p.pages.get(vpn);
      const ok = page !== undefined && (write ? (page.prot & PROT_WRITE) !== 0 : page.prot !== 0);
      if (!ok) {
        expectSegv = true;
        break;
      }
    }
    if (got.oom) {
      if (got.pages > n) fail(`access ran past the model's SIGSEGV point (${got.pages} > ${n} pages)`);
      n = got.pages;
      expectSegv = false;
    }
    if (got.pages !== n)
      fail(`access at ${addr.toString(16)} completed ${got.pages} pages, the model says ${n}`);
    if ((got.signal === "SIGSEGV") !== expectSegv)
      fail(
        `access at ${addr.toString(16)}: signal ${got.signal}, the model says ${expectSegv ? "SIGSEGV" : "none"}`,
      );
    for (let i = 0; i < n; i++) {
      const vpn = first + i;
      // Non-null: the loop above saw every one of these pages mapped.
      const page = p.pages.get(vpn)!;
      if (write) {
        const tag = got.firstTag + i;
        if (!(tag > this.lastTag)) fail(`write at page ${vpn} stored tag ${tag}, not a fresh one`);
        this.lastTag = tag;
        if (page.obj === 0) p.priv.set(vpn, tag);
        else this.objects.get(page.obj)!.set(page.index, tag);
      } else {
        const want = this.content(pid, vpn * PAGE_SIZE);
        if (got.tags[i] !== want) {
          fail(`pid ${pid} read ${got.tags[i]} at ${(vpn * PAGE_SIZE).toString(16)}, the model says ${want}`);
        }
      }
    }
  }

  /** Every mapped page of a process with its protection, in address order. */
  layout(pid: number): [number, number][] {
    const p = this.proc(pid);
    return [...p.pages.entries()].sort((a, b) => a[0] - b[0]).map(([vpn, page]) => [vpn, page.prot]);
  }
}
