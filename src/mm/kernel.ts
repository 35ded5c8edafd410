// The kernel as a user program sees it: processes, their syscalls, and their memory accesses.
// This is vmlab's public model API; scenarios, tests and benchmarks drive it.

import { EINVAL, ENOMEM, PAGE_SIZE, PMD_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE } from "../uapi.ts";
import { cowPte, cowPteBreakRange, cowPteDeferred } from "./cow-pte.ts";
import { dupMmap } from "./fork.ts";
import { batched } from "./fork-batched.ts";
import { perPte } from "./fork-per-pte.ts";
import { FOLL_GET, FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE, getUserPages, gupPutFolio } from "./gup.ts";
import { VM_FAULT_OOM, VM_FAULT_SIGBUS } from "./huge-memory.ts";
import {
  type CowReuse,
  defaultThpConfig,
  Machine,
  type MadviseFreeDesign,
  type ThpConfig,
} from "./machine.ts";
import { sysMadvise } from "./madvise.ts";
import { FAULT_FLAG_WRITE, freePgtables, handleMmFault, unmapPageRange } from "./memory.ts";
import { Mm } from "./mm.ts";
import { doMmap, sysMunmap } from "./mmap.ts";
import { mmuTranslate, pteTableOf } from "./mmu.ts";
import { sysMprotect } from "./mprotect.ts";
import { sysMremap } from "./mremap.ts";
import { _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, type PageTable } from "./pgtable.ts";
import { deferredSplitScan } from "./split.ts";
import { VM_ACCESS_FLAGS, VM_WRITE } from "./vma.ts";
import { releaseVma } from "./vma-ops.ts";
import { MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX, tryToFreePages, wakeupKswapd } from "./vmscan.ts";
import { EV } from "./vmstat.ts";

/**
 * mmap_base: TASK_SIZE minus the 128 MiB minimum stack gap.
 * Differs from Linux: no address-space randomisation, so runs are replayable.
 */
export const MMAP_BASE = 0x7ffff7fff000;

export interface KernelConfig {
  /** Simulated RAM in bytes (default 4 GiB). */
  ramBytes?: number;
  thp?: Partial<ThpConfig>;
  /** The COW reuse rule: "modern" (Linux 6.18, the default) or "legacy" (before 5.8). */
  cow?: CowReuse;
  /** How fork copies page tables (fork.ptCopy): see FORK_PT_COPY. Default "batched", as 6.18. */
  fork?: { ptCopy?: ForkPtCopy };
  /** The MADV_FREE design (madvise.free): "split" (before 6.10) or "batched" (the default). */
  madvise?: { free?: MadviseFreeDesign };
  /** Size of the swap device in bytes (default 0: no swap, as on our machines). */
  swapBytes?: number;
}

/**
 * The fork designs by name: "per-pte" is copy_pte_range before 6.9, one entry at a time;
 * "batched" is 6.9 and later (folio_pte_batch); "cow-pte" shares PTE tables with the per-page
 * work done at fork (the v4 series); "cow-pte-deferred" shares them and defers that work to the
 * break (RFC v2 / ODF). See cow-pte.ts and docs/fork-designs.md.
 */
export const FORK_PT_COPY = {
  "per-pte": perPte,
  batched,
  "cow-pte": cowPte,
  "cow-pte-deferred": cowPteDeferred,
} as const;
export type ForkPtCopy = keyof typeof FORK_PT_COPY;

/**
 * The outcome of a user access to [addr, addr + len): how many pages it completed, the content
 * tags a read returned (one per page), the tags a write stored (page i got firstTag + i; fresh
 * tags are consecutive, so no array is built on the write path), and what stopped it, if
 * anything: SIGSEGV for an access outside any VMA or against its protection, VM_FAULT_OOM when
 * memory ran out.
 */
export interface AccessResult {
  pages: number;
  tags: number[];
  firstTag: number;
  signal: "SIGSEGV" | "SIGBUS" | null;
  oom: boolean;
}

/** How pin() takes its pages: FOLL_WRITE, FOLL_LONGTERM, and the fast path first. */
export interface PinOptions {
  write?: boolean;
  longterm?: boolean;
  fast?: boolean;
}

/** PIPE_DEF_BUFFERS: the pages one pipe holds (64 KiB). */
export const PIPE_DEF_BUFFERS = 16;

export interface VmaInfo {
  start: number;
  end: number;
  prot: number;
  flags: number;
}

export class Kernel {
  readonly machine: Machine;
  private readonly tasks = new Map<number, Mm>();
  private nextPid = 1;
  private nextHandle = 1;
  /** The fork design in force (KernelConfig.fork.ptCopy). */
  readonly forkPtCopy: ForkPtCopy;

  /** Boots a machine. RAM defaults to 4 GiB and THP to Linux 6.18's defaults. */
  constructor(config: KernelConfig = {}) {
    const thp = { ...defaultThpConfig(), ...config.thp };
    this.machine = new Machine({
      ramBytes: config.ramBytes ?? 4 * 2 ** 30,
      thp,
      cow: config.cow ?? "modern",
      swapBytes: config.swapBytes ?? 0,
      madviseFree: config.madvise?.free ?? "batched",
    });
    this.forkPtCopy = config.fork?.ptCopy ?? "batched";
    this.machine.cowPte = FORK_PT_COPY[this.forkPtCopy].sharePteTables ?? null;
  }

  /** Creates a process with an empty address space (mm_alloc). Returns its pid, or -ENOMEM. */
  createProcess(): number {
    // Differs from Linux: the pgd is one 4 KiB page (x86 with PTI uses 8 KiB); it is not in VmPTE
    // either way.
    const pgd = this.machine.allocTable("pgd");
    if (pgd === null) return -ENOMEM;
    const pid = this.nextPid++;
    this.tasks.set(pid, new Mm(this.machine, pid, pgd, MMAP_BASE));
    return pid;
  }

  /** The pids of live processes, ascending. */
  pids(): number[] {
    return [...this.tasks.keys()];
  }

  /** The mm of a live process. Throws for an unknown pid (a bug in the caller). */
  mm(pid: number): Mm {
    const mm = this.tasks.get(pid);
    if (mm === undefined) throw new Error(`Kernel.mm: no process ${pid}`);
    return mm;
  }

  /**
   * exit_mmap + mmdrop: zaps every VMA, frees all page tables and the pgd, releases the VMAs.
   * Afterwards the process's memory is back in the allocator.
   */
  exit(pid: number): void {
    const mm = this.mm(pid);
    for (const vma of mm.vmas) unmapPageRange(mm, vma, vma.start, vma.end);
    freePgtables(
      mm,
      mm.vmas.map((v) => [v.start, v.end]),
      0,
      0,
    );
    for (const vma of [...mm.vmas]) {
      mm.removeVma(vma);
      releaseVma(mm, vma);
    }
    if (mm.pgtablesBytes !== 0)
      throw new Error(`exit: pid ${pid} left ${mm.pgtablesBytes} bytes of page tables`);
    this.machine.freeTable(mm.pgd);
    this.tasks.delete(pid);
    // exit_files: the process's pins (io_uring buffers) and pipes go with its files.
    for (const [handle, refs] of this.machine.gupRefs) if (refs.pid === pid) this.release(handle);
  }

  /**
   * fork(): a new process whose address space is a copy of pid's (dup_mmap, with the page-table
   * copy of the fork design in force). Returns the child's pid, or -ENOMEM, in which case the
   * half-built child is torn down (as mmput does) and the parent's entries stay write-protected,
   * as in Linux. Under memory pressure fork reclaims as a fault does (handleMmFault): kswapd's
   * work first when free memory is below the low watermark, and, when the copy runs out of
   * memory, SWAP_CLUSTER_MAX pages before it is retried whole with the same child pid (at most
   * MAX_RECLAIM_RETRIES times).
   */
  fork(pid: number): number {
    const parent = this.mm(pid);
    const m = this.machine;
    m.stat.inc(EV.syscall);
    m.stat.inc(EV.mmap_lock, 2); // dup_mmap write-locks the parent's and the child's
    wakeupKswapd(m);
    for (let tries = 0; ; tries++) {
      const child = this.createProcess();
      if (child < 0) return child;
      const r = dupMmap(this.mm(child), parent, FORK_PT_COPY[this.forkPtCopy]);
      if (r >= 0) return child;
      this.exit(child);
      if (r !== -ENOMEM || tries >= MAX_RECLAIM_RETRIES || tryToFreePages(m, SWAP_CLUSTER_MAX) === 0)
        return r;
      this.nextPid = child;
    }
  }

  /**
   * Reclaims up to nrPages pages, as writing to memory.reclaim asks (try_to_free_pages: the LRU
   * lists by falling priority, lazyfree folios, swap-out when there is swap, then the deferred
   * split shrinker). Returns the pages freed, or -EINVAL for a count that is not a positive
   * integer.
   */
  reclaim(nrPages: number): number {
    if (!Number.isSafeInteger(nrPages) || nrPages <= 0) return -EINVAL;
    return tryToFreePages(this.machine, nrPages);
  }

  /**
   * Runs the deferred split shrinker (deferred_split_scan) over the whole queue: every queued,
   * partly mapped folio that can be split is, and its unmapped pages are freed. Returns the
   * number of folios split.
   */
  splitDeferred(): number {
    return deferredSplitScan(this.machine);
  }

  /**
   * pin_user_pages(_fast): FOLL_PIN references on the pages covering [addr, addr + len) of pid,
   * read-only unless opts.write, FOLL_LONGTERM with opts.longterm, through gup_fast first with
   * opts.fast. Returns a handle (> 0) for the pages pinned, which may be fewer than asked
   * (pinned(handle) says how many) when a page could not be pinned; -EFAULT or -ENOMEM when
   * none was; -EINVAL for an empty range.
   */
  pin(pid: number, addr: number, len: number, opts: PinOptions = {}): number {
    const flags = FOLL_PIN | (opts.write ? FOLL_WRITE : 0) | (opts.longterm ? FOLL_LONGTERM : 0);
    return this.gup(pid, addr, len, flags, opts.fast ?? false, Number.POSITIVE_INFINITY);
  }

  /**
   * vmsplice(fd, iov, 1, 0) into a new pipe: takes FOLL_GET references (get_user_pages_fast,
   * read-only, no unshare) on up to PIPE_DEF_BUFFERS pages covering [addr, addr + len), which
   * the pipe keeps until pipeRead. Returns the pipe's handle, or -errno as pin() does.
   * Differs from Linux: each call gets its own pipe; a longer range is spliced short, as a
   * non-blocking vmsplice into a full pipe is.
   */
  vmsplice(pid: number, addr: number, len: number): number {
    return this.gup(pid, addr, len, FOLL_GET, true, PIPE_DEF_BUFFERS);
  }

  private gup(pid: number, addr: number, len: number, flags: number, fast: boolean, max: number): number {
    const mm = this.mm(pid);
    this.machine.stat.inc(EV.syscall); // vmsplice, or the call that pins (io_uring_register, ...)
    this.machine.stat.inc(EV.mmap_lock);
    if (len <= 0) return -EINVAL;
    const first = Math.floor(addr / PAGE_SIZE) * PAGE_SIZE;
    const nr = Math.min(max, Math.ceil((addr + len) / PAGE_SIZE) - first / PAGE_SIZE);
    // A pin must never sit under a shared PTE table: break COW on the range first.
    if (flags & FOLL_PIN && cowPteBreakRange(mm, first, first + nr * PAGE_SIZE, false) < 0) return -ENOMEM;
    const r = getUserPages(mm, first, nr, flags, fast);
    if (r.pfns.length === 0) return -r.errno;
    const handle = this.nextHandle++;
    this.machine.gupRefs.set(handle, { pid, flags, pfns: r.pfns, errno: r.errno });
    return handle;
  }

  /** The number of pages a pin or pipe handle holds, or -EINVAL for an unknown handle. */
  pinned(handle: number): number {
    return this.machine.gupRefs.get(handle)?.pfns.length ?? -EINVAL;
  }

  /**
   * Why the GUP call that made a handle took fewer pages than asked: 0 (it did not), EFAULT or
   * ENOMEM. Linux returns the short count and drops the errno; vmlab keeps it for its checks.
   */
  gupStoppedBy(handle: number): number {
    return this.machine.gupRefs.get(handle)?.errno ?? 0;
  }

  /** What the pinned pages hold now, one content tag per page. */
  pinRead(handle: number): number[] {
    const refs = this.machine.gupRefs.get(handle);
    if (refs === undefined || !(refs.flags & FOLL_PIN)) throw new Error(`pinRead: no pin ${handle}`);
    return refs.pfns.map((pfn) => this.machine.memmap.tag(pfn));
  }

  /** unpin_user_pages: releases a pin. Returns 0, or -EINVAL for an unknown handle. */
  unpin(handle: number): number {
    const refs = this.machine.gupRefs.get(handle);
    if (refs === undefined || !(refs.flags & FOLL_PIN)) return -EINVAL;
    this.release(handle);
    return 0;
  }

  /**
   * read(2) of a vmsplice pipe: the content of the spliced pages now (one tag per page), after
   * which the pipe buffers release their pages. Throws for an unknown pipe (a caller bug).
   */
  pipeRead(handle: number): number[] {
    const refs = this.machine.gupRefs.get(handle);
    if (refs === undefined || refs.flags & FOLL_PIN) throw new Error(`pipeRead: no pipe ${handle}`);
    const tags = refs.pfns.map((pfn) => this.machine.memmap.tag(pfn));
    this.release(handle);
    return tags;
  }

  private release(handle: number): void {
    const refs = this.machine.gupRefs.get(handle);
    if (refs === undefined) return;
    this.machine.gupRefs.delete(handle);
    for (const pfn of refs.pfns) gupPutFolio(this.machine, pfn, refs.flags);
  }

  /** mmap(2) for anonymous memory. Returns the address or -errno. */
  mmap(pid: number, addr: number, len: number, prot: number, flags: number): number {
    return doMmap(this.mm(pid), addr, len, prot, flags);
  }
  /** munmap(2). Returns 0 or -errno. */
  munmap(pid: number, addr: number, len: number): number {
    return sysMunmap(this.mm(pid), addr, len);
  }
  /** mprotect(2). Returns 0 or -errno. */
  mprotect(pid: number, addr: number, len: number, prot: number): number {
    return sysMprotect(this.mm(pid), addr, len, prot);
  }
  /** mremap(2): shrink, grow or move [addr, addr + oldLen) (mremap.ts). Returns the new address or -errno. */
  mremap(pid: number, addr: number, oldLen: number, newLen: number, flags: number, newAddr = 0): number {
    return sysMremap(this.mm(pid), addr, oldLen, newLen, flags, newAddr);
  }
  /** madvise(2) (see madvise.ts for the advice modelled). Returns 0 or -errno. */
  madvise(pid: number, addr: number, len: number, advice: number): number {
    return sysMadvise(this.mm(pid), addr, len, advice);
  }

  /** The process reads [addr, addr + len), page by page. */
  read(pid: number, addr: number, len: number): AccessResult {
    return this.access(pid, addr, len, false);
  }
  /** The process writes [addr, addr + len): every page touched gets a fresh content tag. */
  write(pid: number, addr: number, len: number): AccessResult {
    return this.access(pid, addr, len, true);
  }

  /**
   * A user access, as the CPU runs it: each page is translated by the MMU; a miss goes to the
   * arch fault handler, which raises SIGSEGV outside a VMA or against its rights (x86's
   * access_error: a write needs VM_WRITE, a read any of VM_READ, VM_WRITE, VM_EXEC) and else
   * calls handleMmFault and retries.
   */
  private access(pid: number, addr: number, len: number, write: boolean): AccessResult {
    const mm = this.mm(pid);
    const m = this.machine;
    const res: AccessResult = { pages: 0, tags: [], firstTag: 0, signal: null, oom: false };
    if (len <= 0) return res;
    const first = Math.floor(addr / PAGE_SIZE) * PAGE_SIZE;
    const end = Math.ceil((addr + len) / PAGE_SIZE) * PAGE_SIZE;
    // A one-entry page-walk cache: the PTE table of the last 2 MiB range walked. Only a fault
    // changes page tables during an access, so it is dropped after each fault.
    let walkBase = -PMD_SIZE;
    let walkPte: PageTable | undefined;
    let retries = 0;
    for (let a = first; a < end; a += PAGE_SIZE) {
      if (a - walkBase >= PMD_SIZE) {
        walkBase = Math.floor(a / PMD_SIZE) * PMD_SIZE;
        walkPte = pteTableOf(mm, a);
        // A shared PTE table sits under a read-only PMD entry: a write faults (and breaks COW).
        if (write && walkPte?.cow != null) walkPte = undefined;
      }
      let pfn = -1;
      if (walkPte !== undefined) {
        const j = (a / PAGE_SIZE) & 511;
        const lo = walkPte.e[2 * j];
        if (lo & _PAGE_PRESENT && (!write || lo & _PAGE_RW)) {
          const bits = write ? _PAGE_ACCESSED | _PAGE_DIRTY : _PAGE_ACCESSED;
          if ((lo & bits) !== bits) walkPte.e[2 * j] = (lo | bits) >>> 0;
          pfn = (lo >>> 12) + (walkPte.e[2 * j + 1] & 0xfffff) * 1048576; // entryPfn, inlined
        }
      } else {
        pfn = mmuTranslate(mm, a, write, true); // a huge PMD, or nothing mapped
      }
      if (pfn < 0) {
        // A fault under a shared PTE table replaces this mm's table (break_cow_pte).
        const rewalk = walkPte === undefined || walkPte.cow !== null;
        if (!userFault(mm, a, write, res)) return res;
        // Retry the access, as the CPU does. A fault under an existing, unshared PTE table
        // changes entries of that table only; any other fault may have installed or replaced
        // tables, so walk again.
        if (++retries > 3) throw new Error(`access: fault at ${a.toString(16)} did not map the page`);
        if (rewalk) walkBase = -PMD_SIZE;
        a -= PAGE_SIZE;
        continue;
      }
      retries = 0;
      if (write) {
        // The zero pages are reserved frames after RAM; a write must never reach them.
        if (pfn >= m.buddy.nrPages) throw new Error(`access: write to reserved pfn ${pfn}`);
        const tag = m.newTag();
        m.memmap.setTag(pfn, tag);
        if (res.pages === 0) res.firstTag = tag;
      } else {
        res.tags.push(m.memmap.tag(pfn));
      }
      res.pages++;
    }
    return res;
  }

  /** The VMAs of a process, in address order. */
  vmas(pid: number): VmaInfo[] {
    return this.mm(pid).vmas.map((v) => ({
      start: v.start,
      end: v.end,
      prot: v.flags & (PROT_READ | PROT_WRITE | PROT_EXEC),
      flags: v.flags,
    }));
  }
}

/**
 * The arch fault handler for a user access at addr (kept out of the access loop so that the
 * loop stays small): SIGSEGV outside a VMA or against its rights (x86's access_error: a write
 * needs VM_WRITE, a read any of VM_READ, VM_WRITE, VM_EXEC), else handleMmFault. Returns false
 * when the access must stop, with res.signal or res.oom set (SIGBUS past the end of a shmem
 * object).
 */
function userFault(mm: Mm, addr: number, write: boolean, res: AccessResult): boolean {
  const vma = mm.vmaLookup(addr);
  if (vma === undefined || (write ? !(vma.flags & VM_WRITE) : !(vma.flags & VM_ACCESS_FLAGS))) {
    res.signal = "SIGSEGV";
    return false;
  }
  const ret = handleMmFault(mm, vma, addr, write ? FAULT_FLAG_WRITE : 0);
  if (ret & VM_FAULT_SIGBUS) {
    res.signal = "SIGBUS";
    return false;
  }
  if (ret & VM_FAULT_OOM) {
    // The OOM outcome: reclaim (inside handleMmFault) could free nothing more. Differs from
    // Linux: no OOM killer picks a victim; the access stops here and reports oom, with
    // everything the fault had begun unwound, and the process lives on (vmstat "oom").
    res.oom = true;
    return false;
  }
  return true;
}
