import { describe, expect, it } from "vitest";
import { Kernel } from "../mm/kernel.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../uapi.ts";
import { compareSnapshots, mergeDifferences, sharing } from "./compare.ts";
import { modelState, type PageState, type ProcessState, parseKernelDump, type Snapshot } from "./state.ts";

const page = (frame: number, tag: number, more: Partial<PageState> = {}): PageState => ({
  mapped: "page",
  tag,
  frame,
  exclusive: false,
  order: 0,
  index: 0,
  mapcount: 2,
  ...more,
});

const proc = (name: string, pages: [number, PageState][]): ProcessState => ({
  name,
  vmas: [{ start: 0x1000, end: 0x9000, perms: "rw-p" }],
  pages: new Map(pages),
  counters: { RssAnon: 8, VmPTE: 4, AnonHugePages: 0, LazyFree: 0 },
});

const snap = (...ps: ProcessState[]): Snapshot => new Map(ps.map((p) => [p.name, p]));

describe("sharing", () => {
  it("names the other (process, page) pairs of a frame relative to the page", () => {
    const s = sharing(snap(proc("a", [[0x1000, page(7, 1)]]), proc("b", [[0x3000, page(7, 1)]])));
    expect(s.get("a")?.get(0x1000)).toBe("b@+8KiB");
    expect(s.get("b")?.get(0x3000)).toBe("a@-8KiB");
  });

  it("compares partitions, not frame numbers", () => {
    // The same partition with different frame numbers on each side: no difference.
    const v = snap(proc("a", [[0x1000, page(7, 1)]]), proc("b", [[0x1000, page(7, 1)]]));
    const k = snap(proc("a", [[0x1000, page(99, 1)]]), proc("b", [[0x1000, page(99, 1)]]));
    expect(compareSnapshots(v, k).pages).toEqual([]);
    // b has its own copy in the kernel: both pages differ in "shares" (and mapcount).
    const k2 = snap(proc("a", [[0x1000, page(99, 1)]]), proc("b", [[0x1000, page(98, 1)]]));
    const d = compareSnapshots(v, k2).pages.filter((x) => x.field === "shares");
    expect(d.map((x) => [x.process, x.vmlab, x.kernel])).toEqual([
      ["a", "b", "alone"],
      ["b", "a", "alone"],
    ]);
  });
});

describe("compareSnapshots", () => {
  it("reports a page mapped on one side only, and the fields of pages mapped on both", () => {
    const v = snap(
      proc("a", [
        [0x1000, page(1, 5, { order: 2, index: 1 })],
        [0x2000, page(2, 6)],
      ]),
    );
    const k = snap(proc("a", [[0x1000, page(1, 9, { order: 0 })]]));
    const d = compareSnapshots(v, k).pages.map((x) => [x.addr, x.field, x.vmlab, x.kernel]);
    expect(d).toEqual([
      [0x1000, "content", 5, 9],
      [0x1000, "folio", "order 2 page 1", "order 0"],
      [0x2000, "present", "page", "none"],
    ]);
  });

  it("reports counters and VMAs per process", () => {
    const v = snap(proc("a", []));
    const k = snap({ ...proc("a", []), vmas: [], counters: { ...proc("a", []).counters, VmPTE: 8 } });
    expect(compareSnapshots(v, k).processes.map((x) => [x.field, x.vmlab, x.kernel])).toEqual([
      ["vmas", "0x1000-0x9000 rw-p", "(the same)"],
      ["VmPTE", "4 kB", "8 kB"],
    ]);
  });
});

describe("mergeDifferences", () => {
  const d = (addr: number, field: "content" | "folio", vmlab: string | number, kernel: string | number) => ({
    process: "a",
    field,
    addr,
    vmlab,
    kernel,
  });

  it("merges neighbouring pages whose values repeat or count up on each side", () => {
    const merged = mergeDifferences([
      d(0x1000, "content", 10, 0),
      d(0x2000, "content", 11, 0),
      d(0x3000, "content", 12, 0),
      d(0x5000, "content", 13, 0), // not a neighbour
      d(0x1000, "folio", "order 4", "order 0"),
      d(0x2000, "folio", "order 4", "order 0"),
    ]);
    expect(merged.map((m) => [m.field, m.addr, m.pages, m.vmlab, m.kernel])).toEqual([
      ["content", 0x1000, 3, "10..12", "0"],
      ["content", 0x5000, 1, "13", "0"],
      ["folio", 0x1000, 2, "order 4", "order 0"],
    ]);
  });

  it("does not merge values that break the pattern", () => {
    const merged = mergeDifferences([
      d(0x1000, "content", 10, 0),
      d(0x2000, "content", 11, 0),
      d(0x3000, "content", 20, 0),
    ]);
    expect(merged.map((m) => m.pages)).toEqual([2, 1]);
  });
});

describe("state", () => {
  it("modelState gives vmlab's pages in the kernel dump's form, VmPTE from a table walk", () => {
    const k = new Kernel({ ramBytes: 64 * 2 ** 20 });
    const a = k.createProcess();
    const buf = k.mmap(a, 0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    k.write(a, buf, 4096);
    const b = k.fork(a);
    const s = modelState(
      k,
      new Map([
        ["a", a],
        ["b", b],
      ]),
    );
    const pa = s.get("a")?.pages.get(buf);
    expect(pa).toMatchObject({ mapped: "page", mapcount: 2, exclusive: false, order: 0 });
    expect(s.get("b")?.pages.get(buf)?.frame).toBe(pa?.frame);
    expect(s.get("a")?.pages.has(buf + 4096)).toBe(false);
    expect(s.get("a")?.counters).toEqual({ RssAnon: 4, VmPTE: 12, AnonHugePages: 0, LazyFree: 0 });
  });

  it("parseKernelDump reads pagemap, kpageflags and the helper's baseline", () => {
    const present = (1n << 63n) | (1n << 56n) | 0x1234n;
    const lines = [
      "status 140 40",
      "baseline 100 2 1 1",
      "btables 3ffffffff 2aaaa",
      "bpmds 1ffff",
      "bpuds ff",
      "vma 7ffff7c00000 7ffff7e00000 rw-p 2048 2048 2048 0",
      `p 7ffff7c00000 ${present.toString(16)} ${(1 << 15).toString(16)} 1 9 0 2a`,
      `p 7ffff7c01000 ${(1n << 63n).toString(16)} ${((1 << 24) | (1 << 22)).toString(16)} 1 9 0 0`,
      `p 7ffff7c02000 ${(1n << 62n).toString(16)} - - - - -`,
    ];
    const { state, base } = parseKernelDump("a", lines);
    expect(state.counters).toEqual({ RssAnon: 40, VmPTE: 24, AnonHugePages: 2048, LazyFree: 0 });
    expect(base.pte.size).toBe(2);
    expect(state.pages.get(0x7ffff7c00000)).toEqual({
      mapped: "page",
      tag: 42,
      frame: 0x1234,
      exclusive: true,
      order: 9,
      index: 0,
      mapcount: 1,
    });
    expect(state.pages.get(0x7ffff7c01000)?.mapped).toBe("huge zero");
    expect(state.pages.get(0x7ffff7c02000)?.mapped).toBe("swap");
    expect(() => parseKernelDump("a", ["nonsense"])).toThrow(/parseKernelDump/);
  });
});
