// calibrate/microbench.c: times mm operations on the live kernel, for `vmlab calibrate`.
//
//   microbench WORKLOAD SIZE_MIB REPS [OPTIONS]
//
//   WORKLOAD   fork | munmap | anon_fault | cow_fault | dontneed | madv_free | madv_free_split
//   SIZE_MIB   size of the private anonymous mapping, MiB (0 is allowed for fork: the fixed cost)
//   REPS       repetitions; each one maps, populates and unmaps a fresh 2 MiB-aligned range
//   OPTIONS    comma-separated: "hugepage" (MADV_HUGEPAGE on the range),
//              "pte-mapped" (populate, then split every PMD mapping before timing),
//              "folio=KIB" (madv_free_split: the chunk, one madvise per KIB KiB; default 4)
//
// madv_free times one madvise(MADV_FREE) of the whole populated range. madv_free_split times
// MADV_FREE of the first 4 KiB page of every folio-sized chunk, one call per chunk: on Linux 6.18
// a large folio only partly covered is split at once (madvise_free_pte_range -> split_folio; a
// PMD THP in madvise_free_huge_pmd -> split_folio). Both record the system-wide split counters
// over the timed step (thp_split_page counts PMD-order folios only; the per-size mTHP `split`
// stat counts every order), so a sample shows whether the splits happened.
//
// Prints one JSON object per repetition on stdout. Times are CLOCK_MONOTONIC ns of the timed
// section only; everything else (populate, layout checks, waitpid) is outside it. The folio size
// is not chosen here: the caller sets the THP sysfs knobs first (src/calibrate/knobs.ts) and then
// checks the layout this program reports (`folios`, `anonHugeKiB`, `mthpAllocDelta`).
//
// Exit status: 0 done, 1 a system call failed, 2 bad command line.
// Build: cc -O2 -o microbench microbench.c   (run as root: /proc/kpageflags needs it)

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096UL
#define PMD_SIZE (2UL << 20)
#define PMD_PAGES (PMD_SIZE / PAGE_SIZE)
#define MAX_ORDER_SEEN 9 /* PMD order on x86-64 */
#define MAX_MTHP 16

/* /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h). */
#define KPF_COMPOUND_HEAD 15
#define KPF_COMPOUND_TAIL 16
#define KPF_THP 22

enum workload {
	W_FORK,
	W_MUNMAP,
	W_ANON_FAULT,
	W_COW_FAULT,
	W_DONTNEED,
	W_MADV_FREE,
	W_MADV_FREE_SPLIT,
};
static const char *const workload_names[] = { "fork",     "munmap",    "anon_fault",     "cow_fault",
					      "dontneed", "madv_free", "madv_free_split" };

static int opt_hugepage;
static int opt_pte_mapped;
static long opt_folio_kib = 4;

static void die(const char *what)
{
	fprintf(stderr, "microbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(const char *why)
{
	fprintf(stderr,
		"microbench: %s\n"
		"usage: microbench fork|munmap|anon_fault|cow_fault|dontneed|madv_free|madv_free_split SIZE_MIB REPS\n"
		"                  [hugepage,pte-mapped,folio=KIB]\n",
		why);
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Minor faults of this process so far: field 10 of /proc/self/stat. */
static long read_minflt(void)
{
	char buf[1024];
	long minflt = -1;
	FILE *f = fopen("/proc/self/stat", "r");

	if (!f)
		die("open /proc/self/stat");
	if (fgets(buf, sizeof(buf), f)) {
		char *p = strrchr(buf, ')'); /* comm may contain spaces */
		if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %ld", &minflt) != 1)
			minflt = -1;
	}
	fclose(f);
	return minflt;
}

/* The value of KEY in a "KEY: N kB" or "KEY N" file, or -1 when absent. */
static long read_keyed(const char *path, const char *key)
{
	char line[256];
	size_t klen = strlen(key);
	long v = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, klen) == 0 && (line[klen] == ':' || line[klen] == ' ')) {
			v = strtol(line + klen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

static long anon_huge_kib(void)
{
	return read_keyed("/proc/self/smaps_rollup", "AnonHugePages");
}

static long split_pmd_count(void)
{
	return read_keyed("/proc/vmstat", "thp_split_pmd");
}

/* Successful splits of PMD-order folios (vmstat counts no other order here). */
static long split_page_count(void)
{
	return read_keyed("/proc/vmstat", "thp_split_page");
}

/* Per-size mTHP stats (system-wide) of the sizes that have anon_fault_alloc, i.e. anon sizes. */
struct mthp_stats {
	int n;
	char name[MAX_MTHP][32]; /* "2048kB" */
	char dir[MAX_MTHP][160]; /* ".../hugepages-2048kB/stats/" */
};

static void mthp_stats_init(struct mthp_stats *s)
{
	glob_t g;

	s->n = 0;
	if (glob("/sys/kernel/mm/transparent_hugepage/hugepages-*/stats/anon_fault_alloc", 0, NULL, &g) != 0)
		return;
	for (size_t i = 0; i < g.gl_pathc && s->n < MAX_MTHP; i++) {
		const char *p = strstr(g.gl_pathv[i], "hugepages-");
		const char *end = p ? strchr(p, '/') : NULL;

		if (!p || !end || (size_t)(end - p - 10) >= sizeof(s->name[0]))
			continue;
		snprintf(s->name[s->n], sizeof(s->name[0]), "%.*s", (int)(end - p - 10), p + 10);
		snprintf(s->dir[s->n], sizeof(s->dir[0]), "%.*s",
			 (int)(strrchr(g.gl_pathv[i], '/') + 1 - g.gl_pathv[i]), g.gl_pathv[i]);
		s->n++;
	}
	globfree(&g);
}

/* One stat ("anon_fault_alloc", "split") of every size; -1 where unreadable. */
static void mthp_stats_read(struct mthp_stats *s, const char *stat, long *out)
{
	for (int i = 0; i < s->n; i++) {
		char path[200];
		FILE *f;

		snprintf(path, sizeof(path), "%s%s", s->dir[i], stat);
		f = fopen(path, "r");

		out[i] = -1;
		if (f) {
			if (fscanf(f, "%ld", &out[i]) != 1)
				out[i] = -1;
			fclose(f);
		}
	}
}

/*
 * Folio layout of [addr, addr + size): pages by the size of the folio that maps them, from
 * /proc/self/pagemap and /proc/kpageflags. A folio is a COMPOUND_HEAD page followed by
 * COMPOUND_TAIL pages at consecutive pfns. Works in PMD-sized chunks: no folio here crosses a
 * 2 MiB-aligned boundary, because anonymous large folios are naturally aligned.
 */
struct layout {
	int ok;                             /* 0: pagemap or kpageflags unreadable */
	long by_order[MAX_ORDER_SEEN + 1];  /* pages in folios of 4 KiB << order */
	long other;                         /* pages in folios of any other shape */
	long absent;                        /* pages not present */
};

static int pagemap_fd = -1, kpageflags_fd = -1;

static void layout_read(char *addr, size_t size, struct layout *lo)
{
	uint64_t pm[PMD_PAGES], fl[PMD_PAGES];

	memset(lo, 0, sizeof(*lo));
	if (pagemap_fd < 0 || kpageflags_fd < 0)
		return;
	for (size_t off = 0; off < size; off += PMD_SIZE) {
		size_t n = (size - off) / PAGE_SIZE < PMD_PAGES ? (size - off) / PAGE_SIZE : PMD_PAGES;
		off_t at = (off_t)((uintptr_t)(addr + off) / PAGE_SIZE * 8);

		if (pread(pagemap_fd, pm, n * 8, at) != (ssize_t)(n * 8))
			return;
		/* kpageflags, one pread per run of consecutive pfns */
		for (size_t i = 0; i < n;) {
			size_t j = i + 1;
			uint64_t pfn = pm[i] & ((1ULL << 55) - 1);

			if (!(pm[i] >> 63)) {
				fl[i++] = 0;
				continue;
			}
			while (j < n && (pm[j] >> 63) && (pm[j] & ((1ULL << 55) - 1)) == pfn + (j - i))
				j++;
			if (pread(kpageflags_fd, fl + i, (j - i) * 8, (off_t)(pfn * 8)) != (ssize_t)((j - i) * 8))
				return;
			i = j;
		}
		for (size_t i = 0; i < n;) {
			if (!(pm[i] >> 63)) {
				lo->absent++;
				i++;
			} else if (fl[i] & (1ULL << KPF_COMPOUND_HEAD)) {
				size_t j = i + 1;
				uint64_t pfn = pm[i] & ((1ULL << 55) - 1);
				long cnt;
				int order = 0;

				while (j < n && (pm[j] >> 63) && (pm[j] & ((1ULL << 55) - 1)) == pfn + (j - i) &&
				       (fl[j] & (1ULL << KPF_COMPOUND_TAIL)) && !(fl[j] & (1ULL << KPF_COMPOUND_HEAD)))
					j++;
				cnt = (long)(j - i);
				while ((1L << order) < cnt)
					order++;
				if ((1L << order) == cnt && order <= MAX_ORDER_SEEN && (fl[i] & (1ULL << KPF_THP)))
					lo->by_order[order] += cnt;
				else
					lo->other += cnt;
				i = j;
			} else if (fl[i] & (1ULL << KPF_COMPOUND_TAIL)) {
				lo->other++; /* a tail whose head lies outside the range */
				i++;
			} else {
				lo->by_order[0]++;
				i++;
			}
		}
	}
	lo->ok = 1;
}

/* A fresh private anonymous mapping of SIZE bytes, aligned to 2 MiB. */
static char *map_aligned(size_t size)
{
	char *raw, *p;
	size_t head;

	raw = mmap(NULL, size + PMD_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		die("mmap");
	p = (char *)(((uintptr_t)raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1));
	head = (size_t)(p - raw);
	if (head && munmap(raw, head))
		die("munmap head");
	if (PMD_SIZE - head && munmap(p + size, PMD_SIZE - head))
		die("munmap tail");
	if (opt_hugepage && madvise(p, size, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)");
	return p;
}

/* Write one byte in every page: the first touch allocates the folios. */
static void touch(char *p, size_t size)
{
	for (size_t off = 0; off < size; off += PAGE_SIZE)
		((volatile char *)p)[off] = 1;
}

/*
 * Split every PMD mapping in the range into PTEs and keep the folios whole: changing the
 * protection of one 4 KiB page splits the PMD, and restoring it merges the VMAs back.
 */
static void split_pmd_mappings(char *p, size_t size)
{
	for (size_t off = 0; off < size; off += PMD_SIZE) {
		if (mprotect(p + off, PAGE_SIZE, PROT_READ))
			die("mprotect(PROT_READ)");
		if (mprotect(p + off, PAGE_SIZE, PROT_READ | PROT_WRITE))
			die("mprotect(PROT_READ|PROT_WRITE)");
	}
}

struct sample {
	uint64_t ns;
	long faults;         /* minor faults in the timed section, -1 when not counted */
	long anon_huge_kib;  /* AnonHugePages before the timed section (after it, for anon_fault) */
	long split_pmd;      /* thp_split_pmd delta of the pte-mapped step */
	struct layout lo;
	long alloc_before[MAX_MTHP], alloc_after[MAX_MTHP];
	/* madv_free workloads: split counters over the timed step, and the madvise calls in it */
	int has_splits;
	long timed_split_pmd, split_page;
	long split_before[MAX_MTHP], split_after[MAX_MTHP];
	long failed_before[MAX_MTHP], failed_after[MAX_MTHP];
	long calls;
};

static struct mthp_stats mthp;

/* Populates a fresh mapping and records the layout the timed section will see. */
static char *prepare(size_t size, struct sample *s)
{
	char *p = map_aligned(size);
	long split0;

	mthp_stats_read(&mthp, "anon_fault_alloc", s->alloc_before);
	touch(p, size);
	mthp_stats_read(&mthp, "anon_fault_alloc", s->alloc_after);
	split0 = split_pmd_count();
	if (opt_pte_mapped)
		split_pmd_mappings(p, size);
	s->split_pmd = split_pmd_count() - split0;
	s->anon_huge_kib = anon_huge_kib();
	layout_read(p, size, &s->lo);
	return p;
}

static void run_fork(size_t size, struct sample *s)
{
	char *p = size ? prepare(size, s) : NULL;
	uint64_t t0, t1;
	pid_t pid;

	t0 = now_ns();
	pid = fork();
	t1 = now_ns();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		_exit(0);
	if (waitpid(pid, NULL, 0) < 0)
		die("waitpid");
	s->ns = t1 - t0;
	if (p && munmap(p, size))
		die("munmap");
}

static void run_munmap(size_t size, struct sample *s)
{
	char *p = prepare(size, s);
	uint64_t t0 = now_ns();

	if (munmap(p, size))
		die("munmap");
	s->ns = now_ns() - t0;
}

static void run_dontneed(size_t size, struct sample *s)
{
	char *p = prepare(size, s);
	uint64_t t0 = now_ns();

	if (madvise(p, size, MADV_DONTNEED))
		die("madvise(MADV_DONTNEED)");
	s->ns = now_ns() - t0;
	if (munmap(p, size))
		die("munmap");
}

/*
 * MADV_FREE of the populated range: one call over all of it (madv_free), or one call on the first
 * page of every opt_folio_kib chunk (madv_free_split), with the split counters read around it.
 */
static void run_madv_free(size_t size, int split, struct sample *s)
{
	char *p = prepare(size, s);
	size_t step = (size_t)opt_folio_kib << 10;
	long pmd0, page0;
	uint64_t t0, t1;

	s->has_splits = 1;
	mthp_stats_read(&mthp, "split", s->split_before);
	mthp_stats_read(&mthp, "split_failed", s->failed_before);
	pmd0 = split_pmd_count();
	page0 = split_page_count();
	t0 = now_ns();
	if (!split) {
		if (madvise(p, size, MADV_FREE))
			die("madvise(MADV_FREE)");
		s->calls = 1;
	} else {
		for (size_t off = 0; off < size; off += step)
			if (madvise(p + off, PAGE_SIZE, MADV_FREE))
				die("madvise(MADV_FREE) of one page");
		s->calls = (long)(size / step);
	}
	t1 = now_ns();
	s->timed_split_pmd = split_pmd_count() - pmd0;
	s->split_page = split_page_count() - page0;
	mthp_stats_read(&mthp, "split", s->split_after);
	mthp_stats_read(&mthp, "split_failed", s->failed_after);
	s->ns = t1 - t0;
	if (munmap(p, size))
		die("munmap");
}

static void run_anon_fault(size_t size, struct sample *s)
{
	char *p = map_aligned(size);
	long f0, f1;
	uint64_t t0, t1;

	s->split_pmd = 0;
	mthp_stats_read(&mthp, "anon_fault_alloc", s->alloc_before);
	f0 = read_minflt();
	t0 = now_ns();
	touch(p, size);
	t1 = now_ns();
	f1 = read_minflt();
	mthp_stats_read(&mthp, "anon_fault_alloc", s->alloc_after);
	s->ns = t1 - t0;
	s->faults = f0 >= 0 && f1 >= 0 ? f1 - f0 : -1;
	s->anon_huge_kib = anon_huge_kib();
	layout_read(p, size, &s->lo);
	if (munmap(p, size))
		die("munmap");
}

/* The child times its write to every page (one COW fault each) and reports over a pipe. */
static void run_cow_fault(size_t size, struct sample *s)
{
	char *p = prepare(size, s);
	int fd[2];
	pid_t pid;
	struct {
		uint64_t ns;
		long faults;
	} r;

	if (pipe(fd))
		die("pipe");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		long f0, f1;
		uint64_t t0, t1;

		close(fd[0]);
		f0 = read_minflt();
		t0 = now_ns();
		for (size_t off = 0; off < size; off += PAGE_SIZE)
			((volatile char *)p)[off] = 2;
		t1 = now_ns();
		f1 = read_minflt();
		r.ns = t1 - t0;
		r.faults = f0 >= 0 && f1 >= 0 ? f1 - f0 : -1;
		_exit(write(fd[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
	}
	close(fd[1]);
	if (read(fd[0], &r, sizeof(r)) != (ssize_t)sizeof(r)) {
		errno = EPIPE;
		die("read from the child");
	}
	close(fd[0]);
	if (waitpid(pid, NULL, 0) < 0)
		die("waitpid");
	s->ns = r.ns;
	s->faults = r.faults;
	if (munmap(p, size))
		die("munmap");
}

/* ,"KEY":{"16kB":N,...}: after - before of each mTHP size where both were read. */
static void print_deltas(const char *key, const long *before, const long *after)
{
	printf(",\"%s\":{", key);
	for (int i = 0, first = 1; i < mthp.n; i++) {
		if (before[i] < 0 || after[i] < 0)
			continue;
		printf("%s\"%s\":%ld", first ? "" : ",", mthp.name[i], after[i] - before[i]);
		first = 0;
	}
	printf("}");
}

static void print_sample(enum workload w, long size_mib, int rep, const struct sample *s)
{
	long pages = size_mib * (long)(1UL << 20) / (long)PAGE_SIZE;

	printf("{\"workload\":\"%s\",\"sizeMiB\":%ld,\"rep\":%d,\"pteMapped\":%s,\"hugepageAdvice\":%s,"
	       "\"ns\":%llu,\"pages\":%ld",
	       workload_names[w], size_mib, rep, opt_pte_mapped ? "true" : "false",
	       opt_hugepage ? "true" : "false", (unsigned long long)s->ns, pages);
	if (size_mib > 0)
		printf(",\"nsPerGiB\":%.1f,\"nsPerPage\":%.2f", (double)s->ns * 1024.0 / (double)size_mib,
		       (double)s->ns / (double)pages);
	else
		printf(",\"nsPerGiB\":null,\"nsPerPage\":null");
	if (s->faults >= 0)
		printf(",\"faults\":%ld,\"nsPerFault\":%.2f", s->faults,
		       s->faults ? (double)s->ns / (double)s->faults : 0.0);
	else
		printf(",\"faults\":null,\"nsPerFault\":null");
	printf(",\"anonHugeKiB\":%ld,\"splitPmdDelta\":%ld", s->anon_huge_kib, s->split_pmd);
	if (s->lo.ok) {
		printf(",\"folios\":{");
		int first = 1;
		for (int o = 0; o <= MAX_ORDER_SEEN; o++) {
			if (s->lo.by_order[o]) {
				printf("%s\"%lu\":%ld", first ? "" : ",", (PAGE_SIZE >> 10) << o, s->lo.by_order[o]);
				first = 0;
			}
		}
		printf("},\"otherFolioPages\":%ld,\"absentPages\":%ld", s->lo.other, s->lo.absent);
	} else {
		printf(",\"folios\":null,\"otherFolioPages\":null,\"absentPages\":null");
	}
	printf(",\"mthpAllocDelta\":{");
	for (int i = 0, first = 1; i < mthp.n; i++) {
		if (s->alloc_before[i] < 0 || s->alloc_after[i] < 0)
			continue;
		printf("%s\"%s\":%ld", first ? "" : ",", mthp.name[i], s->alloc_after[i] - s->alloc_before[i]);
		first = 0;
	}
	printf("}");
	if (s->has_splits) {
		printf(",\"madviseCalls\":%ld,\"nsPerCall\":%.2f", s->calls, (double)s->ns / (double)s->calls);
		if (w == W_MADV_FREE_SPLIT)
			printf(",\"chunkKiB\":%ld", opt_folio_kib);
		printf(",\"timedSplitPmdDelta\":%ld,\"splitPageDelta\":%ld", s->timed_split_pmd, s->split_page);
		print_deltas("mthpSplitDelta", s->split_before, s->split_after);
		print_deltas("mthpSplitFailedDelta", s->failed_before, s->failed_after);
	}
	printf("}\n");
	fflush(stdout);
}

static long parse_long(const char *s, const char *what, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *s == '\0' || *end != '\0' || v < min || v > max) {
		char why[128];

		snprintf(why, sizeof(why), "%s must be an integer in [%ld, %ld], not \"%s\"", what, min, max, s);
		usage(why);
	}
	return v;
}

int main(int argc, char **argv)
{
	enum workload w = W_FORK;
	long size_mib, reps;
	size_t size;
	int found = 0;

	if (argc < 4 || argc > 5)
		usage("expected 3 or 4 arguments");
	for (int i = 0; i < (int)(sizeof(workload_names) / sizeof(workload_names[0])); i++) {
		if (strcmp(argv[1], workload_names[i]) == 0) {
			w = (enum workload)i;
			found = 1;
		}
	}
	if (!found)
		usage("unknown workload");
	size_mib = parse_long(argv[2], "SIZE_MIB", w == W_FORK ? 0 : 1, 1L << 20);
	reps = parse_long(argv[3], "REPS", 1, 100000);
	if (argc == 5) {
		char *opts = strdup(argv[4]);

		for (char *tok = strtok(opts, ","); tok; tok = strtok(NULL, ",")) {
			if (strcmp(tok, "hugepage") == 0)
				opt_hugepage = 1;
			else if (strcmp(tok, "pte-mapped") == 0)
				opt_pte_mapped = 1;
			else if (strncmp(tok, "folio=", 6) == 0)
				opt_folio_kib = parse_long(tok + 6, "folio=KIB", 4, 2048);
			else
				usage("unknown option (expected hugepage, pte-mapped, folio=KIB)");
		}
		free(opts);
	}
	if (opt_pte_mapped && w == W_ANON_FAULT)
		usage("anon_fault has no pte-mapped mode: the first touch decides the mapping");
	if (size_mib % 2 && opt_pte_mapped)
		usage("pte-mapped needs SIZE_MIB to be a multiple of 2");
	if (opt_folio_kib & (opt_folio_kib - 1))
		usage("folio=KIB must be a power of two");
	if (((size_t)size_mib << 10) % (size_t)opt_folio_kib)
		usage("SIZE_MIB must be a multiple of the folio=KIB chunk");
	size = (size_t)size_mib << 20;

	pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
	kpageflags_fd = open("/proc/kpageflags", O_RDONLY);
	mthp_stats_init(&mthp);
	for (int rep = 0; rep < reps; rep++) {
		struct sample s;

		memset(&s, 0, sizeof(s));
		s.faults = -1;
		s.anon_huge_kib = -1;
		switch (w) {
		case W_FORK: run_fork(size, &s); break;
		case W_MUNMAP: run_munmap(size, &s); break;
		case W_ANON_FAULT: run_anon_fault(size, &s); break;
		case W_COW_FAULT: run_cow_fault(size, &s); break;
		case W_DONTNEED: run_dontneed(size, &s); break;
		case W_MADV_FREE: run_madv_free(size, 0, &s); break;
		case W_MADV_FREE_SPLIT: run_madv_free(size, 1, &s); break;
		}
		print_sample(w, size_mib, rep, &s);
	}
	return 0;
}
