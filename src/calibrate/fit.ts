// The fit of `vmlab calibrate`: nanoseconds per event from live timings and model event counts.
//
//   sample i:  measuredNs_i  ~=  sum_e  counts_i[e] * ns[e],   ns[e] >= 0
//
// solved by non-negative least squares (Lawson and Hanson, "Solving Least Squares Problems",
// 1974, ch. 23), with each row divided by its measured time (relative error: a one-fault sample
// weighs as much as a 1 GiB fork) and each column scaled to unit length (counts range from 1 to
// millions). Events that every sample shows in the same proportion cannot be told apart by
// timing: they are fitted as one column and share one ns per event (`aliased`).

/** Solution of min ||Ax - b|| subject to x >= 0. */
export interface NnlsResult {
  x: number[];
  /** ||Ax - b||. */
  residual: number;
  /** Outer iterations (columns made active). */
  iterations: number;
}

/**
 * Least squares on the columns `cols` of A (m x n, row-major), by Householder QR. Returns the
 * coefficients, in the order of cols. Lawson-Hanson keeps the columns independent; one that
 * rounding alone separates from those before it gets coefficient 0.
 */
function lsq(A: readonly number[][], b: readonly number[], cols: readonly number[]): number[] {
  const m = A.length;
  const k = cols.length;
  const R = A.map((row) => cols.map((j) => row[j]));
  const colNorm = cols.map((j) => Math.hypot(...A.map((row) => row[j])));
  const y = [...b];
  for (let c = 0; c < Math.min(k, m); c++) {
    let norm = 0;
    for (let i = c; i < m; i++) norm += R[i][c] * R[i][c];
    norm = Math.sqrt(norm);
    const alpha = R[c][c] > 0 ? -norm : norm;
    // Householder vector v = x - alpha e1, applied as H = I - 2 v v^T / (v^T v).
    const v = new Array<number>(m).fill(0);
    for (let i = c; i < m; i++) v[i] = R[i][c];
    v[c] -= alpha;
    let vv = 0;
    for (let i = c; i < m; i++) vv += v[i] * v[i];
    if (vv === 0) continue;
    for (let j = c; j < k; j++) {
      let d = 0;
      for (let i = c; i < m; i++) d += v[i] * R[i][j];
      const f = (2 * d) / vv;
      for (let i = c; i < m; i++) R[i][j] -= f * v[i];
    }
    let d = 0;
    for (let i = c; i < m; i++) d += v[i] * y[i];
    const f = (2 * d) / vv;
    for (let i = c; i < m; i++) y[i] -= f * v[i];
  }
  const x = new Array<number>(k).fill(0);
  for (let c = Math.min(k, m) - 1; c >= 0; c--) {
    let s = y[c];
    for (let j = c + 1; j < k; j++) s -= R[c][j] * x[j];
    // A column dependent on the ones before it (only rounding separates them) gets 0.
    x[c] = Math.abs(R[c][c]) <= 1e-12 * colNorm[c] ? 0 : s / R[c][c];
  }
  return x;
}

/** A^T (b - A x). */
function gradient(A: readonly number[][], b: readonly number[], x: readonly number[]): number[] {
  const n = x.length;
  const w = new Array<number>(n).fill(0);
  for (let i = 0; i < A.length; i++) {
    let r = b[i];
    for (let j = 0; j < n; j++) r -= A[i][j] * x[j];
    for (let j = 0; j < n; j++) w[j] += A[i][j] * r;
  }
  return w;
}

/**
 * Lawson-Hanson NNLS: the x >= 0 that minimises ||Ax - b||, for A given as m rows of n numbers.
 * The result satisfies the KKT conditions to within `tol` (default scaled to A, as scipy does):
 * w = A^T(b - Ax) is <= tol where x is 0 and about 0 where x > 0. Throws "nnls: ..." for rows of
 * different lengths or non-finite input; never loops forever (at most 3n outer iterations).
 */
export function nnls(A: readonly number[][], b: readonly number[], tol?: number): NnlsResult {
  const m = A.length;
  if (b.length !== m) throw new Error(`nnls: ${m} rows but ${b.length} targets`);
  const n = m === 0 ? 0 : A[0].length;
  for (const row of A) {
    if (row.length !== n) throw new Error("nnls: rows of different lengths");
    if (!row.every(Number.isFinite)) throw new Error("nnls: non-finite entry in A");
  }
  if (!b.every(Number.isFinite)) throw new Error("nnls: non-finite entry in b");
  let norm1 = 0;
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let i = 0; i < m; i++) s += Math.abs(A[i][j]);
    norm1 = Math.max(norm1, s);
  }
  const eps = tol ?? 10 * Number.EPSILON * norm1 * Math.max(m, n);
  // A column whose squared norm underflows to 0 (subnormal entries) is numerically zero: its
  // least-squares subproblem would divide by 0. It never enters the passive set, so x_j = 0.
  const usable = Array.from({ length: n }, (_, j) => A.reduce((s, row) => s + row[j] * row[j], 0) > 0);
  const x = new Array<number>(n).fill(0);
  const passive = new Array<boolean>(n).fill(false);
  let iterations = 0;
  for (; iterations < 3 * n; iterations++) {
    const w = gradient(A, b, x);
    let t = -1;
    for (let j = 0; j < n; j++) if (!passive[j] && usable[j] && w[j] > eps && (t < 0 || w[j] > w[t])) t = j;
    if (t < 0) break;
    passive[t] = true;
    for (;;) {
      const cols = passive.flatMap((p, j) => (p ? [j] : []));
      const s = lsq(A, b, cols);
      if (s.every((v) => v > 0)) {
        cols.forEach((j, c) => {
          x[j] = s[c];
        });
        break;
      }
      // Step from x toward s until the first passive coefficient reaches zero; it leaves P.
      let alpha = 1;
      let leaving = -1;
      cols.forEach((j, c) => {
        if (s[c] > 0) return;
        const a = x[j] - s[c] > 0 ? x[j] / (x[j] - s[c]) : 0;
        if (a < alpha || leaving < 0) [alpha, leaving] = [Math.min(alpha, a), j];
      });
      cols.forEach((j, c) => {
        x[j] += alpha * (s[c] - x[j]);
        if (j === leaving || x[j] <= eps) {
          x[j] = 0;
          passive[j] = false;
        }
      });
      if (!passive.some(Boolean)) break;
    }
  }
  let res = 0;
  for (let i = 0; i < m; i++) {
    let r = b[i];
    for (let j = 0; j < n; j++) r -= A[i][j] * x[j];
    res += r * r;
  }
  return { x, residual: Math.sqrt(res), iterations };
}

/** One calibration sample: the live time of a timed section and the model's event counts for it. */
export interface FitSample {
  measuredNs: number;
  counts: Readonly<Record<string, number>>;
}

export interface CostFit {
  /** ns per event for every event that some sample has, 0 where the fit drove it to zero. */
  ns: Record<string, number>;
  /** Groups of two or more events fitted as one column (equal ns per event), each sorted. */
  aliased: string[][];
  /** The modeled time of each sample under `ns`, in sample order. */
  modeledNs: number[];
  /** Root mean square of (modeled - measured) / measured over the samples. */
  rmsRelError: number;
}

/**
 * Fits ns per event to the samples by NNLS on relative error (see the top of this file), pulled
 * toward `prior` (ns per event, where it has one) with weight `priorWeight`: the objective adds
 * priorWeight x ((ns - prior) / prior)^2 per event group, which splits time among events the
 * samples cannot tell apart. Events in `fixed` that have a prior are not fitted: they cost their
 * prior, taken off each sample first. Events
 * are the union of the samples' count names, in first-seen order; an event whose column is a
 * positive multiple of an earlier one joins its alias group. Precondition: every measuredNs > 0.
 * Throws "fitCosts: ..." on an empty sample list or a non-positive measurement.
 */
export function fitCosts(
  samples: readonly FitSample[],
  prior: (event: string) => number | undefined = () => undefined,
  priorWeight = 0,
  fixed: ReadonlySet<string> = new Set(),
): CostFit {
  if (samples.length === 0) throw new Error("fitCosts: no samples");
  for (const s of samples)
    if (!(s.measuredNs > 0)) throw new Error(`fitCosts: measured time ${s.measuredNs} is not positive`);
  const events: string[] = [];
  const held: Record<string, number> = {};
  for (const s of samples)
    for (const [e, n] of Object.entries(s.counts)) {
      if (n === 0 || events.includes(e) || e in held) continue;
      const p = fixed.has(e) ? prior(e) : undefined;
      if (p !== undefined) held[e] = p;
      else events.push(e);
    }
  // The fixed events' time comes off each sample first; the rest is fitted.
  const heldNs = samples.map((s) =>
    Object.entries(held).reduce((t, [e, p]) => t + (s.counts[e] ?? 0) * p, 0),
  );
  // Relative-error rows: counts / measured, target 1 - fixed share.
  const column = (e: string) => samples.map((s) => (s.counts[e] ?? 0) / s.measuredNs);
  const groups: { events: string[]; col: number[]; unit: number[] }[] = [];
  for (const e of events) {
    const col = column(e);
    const len = Math.hypot(...col);
    const unit = col.map((v) => v / len);
    const g = groups.find((g) => g.unit.every((u, i) => Math.abs(u - unit[i]) <= 1e-9));
    if (g) {
      g.events.push(e);
      g.col = g.col.map((v, i) => v + col[i]); // equal ns per event: the group column is the sum
    } else groups.push({ events: [e], col, unit });
  }
  const scale = groups.map((g) => Math.hypot(...g.col));
  const A = samples.map((_, i) => groups.map((g, j) => g.col[i] / scale[j]));
  const b = samples.map((s, i) => 1 - heldNs[i] / s.measuredNs);
  // The prior: one row per group with a positive prior, sqrt(w) (ns / prior - 1), target 0 (the
  // group's prior is its events' mean, as they share one ns per event).
  if (priorWeight > 0) {
    const w = Math.sqrt(priorWeight);
    groups.forEach((g, j) => {
      const ps = g.events.map(prior).filter((p): p is number => p !== undefined && p > 0);
      if (ps.length === 0) return;
      const p = ps.reduce((t, v) => t + v, 0) / ps.length;
      A.push(groups.map((_, c) => (c === j ? w / (scale[j] * p) : 0)));
      b.push(w);
    });
  }
  const { x } = nnls(A, b);
  const ns: Record<string, number> = { ...held };
  groups.forEach((g, j) => {
    for (const e of g.events) ns[e] = x[j] / scale[j];
  });
  const modeled = samples.map((s) => Object.entries(s.counts).reduce((t, [e, n]) => t + n * (ns[e] ?? 0), 0));
  const rel = samples.map((s, i) => (modeled[i] - s.measuredNs) / s.measuredNs);
  return {
    ns,
    aliased: groups.filter((g) => g.events.length > 1).map((g) => [...g.events].sort()),
    modeledNs: modeled,
    rmsRelError: Math.sqrt(rel.reduce((t, r) => t + r * r, 0) / rel.length),
  };
}
