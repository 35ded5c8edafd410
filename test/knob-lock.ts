// The live-kernel tests of several files (calibrate's, vmlab diff's) change or watch the real THP
// knobs from different vitest workers. Each holds the machine-wide knob lock for its whole test,
// waiting while another holds it, so that none sees another's settings.

import { CalibrateRefusal, lockKnobs, THP_SYSFS_ROOT } from "../src/calibrate/knobs.ts";

/**
 * Runs fn holding the real knob lock (withKnobs inside re-enters it), waiting up to `waitMs` for
 * another process to release it.
 */
export async function withKnobLock<T>(fn: () => Promise<T> | T, waitMs = 600_000): Promise<T> {
  const t0 = Date.now();
  let unlock: () => void;
  for (;;) {
    try {
      unlock = lockKnobs(THP_SYSFS_ROOT);
      break;
    } catch (e) {
      if (!(e instanceof CalibrateRefusal) || Date.now() - t0 > waitMs) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  try {
    return await fn();
  } finally {
    unlock();
  }
}
