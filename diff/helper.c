// diff/helper.c: the live-kernel half of `vmlab diff`. Runs a scenario's processes on this kernel,
// one system call or memory access at a time, and dumps their pages for comparison with vmlab.
//
//   helper        (no arguments; Node spawns it as root, src/diff/helper.ts, and talks over stdio)
//
// Start-up. The helper re-executes itself once ("--child-exec" marks the second image) with
// RLIMIT_STACK at 64 GiB and ADDR_NO_RANDOMIZE. On x86-64 the top-down layout puts mmap_base at
// TASK_SIZE - clamp(stack rlimit + stack_guard_gap, 128 MiB, TASK_SIZE / 6 * 5)
// (arch/x86/mm/mmap.c: mmap_base), chosen at exec from bprm->rlim_stack (setup_new_exec ->
// arch_pick_mmap_layout); RLIM_INFINITY would select the legacy bottom-up layout instead
// (mmap_is_legacy), so the soft limit is never set to it. The libraries and vdso then sit below
// 0x7ff000000000 and [0x7ffe00000000, 0x7ffff7fff000), where vmlab's top-down mmaps go (its
// mmap_base is the default 0x7ffff7fff000), is empty; the helper checks that and exits 1 if not.
// The controller then allocates everything it will ever use (static arrays, the heap made once),
// so it never creates a mapping later, and records its own mappings as the BASELINE ranges
// ([stack] widened down by 8 MiB, and RLIMIT_STACK set back to 8 MiB so that it cannot grow past
// that; [vsyscall] and anything >= 0x800000000000 ignored).
//
// Processes. The controller forks one scenario process per `spawn`; `fork` makes the scenario
// process clone itself with CLONE_PARENT | SIGCHLD (fork semantics: dup_mmap; copy_process sets
// the child's real_parent to the caller's parent, the controller, so the controller waitpid()s
// every process). Each scenario process reads fixed-size commands from its slot's pipe and writes
// one text line to the shared response pipe. It dies with the controller three ways: SIGKILL as
// its parent-death signal, EOF on its command pipe (only the controller holds the write ends), and
// alarm(900), re-armed at every command. The controller SIGKILLs and reaps them all on `quit`,
// stdin EOF, a fatal or helper error, and SIGINT/SIGTERM/SIGHUP (then dies by that signal).
//
// Protocol: stdin lines in, stdout lines out. Decimal: slots (0..63), counts, errno, pipe ids,
// byte counts in answers. Hex without 0x: addresses, lengths, prot/flags/advice, tags.
//
//   spawn P                                   ok <pid>
//   fork P C                                  ok <childpid> | err <errno>
//   mmap P addr len prot flags                ok <addr> | err <errno>
//   munmap P addr len                         ok 0 | err <errno>
//   mprotect P addr len prot                  ok 0 | err <errno>
//   madvise P addr len advice                 ok 0 | err <errno>
//   mremap P addr oldlen newlen flags newaddr ok <addr> | err <errno>
//   write P addr npages firsttag              ok <n> | segv <n>   (u64 firsttag+i at each page)
//   read P addr npages                        ok <n> | segv <n>   (one byte load per page)
//   vmsplice P addr len                       ok <bytes> <pipeid> | err <errno>
//   piperead P pipeid                         ok <tag> <tag> ...  (first u64 of each 4 KiB read)
//   exit P                                    ok                  (after waitpid)
//   dropslab                                  ok | err <errno>    ("2" > /proc/sys/vm/drop_caches)
//   dump P                                    lines, then `end`   (see dump() below)
//   quit                                      bye
//
// A command whose range (mmap with a hint or MAP_FIXED[_NOREPLACE], munmap, mprotect, madvise,
// mremap old and new ranges, read, write, vmsplice) overlaps a BASELINE range answers
// `collide <start> <end> <name>` and does nothing. A protocol error (unknown command, wrong
// argument count, malformed number, bad or dead slot, unknown pipe id) answers `fatal <message>`.
//
// Kernel facts the dump relies on (Linux 6.18): pagemap entries (fs/proc/task_mmu.c) have
// PM_PRESENT bit 63, PM_SWAP 62, PM_FILE 61, PM_MMAP_EXCLUSIVE 56, PM_SOFT_DIRTY 55 and the PFN
// in bits 0-54; a hole in a VM_SOFTDIRTY VMA reads as PM_SOFT_DIRTY alone (pagemap_pte_hole), so
// an entry with no other bit is treated as empty. /proc/kpageflags (fs/proc/page.c:
// stable_page_flags) sets KPF_ZERO_PAGE for the zero page and the huge zero folio, COMPOUND_HEAD
// on a folio's first page and COMPOUND_TAIL on the others. /proc/PID/mem reads go through
// access_remote_vm with FOLL_FORCE (CONFIG_PROC_MEM_ALWAYS_FORCE, so PROT_NONE pages read too)
// and get_user_pages_remote adds FOLL_TOUCH: reading a page's tag marks its PTE young and the
// folio accessed (folio_mark_accessed), so successive dumps show KPF_REFERENCED, then KPF_ACTIVE.
// Before and after every dump the controller drains every CPU's LRU batches (lru_drain_all:
// migrate_pages(2) from node 0 to node 0 -> do_migrate_pages -> lru_cache_disable()), so a dump
// sees the settled state vmlab models and leaves no batch reference behind.
// vmsplice (fs/splice.c: vmsplice_to_pipe) waits only when the pipe is full at entry;
// iter_to_pipe stops at a full pipe and returns the bytes taken so far.
//
// Exit status: 0 after `quit` or stdin EOF, 1 a system call of the helper failed or a scenario
// process died unexpectedly (message on stderr), 2 a protocol error (`fatal` on stdout).
// Build: cc -O2 -Wall -Wextra -std=gnu11 -o helper helper.c   (run as root)

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096UL
#define MAXPROC 64
#define MAXBASE 256
#define MAXVMAS 70000        /* vm.max_map_count defaults to 65530 */
#define MAXPIPES 256         /* vmsplice pipes per scenario process */
#define PM_CHUNK 65536       /* pagemap entries per pread: 256 MiB of address space */
#define MAXGRAN 65536
#define FOLIO_SCAN_MAX (1UL << 20) /* pages: the longest folio the kpageflags scan will follow */
#define WATCHDOG_S 900
#define STACK_RLIMIT (64ULL << 30)
#define STACK_WIDEN (8UL << 20)
#define USER_TOP 0x800000000000ULL /* [vsyscall] and above: ignored */
#define SCEN_LO 0x7ffe00000000ULL  /* the region vmlab's mmaps use, which must be empty */
#define SCEN_HI 0x7ffff7fff000ULL  /* vmlab's mmap_base */

/* pagemap bits (fs/proc/task_mmu.c) */
#define PM_PFN_MASK ((1ULL << 55) - 1)
#define PM_SOFT_DIRTY (1ULL << 55)
#define PM_SWAP (1ULL << 62)
#define PM_PRESENT (1ULL << 63)

/* /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h) */
#define KPF_COMPOUND_HEAD 15
#define KPF_COMPOUND_TAIL 16
#define KPF_ZERO_PAGE 24
#define KF(f, bit) (((f) >> (bit)) & 1)

enum op { OP_FORK, OP_MMAP, OP_MUNMAP, OP_MPROTECT, OP_MADVISE, OP_MREMAP, OP_WRITE, OP_READ,
	  OP_VMSPLICE, OP_PIPEREAD, OP_EXIT };

/* A command as the controller sends it down a slot's pipe: one atomic write. */
struct cmd {
	int op;
	int pad;
	uint64_t a[5];
};

static int cmd_pipe[MAXPROC][2];
static int resp_pipe[2];
static pid_t controller_pid;
static int in_scenario; /* set in scenario processes: die() then only _exit()s */

/* BASELINE ranges: the controller's own mappings at start-up. */
static struct base {
	uint64_t start, end;
	char name[80];
} base[MAXBASE];
static int nbase;

/* ---------------------------------------------------------------------------------------------- */
/* Controller state */

static pid_t slot_pid[MAXPROC];  /* 0: free */
static int slot_exiting[MAXPROC];
static int sig_fd = -1;
static int kflags_fd = -1, kcount_fd = -1;
static volatile sig_atomic_t kill_busy;
static char children_path[64]; /* /proc/self/task/PID/children */

static char obuf[1 << 20];
static size_t olen;

static char ibuf[8192];
static size_t ilen;

static void kill_all(void);

static void __attribute__((noreturn)) die(const char *what)
{
	fprintf(stderr, "helper: %s: %s\n", what, strerror(errno));
	if (in_scenario)
		_exit(1);
	kill_all();
	exit(1);
}

/* An error of the helper that has no errno. */
static void die_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_msg(const char *fmt, ...)
{
	va_list ap;

	fputs("helper: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (in_scenario)
		_exit(1);
	kill_all();
	exit(1);
}

static void write_all(int fd, const char *p, size_t n, const char *what)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			die(what);
		}
		p += w;
		n -= (size_t)w;
	}
}

static void out_flush(void)
{
	size_t n = olen;

	olen = 0; /* a failed write must not be retried by die() -> ... */
	write_all(1, obuf, n, "write stdout");
}

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
	va_list ap;
	int n;

	if (sizeof(obuf) - olen < 512)
		out_flush();
	va_start(ap, fmt);
	n = vsnprintf(obuf + olen, sizeof(obuf) - olen, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(obuf) - olen)
		die_msg("output line too long");
	olen += (size_t)n;
}

/* Fast lowercase hex of v into p, returns the length (no terminator). */
static size_t hex(char *p, uint64_t v)
{
	char tmp[16];
	size_t n = 0;

	do {
		tmp[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	for (size_t i = 0; i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

static size_t dec(char *p, uint64_t v)
{
	char tmp[20];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

/*
 * Kills and reaps every child, also one a clone in flight may have made (its pid not known yet).
 * Runs from the SIGINT/SIGTERM/SIGHUP handler too: system calls only (children_path is made at
 * start-up), and those signals are blocked while it runs in normal context.
 */
static void kill_all(void)
{
	char buf[4096];
	sigset_t term;

	if (getpid() != controller_pid)
		return;
	sigemptyset(&term);
	sigaddset(&term, SIGINT);
	sigaddset(&term, SIGTERM);
	sigaddset(&term, SIGHUP);
	sigprocmask(SIG_BLOCK, &term, NULL); /* they stay pending: exit follows */
	if (kill_busy)
		return;
	kill_busy = 1;
	for (;;) {
		int fd, st;
		pid_t w;

		for (int s = 0; s < MAXPROC; s++)
			if (slot_pid[s] > 0)
				kill(slot_pid[s], SIGKILL);
		fd = open(children_path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t n = read(fd, buf, sizeof(buf) - 1);

			close(fd);
			if (n > 0) {
				buf[n] = '\0';
				for (char *p = buf, *end; *p; p = end) {
					long pid = strtol(p, &end, 10);

					if (end == p)
						break;
					if (pid > 0)
						kill((pid_t)pid, SIGKILL);
				}
			}
		}
		while ((w = waitpid(-1, &st, WNOHANG)) > 0)
			for (int s = 0; s < MAXPROC; s++)
				if (slot_pid[s] == w)
					slot_pid[s] = 0;
		if (w < 0) /* ECHILD: all gone */
			break;
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	}
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fatal(const char *fmt, ...)
{
	va_list ap;
	char msg[512];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	out("fatal %s\n", msg);
	out_flush();
	kill_all();
	exit(2);
}

/*
 * The SIGINT/SIGTERM/SIGHUP handler: kill everything, then die by the same signal. A handler, not
 * the signalfd, so that it also works while the controller is blocked writing a full stdout.
 */
static void on_terminate(int sig)
{
	sigset_t set;

	kill_all();
	signal(sig, SIG_DFL);
	sigemptyset(&set);
	sigaddset(&set, sig);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	raise(sig);
	_exit(128 + sig);
}

/* Reaps exited children; a scenario process may only exit after `exit`. */
static void reap(void)
{
	pid_t w;
	int st;

	while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
		for (int s = 0; s < MAXPROC; s++) {
			if (slot_pid[s] != w)
				continue;
			slot_pid[s] = 0;
			if (!slot_exiting[s]) {
				if (WIFSIGNALED(st))
					die_msg("scenario process in slot %d (pid %d) was killed by signal %d", s,
						(int)w, WTERMSIG(st));
				die_msg("scenario process in slot %d (pid %d) exited with status %d", s, (int)w,
					WEXITSTATUS(st));
			}
			slot_exiting[s] = 0;
		}
	}
	if (w < 0 && errno != ECHILD)
		die("waitpid");
}

static void handle_signals(void)
{
	struct signalfd_siginfo si[16];
	ssize_t n = read(sig_fd, si, sizeof(si));
	int child = 0;

	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return;
		die("read signalfd");
	}
	for (size_t i = 0; i < (size_t)n / sizeof(si[0]); i++)
		if (si[i].ssi_signo == SIGCHLD)
			child = 1;
	if (child)
		reap();
}

/* Waits until fd is readable (or hung up), handling signals meanwhile. */
static void wait_readable(int fd)
{
	for (;;) {
		struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = sig_fd, .events = POLLIN } };

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (p[1].revents)
			handle_signals();
		if (p[0].revents)
			return;
	}
}

/* The next stdin line (NUL-terminated, without '\n'), or NULL at EOF. */
static char *next_line(void)
{
	static size_t consumed;

	if (consumed) {
		memmove(ibuf, ibuf + consumed, ilen - consumed);
		ilen -= consumed;
		consumed = 0;
	}
	for (;;) {
		char *nl = memchr(ibuf, '\n', ilen);
		ssize_t n;

		if (nl) {
			*nl = '\0';
			consumed = (size_t)(nl - ibuf) + 1;
			return ibuf;
		}
		if (ilen == sizeof(ibuf))
			fatal("command line longer than %zu bytes", sizeof(ibuf));
		wait_readable(0);
		n = read(0, ibuf + ilen, sizeof(ibuf) - ilen);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("read stdin");
		}
		if (n == 0) {
			if (ilen == 0)
				return NULL;
			ibuf[ilen] = '\0'; /* a last line without '\n' */
			consumed = ilen;
			return ibuf;
		}
		ilen += (size_t)n;
	}
}

/* One response line of a scenario process, copied to stdout. `fatal` from it is a protocol error. */
static void relay_response(char *line, size_t cap)
{
	size_t len = 0;

	for (;;) {
		ssize_t n;

		wait_readable(resp_pipe[0]);
		n = read(resp_pipe[0], line + len, cap - 1 - len);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("read response pipe");
		}
		if (n == 0)
			die_msg("response pipe closed");
		len += (size_t)n;
		if (line[len - 1] == '\n')
			break;
		if (len == cap - 1)
			die_msg("response line too long");
	}
	line[len - 1] = '\0';
	if (strncmp(line, "fatal", 5) == 0)
		fatal("%s", line + (line[5] == ' ' ? 6 : 5));
	out("%s\n", line);
}

/* ---------------------------------------------------------------------------------------------- */
/* BASELINE */

/* Index of the first BASELINE range overlapping [start, start + len) (len rounded up to pages). */
static int base_overlap(uint64_t start, uint64_t len)
{
	uint64_t end;

	if (len == 0)
		return -1;
	len = len > UINT64_MAX - (PAGE_SIZE - 1) ? UINT64_MAX : (len + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	end = len > UINT64_MAX - start ? UINT64_MAX : start + len;
	for (int i = 0; i < nbase; i++)
		if (start < base[i].end && base[i].start < end)
			return i;
	return -1;
}

static int base_overlap_vma(uint64_t start, uint64_t end)
{
	for (int i = 0; i < nbase; i++)
		if (start < base[i].end && base[i].start < end)
			return 1;
	return 0;
}

/* A line reader over an fd (for /proc files of any length). */
static struct {
	int fd;
	size_t len, pos;
	char buf[1 << 16];
} lr;

static void lr_open(const char *path)
{
	lr.fd = open(path, O_RDONLY | O_CLOEXEC);
	if (lr.fd < 0)
		die(path);
	lr.len = lr.pos = 0;
}

static char *lr_line(void)
{
	for (;;) {
		char *nl = memchr(lr.buf + lr.pos, '\n', lr.len - lr.pos);
		ssize_t n;

		if (nl) {
			char *line = lr.buf + lr.pos;

			*nl = '\0';
			lr.pos = (size_t)(nl - lr.buf) + 1;
			return line;
		}
		if (lr.pos) {
			memmove(lr.buf, lr.buf + lr.pos, lr.len - lr.pos);
			lr.len -= lr.pos;
			lr.pos = 0;
		}
		if (lr.len == sizeof(lr.buf) - 1) { /* an overlong line: cut it */
			lr.buf[lr.len] = '\0';
			lr.pos = lr.len;
			return lr.buf;
		}
		n = read(lr.fd, lr.buf + lr.len, sizeof(lr.buf) - 1 - lr.len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read /proc");
		}
		if (n == 0) {
			if (lr.len == 0)
				return NULL;
			lr.buf[lr.len] = '\0';
			lr.pos = lr.len;
			return lr.buf;
		}
		lr.len += (size_t)n;
	}
}

static void lr_close(void)
{
	close(lr.fd);
	lr.fd = -1;
}

/* "start-end perms offset dev inode   name" -> start, end, perms, name (may be empty). */
static int parse_maps_line(char *line, uint64_t *start, uint64_t *end, char perms[5], char **name)
{
	char *p = line, *e;

	*start = strtoull(p, &e, 16);
	if (e == p || *e != '-')
		return 0;
	p = e + 1;
	*end = strtoull(p, &e, 16);
	if (e == p || *e != ' ')
		return 0;
	p = e + 1;
	memcpy(perms, p, 4);
	perms[4] = '\0';
	if (name) {
		/* skip perms, offset, dev, inode */
		for (int f = 0; f < 4; f++) {
			while (*p == ' ')
				p++;
			while (*p && *p != ' ')
				p++;
		}
		while (*p == ' ')
			p++;
		*name = p;
	}
	return 1;
}

static void read_baseline(void)
{
	char *line;

	lr_open("/proc/self/maps");
	while ((line = lr_line())) {
		uint64_t s, e;
		char perms[5], *name;

		if (!parse_maps_line(line, &s, &e, perms, &name))
			die_msg("unparsable /proc/self/maps line: %s", line);
		if (s >= USER_TOP)
			continue;
		if (nbase == MAXBASE)
			die_msg("more than %d mappings in the helper itself", MAXBASE);
		if (strcmp(name, "[stack]") == 0)
			s = s > STACK_WIDEN ? s - STACK_WIDEN : 0;
		base[nbase].start = s;
		base[nbase].end = e;
		snprintf(base[nbase].name, sizeof(base[nbase].name), "%s", *name ? name : "[anon]");
		nbase++;
	}
	lr_close();
	for (int i = 0; i < nbase; i++)
		if (base[i].start < SCEN_HI && SCEN_LO < base[i].end)
			die_msg("layout: the helper's mapping %llx-%llx %s lies in %llx-%llx (stack rlimit or "
				"ASLR not as expected)", (unsigned long long)base[i].start,
				(unsigned long long)base[i].end, base[i].name, SCEN_LO, SCEN_HI);
}

/* ---------------------------------------------------------------------------------------------- */
/* Scenario process */

static int my_slot;
static int vpipe[MAXPIPES][2];
static int vpipe_used[MAXPIPES];
static sigjmp_buf fault_env;
static volatile uint64_t pages_done;

static void on_fault(int sig)
{
	(void)sig;
	siglongjmp(fault_env, 1);
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf) - 1)
		die_msg("reply too long");
	buf[n++] = '\n';
	write_all(resp_pipe[1], buf, (size_t)n, "write response pipe"); /* < PIPE_BUF: atomic */
}

/* Becomes the scenario process of `slot` (after fork from the controller or clone from a peer). */
static void scenario_enter(int slot)
{
	my_slot = slot;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		die("prctl(PR_SET_PDEATHSIG)");
	if (getppid() != controller_pid)
		_exit(1); /* the controller is gone already */
	alarm(WATCHDOG_S);
}

static void do_access(uint64_t addr, uint64_t npages, int wr, uint64_t tag)
{
	pages_done = 0;
	if (sigsetjmp(fault_env, 1) == 0) {
		for (; pages_done < npages; pages_done++) {
			char *p = (char *)(uintptr_t)(addr + pages_done * PAGE_SIZE);

			if (wr)
				*(volatile uint64_t *)p = tag + pages_done;
			else
				(void)*(volatile uint8_t *)p;
		}
		reply("ok %llu", (unsigned long long)pages_done);
	} else {
		reply("segv %llu", (unsigned long long)pages_done);
	}
}

static void do_vmsplice(uint64_t addr, uint64_t len)
{
	struct iovec iov = { .iov_base = (void *)(uintptr_t)addr, .iov_len = len };
	int id, p[2], e;
	ssize_t n;

	for (id = 0; id < MAXPIPES && vpipe_used[id]; id++)
		;
	if (id == MAXPIPES) {
		reply("fatal more than %d vmsplice pipes open in slot %d", MAXPIPES, my_slot);
		return;
	}
	if (pipe2(p, O_CLOEXEC) < 0) {
		reply("err %d", errno);
		return;
	}
	if (fcntl(p[1], F_SETPIPE_SZ, (int)(16 * PAGE_SIZE)) < 0) {
		e = errno;
		goto fail;
	}
	n = vmsplice(p[1], &iov, 1, 0);
	if (n < 0) {
		e = errno;
		goto fail;
	}
	vpipe[id][0] = p[0];
	vpipe[id][1] = p[1];
	vpipe_used[id] = 1;
	reply("ok %lld %d", (long long)n, id);
	return;
fail:
	close(p[0]);
	close(p[1]);
	reply("err %d", e);
}

static void do_piperead(uint64_t id)
{
	static char chunk[PAGE_SIZE];
	char buf[1024];
	size_t len = 0;

	if (id >= MAXPIPES || !vpipe_used[id]) {
		reply("fatal slot %d has no pipe %llu", my_slot, (unsigned long long)id);
		return;
	}
	if (fcntl(vpipe[id][0], F_SETFL, O_NONBLOCK) < 0)
		die("fcntl(O_NONBLOCK)");
	len += (size_t)snprintf(buf, sizeof(buf), "ok");
	for (;;) {
		ssize_t n = read(vpipe[id][0], chunk, sizeof(chunk));
		uint64_t tag = 0;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n < 0)
			die("read vmsplice pipe");
		if (n == 0)
			break;
		memcpy(&tag, chunk, n < 8 ? (size_t)n : 8);
		if (len + 18 >= sizeof(buf) - 2)
			die_msg("piperead: too many pages in the pipe");
		buf[len++] = ' ';
		len += hex(buf + len, tag);
	}
	buf[len] = '\0';
	close(vpipe[id][0]);
	close(vpipe[id][1]);
	vpipe_used[id] = 0;
	reply("%s", buf);
}

static void do_fork(int child_slot)
{
	long r = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);

	if (r < 0) {
		reply("err %d", errno);
		return;
	}
	if (r == 0) {
		/* the child never reads the parent's vmsplice pipes */
		for (int i = 0; i < MAXPIPES; i++) {
			if (vpipe_used[i]) {
				close(vpipe[i][0]);
				close(vpipe[i][1]);
				vpipe_used[i] = 0;
			}
		}
		scenario_enter(child_slot);
		return; /* no answer: the parent gives it */
	}
	reply("ok %ld", r);
}

/* The answer to a call that returns 0 or -1 with errno: `ok 0` or `err <errno>`. */
static void reply_rc(int rc)
{
	if (rc < 0)
		reply("err %d", errno);
	else
		reply("ok 0");
}

static void __attribute__((noreturn)) scenario_main(int slot)
{
	struct sigaction sa;
	sigset_t none;
	int null;

	in_scenario = 1;
	/* keep the read ends of every command pipe (a clone may take any slot), drop the rest */
	for (int s = 0; s < MAXPROC; s++)
		close(cmd_pipe[s][1]);
	close(resp_pipe[0]);
	close(sig_fd);
	close(kflags_fd);
	close(kcount_fd);
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0)
		die("/dev/null");
	close(null);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_fault;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, NULL) < 0 || sigaction(SIGBUS, &sa, NULL) < 0)
		die("sigaction");
	signal(SIGPIPE, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	scenario_enter(slot);

	for (;;) {
		struct cmd c;
		ssize_t n = read(cmd_pipe[my_slot][0], &c, sizeof(c));
		void *r;

		if (n == 0)
			_exit(0); /* the controller is gone */
		if (n < 0 && errno == EINTR)
			continue;
		if (n != (ssize_t)sizeof(c))
			die("read command pipe");
		alarm(WATCHDOG_S);
		switch (c.op) {
		case OP_FORK:
			do_fork((int)c.a[0]);
			break;
		case OP_MMAP:
			r = mmap((void *)(uintptr_t)c.a[0], c.a[1], (int)c.a[2], (int)c.a[3], -1, 0);
			if (r == MAP_FAILED)
				reply("err %d", errno);
			else
				reply("ok %llx", (unsigned long long)(uintptr_t)r);
			break;
		case OP_MUNMAP:
			reply_rc(munmap((void *)(uintptr_t)c.a[0], c.a[1]));
			break;
		case OP_MPROTECT:
			reply_rc(mprotect((void *)(uintptr_t)c.a[0], c.a[1], (int)c.a[2]));
			break;
		case OP_MADVISE:
			reply_rc(madvise((void *)(uintptr_t)c.a[0], c.a[1], (int)c.a[2]));
			break;
		case OP_MREMAP:
			r = mremap((void *)(uintptr_t)c.a[0], c.a[1], c.a[2], (int)c.a[3], (void *)(uintptr_t)c.a[4]);
			if (r == MAP_FAILED)
				reply("err %d", errno);
			else
				reply("ok %llx", (unsigned long long)(uintptr_t)r);
			break;
		case OP_WRITE:
			do_access(c.a[0], c.a[1], 1, c.a[2]);
			break;
		case OP_READ:
			do_access(c.a[0], c.a[1], 0, 0);
			break;
		case OP_VMSPLICE:
			do_vmsplice(c.a[0], c.a[1]);
			break;
		case OP_PIPEREAD:
			do_piperead(c.a[0]);
			break;
		case OP_EXIT:
			reply("ok");
			_exit(0);
		default:
			die_msg("unknown command %d", c.op);
		}
	}
}

/* ---------------------------------------------------------------------------------------------- */
/* dump */

static struct vma {
	uint64_t start, end;
	long rss, anon, ahp, lazy;
	char perms[5];
	char base;
} vmas[MAXVMAS];
static uint64_t pm[PM_CHUNK], fl[PM_CHUNK], kc[PM_CHUNK];
static uint64_t gran[3][MAXGRAN];
static size_t ngran[3];
static uint64_t scan[512];

static void pread_all(int fd, void *buf, size_t n, uint64_t off, const char *what)
{
	ssize_t r = pread(fd, buf, n, (off_t)off);

	if (r != (ssize_t)n) {
		if (r >= 0)
			errno = EIO;
		die(what);
	}
}

/* The folio of the last page resolved: [fc_head, fc_head + fc_n). */
static uint64_t fc_head, fc_n;

/* order and index in its folio of the page at pfn with kpageflags f; 0 on an inconsistent read. */
static int folio_of(uint64_t pfn, uint64_t f, int *order, uint64_t *idx)
{
	uint64_t head, n;

	*order = 0;
	*idx = 0;
	if (!KF(f, KPF_COMPOUND_HEAD) && !KF(f, KPF_COMPOUND_TAIL))
		return 1;
	if (fc_n && pfn >= fc_head && pfn < fc_head + fc_n)
		goto found;
	head = pfn;
	if (!KF(f, KPF_COMPOUND_HEAD)) { /* a tail: walk back to the head */
		for (;;) {
			size_t k = head < 512 ? (size_t)head : 512;
			size_t i;

			if (k == 0 || pfn - head > FOLIO_SCAN_MAX)
				return 0;
			pread_all(kflags_fd, scan, k * 8, (head - k) * 8, "pread /proc/kpageflags");
			for (i = k; i-- > 0;)
				if (!KF(scan[i], KPF_COMPOUND_TAIL) || KF(scan[i], KPF_COMPOUND_HEAD))
					break;
			if (i != (size_t)-1) {
				if (!KF(scan[i], KPF_COMPOUND_HEAD))
					return 0;
				head = head - k + i;
				break;
			}
			head -= k;
		}
	}
	/* count the tails after the head */
	for (n = 1;;) {
		ssize_t r;
		size_t i, got;

		if (n > FOLIO_SCAN_MAX)
			return 0;
		r = pread(kflags_fd, scan, sizeof(scan), (off_t)((head + n) * 8)); /* short at max_pfn */
		if (r < 0)
			die("pread /proc/kpageflags");
		got = (size_t)r / 8;
		for (i = 0; i < got; i++)
			if (!KF(scan[i], KPF_COMPOUND_TAIL) || KF(scan[i], KPF_COMPOUND_HEAD))
				break;
		n += i;
		if (i < 512)
			break;
	}
	if (pfn >= head + n)
		return 0;
	fc_head = head;
	fc_n = n;
found:
	while ((1ULL << *order) < fc_n)
		(*order)++;
	*idx = pfn - fc_head;
	return 1;
}

static void add_gran(int level, uint64_t g)
{
	if (ngran[level] && gran[level][ngran[level] - 1] == g)
		return;
	if (ngran[level] == MAXGRAN)
		die_msg("more than %d page-table granules in the baseline", MAXGRAN);
	gran[level][ngran[level]++] = g;
}

/* Present or swapped pages of BASELINE VMA v: the page-table granules they need. */
static void baseline_tables(int pm_fd, const struct vma *v)
{
	for (uint64_t a = v->start; a < v->end;) {
		size_t n = (v->end - a) / PAGE_SIZE < PM_CHUNK ? (size_t)((v->end - a) / PAGE_SIZE) : PM_CHUNK;

		pread_all(pm_fd, pm, n * 8, a / PAGE_SIZE * 8, "pread pagemap");
		for (size_t i = 0; i < n; i++) {
			uint64_t va = a + i * PAGE_SIZE;

			if (!(pm[i] & (PM_PRESENT | PM_SWAP)))
				continue;
			add_gran(0, va >> 21);
			add_gran(1, va >> 30);
			add_gran(2, va >> 39);
		}
		a += n * PAGE_SIZE;
	}
}

/* `p` lines of SCENARIO VMA v. */
static void scenario_pages(int pm_fd, int mem_fd, const struct vma *v)
{
	for (uint64_t a = v->start; a < v->end;) {
		size_t n = (v->end - a) / PAGE_SIZE < PM_CHUNK ? (size_t)((v->end - a) / PAGE_SIZE) : PM_CHUNK;

		pread_all(pm_fd, pm, n * 8, a / PAGE_SIZE * 8, "pread pagemap");
		/* kpageflags and kpagecount, one pread per run of consecutive pfns */
		for (size_t i = 0; i < n;) {
			uint64_t pfn = pm[i] & PM_PFN_MASK;
			size_t j = i + 1;

			if (!(pm[i] & PM_PRESENT) || !pfn) {
				i++;
				continue;
			}
			while (j < n && (pm[j] & PM_PRESENT) && (pm[j] & PM_PFN_MASK) == pfn + (j - i))
				j++;
			pread_all(kflags_fd, fl + i, (j - i) * 8, pfn * 8, "pread /proc/kpageflags");
			pread_all(kcount_fd, kc + i, (j - i) * 8, pfn * 8, "pread /proc/kpagecount");
			i = j;
		}
		for (size_t i = 0; i < n; i++) {
			uint64_t va = a + i * PAGE_SIZE, e = pm[i], pfn = e & PM_PFN_MASK;
			char *p;

			if (!(e & ~PM_SOFT_DIRTY))
				continue;
			if (sizeof(obuf) - olen < 128)
				out_flush();
			p = obuf + olen;
			*p++ = 'p';
			*p++ = ' ';
			p += hex(p, va);
			*p++ = ' ';
			p += hex(p, e);
			if ((e & PM_PRESENT) && pfn) {
				uint64_t idx, tag = 0;
				int order, tag_ok = 1;

				if (!folio_of(pfn, fl[i], &order, &idx)) {
					order = 0; /* a folio changing under the scan: report it as order 0 */
					idx = 0;
				}
				if (!KF(fl[i], KPF_ZERO_PAGE)) {
					ssize_t r = pread(mem_fd, &tag, 8, (off_t)va);

					tag_ok = r == 8;
				}
				*p++ = ' ';
				p += hex(p, fl[i]);
				*p++ = ' ';
				p += dec(p, kc[i]);
				*p++ = ' ';
				p += dec(p, (uint64_t)order);
				*p++ = ' ';
				p += dec(p, idx);
				*p++ = ' ';
				if (tag_ok)
					p += hex(p, tag);
				else
					*p++ = '-';
			} else {
				memcpy(p, " - - - - -", 10);
				p += 10;
			}
			*p++ = '\n';
			olen = (size_t)(p - obuf);
		}
		a += n * PAGE_SIZE;
	}
}

static long kb_field(const char *line, const char *key)
{
	size_t k = strlen(key);

	if (strncmp(line, key, k) != 0 || line[k] != ':')
		return -1;
	return strtol(line + k + 1, NULL, 10);
}

/*
 * dump P, taken while P blocks on its command pipe. Lines, in this order:
 *
 *   status <RssAnon kB> <VmPTE kB>                      /proc/PID/status
 *   baseline <Anonymous kB> <npte> <npmd> <npud>        over BASELINE VMAs (those overlapping a
 *   btables|bpmds|bpuds <granule> ...                   BASELINE range): addr>>21, >>30, >>39 of
 *                                                       every present or swapped page, ascending
 *   vma <start> <end> <perms> <Rss> <Anonymous> <AnonHugePages> <LazyFree>   every SCENARIO VMA
 *   p <vaddr> <pagemap> <kflags> <kcount> <order> <idx> <tag>  every page of a SCENARIO VMA whose
 *                                                       pagemap entry has a bit besides soft-dirty
 *   end
 *
 * All vma lines come before all p lines, both by address. When the entry is not present or has
 * PFN 0 the last five p fields are "-". tag is 0 for a KPF_ZERO_PAGE page (not read), "-" if the
 * /proc/PID/mem read failed. smaps gives both the VMA list and its counters (its header lines are
 * the maps lines), so maps itself is not read.
 */
/*
 * Drains every CPU's LRU batches (lru_add, lru_lazyfree, lru_activate, ...): migrate_pages(2) from
 * node 0 to node 0 runs do_migrate_pages, which calls lru_cache_disable() -> __lru_add_drain_all()
 * first and then migrates nothing (a source node that is its own destination is skipped). Until a
 * batch is drained, MADV_FREE's ClearPageSwapBacked of an order-0 folio is not done yet, and the
 * batch's folio reference can make a COW fault copy a page it would reuse; vmlab has no batches,
 * so each dump sees, and leaves behind, the settled state.
 */
static void lru_drain_all(void)
{
	unsigned long node0 = 1;

	if (syscall(SYS_migrate_pages, 0, 8 * sizeof(node0), &node0, &node0) < 0)
		die("migrate_pages (to drain the LRU batches)");
}

static void dump(pid_t pid)
{
	char path[64], *line;
	long rss_anon = -1, vm_pte = -1, base_anon = 0, v;
	int nv = 0, pm_fd, mem_fd;
	struct vma *cur = NULL;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	lr_open(path);
	while ((line = lr_line())) {
		if ((v = kb_field(line, "RssAnon")) >= 0)
			rss_anon = v;
		else if ((v = kb_field(line, "VmPTE")) >= 0)
			vm_pte = v;
	}
	lr_close();
	if (rss_anon < 0 || vm_pte < 0)
		die_msg("%s: no RssAnon or VmPTE", path);

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	lr_open(path);
	while ((line = lr_line())) {
		uint64_t s, e;
		char perms[5];

		if ((*line >= '0' && *line <= '9') || (*line >= 'a' && *line <= 'f')) {
			if (!parse_maps_line(line, &s, &e, perms, NULL))
				die_msg("unparsable smaps line: %s", line);
			cur = NULL;
			if (s >= USER_TOP)
				continue;
			if (nv == MAXVMAS)
				die_msg("more than %d VMAs", MAXVMAS);
			cur = &vmas[nv++];
			memset(cur, 0, sizeof(*cur));
			cur->start = s;
			cur->end = e;
			memcpy(cur->perms, perms, 5);
			cur->base = (char)base_overlap_vma(s, e);
		} else if (cur) {
			if ((v = kb_field(line, "Rss")) >= 0)
				cur->rss = v;
			else if ((v = kb_field(line, "Anonymous")) >= 0)
				cur->anon = v;
			else if ((v = kb_field(line, "AnonHugePages")) >= 0)
				cur->ahp = v;
			else if ((v = kb_field(line, "LazyFree")) >= 0)
				cur->lazy = v;
		}
	}
	lr_close();

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	pm_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (pm_fd < 0)
		die(path);
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	mem_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (mem_fd < 0)
		die(path);

	ngran[0] = ngran[1] = ngran[2] = 0;
	for (int i = 0; i < nv; i++) {
		if (!vmas[i].base)
			continue;
		base_anon += vmas[i].anon;
		baseline_tables(pm_fd, &vmas[i]);
	}
	out("status %ld %ld\n", rss_anon, vm_pte);
	out("baseline %ld %zu %zu %zu\n", base_anon, ngran[0], ngran[1], ngran[2]);
	for (int l = 0; l < 3; l++) {
		out("%s", l == 0 ? "btables" : l == 1 ? "bpmds" : "bpuds");
		for (size_t i = 0; i < ngran[l]; i++)
			out(" %llx", (unsigned long long)gran[l][i]);
		out("\n");
	}
	for (int i = 0; i < nv; i++)
		if (!vmas[i].base)
			out("vma %llx %llx %s %ld %ld %ld %ld\n", (unsigned long long)vmas[i].start,
			    (unsigned long long)vmas[i].end, vmas[i].perms, vmas[i].rss, vmas[i].anon, vmas[i].ahp,
			    vmas[i].lazy);
	fc_n = 0; /* folios may have changed since the last dump */
	for (int i = 0; i < nv; i++)
		if (!vmas[i].base)
			scenario_pages(pm_fd, mem_fd, &vmas[i]);
	out("end\n");
	close(pm_fd);
	close(mem_fd);
}

/* ---------------------------------------------------------------------------------------------- */
/* Commands */

enum argkind { A_SLOT, A_DEC, A_HEX, A_HEX32 };

static const struct command {
	const char *name;
	int nargs;
	enum argkind kind[6];
} commands[] = {
	{ "spawn", 1, { A_SLOT } },
	{ "fork", 2, { A_SLOT, A_SLOT } },
	{ "mmap", 5, { A_SLOT, A_HEX, A_HEX, A_HEX32, A_HEX32 } },
	{ "munmap", 3, { A_SLOT, A_HEX, A_HEX } },
	{ "mprotect", 4, { A_SLOT, A_HEX, A_HEX, A_HEX32 } },
	{ "madvise", 4, { A_SLOT, A_HEX, A_HEX, A_HEX32 } },
	{ "mremap", 6, { A_SLOT, A_HEX, A_HEX, A_HEX, A_HEX32, A_HEX } },
	{ "write", 4, { A_SLOT, A_HEX, A_DEC, A_HEX } },
	{ "read", 3, { A_SLOT, A_HEX, A_DEC } },
	{ "vmsplice", 3, { A_SLOT, A_HEX, A_HEX } },
	{ "piperead", 2, { A_SLOT, A_DEC } },
	{ "exit", 1, { A_SLOT } },
	{ "dropslab", 0, { A_SLOT } },
	{ "dump", 1, { A_SLOT } },
	{ "quit", 0, { A_SLOT } },
};

static uint64_t parse_num(const char *s, enum argkind k, const char *cmd, int argno)
{
	uint64_t v = 0;
	int base = k == A_HEX || k == A_HEX32 ? 16 : 10;
	size_t n = strlen(s);

	if (n == 0 || n > (base == 16 ? 16u : 19u))
		fatal("%s: argument %d \"%s\" is not a %s number", cmd, argno, s, base == 16 ? "hex" : "decimal");
	for (const char *p = s; *p; p++) {
		int d;

		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			d = *p - 'a' + 10;
		else if (base == 16 && *p >= 'A' && *p <= 'F')
			d = *p - 'A' + 10;
		else
			fatal("%s: argument %d \"%s\" is not a %s number", cmd, argno, s,
			      base == 16 ? "hex (without 0x)" : "decimal");
		v = v * (uint64_t)base + (uint64_t)d;
	}
	if (k == A_SLOT && v >= MAXPROC)
		fatal("%s: slot %s out of range 0..%d", cmd, s, MAXPROC - 1);
	if (k == A_HEX32 && v > 0xffffffffULL)
		fatal("%s: argument %d \"%s\" does not fit in 32 bits", cmd, argno, s);
	return v;
}

static void live_slot(const char *cmd, uint64_t s)
{
	if (!slot_pid[s])
		fatal("%s: slot %llu is not live", cmd, (unsigned long long)s);
}

/* `collide` and 1 when [start, start + len) overlaps a BASELINE range. */
static int collides(uint64_t start, uint64_t len)
{
	int i = base_overlap(start, len);

	if (i < 0)
		return 0;
	out("collide %llx %llx %s\n", (unsigned long long)base[i].start, (unsigned long long)base[i].end,
	    base[i].name);
	return 1;
}

static void send_cmd(int slot, int op, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4)
{
	struct cmd c = { .op = op, .a = { a0, a1, a2, a3, a4 } };

	write_all(cmd_pipe[slot][1], (const char *)&c, sizeof(c), "write command pipe");
}

static void spawn(int slot)
{
	pid_t pid;

	out_flush(); /* nothing buffered may be written twice */
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		scenario_main(slot);
	slot_pid[slot] = pid;
	slot_exiting[slot] = 0;
	out("ok %d\n", (int)pid);
}

static void drop_slab(void)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, "2", 1) != 1) {
		out("err %d\n", errno);
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);
	out("ok\n");
}

/* Runs one command line; returns 0 after `quit`. */
static int run_command(char *line)
{
	static char resp[8192];
	char *tok[8];
	int nt = 0;
	uint64_t a[6] = { 0 };
	const struct command *c = NULL;
	const char *name;

	for (char *p = strtok(line, " \t\r"); p; p = strtok(NULL, " \t\r")) {
		if (nt == 8)
			fatal("too many words in \"%s ...\"", tok[0]);
		tok[nt++] = p;
	}
	if (nt == 0)
		fatal("empty command line");
	name = tok[0];
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(name, commands[i].name) == 0)
			c = &commands[i];
	if (!c)
		fatal("unknown command \"%s\"", name);
	if (nt - 1 != c->nargs)
		fatal("%s takes %d arguments, not %d", name, c->nargs, nt - 1);
	for (int i = 0; i < c->nargs; i++)
		a[i] = parse_num(tok[i + 1], c->kind[i], name, i + 1);

	if (strcmp(name, "quit") == 0) {
		kill_all();
		out("bye\n");
		out_flush();
		return 0;
	}
	if (strcmp(name, "dropslab") == 0) {
		drop_slab();
		return 1;
	}
	if (strcmp(name, "spawn") == 0) {
		if (slot_pid[a[0]])
			fatal("spawn: slot %llu is live", (unsigned long long)a[0]);
		spawn((int)a[0]);
		return 1;
	}
	live_slot(name, a[0]);
	if (strcmp(name, "dump") == 0) {
		lru_drain_all();
		dump(slot_pid[a[0]]);
		lru_drain_all(); /* the dump's reads activated pages: leave no batch behind */
		return 1;
	}
	if (strcmp(name, "fork") == 0) {
		if (slot_pid[a[1]])
			fatal("fork: slot %llu is live", (unsigned long long)a[1]);
		send_cmd((int)a[0], OP_FORK, a[1], 0, 0, 0, 0);
		relay_response(resp, sizeof(resp));
		if (strncmp(resp, "ok ", 3) == 0)
			slot_pid[a[1]] = (pid_t)strtol(resp + 3, NULL, 10);
		slot_exiting[a[1]] = 0;
		return 1;
	}
	if (strcmp(name, "exit") == 0) {
		pid_t pid = slot_pid[a[0]];
		int st;

		slot_exiting[a[0]] = 1;
		send_cmd((int)a[0], OP_EXIT, 0, 0, 0, 0, 0);
		relay_response(resp, sizeof(resp));
		if (slot_pid[a[0]] == pid) { /* not reaped on its SIGCHLD yet */
			while (waitpid(pid, &st, 0) < 0)
				if (errno != EINTR)
					die("waitpid");
			slot_pid[a[0]] = 0;
			slot_exiting[a[0]] = 0;
		}
		return 1;
	}
	if (strcmp(name, "mmap") == 0) {
		if ((a[1] || (a[4] & (MAP_FIXED | MAP_FIXED_NOREPLACE))) && collides(a[1], a[2]))
			return 1;
		send_cmd((int)a[0], OP_MMAP, a[1], a[2], a[3], a[4], 0);
	} else if (strcmp(name, "munmap") == 0) {
		if (collides(a[1], a[2]))
			return 1;
		send_cmd((int)a[0], OP_MUNMAP, a[1], a[2], 0, 0, 0);
	} else if (strcmp(name, "mprotect") == 0 || strcmp(name, "madvise") == 0) {
		if (collides(a[1], a[2]))
			return 1;
		send_cmd((int)a[0], name[1] == 'p' ? OP_MPROTECT : OP_MADVISE, a[1], a[2], a[3], 0, 0);
	} else if (strcmp(name, "mremap") == 0) {
		if (collides(a[1], a[2]) || collides(a[5], a[3]))
			return 1;
		send_cmd((int)a[0], OP_MREMAP, a[1], a[2], a[3], a[4], a[5]);
	} else if (strcmp(name, "write") == 0 || strcmp(name, "read") == 0) {
		int wr = name[0] == 'w';

		if (a[2] > (1ULL << 52) / PAGE_SIZE)
			fatal("%s: %llu pages is too many", name, (unsigned long long)a[2]);
		if (collides(a[1], a[2] * PAGE_SIZE))
			return 1;
		send_cmd((int)a[0], wr ? OP_WRITE : OP_READ, a[1], a[2], a[3], 0, 0);
	} else if (strcmp(name, "vmsplice") == 0) {
		if (collides(a[1], a[2]))
			return 1;
		send_cmd((int)a[0], OP_VMSPLICE, a[1], a[2], 0, 0, 0);
	} else if (strcmp(name, "piperead") == 0) {
		send_cmd((int)a[0], OP_PIPEREAD, a[1], 0, 0, 0, 0);
	}
	relay_response(resp, sizeof(resp));
	return 1;
}

/* ---------------------------------------------------------------------------------------------- */

/* First image: a 64 GiB stack rlimit and no ASLR, then exec again so the layout takes effect. */
static void __attribute__((noreturn)) reexec(char *argv0)
{
	struct rlimit rl;
	int pers;
	char *args[] = { argv0, "--child-exec", NULL };

	if (getrlimit(RLIMIT_STACK, &rl) < 0)
		die("getrlimit(RLIMIT_STACK)");
	rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < STACK_RLIMIT ? rl.rlim_max : STACK_RLIMIT;
	if (rl.rlim_cur == RLIM_INFINITY)
		rl.rlim_cur = STACK_RLIMIT; /* never: it selects the legacy layout */
	if (setrlimit(RLIMIT_STACK, &rl) < 0)
		die("setrlimit(RLIMIT_STACK)");
	pers = personality(0xffffffff);
	if (pers < 0 || personality((unsigned long)pers | ADDR_NO_RANDOMIZE) < 0)
		die("personality(ADDR_NO_RANDOMIZE)");
	execv("/proc/self/exe", args);
	die("execv /proc/self/exe");
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	sigset_t mask;
	char *line;
	const char *slash;

	if (argc > 2 || (argc == 2 && strcmp(argv[1], "--child-exec") != 0)) {
		fprintf(stderr, "usage: helper   (no arguments; speaks the protocol on stdin/stdout)\n");
		return 2;
	}
	if (argc == 1)
		reexec(argv[0]);

	/*
	 * The layout is fixed at exec; now bound the stack's growth to the 8 MiB the BASELINE keeps
	 * for it (acct_stack_growth checks the limit at each fault), so that an access where the
	 * scenario maps nothing faults as it does in vmlab instead of growing the stack.
	 */
	{
		struct rlimit rl;

		if (getrlimit(RLIMIT_STACK, &rl) < 0)
			die("getrlimit(RLIMIT_STACK)");
		rl.rlim_cur = STACK_WIDEN;
		if (setrlimit(RLIMIT_STACK, &rl) < 0)
			die("setrlimit(RLIMIT_STACK)");
	}
	controller_pid = getpid();
	slash = strrchr(argv[0], '/');
	prctl(PR_SET_NAME, slash ? slash + 1 : argv[0]); /* not "exe" in ps */
	/* every buffer is static; make the heap once so that a stray malloc never maps a new VMA */
	{
		void *volatile heap = malloc(64 << 10);

		free(heap);
	}
	for (int s = 0; s < MAXPROC; s++)
		if (pipe(cmd_pipe[s]) < 0)
			die("pipe");
	if (pipe(resp_pipe) < 0)
		die("pipe");
	kflags_fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	if (kflags_fd < 0)
		die("open /proc/kpageflags");
	kcount_fd = open("/proc/kpagecount", O_RDONLY | O_CLOEXEC);
	if (kcount_fd < 0)
		die("open /proc/kpagecount");
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		die("prctl(PR_SET_CHILD_SUBREAPER)");
	snprintf(children_path, sizeof(children_path), "/proc/self/task/%d/children", (int)controller_pid);
	signal(SIGPIPE, SIG_IGN); /* a closed stdout is an EPIPE: clean up, exit 1 */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_terminate;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGINT);
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaddset(&sa.sa_mask, SIGHUP);
	sigaddset(&sa.sa_mask, SIGCHLD);
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0 ||
	    sigaction(SIGHUP, &sa, NULL) < 0)
		die("sigaction");
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		die("sigprocmask");
	sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0)
		die("signalfd");
	read_baseline();

	out("ready %d\n", (int)controller_pid);
	out_flush();
	while ((line = next_line())) {
		if (!run_command(line))
			return 0;
		out_flush();
	}
	kill_all();
	return 0;
}
