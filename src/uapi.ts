// The user-space ABI vmlab's syscalls speak: the constants of <sys/mman.h> and <errno.h>
// with Linux x86-64 values, so that scenarios and tests read like C.
//
// Syscalls return a number as the kernel's syscall ABI does: a value in [-4095, -1] is -errno,
// anything else is the result (an address for mmap, 0 for the others).

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PMD_SHIFT = 21;
export const PMD_SIZE = 2 * 1024 * 1024;
export const PUD_SIZE = 1024 * 1024 * 1024;
/** Highest user address + 1 on x86-64 with 4-level paging: (1 << 47) - PAGE_SIZE. */
export const TASK_SIZE = 2 ** 47 - PAGE_SIZE;

export const PROT_NONE = 0x0;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const PROT_EXEC = 0x4;
export const PROT_SEM = 0x8;
export const PROT_GROWSDOWN = 0x01000000;
export const PROT_GROWSUP = 0x02000000;

export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_SHARED_VALIDATE = 0x03;
export const MAP_TYPE = 0x0f;
export const MAP_FIXED = 0x10;
export const MAP_GROWSDOWN = 0x0100;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_FIXED_NOREPLACE = 0x100000;

export const MREMAP_MAYMOVE = 1;
export const MREMAP_FIXED = 2;
export const MREMAP_DONTUNMAP = 4;

export const MADV_NORMAL = 0;
export const MADV_DONTNEED = 4;
export const MADV_FREE = 8;
export const MADV_COLD = 20;
export const MADV_PAGEOUT = 21;
export const MADV_POPULATE_READ = 22;
export const MADV_POPULATE_WRITE = 23;
export const MADV_DONTFORK = 10;
export const MADV_DOFORK = 11;
export const MADV_WIPEONFORK = 18;
export const MADV_KEEPONFORK = 19;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;

export const EPERM = 1;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EACCES = 13;
export const EFAULT = 14;
export const EBUSY = 16;
export const EEXIST = 17;
export const EINVAL = 22;
export const EOVERFLOW = 75;
export const EOPNOTSUPP = 95;

export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  [EPERM]: "EPERM",
  [EAGAIN]: "EAGAIN",
  [ENOMEM]: "ENOMEM",
  [EACCES]: "EACCES",
  [EFAULT]: "EFAULT",
  [EBUSY]: "EBUSY",
  [EEXIST]: "EEXIST",
  [EINVAL]: "EINVAL",
  [EOVERFLOW]: "EOVERFLOW",
  [EOPNOTSUPP]: "EOPNOTSUPP",
};

/** True when a syscall return value encodes an error (IS_ERR_VALUE). */
export function isErr(ret: number): boolean {
  return ret < 0 && ret >= -4095;
}

/** 2^64: syscall lengths and addresses are unsigned longs and wrap there. */
export const U64 = 2 ** 64;

/** PAGE_ALIGN on an unsigned long: rounds up, wrapping to 0 past 2^64 - PAGE_SIZE. */
export function pageAlignU64(x: number): number {
  const r = Math.ceil(x / PAGE_SIZE) * PAGE_SIZE;
  return r >= U64 ? r - U64 : r;
}

/** a + b on unsigned longs (wrapping at 2^64). */
export function addU64(a: number, b: number): number {
  const r = a + b;
  return r >= U64 ? r - U64 : r;
}
