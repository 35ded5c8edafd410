import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { type FitSample, fitCosts, nnls } from "./fit.ts";

/** A x, for checking solutions. */
const mul = (A: number[][], x: number[]) => A.map((row) => row.reduce((s, a, j) => s + a * x[j], 0));

/** Unconstrained least squares by the normal equations (small, well-conditioned cases only). */
function leastSquares(A: number[][], b: number[]): number[] {
  const n = A[0].length;
  const M = Array.from({ length: n }, (_, i) =>
    Array.from({ length: n + 1 }, (_, j) =>
      j < n ? A.reduce((s, r) => s + r[i] * r[j], 0) : A.reduce((s, r, k) => s + r[i] * b[k], 0),
    ),
  );
  for (let c = 0; c < n; c++) {
    for (let r = c + 1; r < n; r++) {
      const f = M[r][c] / M[c][c];
      for (let j = c; j <= n; j++) M[r][j] -= f * M[c][j];
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let c = n - 1; c >= 0; c--) {
    let s = M[c][n];
    for (let j = c + 1; j < n; j++) s -= M[c][j] * x[j];
    x[c] = s / M[c][c];
  }
  return x;
}

describe("nnls (Lawson-Hanson)", () => {
  it("recovers known non-negative coefficients, zeros included, from exact data", () => {
    const A = [
      [1, 2, 0, 3],
      [4, 1, 1, 0],
      [0, 3, 2, 1],
      [2, 0, 5, 1],
      [1, 1, 1, 1],
      [3, 0, 0, 2],
    ];
    const truth = [2, 0, 0.5, 7];
    const { x, residual } = nnls(A, mul(A, truth));
    x.forEach((v, j) => {
      expect(v).toBeCloseTo(truth[j], 10);
    });
    expect(residual).toBeLessThan(1e-9);
  });

  it("keeps a coefficient at zero where unconstrained least squares makes it negative", () => {
    const A = [
      [1, 0],
      [0, 1],
      [1, 1],
    ];
    const b = [2, -1, 1];
    const ls = leastSquares(A, b);
    expect(ls[0]).toBeCloseTo(2, 12);
    expect(ls[1]).toBeCloseTo(-1, 12);
    const { x } = nnls(A, b);
    expect(x[0]).toBeCloseTo(1.5, 12);
    expect(x[1]).toBe(0);
  });

  it("gives zero for an all-negative problem and handles more columns than rows", () => {
    expect(nnls([[1, 2]], [-3]).x).toEqual([0, 0]);
    const { x, residual } = nnls([[1, 1, 1]], [3]);
    expect(x.every((v) => v >= 0)).toBe(true);
    expect(residual).toBeLessThan(1e-12);
  });

  it("rejects rows of different lengths and non-finite input", () => {
    expect(() => nnls([[1, 2], [1]], [1, 2])).toThrow(/rows of different lengths/);
    expect(() => nnls([[Number.NaN]], [1])).toThrow(/non-finite/);
    expect(() => nnls([[1]], [1, 2])).toThrow(/1 rows but 2 targets/);
  });

  test.prop(
    [
      fc.integer({ min: 1, max: 8 }).chain((n) =>
        fc.tuple(
          fc.array(fc.array(fc.double({ min: -10, max: 10, noNaN: true }), { minLength: n, maxLength: n }), {
            minLength: 1,
            maxLength: 12,
          }),
          fc.array(fc.double({ min: -10, max: 10, noNaN: true }), { minLength: 12, maxLength: 12 }),
        ),
      ),
    ],
    { numRuns: 200 },
  )("meets the KKT conditions: x >= 0, A^T(b - Ax) <= 0, and = 0 where x > 0", ([A, b12]) => {
    const b = b12.slice(0, A.length);
    const { x } = nnls(A, b);
    const r = b.map((v, i) => v - mul(A, x)[i]);
    const w = A[0].map((_, j) => A.reduce((s, row, i) => s + row[j] * r[i], 0));
    const scale = 1e-6 * (1 + Math.max(...A.flat().map(Math.abs)) ** 2 * A.length * (1 + Math.max(...x)));
    x.forEach((v, j) => {
      expect(v).toBeGreaterThanOrEqual(0);
      expect(w[j]).toBeLessThanOrEqual(scale);
      if (v > 0) expect(Math.abs(w[j])).toBeLessThanOrEqual(scale);
    });
  });
});

describe("fitCosts", () => {
  // Costs that differ by orders of magnitude, as fork's fixed cost and a PTE write do.
  const truth: Record<string, number> = { fork: 250_000, pte_write: 2, pgfault: 900, page_zero: 400 };
  const sample = (counts: Record<string, number>) => ({
    measuredNs: Object.entries(counts).reduce((t, [e, n]) => t + n * truth[e], 0),
    counts,
  });

  it("recovers ns per event from samples whose sizes span six orders of magnitude", () => {
    const samples = [
      sample({ fork: 1 }),
      sample({ fork: 1, pte_write: 2 * 262_144 }),
      sample({ fork: 1, pte_write: 2 * 16_384 }),
      sample({ pgfault: 1, page_zero: 1, pte_write: 1 }),
      sample({ pgfault: 512, page_zero: 512, pte_write: 512 }),
      sample({ pgfault: 1, page_zero: 512, pte_write: 0 }),
      sample({ pgfault: 128, page_zero: 2048, pte_write: 2048 }),
    ];
    const fit = fitCosts(samples);
    for (const [e, v] of Object.entries(truth)) expect(fit.ns[e]).toBeCloseTo(v, 6);
    expect(fit.rmsRelError).toBeLessThan(1e-9);
    expect(fit.aliased).toEqual([]);
    fit.modeledNs.forEach((m, i) => {
      expect(m).toBeCloseTo(samples[i].measuredNs, 3);
    });
  });

  it("weighs relative error: a one-fault sample is fitted as well as a large one", () => {
    // With absolute error the 1 GiB sample would swamp the single fault; noise of +-5 % on
    // each must leave every relative error near 5 %, not one at 5 % and one at 100 %.
    const samples = [
      { measuredNs: 1.05 * (truth.pgfault + truth.page_zero), counts: { pgfault: 1, page_zero: 1 } },
      {
        measuredNs: 0.95 * 262_144 * (truth.pgfault + 2 * truth.page_zero),
        counts: { pgfault: 262_144, page_zero: 2 * 262_144 },
      },
    ];
    const fit = fitCosts(samples);
    fit.modeledNs.forEach((m, i) => {
      expect(Math.abs(m - samples[i].measuredNs) / samples[i].measuredNs).toBeLessThan(0.06);
    });
  });

  it("gives events seen only in fixed proportion one shared ns per event, and says so", () => {
    const samples = [
      { measuredNs: 3000, counts: { pgfault: 1, folio_alloc: 1, page_zero: 1 } },
      { measuredNs: 6000, counts: { pgfault: 2, folio_alloc: 2, page_zero: 1 } },
      { measuredNs: 1e6, counts: { pgfault: 2, folio_alloc: 2, page_zero: 512 } },
    ];
    const fit = fitCosts(samples);
    expect(fit.aliased).toEqual([["folio_alloc", "pgfault"]]);
    expect(fit.ns.pgfault).toBe(fit.ns.folio_alloc);
    expect(fit.ns.pgfault).toBeGreaterThan(0);
  });

  it("never prices an event below zero, even when the data would have it so", () => {
    // Adding the second event makes the section faster: least squares says it costs < 0.
    const fit = fitCosts([
      { measuredNs: 1000, counts: { syscall: 1 } },
      { measuredNs: 900, counts: { syscall: 1, tlb_flush: 1 } },
      { measuredNs: 5000, counts: { syscall: 1, pte_write: 1000 } },
    ]);
    expect(fit.ns.tlb_flush).toBe(0);
    expect(fit.ns.syscall).toBeGreaterThan(0);
    expect(fit.ns.pte_write).toBeGreaterThan(0);
  });

  it("refuses no samples and non-positive measurements", () => {
    expect(() => fitCosts([])).toThrow(/no samples/);
    expect(() => fitCosts([{ measuredNs: 0, counts: { fork: 1 } }])).toThrow(/not positive/);
  });
});

describe("fitCosts with a prior", () => {
  it("splits two events the samples cannot tell apart as the prior says, and keeps the fit", () => {
    // a and b always come together (2 b per a): the data fixes only 1 x a + 2 x b = 30 ns.
    const samples = [1, 3, 10].map((n) => ({ measuredNs: 30 * n, counts: { a: n, b: 2 * n } }));
    const plain = fitCosts(samples);
    expect(plain.aliased).toEqual([["a", "b"]]);
    const prior = (e: string) => ({ a: 20, b: 5 })[e];
    const f = fitCosts(samples, prior, 0.01);
    // The groups stay aliased (equal ns per event), so the prior's mean decides: 10 and 10.
    expect(f.ns.a + 2 * f.ns.b).toBeCloseTo(30, 0);
    expect(f.rmsRelError).toBeLessThan(0.05);
  });

  it("pulls an event the data barely constrains toward its prior", () => {
    // c appears once in a large sample: without a prior NNLS may put anything there.
    const samples: FitSample[] = [
      { measuredNs: 1000, counts: { a: 100 } },
      { measuredNs: 2000, counts: { a: 200 } },
      { measuredNs: 100_050, counts: { a: 10_000, c: 1 } },
    ];
    const f = fitCosts(samples, (e) => ({ a: 10, c: 50 })[e], 0.01);
    expect(f.ns.a).toBeCloseTo(10, 1);
    expect(f.ns.c).toBeGreaterThan(10);
    expect(f.ns.c).toBeLessThan(200);
  });
});

describe("fitCosts with fixed events", () => {
  it("takes a fixed event's prior time off each sample and fits the rest", () => {
    // 10 ns per a (fixed), 50 ns per b: the fit must find b = 50 exactly.
    const samples: FitSample[] = [1, 2, 5].map((n) => ({ measuredNs: 60 * n, counts: { a: n, b: n } }));
    const f = fitCosts(samples, (e) => ({ a: 10, b: 1 })[e], 0, new Set(["a"]));
    expect(f.ns.a).toBe(10);
    expect(f.ns.b).toBeCloseTo(50, 6);
    expect(f.rmsRelError).toBeLessThan(1e-9);
  });
});
