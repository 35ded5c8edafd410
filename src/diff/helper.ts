// The Node side of diff/helper.c: compiles it on demand with the machine's cc (cached like the
// calibrate microbenchmark), starts it and exchanges protocol lines with it. The protocol is
// described at the top of diff/helper.c.

import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { homedir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { compileCached } from "../calibrate/live.ts";

/** The C source of the live-kernel helper. */
export const HELPER_SOURCE = fileURLToPath(new URL("../../diff/helper.c", import.meta.url));

/** The helper stopped answering, answered `fatal`, or died: a bug or a broken machine, not bad input. */
export class HelperError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HelperError";
  }
}

/** A running diff/helper.c. One request at a time; every method rejects with HelperError. */
export class LiveHelper {
  private readonly lines: string[] = [];
  private waiting: ((line: string | null) => void) | null = null;
  private closed = false;
  private stderr = "";

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    const rl = createInterface({ input: child.stdout });
    rl.on("line", (line) => {
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = null;
        w(line);
      } else this.lines.push(line);
    });
    rl.on("close", () => {
      this.closed = true;
      this.waiting?.(null);
      this.waiting = null;
    });
    child.stderr.on("data", (d: Buffer) => {
      this.stderr += d.toString();
    });
  }

  /**
   * Compiles (or finds cached) and starts the helper; resolves once it printed `ready`. Throws
   * CalibrateRefusal when it cannot be compiled.
   */
  static async start(cacheDir = join(homedir(), ".cache", "vmlab", "diff"), cc = "cc"): Promise<LiveHelper> {
    const bin = compileCached(HELPER_SOURCE, "helper", cacheDir, cc);
    const h = new LiveHelper(spawn(bin, [], { stdio: ["pipe", "pipe", "pipe"] }));
    const ready = await h.line();
    if (!ready.startsWith("ready ")) throw new HelperError(`diff/helper.c did not start: ${ready}`);
    return h;
  }

  private line(): Promise<string> {
    const next = this.lines.shift();
    if (next !== undefined) return Promise.resolve(next);
    if (this.closed) return Promise.reject(this.died());
    return new Promise((resolve, reject) => {
      this.waiting = (line) => (line === null ? reject(this.died()) : resolve(line));
    });
  }

  private died(): HelperError {
    const code = this.child.exitCode ?? this.child.signalCode;
    return new HelperError(
      `diff/helper.c exited (${code ?? "?"})${this.stderr ? `: ${this.stderr.trim()}` : ""}`,
    );
  }

  /** Sends one command and returns its one-line answer. A `fatal` answer throws HelperError. */
  async request(command: string): Promise<string> {
    this.child.stdin.write(`${command}\n`);
    const answer = await this.line();
    if (answer.startsWith("fatal"))
      throw new HelperError(
        `diff/helper.c: ${answer} (after "${command}")${this.stderr ? `: ${this.stderr.trim()}` : ""}`,
      );
    return answer;
  }

  /** Sends `dump SLOT` and returns the lines of the answer, without the closing `end`. */
  async dump(slot: number): Promise<string[]> {
    const first = await this.request(`dump ${slot}`);
    const out: string[] = [];
    for (let line = first; line !== "end"; line = await this.line()) out.push(line);
    return out;
  }

  /** Asks the helper to kill its processes and exit, and waits for it; kills it if it hangs. */
  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin.end("quit\n");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  }

  /** Kills the helper (it kills its processes on SIGTERM). */
  kill(): void {
    this.child.kill("SIGTERM");
  }
}
