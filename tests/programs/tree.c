/* tree.c: a process tree that must come back whole after a restart.
 *
 * Before step 1 the parent forks:
 *
 * - "zombie": exits at once with status 7 and is not reaped until the end
 *   (each step checks, with waitid(WNOWAIT), that it is still an unreaped
 *   child that exited with 7);
 * - "w1", "w2": workers; the parent sends each a number down a pipe of its
 *   own per step, and each sends a result record back up one result pipe
 *   shared by every child;
 * - "pgrp": a worker that moved into a process group of its own
 *   (setpgid(0, 0)); the parent sends SIGUSR1 to that group (kill(-pgid))
 *   before each number, and the child must find it pending (blocked) and
 *   sent by its parent;
 * - "session": a worker that called setsid();
 * - "sh": /bin/sh (dynamically linked) exec'd with its stdin and stdout on
 *   two pipes; it answers each "STEP X" line with "sh STEP ACC ok", where
 *   ACC accumulates in the shell's variables, and checks its ids each time
 *   as the other children do, from /proc/self/stat and its parent's
 *   /proc/PPID/stat (builtins only: it forks nothing).
 *
 * Every child records getpid/getppid/getpgrp/getsid when it starts and
 * checks them at every step (ids_changed): its pid and its parent must be
 * the same numbers, and so must a process group or session that it or its
 * parent leads; a group or session led from outside the tree (the
 * launcher's group, the caller's session: no restart can make those again)
 * must still be its parent's. The parent checks its own pid (and its group
 * and session where it leads them), and each child's process group and
 * session as it sees them (getpgid/getsid: the pgrp and session workers
 * lead their own, the others share the parent's). The parent's own parent
 * is outside the tree (the launcher, or what restart puts there) and is
 * not checked.
 *
 * The workers sleep a moment before reading each number and the parent
 * sends the next numbers before its pause, so both the number pipes and the
 * shared result pipe hold bytes across a checkpoint. Each number depends on
 * all results so far.
 *
 * At the end the parent closes the number pipes; each worker sends a final
 * record and exits with its own status (11, 12, 13, 14; sh 15); the parent
 * reaps every child by pid, the zombie included, prints each status and a
 * final line that depends on everything.
 *
 * Prints "step N ..." each step, then one line per child and "final H".
 * No pid is printed.
 *
 * Usage: tree [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

/* Children that report on the shared result pipe. */
enum { W1, W2, PGRP, SESSION, NWORK };
static const char *const work_name[NWORK] = { "w1", "w2", "pgrp", "session" };
static const int work_exit[NWORK] = { 11, 12, 13, 14 };
static const uint64_t work_mult[NWORK] = { 3, 5, 7, 11 };
/* How long each worker waits before reading its next number. */
static const long work_delay_ms[NWORK] = { 30, 20, 25, 15 };
#define SH_EXIT 15
#define ZOMBIE_EXIT 7
#define FINAL_STEP (-1)
/* How long the parent waits for any answer before giving up. */
#define ANSWER_TIMEOUT_MS 20000

/* Flags of a result record: what a child found wrong. */
enum {
	BAD_PID = 1,
	BAD_PPID = 2,
	BAD_PGRP = 4,
	BAD_SID = 8,
	BAD_SIGNAL = 16,
	BAD_SENDER = 32,
	BAD_STEP = 64,
};

struct cmd {
	int32_t step;
	uint32_t x;
};

struct result {
	int32_t kind;
	int32_t step;
	uint32_t flags;
	uint32_t bad_steps; /* final record: steps with any flag */
	uint64_t value;
};

struct ids {
	pid_t pid, ppid, pgrp, sid;
};

static struct ids my_ids(void)
{
	struct ids id = { getpid(), getppid(), getpgrp(), getsid(0) };
	return id;
}

/* What changed since `id0` (taken when the process started). The pid and
 * the parent must be the same numbers. A process group or a session that
 * this process or its parent leads must be the same number too; one led
 * from outside the tree (the launcher's group, the caller's session: a
 * restart cannot make those again) must still be the parent's. */
static uint32_t ids_changed(const struct ids *id0)
{
	struct ids now = my_ids();
	uint32_t flags = (now.pid != id0->pid ? BAD_PID : 0) | (now.ppid != id0->ppid ? BAD_PPID : 0);
	int own_pgrp = id0->pgrp == id0->pid || id0->pgrp == id0->ppid;
	int own_sid = id0->sid == id0->pid || id0->sid == id0->ppid;
	if (now.pgrp != (own_pgrp ? id0->pgrp : getpgid(now.ppid)))
		flags |= BAD_PGRP;
	if (now.sid != (own_sid ? id0->sid : getsid(now.ppid)))
		flags |= BAD_SID;
	return flags;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Writes all of buf, through partial writes and EINTR; 0 or -1. */
static int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Reads exactly n bytes, waiting at most timeout_ms (-1: forever).
 * Returns 1 when done, 0 at end of file before the first byte, -1 on an
 * error, a timeout or an end of file in the middle. */
static int read_full(int fd, void *buf, size_t n, int timeout_ms)
{
	char *p = buf;
	size_t got = 0;
	long deadline = now_ms() + timeout_ms;
	while (got < n) {
		if (timeout_ms >= 0) {
			long left = deadline - now_ms();
			struct pollfd pfd = { .fd = fd, .events = POLLIN };
			int r = left > 0 ? poll(&pfd, 1, (int)left) : 0;
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				errno = r == 0 ? ETIMEDOUT : errno;
				return -1;
			}
		}
		ssize_t k = read(fd, p + got, n - got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -1;
		if (k == 0)
			return got == 0 ? 0 : -1;
		got += (size_t)k;
	}
	return 1;
}

/* A line reader on a pipe (the shell's answers). */
struct lines {
	int fd;
	char buf[512];
	size_t len;
};

/* The next line (without its newline) into out; 1, 0 at end of file, -1 on
 * an error or a timeout. */
static int read_line(struct lines *r, char *out, size_t size, int timeout_ms)
{
	long deadline = now_ms() + timeout_ms;
	for (;;) {
		char *nl = memchr(r->buf, '\n', r->len);
		if (nl) {
			size_t n = (size_t)(nl - r->buf);
			size_t keep = n < size - 1 ? n : size - 1;
			memcpy(out, r->buf, keep);
			out[keep] = 0;
			r->len -= n + 1;
			memmove(r->buf, nl + 1, r->len);
			return 1;
		}
		if (r->len == sizeof r->buf)
			return -1;
		long left = deadline - now_ms();
		struct pollfd pfd = { .fd = r->fd, .events = POLLIN };
		int p = left > 0 ? poll(&pfd, 1, (int)left) : 0;
		if (p < 0 && errno == EINTR)
			continue;
		if (p <= 0)
			return -1;
		ssize_t k = read(r->fd, r->buf + r->len, sizeof r->buf - r->len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -1;
		if (k == 0)
			return r->len ? -1 : 0;
		r->len += (size_t)k;
	}
}

/* Every pipe descriptor the parent made, so that each child closes those
 * that are not its own (else a reader would never see end of file). */
static int all_fds[32];
static int nfds;

static void track(int fds[2])
{
	all_fds[nfds++] = fds[0];
	all_fds[nfds++] = fds[1];
}

static void close_others(int keep_a, int keep_b)
{
	for (int i = 0; i < nfds; i++)
		if (all_fds[i] != keep_a && all_fds[i] != keep_b)
			close(all_fds[i]);
}

/* A worker: one number in, one record out, per step; a final record and
 * its own exit status at end of file. */
static void worker(int kind, int cmd_fd, int res_fd)
{
	if (kind == PGRP && setpgid(0, 0))
		die("setpgid");
	if (kind == SESSION && setsid() < 0)
		die("setsid");
	struct ids id0 = my_ids();
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);

	uint64_t acc = (uint64_t)kind + 1;
	uint32_t bad_steps = 0;
	int32_t expect = 1;
	for (;;) {
		/* Leave the number in the pipe a moment. */
		sleep_ms(work_delay_ms[kind]);
		struct cmd c;
		int r = read_full(cmd_fd, &c, sizeof c, -1);
		if (r == 0)
			break;
		if (r < 0)
			_exit(90);
		uint32_t flags = ids_changed(&id0);
		if (c.step != expect)
			flags |= BAD_STEP;
		expect = c.step + 1;
		if (kind == PGRP) {
			/* The parent signalled our group before sending the number. */
			siginfo_t si;
			struct timespec wait5 = { 5, 0 };
			int sig;
			do
				sig = sigtimedwait(&usr1, &si, &wait5);
			while (sig < 0 && errno == EINTR);
			if (sig != SIGUSR1)
				flags |= BAD_SIGNAL;
			else if (si.si_pid != getppid())
				flags |= BAD_SENDER;
		}
		acc = mix64(acc * work_mult[kind] + c.x + (uint64_t)c.step);
		if (flags)
			bad_steps++;
		struct result res = { kind, c.step, flags, 0, acc };
		if (write_all(res_fd, &res, sizeof res))
			_exit(91);
	}
	struct result fin = { kind, FINAL_STEP, 0, bad_steps, acc };
	if (write_all(res_fd, &fin, sizeof fin))
		_exit(92);
	_exit(work_exit[kind]);
}

/* The shell's program: builtins and a function only, so it forks nothing.
 * It checks itself as ids_changed() does, from /proc/self/stat and its
 * parent's /proc/PPID/stat (after the name: state, ppid, pgrp, session). */
static const char sh_script[] =
	"set -f\n"
	"me() {\n"
	"  read -r st < /proc/self/stat\n"
	"  pid=${st%% *}\n"
	"  set -- ${st##*') '}\n"
	"  ppid=$2 pgrp=$3 sid=$4\n"
	"}\n"
	"me\n"
	"pid0=$pid ppid0=$ppid pgrp0=$pgrp sid0=$sid\n"
	"acc=1\n"
	"bad=0\n"
	"while read -r step x; do\n"
	"  me\n"
	"  read -r pst < /proc/$ppid/stat\n"
	"  set -- ${pst##*') '}\n"
	"  v=ok\n"
	"  [ \"$pid $ppid\" = \"$pid0 $ppid0\" ] || v=MISMATCH\n"
	"  case $pgrp0 in $pid0|$ppid0) [ \"$pgrp\" = \"$pgrp0\" ] || v=MISMATCH ;;\n"
	"    *) [ \"$pgrp\" = \"$3\" ] || v=MISMATCH ;; esac\n"
	"  case $sid0 in $pid0|$ppid0) [ \"$sid\" = \"$sid0\" ] || v=MISMATCH ;;\n"
	"    *) [ \"$sid\" = \"$4\" ] || v=MISMATCH ;; esac\n"
	"  [ $v = ok ] || bad=$((bad + 1))\n"
	"  acc=$(( (acc * 31 + x) % 1000003 ))\n"
	"  echo \"sh $step $acc $v\"\n"
	"done\n"
	"echo \"sh final $acc $bad\"\n"
	"exit 15\n";

static void append(char *why, size_t size, const char *who, const char *what)
{
	size_t len = strlen(why);
	snprintf(why + len, size - len, " %s:%s", who, what);
}

/* What a record's flags say, appended to why. */
static void explain(char *why, size_t size, const char *who, uint32_t flags)
{
	static const char *const names[] = { "pid", "ppid", "pgrp", "sid", "signal", "sender", "step" };
	for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
		if (flags & (1u << i))
			append(why, size, who, names[i]);
}

static const char *status_text(int st, char *buf, size_t size)
{
	if (WIFEXITED(st))
		snprintf(buf, size, "exit %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, size, "signal %d", WTERMSIG(st));
	else
		snprintf(buf, size, "status %#x", st);
	return buf;
}

/* The parent's ends of the pipes and the workers' pids. */
static int cmd_w[NWORK], sh_w;
static pid_t pgrp_worker;
static int signal_ok = 1, send_broken;

/* Sends step s's number to every worker and to the shell; the pgrp
 * worker's group gets SIGUSR1 first. */
static void send_step(int s, uint32_t x)
{
	struct cmd c = { s, x };
	if (kill(-pgrp_worker, SIGUSR1))
		signal_ok = 0;
	for (int i = 0; i < NWORK; i++)
		if (write_all(cmd_w[i], &c, sizeof c))
			send_broken = 1;
	char line[64];
	int len = snprintf(line, sizeof line, "%d %u\n", s, x % 1000u);
	if (write_all(sh_w, line, (size_t)len))
		send_broken = 1;
}

int main(int argc, char **argv)
{
	int steps, pause_ms;
	parse_args(argc, argv, &steps, &pause_ms);
	struct ids me0 = my_ids();

	/* SIGUSR1 stays blocked in every child: the pgrp worker waits for it
	 * with sigtimedwait. A broken pipe is reported, not fatal. */
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	signal(SIGPIPE, SIG_IGN);
	fflush(NULL);

	pid_t zombie = fork();
	if (zombie < 0)
		die("fork");
	if (zombie == 0)
		_exit(ZOMBIE_EXIT);

	int cmd[NWORK][2], res[2], sh_in[2], sh_out[2];
	for (int i = 0; i < NWORK; i++) {
		if (pipe2(cmd[i], O_CLOEXEC))
			die("pipe");
		track(cmd[i]);
	}
	if (pipe2(res, O_CLOEXEC) || pipe2(sh_in, O_CLOEXEC) || pipe2(sh_out, O_CLOEXEC))
		die("pipe");
	track(res);
	track(sh_in);
	track(sh_out);

	pid_t work[NWORK];
	for (int i = 0; i < NWORK; i++) {
		work[i] = fork();
		if (work[i] < 0)
			die("fork");
		if (work[i] == 0) {
			close_others(cmd[i][0], res[1]);
			worker(i, cmd[i][0], res[1]);
		}
		if (i == PGRP)
			setpgid(work[i], work[i]); /* as the child does: no race */
	}

	pid_t sh = fork();
	if (sh < 0)
		die("fork");
	if (sh == 0) {
		if (dup2(sh_in[0], 0) < 0 || dup2(sh_out[1], 1) < 0)
			_exit(93);
		close_others(0, 1);
		execl("/bin/sh", "sh", "-c", sh_script, (char *)NULL);
		_exit(94);
	}

	for (int i = 0; i < NWORK; i++) {
		close(cmd[i][0]);
		cmd_w[i] = cmd[i][1];
	}
	sh_w = sh_in[1];
	pgrp_worker = work[PGRP];
	close(res[1]);
	close(sh_in[0]);
	close(sh_out[1]);
	struct lines sh_lines = { .fd = sh_out[0], .len = 0 };

	/* The zombie has exited before step 1: wait for it without reaping. */
	siginfo_t zi;
	memset(&zi, 0, sizeof zi);
	while (waitid(P_PID, (id_t)zombie, &zi, WEXITED | WNOWAIT) < 0)
		if (errno != EINTR)
			die("waitid");

	uint64_t h = 0x7472656500000000ULL;
	uint32_t x = 1;
	send_step(1, x);
	for (int s = 1; s <= steps; s++) {
		char why[512] = "";
		uint64_t value[NWORK] = { 0 };
		int seen[NWORK] = { 0 };
		uint32_t flags[NWORK] = { 0 };
		for (int n = 0; n < NWORK; n++) {
			struct result r;
			if (read_full(res[0], &r, sizeof r, ANSWER_TIMEOUT_MS) != 1) {
				printf("step %d result %d of %d: %s\n", s, n + 1, NWORK,
				       errno == ETIMEDOUT ? "TIMEOUT" : "LOST");
				return 1;
			}
			if (r.kind < 0 || r.kind >= NWORK || seen[r.kind] || r.step != s) {
				printf("step %d stray record kind %d step %d\n", s, r.kind, r.step);
				return 1;
			}
			seen[r.kind] = 1;
			value[r.kind] = r.value;
			flags[r.kind] = r.flags;
		}
		for (int i = 0; i < NWORK; i++)
			explain(why, sizeof why, work_name[i], flags[i]);
		char sh_line[128], sh_acc[32] = "?", sh_verdict[32] = "?";
		int sh_step = 0;
		if (read_line(&sh_lines, sh_line, sizeof sh_line, ANSWER_TIMEOUT_MS) != 1) {
			printf("step %d sh: no answer\n", s);
			return 1;
		}
		if (sscanf(sh_line, "sh %d %31s %31s", &sh_step, sh_acc, sh_verdict) != 3 || sh_step != s) {
			printf("step %d sh answered %s\n", s, sh_line);
			return 1;
		}
		if (strcmp(sh_verdict, "ok"))
			append(why, sizeof why, "sh", "ids");

		/* The parent's view of itself and of its children. */
		struct ids me = my_ids();
		if (me.pid != me0.pid)
			append(why, sizeof why, "parent", "pid");
		if (me0.pgrp == me0.pid && me.pgrp != me0.pgrp)
			append(why, sizeof why, "parent", "pgrp");
		if (me0.sid == me0.pid && me.sid != me0.sid)
			append(why, sizeof why, "parent", "sid");
		for (int i = 0; i < NWORK; i++) {
			pid_t want_pgrp = i == PGRP || i == SESSION ? work[i] : me.pgrp;
			pid_t want_sid = i == SESSION ? work[i] : me.sid;
			if (getpgid(work[i]) != want_pgrp)
				append(why, sizeof why, work_name[i], "getpgid");
			if (getsid(work[i]) != want_sid)
				append(why, sizeof why, work_name[i], "getsid");
		}
		if (getpgid(sh) != me.pgrp || getsid(sh) != me.sid)
			append(why, sizeof why, "sh", "getpgid/getsid");
		if (!signal_ok)
			append(why, sizeof why, "pgrp", "kill");
		if (send_broken)
			append(why, sizeof why, "parent", "send");

		/* Still an unreaped child that exited with 7? */
		const char *zstate = "ok";
		memset(&zi, 0, sizeof zi);
		if (waitid(P_PID, (id_t)zombie, &zi, WEXITED | WNOHANG | WNOWAIT) < 0)
			zstate = "GONE";
		else if (zi.si_pid != zombie || zi.si_code != CLD_EXITED || zi.si_status != ZOMBIE_EXIT)
			zstate = "WRONG";
		else if (getpgid(zombie) != me.pgrp)
			zstate = "MOVED";

		for (int i = 0; i < NWORK; i++)
			h = mix64(h ^ value[i]);
		h = mix64(h + (uint64_t)strtoul(sh_acc, NULL, 10));
		printf("step %d w1 %08x w2 %08x pgrp %08x session %08x sh %s ids %s%s zombie %s\n", s,
		       (unsigned)value[W1], (unsigned)value[W2], (unsigned)value[PGRP],
		       (unsigned)value[SESSION], sh_acc, why[0] ? "MISMATCH" : "ok", why, zstate);
		if (why[0] || strcmp(zstate, "ok"))
			h = mix64(h ^ 0xbad);

		/* The next numbers go out before the pause: in the pipes across it. */
		if (s < steps) {
			x = (uint32_t)(h >> 20) ^ (uint32_t)s;
			send_step(s + 1, x);
		}
		sleep_ms(step_pause_ms(s, pause_ms));
	}

	/* The end: close the number pipes, collect the final records. */
	for (int i = 0; i < NWORK; i++)
		close(cmd[i][1]);
	close(sh_in[1]);
	struct result fin[NWORK];
	memset(fin, 0, sizeof fin);
	int got_fin[NWORK] = { 0 };
	for (;;) {
		struct result r;
		int rr = read_full(res[0], &r, sizeof r, ANSWER_TIMEOUT_MS);
		if (rr == 0)
			break;
		if (rr < 0 || r.kind < 0 || r.kind >= NWORK || r.step != FINAL_STEP || got_fin[r.kind]) {
			printf("end: bad final record\n");
			return 1;
		}
		got_fin[r.kind] = 1;
		fin[r.kind] = r;
	}
	char sh_final[128] = "sh final MISSING";
	if (read_line(&sh_lines, sh_final, sizeof sh_final, ANSWER_TIMEOUT_MS) != 1)
		strcpy(sh_final, "sh final MISSING");

	for (int i = 0; i < NWORK; i++) {
		printf("child %s acc %016llx clean %s\n", work_name[i], (unsigned long long)fin[i].value,
		       !got_fin[i] ? "MISSING" : fin[i].bad_steps ? "NO" : "yes");
		h = mix64(h ^ fin[i].value ^ fin[i].bad_steps);
	}
	printf("child %s\n", sh_final);
	for (const char *p = sh_final; *p; p++)
		h = mix64(h ^ (uint64_t)(unsigned char)*p);

	/* Reap every child by pid, the zombie last. */
	const char *reap_name[NWORK + 2] = { "w1", "w2", "pgrp", "session", "sh", "zombie" };
	pid_t reap_pid[NWORK + 2] = { work[W1], work[W2], work[PGRP], work[SESSION], sh, zombie };
	for (int i = 0; i < NWORK + 2; i++) {
		int st = 0;
		char buf[32];
		pid_t r;
		do
			r = waitpid(reap_pid[i], &st, 0);
		while (r < 0 && errno == EINTR);
		if (r != reap_pid[i])
			snprintf(buf, sizeof buf, "NOT REAPED");
		else
			status_text(st, buf, sizeof buf);
		printf("reaped %s %s\n", reap_name[i], buf);
		h = mix64(h ^ (uint64_t)(r == reap_pid[i] ? st : -1));
	}
	int st;
	const char *none = waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD ? "ok" : "LEFT";
	printf("no more children %s\n", none);
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
