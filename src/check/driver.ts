// Runs abstract operations against vmlab and the reference model side by side, checking each
// result and, after every operation, the audit and the full reference comparison. The
// property test and `vmlab fuzz` generate the operations.

import type { Kernel } from "../mm/kernel.ts";
import {
  ERRNO_NAMES,
  isErr,
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  PAGE_SIZE,
} from "../uapi.ts";
import { audit } from "./audit.ts";
import { compareWithReference } from "./compare.ts";
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
  | { kind: "bad"; proc: number; which: number };

/** A vmlab and a reference model run in lockstep. */
export class Lockstep {
  readonly ref: RefModel;
  readonly pids: number[] = [];
  ops = 0;
  /** Outcomes seen, so that a test can show which paths it exercised. */
  readonly seen = { oom: 0, segv: 0, errno: 0, sharedMaps: 0 };

  constructor(readonly k: Kernel) {
    this.ref = new RefModel(k.machine.buddy.nrPages);
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

  private expectRet(what: string, got: number, want: number): void {
    if (got !== want) {
      const name = (r: number) => (isErr(r) ? `-${ERRNO_NAMES[-r] ?? -r}` : String(r));
      throw new Error(`reference: ${what} returned ${name(got)}, the model says ${name(want)}`);
    }
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
    const pid = this.pid(op.proc);
    if (pid === undefined) return;
    switch (op.kind) {
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
        const ret = k.mmap(pid, addr, len, op.prot, flags);
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
        this.expectRet("munmap", k.munmap(pid, addr, len), this.ref.munmap(pid, addr, len));
        return;
      }
      case "mprotect": {
        const addr = this.addr(pid, op.vma, op.off);
        const len = op.len * PAGE_SIZE;
        this.expectRet(
          "mprotect",
          k.mprotect(pid, addr, len, op.prot),
          this.ref.mprotect(pid, addr, len, op.prot),
        );
        return;
      }
      case "madvise": {
        const addr = this.addr(pid, op.vma, op.off);
        const advice = op.prot & 1 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE;
        const len = op.len * PAGE_SIZE;
        this.expectRet("madvise", k.madvise(pid, addr, len, advice), this.ref.madvise(pid, addr, len));
        return;
      }
      case "read":
      case "write": {
        // Unaligned starts and lengths, to cover partial pages.
        const addr = this.addr(pid, op.vma, op.off) + (op.prot % 3) * 100;
        const len = op.len * PAGE_SIZE - (op.prot % 2) * 50;
        const got = op.kind === "write" ? k.write(pid, addr, len) : k.read(pid, addr, len);
        if (got.oom) this.seen.oom++;
        if (got.signal) this.seen.segv++;
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
