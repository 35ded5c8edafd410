// The shmem object behind MAP_SHARED|MAP_ANONYMOUS (shmem_zero_setup): an unlinked tmpfs file
// with its own page cache. Mappings share its folios; the page cache holds one reference each.
//
// Differs from Linux: shmem folios are order 0 only (Linux's default shmem_enabled=never gives
// the same), and there is no swap.

import { PG_lru, PG_shmem, PG_swapbacked, PG_unevictable } from "../phys/memmap.ts";
import type { Machine } from "./machine.ts";

export class ShmemObject {
  /** Page cache: page index -> pfn. Invariant: each pfn has refcount 1 + its mapcount. */
  readonly pages = new Map<number, number>();
  /** Number of VMAs referring to this object (the file's f_count as seen by mappings). */
  users = 0;
  constructor(
    readonly id: number,
    /** Size in pages (i_size): the length of the mapping that created it. */
    readonly size: number,
  ) {}
}

/**
 * shmem_get_folio(SGP_CACHE): the folio at `index`, allocating and zeroing one on a hole.
 * Returns the pfn, or -1 when no memory is left (the caller returns VM_FAULT_OOM).
 */
export function shmemGetFolio(m: Machine, obj: ShmemObject, index: number): number {
  const cached = obj.pages.get(index);
  if (cached !== undefined) return cached;
  // Differs from Linux: shmem folios are unevictable here (vmlab has no shmem swap-out).
  const pfn = m.allocFolio(0, PG_swapbacked | PG_shmem | PG_lru | PG_unevictable);
  if (pfn < 0) return -1;
  obj.pages.set(index, pfn);
  return pfn;
}

/** Drops one VMA's reference; the last one truncates the page cache and frees its folios. */
export function shmemPut(m: Machine, obj: ShmemObject): void {
  if (--obj.users > 0) return;
  if (obj.users < 0) throw new Error(`shmemPut: object ${obj.id} has no users`);
  for (const pfn of obj.pages.values()) {
    if (m.memmap.mapcount(pfn) !== 0) throw new Error(`shmemPut: truncating mapped pfn ${pfn}`);
    // Truncation takes the folio out of the page cache; a pin or pipe may keep it alive.
    m.memmap.clear(pfn, PG_shmem);
    m.folioPut(pfn);
  }
  obj.pages.clear();
  m.shmemObjects.delete(obj.id);
}
