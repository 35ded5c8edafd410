import { afterEach, describe, expect, it, vi } from "vitest";
import { Kernel } from "../mm/kernel.ts";
import { MADV_FREE, PAGE_SIZE } from "../uapi.ts";
import { LIVE_FOLIOS } from "./live.ts";
import { bootForFolio, FOLIO_ORDER, modelWorkload } from "./model.ts";

/** The counts of a workload vmlab runs (fails the test for an unsupported one). */
function counts(...args: Parameters<typeof modelWorkload>): Record<string, number> {
  const r = modelWorkload(...args);
  if ("unsupported" in r) throw new Error(r.unsupported);
  return r.counts;
}

describe("calibration workloads in vmlab", () => {
  it("boot with batched fork and only the asked folio size enabled", () => {
    const k = bootForFolio("64k", 16);
    expect(k.forkPtCopy).toBe("batched");
    expect(k.machine.config.thp.enabled).toBe("never");
    expect(k.machine.hugeAnonOrdersAlways).toBe(1 << 4);
    expect(bootForFolio("4k", 16).machine.hugeAnonOrdersAlways).toBe(0);
    expect(bootForFolio("pte-mapped-thp", 16).machine.hugeAnonOrdersAlways).toBe(1 << 9);
  });

  it("count fork of 4 KiB pages: every PTE write-protected in the parent and set in the child", () => {
    const c = counts("fork", "4k", 2);
    expect(c.fork).toBe(1);
    expect(c.syscall).toBe(1);
    expect(c.pte_write).toBe(2 * 512);
    expect(c.pgfault ?? 0).toBe(0); // the populate is outside the timed section
  });

  it("count fork of PMD THPs as PMD copies, and of PTE-mapped THPs as PTE copies", () => {
    const pmd = counts("fork", "pmd", 4);
    expect(pmd.pmd_write).toBe(2 * 2);
    expect(pmd.pte_write ?? 0).toBe(0);
    const pte = counts("fork", "pte-mapped-thp", 4);
    expect(pte.pte_write).toBe(2 * 1024);
    expect(pte.pmd_write ?? 0).toBe(0);
  });

  it("count fork's fixed cost on an empty address space", () => {
    const c = counts("fork", "4k", 0);
    expect(c.fork).toBe(1);
    expect(c.pte_write ?? 0).toBe(0);
  });

  it("count anon faults once per folio of the asked size", () => {
    expect(counts("anon_fault", "4k", 2).pgfault).toBe(512);
    const c = counts("anon_fault", "16k", 2);
    expect(c.pgfault).toBe(128);
    expect(c["hugepages-16kB/anon_fault_alloc"]).toBe(128);
    expect(c.page_zero).toBe(512);
    expect(counts("anon_fault", "pmd", 2).thp_fault_alloc).toBe(1);
  });

  it("count the child's COW faults: one page copy per page written, a PMD split per THP", () => {
    const c = counts("cow_fault", "4k", 2);
    expect(c.pgfault).toBe(512);
    expect(c.page_copy).toBe(512);
    const pmd = counts("cow_fault", "pmd", 2);
    expect(pmd.thp_split_pmd).toBe(1);
    expect(pmd.page_copy).toBe(512);
  });

  it("count munmap of the populated range, folio by folio", () => {
    expect(counts("munmap", "4k", 2).folio_free).toBe(512);
    expect(counts("munmap", "64k", 2).folio_free).toBe(32);
    expect(counts("munmap", "pmd", 2).folio_free).toBe(1);
  });

  it("refuse anon_fault of PTE-mapped THPs, as the live side does, and count MADV_DONTNEED", () => {
    expect(modelWorkload("anon_fault", "pte-mapped-thp", 2)).toEqual({
      unsupported: "not applicable: the first touch decides the mapping",
    });
    const d = modelWorkload("dontneed", "4k", 2);
    if ("unsupported" in d) throw new Error(d.unsupported);
    // 512 PTEs cleared and, under CONFIG_PT_RECLAIM, the emptied table freed.
    expect([d.counts.pte_write, d.counts.pgtable_free]).toEqual([512, 1]);
  });

  it("reject sizes the live side rejects", () => {
    expect(() => modelWorkload("munmap", "4k", 0)).toThrow(/bad size 0 MiB/);
    expect(() => modelWorkload("fork", "pmd", 3)).toThrow(/needs an even size/);
  });

  it("populate every anon mTHP size with folios of that size only", () => {
    expect(Object.keys(FOLIO_ORDER)).toEqual([...LIVE_FOLIOS]);
    for (const folio of ["32k", "128k", "256k", "512k", "1m"] as const) {
      const order = FOLIO_ORDER[folio] as number;
      expect(bootForFolio(folio, 2).machine.hugeAnonOrdersAlways).toBe(1 << order);
      // prepare checks the per-size alloc counter; munmap frees one folio per folio.
      expect(counts("munmap", folio, 2).folio_free).toBe(512 >> order);
    }
  });
});

describe("MADV_FREE workloads in vmlab", () => {
  afterEach(() => vi.restoreAllMocks());

  it("are unsupported while madvise has no MADV_FREE, and counted once it has", () => {
    for (const workload of ["madv_free", "madv_free_split"] as const) {
      const r = modelWorkload(workload, "16k", 2);
      if ("unsupported" in r) expect(r.unsupported).toBe("vmlab does not model MADV_FREE yet");
      else expect(r.counts.syscall).toBe(workload === "madv_free" ? 1 : 128);
    }
  });

  it("advise the whole range once, or the first page of every folio, as microbench does", () => {
    const calls: [number, number, number][] = [];
    const real = Kernel.prototype.madvise;
    vi.spyOn(Kernel.prototype, "madvise").mockImplementation(function (this: Kernel, pid, addr, len, advice) {
      if (advice !== MADV_FREE) return real.call(this, pid, addr, len, advice);
      calls.push([addr, len, advice]);
      return 0;
    });
    expect(modelWorkload("madv_free", "64k", 2)).toHaveProperty("counts");
    expect(calls).toHaveLength(1);
    expect(calls[0][1]).toBe(2 << 20);
    expect(calls[0][0] % (2 << 20)).toBe(0);
    for (const [folio, n] of [
      ["4k", 512],
      ["16k", 128],
      ["1m", 2],
      ["pmd", 1],
    ] as const) {
      calls.length = 0;
      expect(modelWorkload("madv_free_split", folio, 2)).toHaveProperty("counts");
      expect(calls).toHaveLength(n);
      const stride = PAGE_SIZE << (FOLIO_ORDER[folio] ?? 0);
      expect(calls.every(([addr, len], i) => len === PAGE_SIZE && addr === calls[0][0] + i * stride)).toBe(
        true,
      );
    }
  });

  it("stop at the first error: -EINVAL is unsupported, anything else a bug", () => {
    const spy = vi.spyOn(Kernel.prototype, "madvise").mockReturnValue(-22);
    expect(modelWorkload("madv_free_split", "16k", 2)).toEqual({
      unsupported: "vmlab does not model MADV_FREE yet",
    });
    expect(spy).toHaveBeenCalledTimes(1);
    spy.mockReturnValue(-12);
    expect(() => modelWorkload("madv_free", "16k", 2)).toThrow(/madvise\(MADV_FREE\) returned -12/);
  });
});
