// THP sysfs knobs for `vmlab calibrate`: read them, set them for one measurement, and put every one
// of them back, on success, on a thrown error, on SIGINT/SIGTERM, on an uncaught exception and on
// process.exit. The knobs are machine-wide, so a process that changes them holds a lock file; a
// second one refuses instead of saving (and later "restoring") the first one's settings.
//
// Knob names are paths relative to the sysfs root: "enabled", "hugepages-16kB/enabled", ... The
// root is a parameter so that tests can point it at a fake directory of plain files.

import { createHash } from "node:crypto";
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const THP_SYSFS_ROOT = "/sys/kernel/mm/transparent_hugepage";

/** Where the knobs live and who is asking; every field defaults to this process on this machine. */
export interface KnobEnv {
  /** The THP sysfs directory (default THP_SYSFS_ROOT). */
  root?: string;
  /** process.platform by default. */
  platform?: string;
  /** process.getuid() by default. */
  uid?: number;
  /** Install SIGINT/SIGTERM/uncaughtException/exit handlers while knobs are changed (default true). */
  handlers?: boolean;
  /** The command named in messages (default "vmlab calibrate"). */
  who?: string;
}

/** Knob name → value to write, e.g. { enabled: "never", "hugepages-16kB/enabled": "always" }. */
export type KnobSettings = Record<string, string>;

/**
 * An environment or permission problem: the CLI prints `message` and `Hint: hint`, no stack, and
 * exits with status 2.
 */
export class CalibrateRefusal extends Error {
  readonly hint: string;
  constructor(message: string, hint: string) {
    super(message);
    this.name = "CalibrateRefusal";
    this.hint = hint;
  }
}

const resolveEnv = (env: KnobEnv = {}): Required<KnobEnv> => ({
  root: env.root ?? THP_SYSFS_ROOT,
  platform: env.platform ?? process.platform,
  uid: env.uid ?? process.getuid?.() ?? -1,
  handlers: env.handlers ?? true,
  who: env.who ?? "vmlab calibrate",
});

/**
 * The knobs under `root`: "enabled" and every "hugepages-<N>kB/enabled" that exists (some sizes,
 * such as 8kB, have only shmem_enabled). Sorted by folio size. Returns [] when root is missing.
 */
export function listKnobs(root: string = THP_SYSFS_ROOT): string[] {
  if (!existsSync(root)) return [];
  const sizes = readdirSync(root)
    .map((d) => /^hugepages-(\d+)kB$/.exec(d))
    .filter((m): m is RegExpExecArray => m !== null && existsSync(join(root, m[0], "enabled")))
    .sort((a, b) => Number(a[1]) - Number(b[1]))
    .map((m) => `${m[0]}/enabled`);
  return existsSync(join(root, "enabled")) ? ["enabled", ...sizes] : sizes;
}

/** The knob name for one mTHP size in KiB: 16 → "hugepages-16kB/enabled". */
export const mthpKnob = (kib: number): string => `hugepages-${kib}kB/enabled`;

/**
 * Parses a sysfs choice file: "always [madvise] never" → { value: "madvise", choices: [...] }.
 * A file without brackets (a fake sysfs written by a test) is its own value, with no known choices.
 * Throws "parseKnob: …" on an empty file.
 */
export function parseKnob(text: string): { value: string; choices: string[] } {
  const words = text.trim().split(/\s+/).filter(Boolean);
  const chosen = words.find((w) => w.startsWith("[") && w.endsWith("]"));
  if (chosen !== undefined)
    return { value: chosen.slice(1, -1), choices: words.map((w) => w.replace(/^\[|\]$/g, "")) };
  if (words.length === 1) return { value: words[0], choices: [] };
  throw new Error(`parseKnob: no selected value in "${text.trim()}"`);
}

/** The current value of one knob. Throws CalibrateRefusal when it is missing or unreadable. */
export function readKnob(root: string, name: string): string {
  const path = join(root, name);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new CalibrateRefusal(
      `cannot read the THP knob ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`,
      "this kernel may lack that folio size (CONFIG_TRANSPARENT_HUGEPAGE, mTHP needs Linux 6.8+)",
    );
  }
  return parseKnob(text).value;
}

/**
 * Writes one knob and checks that it took. Throws CalibrateRefusal when the value is not one of the
 * knob's choices or the write fails; the knob is then unchanged.
 */
export function writeKnob(root: string, name: string, value: string): void {
  const path = join(root, name);
  const { choices } = parseKnob(readFileSync(path, "utf8"));
  if (choices.length > 0 && !choices.includes(value))
    throw new CalibrateRefusal(
      `the THP knob ${path} has no value "${value}"`,
      `its choices are: ${choices.join(", ")}`,
    );
  try {
    writeFileSync(path, value);
  } catch (e) {
    throw new CalibrateRefusal(
      `cannot write "${value}" to the THP knob ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`,
      "run as root on a machine whose /sys is writable (not a read-only container mount)",
    );
  }
  const now = readKnob(root, name);
  if (now !== value)
    throw new CalibrateRefusal(
      `the THP knob ${path} reads "${now}" after writing "${value}"`,
      "is another tool managing THP?",
    );
}

/**
 * Refuses, with a readable CalibrateRefusal, when the live-kernel calibration cannot run here:
 * not Linux, not root, or one of `names` missing or not writable under the root.
 */
export function checkKnobAccess(names: readonly string[], env: KnobEnv = {}): void {
  const e = resolveEnv(env);
  if (e.platform !== "linux")
    throw new CalibrateRefusal(
      `${e.who} measures the live Linux kernel, and this is ${e.platform}`,
      "run it on the Linux machine to calibrate, or use the shipped default profile",
    );
  if (e.uid !== 0)
    throw new CalibrateRefusal(
      `${e.who} must run as root to change the THP knobs in ${e.root} (uid is ${e.uid})`,
      "run it with sudo, or use the shipped default profile",
    );
  for (const name of names) {
    const path = join(e.root, name);
    if (!existsSync(path))
      throw new CalibrateRefusal(
        `the THP knob ${path} does not exist`,
        name === "enabled"
          ? "this kernel has no transparent hugepages (CONFIG_TRANSPARENT_HUGEPAGE)"
          : `this kernel has no ${name.split("/")[0].slice(10)} mTHP size (needs Linux 6.8+ and that size enabled)`,
      );
    try {
      accessSync(path, constants.R_OK | constants.W_OK);
    } catch (err) {
      throw new CalibrateRefusal(
        `the THP knob ${path} is not writable: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
        "run as root on a machine whose /sys is writable (not a read-only container mount)",
      );
    }
  }
}

/** Every knob's value at one moment, for restoreKnobs. */
export interface KnobSnapshot {
  root: string;
  values: Record<string, string>;
}

/**
 * The knobs saved and restored besides listKnobs' anonymous ones, those that exist under root:
 * the huge zero page and the shmem policies, global and per size (`vmlab diff` sets them).
 */
export function otherKnobs(root: string = THP_SYSFS_ROOT): string[] {
  if (!existsSync(root)) return [];
  const perSize = readdirSync(root)
    .filter((d) => /^hugepages-\d+kB$/.test(d))
    .sort((a, b) => Number.parseInt(a.slice(10), 10) - Number.parseInt(b.slice(10), 10))
    .map((d) => `${d}/shmem_enabled`);
  return ["use_zero_page", "shmem_enabled", ...perSize].filter((n) => existsSync(join(root, n)));
}

/**
 * Reads every knob under root (listKnobs and otherKnobs). Throws CalibrateRefusal when one is
 * unreadable.
 */
export function saveKnobs(root: string = THP_SYSFS_ROOT): KnobSnapshot {
  const values: Record<string, string> = {};
  for (const name of [...listKnobs(root), ...otherKnobs(root)]) values[name] = readKnob(root, name);
  return { root, values };
}

/**
 * Writes back every knob of the snapshot that differs now. Never throws: it tries every knob and
 * returns one message per knob it could not restore ([] when all are back).
 */
export function restoreKnobs(snap: KnobSnapshot): string[] {
  const failures: string[] = [];
  for (const [name, value] of Object.entries(snap.values)) {
    try {
      if (readKnob(snap.root, name) !== value) writeFileSync(join(snap.root, name), value);
      const now = readKnob(snap.root, name);
      if (now !== value) failures.push(`${join(snap.root, name)}: reads "${now}", expected "${value}"`);
    } catch (e) {
      failures.push(`${join(snap.root, name)}: ${(e as Error).message}`);
    }
  }
  return failures;
}

/** The lock file that marks the knobs under root as changed by a live process. */
export const knobLockPath = (root: string): string =>
  join(tmpdir(), `vmlab-thp-knobs-${createHash("sha256").update(root).digest("hex").slice(0, 12)}.lock`);

const pidAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
};

/**
 * Takes the machine-wide lock for root and returns its release. A stale lock (its pid is gone)
 * is taken over. A lock this process holds already is re-entered: the release is then a no-op,
 * and the outer holder's release frees it (a test holds the lock around several withKnobs).
 * Throws CalibrateRefusal when another live process holds it.
 */
export function lockKnobs(root: string): () => void {
  const path = knobLockPath(root);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, "wx");
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const owner = Number.parseInt(readFileSync(path, "utf8"), 10);
      if (owner === process.pid) return () => {};
      if (Number.isFinite(owner) && pidAlive(owner))
        throw new CalibrateRefusal(
          `another process (pid ${owner}) is changing the THP knobs in ${root}`,
          `wait for it to finish; if it is gone, remove ${path}`,
        );
      rmSync(path, { force: true });
    }
  }
  throw new CalibrateRefusal(`cannot take the THP knob lock ${path}`, `remove ${path} and retry`);
}

let active = false;

/**
 * Runs fn with the knobs set to `settings`, and restores every knob (all of them, not only the
 * ones set) afterwards. Preconditions: checkKnobAccess passes for the settings' knobs; no other
 * withKnobs is active in this process. On SIGINT/SIGTERM it restores and exits 130/143; on an
 * uncaught exception it restores, prints the message and exits 1. Returns fn's result; rethrows
 * fn's error after restoring. A restore that fails is reported on stderr, and thrown when fn
 * succeeded.
 */
export async function withKnobs<T>(
  settings: KnobSettings,
  fn: () => T | Promise<T>,
  env: KnobEnv = {},
): Promise<T> {
  const e = resolveEnv(env);
  if (active) throw new Error("withKnobs: already active in this process");
  checkKnobAccess(Object.keys(settings), e);
  const unlock = lockKnobs(e.root);
  active = true;
  let snap: KnobSnapshot | undefined;
  let restored = false;
  const restore = (): string[] => {
    if (restored || snap === undefined) return [];
    restored = true;
    const failures = restoreKnobs(snap);
    for (const f of failures) process.stderr.write(`${e.who}: could not restore THP knob ${f}\n`);
    return failures;
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    restore();
    unlock();
    process.stderr.write(`${e.who}: ${signal}: THP knobs restored\n`);
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  const onUncaught = (err: unknown): void => {
    restore();
    unlock();
    process.stderr.write(
      `${e.who}: ${err instanceof Error ? err.message : String(err)} (THP knobs restored)\n`,
    );
    process.exit(1);
  };
  const onExit = (): void => {
    restore();
    unlock();
  };
  if (e.handlers) {
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    process.on("uncaughtException", onUncaught);
    process.on("unhandledRejection", onUncaught);
    process.on("exit", onExit);
  }
  const cleanup = (): string[] => {
    const failures = restore();
    unlock();
    active = false;
    if (e.handlers) {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      process.off("uncaughtException", onUncaught);
      process.off("unhandledRejection", onUncaught);
      process.off("exit", onExit);
    }
    return failures;
  };
  let result: T;
  try {
    snap = saveKnobs(e.root);
    for (const [name, value] of Object.entries(settings)) writeKnob(e.root, name, value);
    result = await fn();
  } catch (err) {
    cleanup();
    throw err;
  }
  const failures = cleanup();
  if (failures.length > 0)
    throw new CalibrateRefusal(
      `could not restore ${failures.length} THP knob(s): ${failures.join("; ")}`,
      "set them back by hand (echo VALUE > KNOB)",
    );
  return result;
}
