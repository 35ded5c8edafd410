// The naive reference model (DESIGN.md): what each process must read, derived without page
// tables, folios or VMAs. Each process maps virtual pages to their protection and a content
// cell: a private page owns its cell; a shared page's cell belongs to its shared object, so a
// write through one mapping is seen by all. fork copies every private cell. vmlab must agree
// with it on every read, under every design.
//
// Pins and pipes refer to cells, which is what Linux promises them:
//   FOLL_PIN       sees the pinned cell exactly, following later writes of the process to it
//                  (the page stays the process's own page, wherever mremap moves it), until the
//                  process unmaps it; then the content is frozen. One exception: a short-term
//                  R/O pin of a page still reading zeros may have pinned the shared zero page,
//                  so it sees zero or what the cell held since.
//   vmsplice pipe  (FOLL_GET, no unshare) sees the content at splice time or anything written
//                  to that cell since: never another process's private data.
//
// MADV_FREE makes a private page's cell "old content or zero" (Cell.lazy) until the process
// writes it (then it is exact again) or is seen reading zero (reclaim discarded it: zero from
// then on). fork hands the child the same uncertainty, since the child maps the same clean
// lazyfree folio. Where vmlab must commit to one of the two (a pin or pipe takes the page,
// MADV_POPULATE_WRITE dirties it), the driver tells the model what vmlab holds (observe), and
// the model checks that it is one of the two.
//
// It also predicts the errno of the simple argument errors, where an access stops with SIGSEGV
// or SIGBUS, and how many pages a GUP call takes. It cannot predict memory exhaustion: when
// vmlab reports VM_FAULT_OOM, the model accepts the pages completed before it.

import {
  EEXIST,
  EFAULT,
  EINVAL,
  ENOMEM,
  EPERM,
  MADV_WIPEONFORK,
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

/** One page's content, and while a pipe or zero-page pin watches it, every tag it held. */
interface Cell {
  tag: number;
  /** Tags written since the first watcher arrived (null: nobody watches). */
  log: number[] | null;
  /**
   * MADV_FREE'd and not written since: reclaim may discard the page at any time, so a read
   * returns `tag` or zero. The first zero seen makes it zero for good.
   */
  lazy: boolean;
}

interface RefPage {
  prot: number;
  /** 0 for a private page, else the id of the shared object. */
  obj: number;
  /** Page index in the shared object. */
  index: number;
  /** MADV_DONTFORK: the child does not get this page. */
  dontfork: boolean;
  /** MADV_WIPEONFORK: the child gets this page empty. */
  wipe: boolean;
}

interface RefProc {
  pages: Map<number, RefPage>;
  /** The cells of private pages that were written or pinned (absent = zero, untouched). */
  priv: Map<number, Cell>;
}

interface SharedObject {
  /** Size in pages: accesses at or past it raise SIGBUS. */
  size: number;
  cells: Map<number, Cell>;
}

/**
 * A pin or pipe: its owner, the cells it refers to, and for each either "exact" (must read
 * the cell's tag) or the index into the cell's log from which tags are allowed.
 */
interface RefGup {
  pid: number;
  pin: boolean;
  cells: Cell[];
  from: (number | "exact")[];
}

/** What an access did: pages completed, tags read or written, and what stopped it. */
export interface RefAccess {
  pages: number;
  tags: number[];
  firstTag: number;
  signal: "SIGSEGV" | "SIGBUS" | null;
  oom: boolean;
}

function fail(msg: string): never {
  throw new Error(`reference: ${msg}`);
}

const hex = (n: number): string => `0x${n.toString(16)}`;

export class RefModel {
  private readonly procs = new Map<number, RefProc>();
  private readonly objects = new Map<number, SharedObject>();
  private readonly gups = new Map<number, RefGup>();
  private nextObj = 1;
  private lastTag = 0;

  /** @param ramPages total RAM, for the overcommit heuristic (vm.overcommit_memory = 0). */
  constructor(private readonly ramPages: number) {}

  spawn(pid: number): void {
    this.procs.set(pid, { pages: new Map(), priv: new Map() });
  }

  /** exit: the process goes, and with it its pins and pipes. */
  exit(pid: number): void {
    this.proc(pid);
    this.procs.delete(pid);
    for (const [h, g] of this.gups) if (g.pid === pid) this.gups.delete(h);
  }

  /**
   * fork: the child gets every page but MADV_DONTFORK ones, private cells copied (empty for
   * MADV_WIPEONFORK), shared pages referring to the same objects.
   */
  fork(parent: number, child: number): void {
    const p = this.proc(parent);
    const c: RefProc = { pages: new Map(), priv: new Map() };
    for (const [vpn, page] of p.pages) {
      if (page.dontfork) continue;
      c.pages.set(vpn, { ...page });
      const cell = p.priv.get(vpn);
      if (page.obj === 0 && cell !== undefined && !page.wipe)
        c.priv.set(vpn, { tag: cell.tag, log: null, lazy: cell.lazy });
    }
    this.procs.set(child, c);
  }

  private proc(pid: number): RefProc {
    const p = this.procs.get(pid);
    if (p === undefined) fail(`no process ${pid}`);
    return p;
  }

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

  /** Whether any page of [start, end), outside `except`, is mapped. */
  anyMapped(pid: number, start: number, end: number, except?: [number, number]): boolean {
    const p = this.proc(pid);
    for (let a = start; a < end; a += PAGE_SIZE) {
      if (except && a >= except[0] && a < except[1]) continue;
      if (p.pages.has(a / PAGE_SIZE)) return true;
    }
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
    if (shared) this.objects.set(obj, { size: size / PAGE_SIZE, cells: new Map() });
    for (let i = 0; i < size / PAGE_SIZE; i++) {
      const vpn = ret / PAGE_SIZE + i;
      p.pages.set(vpn, {
        prot: prot & (PROT_READ | PROT_WRITE | PROT_EXEC),
        obj,
        index: i,
        dontfork: false,
        wipe: false,
      });
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

  /**
   * madvise's result for advice that does not change content, applying the fork advice page
   * by page: ENOMEM when a page is unmapped (after the others), EINVAL at once when
   * MADV_WIPEONFORK reaches a shared page (after the pages before it).
   */
  madvise(pid: number, addr: number, len: number, fork?: { dontfork?: boolean; wipe?: boolean }): number {
    if (addr % PAGE_SIZE !== 0) return -EINVAL;
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    if (size === 0) return 0;
    const p = this.proc(pid);
    let ret = 0;
    for (let a = addr; a < addr + size; a += PAGE_SIZE) {
      const page = p.pages.get(a / PAGE_SIZE);
      if (page === undefined) {
        ret = -ENOMEM;
        continue;
      }
      if (fork?.wipe && page.obj !== 0) return -EINVAL;
      if (fork?.dontfork !== undefined) page.dontfork = fork.dontfork;
      if (fork?.wipe !== undefined) page.wipe = fork.wipe;
    }
    return ret;
  }

  /**
   * MADV_DONTNEED: every private page of the range reads zero afterwards (a pin or pipe keeps
   * the page it holds); shared pages keep their content. ENOMEM when a page is unmapped (after
   * the others).
   */
  dontneed(pid: number, addr: number, len: number): number {
    if (addr % PAGE_SIZE !== 0) return -EINVAL;
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    const p = this.proc(pid);
    let ret = 0;
    for (let a = addr; a < addr + size; a += PAGE_SIZE) {
      const page = p.pages.get(a / PAGE_SIZE);
      if (page === undefined) ret = -ENOMEM;
      else if (page.obj === 0) p.priv.delete(a / PAGE_SIZE);
    }
    return ret;
  }

  /**
   * MADV_FREE: every private page of the range that holds data reads its data or zero from now
   * on, until it is written. EINVAL at once for a shared page (MADV_FREE needs an anonymous
   * VMA; the pages before it are advised), ENOMEM when a page is unmapped (after the others).
   */
  free(pid: number, addr: number, len: number): number {
    if (addr % PAGE_SIZE !== 0) return -EINVAL;
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    const p = this.proc(pid);
    let ret = 0;
    for (let a = addr; a < addr + size; a += PAGE_SIZE) {
      const page = p.pages.get(a / PAGE_SIZE);
      if (page === undefined) {
        ret = -ENOMEM;
        continue;
      }
      if (page.obj !== 0) return -EINVAL;
      const c = p.priv.get(a / PAGE_SIZE);
      if (c !== undefined && c.tag !== 0) c.lazy = true;
    }
    return ret;
  }

  /**
   * MADV_POPULATE_READ/WRITE: the errno it must return and the pages it must populate first.
   * Pages are populated in order until one is unmapped (ENOMEM), lacks the right (PROT_WRITE
   * for a write, PROT_READ for a read: EINVAL, as Linux 6.18 answers) or lies past a shared
   * object's end (SIGBUS: EFAULT).
   */
  populate(pid: number, addr: number, len: number, write: boolean): { errno: number; pages: number } {
    if (addr % PAGE_SIZE !== 0) return { errno: EINVAL, pages: 0 };
    const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
    const p = this.proc(pid);
    let n = 0;
    for (let a = addr; a < addr + size; a += PAGE_SIZE, n++) {
      const page = p.pages.get(a / PAGE_SIZE);
      if (page === undefined) return { errno: ENOMEM, pages: n };
      if (!(page.prot & (write ? PROT_WRITE : PROT_READ))) return { errno: EINVAL, pages: n };
      if (this.accessFault(page, write) !== null) return { errno: EFAULT, pages: n };
    }
    return { errno: 0, pages: n };
  }

  /**
   * vmlab shows `got` as the content of the page at addr: checks it against the model and
   * settles an MADV_FREE'd cell (zero: discarded, for good). With `written`, the page was
   * dirtied without new data (MADV_POPULATE_WRITE): whatever it holds now stays.
   */
  observe(pid: number, addr: number, got: number | null, written = false): void {
    const p = this.proc(pid);
    const vpn = Math.floor(addr / PAGE_SIZE);
    const page = p.pages.get(vpn);
    const c = page?.obj === 0 ? p.priv.get(vpn) : undefined;
    if (c?.lazy) {
      if (got !== c.tag && got !== 0)
        fail(`pid ${pid} page ${hex(vpn * PAGE_SIZE)} holds ${got}; after MADV_FREE only ${c.tag} or 0`);
      if (got === 0) {
        c.tag = 0;
        c.lazy = false;
      }
      if (written) c.lazy = false;
      return;
    }
    const want = this.content(pid, addr);
    if (got !== want) fail(`pid ${pid} page ${hex(vpn * PAGE_SIZE)} holds ${got}, the model ${want}`);
  }

  /** The advice whose effect on fork the model tracks, by MADV_* value. */
  static forkAdvice(advice: number): { dontfork?: boolean; wipe?: boolean } | undefined {
    return {
      10: { dontfork: true },
      11: { dontfork: false },
      [MADV_WIPEONFORK]: { wipe: true },
      19: { wipe: false },
    }[advice];
  }

  /**
   * Applies a successful mremap that returned `ret`, as Linux 6.18 does it:
   * - in place (ret == addr, no MREMAP_FIXED): a shrink unmaps the tail, whatever is there; a
   *   grow needs the old range mapped and the new tail free, and extends the last page's
   *   mapping (private pages empty, shared ones further into the object);
   * - a shared mapping with old length 0 is mapped a second time at ret;
   * - MREMAP_FIXED with equal lengths moves VMA by VMA: mapped pages move to the same offset
   *   from ret, holes stay holes, and the target's pages opposite a hole stay;
   * - any other move takes the first min(old, new) pages (all mapped) with their content
   *   cells, unmaps the old range and, for MREMAP_FIXED, the whole target first.
   * Checks the address: aligned, newAddr for MREMAP_FIXED, free of other mappings otherwise.
   */
  mremap(
    pid: number,
    addr: number,
    oldLen: number,
    newLen: number,
    fixedAddr: number | null,
    ret: number,
  ): void {
    const p = this.proc(pid);
    const oldSize = Math.ceil(oldLen / PAGE_SIZE) * PAGE_SIZE;
    const newSize = Math.ceil(newLen / PAGE_SIZE) * PAGE_SIZE;
    if (ret % PAGE_SIZE !== 0 || ret < 65536 || ret + newSize > TASK_SIZE)
      fail(`mremap returned ${hex(ret)}`);
    if (fixedAddr !== null && ret !== fixedAddr)
      fail(`MREMAP_FIXED to ${hex(fixedAddr)} returned ${hex(ret)}`);
    const unmap = (start: number, end: number) => {
      for (let a = start; a < end; a += PAGE_SIZE) {
        p.pages.delete(a / PAGE_SIZE);
        p.priv.delete(a / PAGE_SIZE);
      }
    };
    const extend = (last: RefPage, at: number, from: number) => {
      for (let i = 0; at + i * PAGE_SIZE < ret + newSize; i++)
        p.pages.set(at / PAGE_SIZE + i, { ...last, index: last.index + from + i });
    };
    if (fixedAddr === null && ret === addr) {
      if (newSize < oldSize) unmap(addr + newSize, addr + oldSize);
      if (newSize <= oldSize) return;
      if (this.anyUnmapped(pid, addr, addr + oldSize)) fail(`mremap grew ${hex(addr)} over a hole`);
      if (this.anyMapped(pid, addr + oldSize, addr + newSize))
        fail(`mremap grew ${hex(addr)} in place over a mapping`);
      extend(p.pages.get((addr + oldSize) / PAGE_SIZE - 1) as RefPage, addr + oldSize, 1);
      return;
    }
    if (fixedAddr === null && this.anyMapped(pid, ret, ret + newSize, [addr, addr + oldSize]))
      fail(`mremap moved to ${hex(ret)}, which overlaps a mapping`);
    const first = p.pages.get(addr / PAGE_SIZE);
    if (oldSize === 0) {
      if (first === undefined || first.obj === 0) fail(`mremap duplicated ${hex(addr)}, not a shared page`);
      unmap(ret, ret + newSize);
      extend(first, ret, 0);
      return;
    }
    const moveOnly = fixedAddr !== null && oldSize === newSize;
    const keep = Math.min(oldSize, newSize) / PAGE_SIZE;
    const moved: ([RefPage, Cell | undefined] | undefined)[] = [];
    for (let i = 0; i < keep; i++) {
      const vpn = addr / PAGE_SIZE + i;
      const page = p.pages.get(vpn);
      if (page === undefined && !moveOnly) fail(`mremap moved unmapped page ${hex(vpn * PAGE_SIZE)}`);
      moved.push(page && [page, p.priv.get(vpn)]);
    }
    if (moved.every((m) => m === undefined)) fail(`mremap at ${hex(addr)} moved nothing`);
    unmap(addr, addr + oldSize);
    if (!moveOnly) unmap(ret, ret + newSize);
    moved.forEach((m, i) => {
      if (m !== undefined) unmap(ret + i * PAGE_SIZE, ret + (i + 1) * PAGE_SIZE);
    });
    moved.forEach((m, i) => {
      if (m === undefined) return;
      p.pages.set(ret / PAGE_SIZE + i, m[0]);
      if (m[1] !== undefined) p.priv.set(ret / PAGE_SIZE + i, m[1]);
    });
    if (newSize > oldSize) extend((moved[keep - 1] as [RefPage, unknown])[0], ret + oldSize, 1);
  }

  private anyUnmapped(pid: number, start: number, end: number): boolean {
    const p = this.proc(pid);
    for (let a = start; a < end; a += PAGE_SIZE) if (!p.pages.has(a / PAGE_SIZE)) return true;
    return false;
  }

  /** Whether [start, end) is mapped throughout (for checks that need it). */
  mapped(pid: number, start: number, end: number): boolean {
    return !this.anyUnmapped(pid, start, end);
  }

  /** The content cell of a mapped page, created when first needed; null when unmapped. */
  private cell(p: RefProc, vpn: number): Cell | null {
    const page = p.pages.get(vpn);
    if (page === undefined) return null;
    if (page.obj === 0) {
      let c = p.priv.get(vpn);
      if (c === undefined) {
        c = { tag: 0, log: null, lazy: false };
        p.priv.set(vpn, c);
      }
      return c;
    }
    // Non-null: shared pages always refer to a live object.
    const obj = this.objects.get(page.obj)!;
    let c = obj.cells.get(page.index);
    if (c === undefined) {
      c = { tag: 0, log: null, lazy: false };
      obj.cells.set(page.index, c);
    }
    return c;
  }

  /** The content the process reads at the page containing addr, or null when unmapped. */
  content(pid: number, addr: number): number | null {
    const p = this.proc(pid);
    const vpn = Math.floor(addr / PAGE_SIZE);
    const page = p.pages.get(vpn);
    if (page === undefined) return null;
    if (page.obj === 0) return p.priv.get(vpn)?.tag ?? 0;
    // Non-null: shared pages always refer to a live object.
    return this.objects.get(page.obj)!.cells.get(page.index)?.tag ?? 0;
  }

  /** Why an access to a page stops: SIGSEGV without the right, SIGBUS past a shared object's end. */
  private accessFault(page: RefPage | undefined, write: boolean): "SIGSEGV" | "SIGBUS" | null {
    if (page === undefined || !(write ? page.prot & PROT_WRITE : page.prot !== 0)) return "SIGSEGV";
    // Non-null: shared pages always refer to a live object.
    if (page.obj !== 0 && page.index >= this.objects.get(page.obj)!.size) return "SIGBUS";
    return null;
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
    let expect: "SIGSEGV" | "SIGBUS" | null = null;
    let n = 0;
    for (let vpn = first; vpn < end; vpn++, n++) {
      expect = this.accessFault(p.pages.get(vpn), write);
      if (expect !== null) break;
    }
    if (got.oom) {
      if (got.pages > n) fail(`access ran past the model's stopping point (${got.pages} > ${n} pages)`);
      n = got.pages;
      expect = null;
    }
    if (got.pages !== n) fail(`access at ${hex(addr)} completed ${got.pages} pages, the model says ${n}`);
    if (got.signal !== expect)
      fail(`access at ${hex(addr)}: signal ${got.signal}, the model says ${expect ?? "none"}`);
    for (let i = 0; i < n; i++) {
      const vpn = first + i;
      if (write) {
        const tag = got.firstTag + i;
        if (!(tag > this.lastTag)) fail(`write at page ${vpn} stored tag ${tag}, not a fresh one`);
        this.lastTag = tag;
        // Non-null: the loop above saw every one of these pages mapped.
        const c = this.cell(p, vpn)!;
        c.tag = tag;
        c.lazy = false;
        c.log?.push(tag);
      } else {
        this.observe(pid, vpn * PAGE_SIZE, got.tags[i]);
      }
    }
  }

  /**
   * Checks a GUP call (pin, or vmsplice when !pin) that returned `ret` (a handle, or -errno)
   * and took `pages` pages, and records it. GUP takes pages until one is unmapped, lacks the
   * right (PROT_WRITE for a write pin, else PROT_READ) or lies past a shared object's end; at
   * most `max`. vmlab may stop anywhere when it runs out of memory (`oom`: the call failed or
   * stopped short with ENOMEM).
   */
  gup(
    pid: number,
    addr: number,
    len: number,
    opts: { pin: boolean; write: boolean; longterm: boolean; max: number },
    ret: number,
    pages: number,
    oom: boolean,
  ): void {
    const p = this.proc(pid);
    if (len <= 0) {
      if (ret !== -EINVAL) fail(`GUP of an empty range returned ${ret}, the model says -EINVAL`);
      return;
    }
    const first = Math.floor(addr / PAGE_SIZE);
    const nr = Math.min(opts.max, Math.ceil((addr + len) / PAGE_SIZE) - first);
    // The slow path needs VM_READ (VM_WRITE for a write pin); the fast path only a present
    // user entry, which x86 also gives exec-only and write-only mappings once faulted in. So a
    // read GUP may or may not pass a page mapped without PROT_READ: accept either.
    const takes = (page: RefPage | undefined, strict: boolean): boolean => {
      if (page === undefined) return false;
      if (page.obj !== 0 && page.index >= (this.objects.get(page.obj)?.size ?? 0)) return false;
      if (opts.write) return (page.prot & PROT_WRITE) !== 0;
      return strict ? (page.prot & PROT_READ) !== 0 : page.prot !== 0;
    };
    let lo = 0;
    while (lo < nr && takes(p.pages.get(first + lo), true)) lo++;
    let hi = 0;
    while (hi < nr && takes(p.pages.get(first + hi), false)) hi++;
    const got = ret > 0 ? pages : 0;
    if (ret < 0 && ret !== -EFAULT && ret !== -ENOMEM)
      fail(`GUP at ${hex(addr)} failed with ${ret}, the model says ${lo}..${hi} pages`);
    if (oom !== (ret === -ENOMEM) && ret < 0)
      fail(`GUP at ${hex(addr)} failed with ${ret} but ran out of memory`);
    // Running out of memory may stop GUP anywhere short of hi; otherwise the count lies in [lo, hi].
    if (oom ? got > hi : got < lo || got > hi)
      fail(`GUP at ${hex(addr)} took ${got} pages (${ret}), the model says ${lo}..${hi}`);
    if (ret < 0) return;
    const g: RefGup = { pid, pin: opts.pin, cells: [], from: [] };
    for (let i = 0; i < pages; i++) {
      // Non-null: the page is mapped (i < hi).
      const c = this.cell(p, first + i)!;
      const priv = p.pages.get(first + i)?.obj === 0;
      const exact = opts.pin && (opts.write || opts.longterm || !priv || c.tag !== 0);
      g.cells.push(c);
      if (exact) g.from.push("exact");
      else {
        if (c.log === null) c.log = [c.tag];
        else c.log.push(c.tag);
        g.from.push(c.log.length - 1);
      }
    }
    this.gups.set(ret, g);
  }

  /** Checks what a pin or pipe read returned against the cells it refers to. */
  gupRead(handle: number, tags: number[]): void {
    const g = this.gups.get(handle);
    if (g === undefined) fail(`no pin or pipe ${handle}`);
    if (tags.length !== g.cells.length)
      fail(`${handle} returned ${tags.length} pages, it holds ${g.cells.length}`);
    for (let i = 0; i < tags.length; i++) {
      const c = g.cells[i];
      const from = g.from[i];
      if (from === "exact") {
        if (tags[i] !== c.tag)
          fail(`pin ${handle} page ${i} reads ${tags[i]}, the pinned page holds ${c.tag}`);
      } else if (!(c.log ?? []).slice(from).includes(tags[i])) {
        fail(
          `${g.pin ? "pin" : "pipe"} ${handle} page ${i} reads ${tags[i]}, which that page never held since (${(c.log ?? []).slice(from).join(", ")})`,
        );
      }
    }
  }

  /** Drops a pin or pipe after unpin or a pipe read. */
  gupRelease(handle: number): void {
    if (!this.gups.delete(handle)) fail(`released unknown pin or pipe ${handle}`);
  }

  /** The live pins and pipes, by handle. */
  gupHandles(): number[] {
    return [...this.gups.keys()];
  }

  /** Every mapped page of a process with its protection, in address order. */
  layout(pid: number): [number, number][] {
    const p = this.proc(pid);
    return [...p.pages.entries()].sort((a, b) => a[0] - b[0]).map(([vpn, page]) => [vpn, page.prot]);
  }
}
