// Runs abstract operations against vmlab and the reference model side by side, checking each
// result and, after every operation, the audit and the full reference comparison. The
// property test and `vmlab fuzz` generate the operations.

import { type Kernel, PIPE_DEF_BUFFERS } from "../mm/kernel.ts";
import {
  EFAULT,
  EINVAL,
  ENOMEM,
  ERRNO_NAMES,
  isErr,
  MADV_COLD,
  MADV_DOFORK,
  MADV_DONTFORK,
  MADV_DONTNEED,
  MADV_FREE,
  MADV_HUGEPAGE,
  MADV_KEEPONFORK,
  MADV_NOHUGEPAGE,
  MADV_PAGEOUT,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
  MADV_WIPEONFORK,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
} from "../uapi.ts";
import { audit } from "./audit.ts";
import { compareWithReference, peekContent } from "./compare.ts";
import { RefModel } from "./reference.ts";

/**
 * An operation in abstract terms: `proc`, `vma`, `off` and `len` are indices resolved modulo
 * what exists when the operation runs, so any sequence is meaningful.
 */
export type AbstractOp =
  | { kind: "spawn" }
  | { kind: "exit"; proc: number }
  | {
      kind: "mmap";
      proc: number;
      pages: number;
      prot: number;
      shared: boolean;
      populate: boolean;
      place: "any" | "fixed" | "noreplace";
      vma: number;
      off: number;
    }
  | {
      kind: "munmap" | "mprotect" | "madvise" | "read" | "write";
      proc: number;
      vma: number;
      off: number;
      len: number;
      prot: number;
    }
  | { kind: "bad"; proc: number; which: number }
  | { kind: "fork"; proc: number }
  | {
      kind: "pin";
      proc: number;
      vma: number;
      off: number;
      len: number;
      write: boolean;
      longterm: boolean;
      fast: boolean;
    }
  | { kind: "vmsplice"; proc: number; vma: number; off: number; len: number }
  | { kind: "reclaim"; pages: number }
  | { kind: "splitDeferred" }
  | { kind: "unpin"; which: number }
  | { kind: "pinread"; which: number }
  | { kind: "piperead"; which: number }
  | {
      kind: "mremap";
      proc: number;
      vma: number;
      off: number;
      len: number;
      newLen: number;
      mode: "inplace" | "maymove" | "fixed";
      target: number;
    };

/** At most this many processes: fork does nothing beyond it. */
const MAX_PROCS = 8;

/** The advice the madvise op picks from. */
const ADVICE = [
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MADV_DONTFORK,
  MADV_DOFORK,
  MADV_WIPEONFORK,
  MADV_KEEPONFORK,
  MADV_DONTNEED,
  MADV_DONTNEED,
  MADV_FREE,
  MADV_FREE,
  MADV_FREE,
  MADV_COLD,
  MADV_PAGEOUT,
  MADV_PAGEOUT,
  MADV_POPULATE_READ,
  MADV_POPULATE_WRITE,
];

/** A vmlab and a reference model run in lockstep. */
export class Lockstep {
  readonly ref: RefModel;
  readonly pids: number[] = [];
  ops = 0;
  /** Outcomes seen, so that a test can show which paths it exercised. */
  readonly seen = {
    oom: 0,
    cowPteEnomem: 0,
    segv: 0,
    sigbus: 0,
    errno: 0,
    sharedMaps: 0,
    forks: 0,
    pins: 0,
    pipes: 0,
    gupReads: 0,
    mremaps: 0,
    lazyfree: 0,
    reclaims: 0,
  };
  /** Live pin and pipe handles, in creation order. */
  private readonly pins: number[] = [];
  private readonly pipes: number[] = [];

  constructor(readonly k: Kernel) {
    this.ref = new RefModel(k.machine.buddy.nrPages + k.machine.swap.nrSlots);
  }

  private pid(i: number): number | undefined {
    return this.pids.length === 0 ? undefined : this.pids[i % this.pids.length];
  }

  /** A page-aligned address picked by (vma, off) in the process's current layout, or a guess. */
  private addr(pid: number, vma: number, off: number): number {
    const vmas = this.k.vmas(pid);
    if (vmas.length === 0) return 0x7f0000000000 + (off % 64) * PAGE_SIZE;
    const v = vmas[vma % vmas.length];
    // Up to 8 pages past the end, to reach holes and neighbours.
    return v.start + (off % ((v.end - v.start) / PAGE_SIZE + 8)) * PAGE_SIZE;
  }

  /** unpin, pinRead or a pipe read on the live handle `which` picks. */
  private gupOp(kind: "unpin" | "pinread" | "piperead", which: number): void {
    const k = this.k;
    const list = kind === "piperead" ? this.pipes : this.pins;
    // Drop handles whose owner exited (exit released them).
    const live = new Set(this.ref.gupHandles());
    for (let i = list.length - 1; i >= 0; i--) if (!live.has(list[i])) list.splice(i, 1);
    if (list.length === 0) return;
    const i = which % list.length;
    const h = list[i];
    this.seen.gupReads++;
    if (kind === "pinread") {
      this.ref.gupRead(h, k.pinRead(h));
      return;
    }
    if (kind === "piperead") this.ref.gupRead(h, k.pipeRead(h));
    else this.expectRet("unpin", k.unpin(h), 0);
    this.ref.gupRelease(h);
    list.splice(i, 1);
  }

  /**
   * Tells the reference how far a failed MREMAP_FIXED got (see the caller), from what vmlab
   * shows, within what Linux allows: a resize unmaps the whole target and the source tail
   * first; a move VMA by VMA moves a prefix of the source, then unmaps the next piece's
   * target. The comparison that follows checks everything else.
   */
  private failedFixedMremap(pid: number, addr: number, oldLen: number, newLen: number, target: number): void {
    const mm = this.k.mm(pid);
    const mapped = (a: number) => mm.vmaLookup(a) !== undefined;
    const gone = (start: number, end: number) => {
      for (let a = start; a < end; a += PAGE_SIZE) if (mapped(a)) return false;
      return end > start;
    };
    if (oldLen !== newLen) {
      if (!gone(target, target + newLen)) return;
      this.ref.munmap(pid, target, newLen);
      if (gone(addr + newLen, addr + oldLen)) this.ref.munmap(pid, addr + newLen, oldLen - newLen);
      return;
    }
    let moved = 0;
    while (moved < oldLen && !mapped(addr + moved)) moved += PAGE_SIZE;
    if (moved > 0 && this.ref.anyMapped(pid, addr, addr + moved))
      this.ref.mremap(pid, addr, moved, moved, target, target);
    let cleared = moved;
    while (cleared < oldLen && !mapped(target + cleared)) cleared += PAGE_SIZE;
    if (cleared > moved) this.ref.munmap(pid, target + moved, cleared - moved);
  }

  private expectRet(what: string, got: number, want: number): void {
    if (got !== want) {
      const name = (r: number) => (isErr(r) ? `-${ERRNO_NAMES[-r] ?? -r}` : String(r));
      throw new Error(`reference: ${what} returned ${name(got)}, the model says ${name(want)}`);
    }
  }

  private cowPteEnomem(): number {
    return this.k.machine.stat.get("cow_pte_enomem");
  }

  /**
   * A syscall that had to break COW on shared PTE tables and could not allocate them fails with
   * ENOMEM before it changes anything (cow-pte.ts): the reference model is left as it is, and
   * the comparison after the step checks that nothing changed. Linux's own ENOMEM paths are
   * the reference model's to predict.
   */
  private failedCowPteBreak(before: number, ret: number): boolean {
    if (this.cowPteEnomem() === before) return false;
    this.expectRet("a syscall whose COW-PTE break failed", ret, -ENOMEM);
    this.seen.cowPteEnomem++;
    this.seen.oom++;
    return true;
  }

  /** Runs one operation on both sides, then audits and compares everything. */
  step(op: AbstractOp): void {
    this.ops++;
    this.apply(op);
    audit(this.k);
    compareWithReference(this.k, this.ref);
  }

  private apply(op: AbstractOp): void {
    const k = this.k;
    if (op.kind === "spawn") {
      const pid = k.createProcess();
      if (pid < 0) return;
      this.pids.push(pid);
      this.ref.spawn(pid);
      return;
    }
    if (op.kind === "unpin" || op.kind === "pinread" || op.kind === "piperead") {
      this.gupOp(op.kind, op.which);
      return;
    }
    if (op.kind === "reclaim") {
      // Content must not change: the comparison after the step checks it.
      const freed = k.reclaim(op.pages);
      if (freed < 0) throw new Error(`reference: reclaim(${op.pages}) returned ${freed}`);
      this.seen.reclaims++;
      return;
    }
    if (op.kind === "splitDeferred") {
      k.splitDeferred();
      return;
    }
    const pid = this.pid(op.proc);
    if (pid === undefined) return;
    switch (op.kind) {
      case "fork": {
        if (this.pids.length >= MAX_PROCS) return;
        const child = k.fork(pid);
        if (child < 0) {
          this.expectRet("fork", child, -ENOMEM);
          this.seen.oom++;
          return;
        }
        this.ref.fork(pid, child);
        this.pids.push(child);
        this.seen.forks++;
        return;
      }
      case "pin":
      case "vmsplice": {
        const addr = this.addr(pid, op.vma, op.off) + (op.off % 3) * 100;
        const len = op.len * PAGE_SIZE;
        const pin = op.kind === "pin";
        const write = pin && op.write;
        const longterm = pin && op.longterm;
        const ret = pin
          ? k.pin(pid, addr, len, { write, longterm, fast: op.fast })
          : k.vmsplice(pid, addr, len);
        const pages = ret > 0 ? k.pinned(ret) : 0;
        const oom = (ret > 0 ? -k.gupStoppedBy(ret) : ret) === -ENOMEM;
        const max = pin ? Infinity : PIPE_DEF_BUFFERS;
        // The pages taken are what they are now: settle MADV_FREE'd ones (old content or zero).
        const first = Math.floor(addr / PAGE_SIZE) * PAGE_SIZE;
        for (let i = 0; i < pages; i++)
          this.ref.observe(pid, first + i * PAGE_SIZE, peekContent(k.mm(pid), first + i * PAGE_SIZE));
        this.ref.gup(pid, addr, len, { pin, write, longterm, max }, ret, pages, oom);
        if (oom) this.seen.oom++;
        if (ret > 0) {
          (pin ? this.pins : this.pipes).push(ret);
          if (pin) this.seen.pins++;
          else this.seen.pipes++;
        }
        return;
      }
      case "mremap": {
        const addr = this.addr(pid, op.vma, op.off);
        const oldLen = op.len * PAGE_SIZE;
        const newLen = op.newLen * PAGE_SIZE;
        const flags =
          op.mode === "inplace" ? 0 : op.mode === "maymove" ? MREMAP_MAYMOVE : MREMAP_MAYMOVE | MREMAP_FIXED;
        const target = op.mode === "fixed" ? this.addr(pid, op.target, op.off * 7) : 0;
        const before = this.cowPteEnomem();
        const ret = k.mremap(pid, addr, oldLen, newLen, flags, target);
        if (this.failedCowPteBreak(before, ret)) return;
        if (isErr(ret)) {
          this.seen.errno++;
          // The errno rows are checked against the live kernel in mremap.test.ts. Here a
          // failed call must leave everything as it was, which the next comparison checks, with
          // the exceptions Linux makes too: MREMAP_FIXED unmaps the target (and shrinks the
          // source) before move_vma can still fail with ENOMEM, or with EFAULT when that unmap
          // took the source itself (old_len 0 and new_addr == addr; measured on 6.18); and a
          // multi-VMA move (remap_move) keeps the VMAs it moved before the one that failed.
          if (ret !== -EFAULT && ret !== -EINVAL && ret !== -ENOMEM) this.expectRet("mremap", ret, -EINVAL);
          const tookSource = ret === -EFAULT && addr >= target && addr < target + newLen;
          if (op.mode === "fixed" && (ret === -ENOMEM || tookSource))
            this.failedFixedMremap(pid, addr, oldLen, newLen, target);
          return;
        }
        this.ref.mremap(pid, addr, oldLen, newLen, op.mode === "fixed" ? target : null, ret);
        this.seen.mremaps++;
        return;
      }
      case "exit":
        k.exit(pid);
        this.ref.exit(pid);
        this.pids.splice(this.pids.indexOf(pid), 1);
        return;
      case "mmap": {
        let flags = (op.shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | (op.populate ? MAP_POPULATE : 0);
        let addr = 0;
        if (op.place !== "any") {
          addr = this.addr(pid, op.vma, op.off);
          flags |= op.place === "fixed" ? MAP_FIXED : MAP_FIXED_NOREPLACE;
        }
        const len = op.pages * PAGE_SIZE;
        const before = this.cowPteEnomem();
        const ret = k.mmap(pid, addr, len, op.prot, flags);
        if (this.failedCowPteBreak(before, ret)) return;
        const want = this.ref.mmapErrno(pid, addr, len, op.prot, flags);
        if (isErr(ret)) {
          if (want === null) {
            throw new Error(`reference: mmap failed with ${ERRNO_NAMES[-ret]}, the model expects success`);
          }
          if (want !== "unknown") this.expectRet("mmap", ret, -want);
          this.ref.mmapFailed(pid, addr, len, flags, -ret);
          this.seen.errno++;
          return;
        }
        if (typeof want === "number") this.expectRet("mmap", ret, -want);
        this.ref.mmap(pid, addr, len, op.prot, flags, ret);
        if (op.shared) this.seen.sharedMaps++;
        return;
      }
      case "munmap": {
        const addr = this.addr(pid, op.vma, op.off);
        const len = op.len * PAGE_SIZE;
        const before = this.cowPteEnomem();
        const ret = k.munmap(pid, addr, len);
        if (this.failedCowPteBreak(before, ret)) return;
        this.expectRet("munmap", ret, this.ref.munmap(pid, addr, len));
        return;
      }
      case "mprotect": {
        const addr = this.addr(pid, op.vma, op.off);
        const len = op.len * PAGE_SIZE;
        const before = this.cowPteEnomem();
        const ret = k.mprotect(pid, addr, len, op.prot);
        if (this.failedCowPteBreak(before, ret)) return;
        this.expectRet("mprotect", ret, this.ref.mprotect(pid, addr, len, op.prot));
        return;
      }
      case "madvise": {
        const addr = this.addr(pid, op.vma, op.off);
        const advice = ADVICE[(op.prot + op.off) % ADVICE.length];
        const len = op.len * PAGE_SIZE;
        const before = this.cowPteEnomem();
        const oomBefore = k.machine.stat.get("oom");
        const ret = k.madvise(pid, addr, len, advice);
        if (this.failedCowPteBreak(before, ret)) return;
        if (advice === MADV_POPULATE_READ || advice === MADV_POPULATE_WRITE) {
          const write = advice === MADV_POPULATE_WRITE;
          const want = this.ref.populate(pid, addr, len, write);
          const oom = k.machine.stat.get("oom") > oomBefore;
          if (oom) this.seen.oom++;
          // Out of memory, population may stop anywhere; what it reached is not known here.
          if (oom && ret === -ENOMEM) return;
          this.expectRet("madvise(MADV_POPULATE)", ret, -want.errno);
          if (write)
            for (let i = 0; i < want.pages; i++) {
              const a = addr + i * PAGE_SIZE;
              this.ref.observe(pid, a, peekContent(k.mm(pid), a), true);
            }
          return;
        }
        let want: number;
        if (advice === MADV_DONTNEED) want = this.ref.dontneed(pid, addr, len);
        else if (advice === MADV_FREE) {
          want = this.ref.free(pid, addr, len);
          this.seen.lazyfree++;
        } else if (advice === MADV_COLD || advice === MADV_PAGEOUT) want = this.ref.madvise(pid, addr, len);
        else want = this.ref.madvise(pid, addr, len, RefModel.forkAdvice(advice));
        this.expectRet("madvise", ret, want);
        return;
      }
      case "read":
      case "write": {
        // Unaligned starts and lengths, to cover partial pages.
        const addr = this.addr(pid, op.vma, op.off) + (op.prot % 3) * 100;
        const len = op.len * PAGE_SIZE - (op.prot % 2) * 50;
        const got = op.kind === "write" ? k.write(pid, addr, len) : k.read(pid, addr, len);
        if (got.oom) this.seen.oom++;
        if (got.signal === "SIGSEGV") this.seen.segv++;
        if (got.signal === "SIGBUS") this.seen.sigbus++;
        this.ref.access(pid, addr, len, op.kind === "write", got);
        return;
      }
      case "bad": {
        // Arguments Linux rejects; the model predicts each errno.
        const vmas = k.vmas(pid);
        const base = vmas.length > 0 ? vmas[0].start : 0x7f0000000000;
        const cases: [string, () => number, () => number][] = [
          [
            "munmap unaligned",
            () => k.munmap(pid, base + 1, PAGE_SIZE),
            () => this.ref.munmap(pid, base + 1, PAGE_SIZE),
          ],
          ["munmap zero length", () => k.munmap(pid, base, 0), () => this.ref.munmap(pid, base, 0)],
          [
            "mprotect unaligned",
            () => k.mprotect(pid, base + 8, PAGE_SIZE, 1),
            () => this.ref.mprotect(pid, base + 8, PAGE_SIZE, 1),
          ],
          [
            "mprotect bad prot",
            () => k.mprotect(pid, base, PAGE_SIZE, 0x80),
            () => this.ref.mprotect(pid, base, PAGE_SIZE, 0x80),
          ],
          [
            "mmap zero length",
            () => k.mmap(pid, 0, 0, 3, MAP_PRIVATE | MAP_ANONYMOUS),
            () => -Number(this.ref.mmapErrno(pid, 0, 0, 3, MAP_PRIVATE) ?? 0),
          ],
        ];
        const [what, run, want] = cases[op.which % cases.length];
        this.expectRet(what, run(), want());
        return;
      }
    }
  }
}
