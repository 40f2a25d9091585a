/* pipeline.c: producer -> relay -> consumer, three processes and two pipes
 * that are full at almost any moment.
 *
 * The consumer (the program's first process) forks the relay, and the relay
 * forks the producer, so the producer is a grandchild. The producer writes
 * numbered 24-byte records, a hundred per write, as fast as the pipe takes
 * them; the relay reads them in 4096-byte reads (records straddle reads),
 * transforms each with a running state of its own and writes them on; the
 * consumer takes a fixed number of records per step and sleeps, so it is
 * the slowest and both pipes stay full (hundreds of KiB in flight, the
 * producer and the relay blocked in write). The consumer recomputes what
 * every record must hold (the producer's value, the relay's state), and
 * prints per step the records so far, whether all were exact, and a running
 * checksum.
 *
 * At the end of its records the producer sends a trailer (its own sum and
 * whether its pid, parent, process group and session stayed the same,
 * checked before every write; the relay checks its own after every read:
 * see same_ids), closes
 * its pipe and exits 3; the relay reaps it, sends its own trailer (the
 * producer's, its state, its own checks, the producer's exit status) and
 * exits 40. The consumer reads to end of file, reaps the relay by pid and
 * prints the trailer's verdicts, the relay's status and a final line.
 *
 * Usage: pipeline [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define PER_STEP 400
#define PER_WRITE 100
#define TRAILER UINT64_MAX
#define PRODUCER_EXIT 3
#define RELAY_EXIT 40
#define READ_TIMEOUT_MS 20000

struct rec {
	uint64_t seq;
	uint64_t val;
	uint64_t aux;
};

/* Trailer flags. */
enum {
	PRODUCER_IDS_OK = 1,
	RELAY_IDS_OK = 2,
	RELAY_SEQ_OK = 4,
	PRODUCER_TRAILER_OK = 8,
	PRODUCER_EXIT_OK = 16,
};

struct ids {
	pid_t pid, ppid, pgrp, sid;
};

static struct ids my_ids(void)
{
	struct ids id = { getpid(), getppid(), getpgrp(), getsid(0) };
	return id;
}

/* Whether the ids are as when the process started (`id0`): the same pid
 * and parent; the same process group and session where this process or
 * its parent leads them, else still its parent's (a group or session led
 * from outside the tree cannot be made again by a restart). */
static int same_ids(const struct ids *id0)
{
	struct ids now = my_ids();
	int own_pgrp = id0->pgrp == id0->pid || id0->pgrp == id0->ppid;
	int own_sid = id0->sid == id0->pid || id0->sid == id0->ppid;
	return now.pid == id0->pid && now.ppid == id0->ppid &&
	       now.pgrp == (own_pgrp ? id0->pgrp : getpgid(now.ppid)) &&
	       now.sid == (own_sid ? id0->sid : getsid(now.ppid));
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

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

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Reads exactly n bytes within timeout_ms: 1, 0 at end of file before the
 * first byte, -1 on an error, a timeout or a cut record. */
static int read_full(int fd, void *buf, size_t n, int timeout_ms)
{
	char *p = buf;
	size_t got = 0;
	long deadline = now_ms() + timeout_ms;
	while (got < n) {
		long left = deadline - now_ms();
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int r = left > 0 ? poll(&pfd, 1, (int)left) : 0;
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
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

/* What the producer puts in record i. */
static uint64_t produced(uint64_t i)
{
	return mix64(i * 0x9e3779b97f4a7c15ULL + 1);
}

/* The relay's transformation; `state` is its running state. */
static struct rec relayed(const struct rec *in, uint64_t *state)
{
	*state = mix64(*state ^ in->val);
	struct rec out = { in->seq, in->val ^ *state, in->seq * 3 + 1 };
	return out;
}

static void producer(int out, uint64_t total)
{
	struct ids id0 = my_ids();
	int ids_ok = 1;
	uint64_t sum = 0;
	struct rec batch[PER_WRITE];
	for (uint64_t i = 0; i < total;) {
		int n = 0;
		while (n < PER_WRITE && i < total) {
			batch[n] = (struct rec){ i, produced(i), 0 };
			sum += batch[n].val;
			n++;
			i++;
		}
		ids_ok = ids_ok && same_ids(&id0);
		if (write_all(out, batch, (size_t)n * sizeof batch[0]))
			_exit(90);
	}
	struct rec trailer = { TRAILER, sum, ids_ok ? PRODUCER_IDS_OK : 0 };
	if (write_all(out, &trailer, sizeof trailer))
		_exit(91);
	close(out);
	_exit(PRODUCER_EXIT);
}

static void relay(int out, uint64_t total)
{
	int p[2];
	if (pipe(p))
		die("pipe");
	fflush(NULL);
	pid_t prod = fork();
	if (prod < 0)
		die("fork");
	if (prod == 0) {
		close(p[0]);
		close(out);
		producer(p[1], total);
	}
	close(p[1]);
	int in = p[0];

	struct ids id0 = my_ids();
	int ids_ok = 1, seq_ok = 1, trailer_ok = 0;
	uint64_t state = 0x72656c6179ULL, expect = 0;
	struct rec ptrailer = { 0, 0, 0 };
	/* Incoming bytes (a partial record is kept for the next read) and the
	 * records going out. */
	static char buf[4096 + sizeof(struct rec)];
	static struct rec outbuf[4096 / sizeof(struct rec) + 2];
	size_t have = 0;
	for (;;) {
		ssize_t k = read(in, buf + have, 4096);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			_exit(92);
		if (k == 0)
			break;
		have += (size_t)k;
		size_t nout = 0, off = 0;
		for (; off + sizeof(struct rec) <= have; off += sizeof(struct rec)) {
			struct rec r;
			memcpy(&r, buf + off, sizeof r);
			if (r.seq == TRAILER) {
				ptrailer = r;
				trailer_ok = expect == total;
				continue;
			}
			if (r.seq != expect++)
				seq_ok = 0;
			outbuf[nout++] = relayed(&r, &state);
		}
		memmove(buf, buf + off, have - off);
		have -= off;
		ids_ok = ids_ok && same_ids(&id0);
		if (nout && write_all(out, outbuf, nout * sizeof outbuf[0]))
			_exit(93);
	}
	if (have)
		seq_ok = 0;
	int st = 0;
	pid_t r;
	do
		r = waitpid(prod, &st, 0);
	while (r < 0 && errno == EINTR);
	uint64_t flags = (ptrailer.aux & PRODUCER_IDS_OK) | (ids_ok ? RELAY_IDS_OK : 0) | (seq_ok ? RELAY_SEQ_OK : 0) |
			 (trailer_ok ? PRODUCER_TRAILER_OK : 0);
	if (r == prod && WIFEXITED(st) && WEXITSTATUS(st) == PRODUCER_EXIT)
		flags |= PRODUCER_EXIT_OK;
	struct rec trailer = { TRAILER, mix64(ptrailer.val ^ state), flags };
	if (write_all(out, &trailer, sizeof trailer))
		_exit(94);
	close(out);
	_exit(RELAY_EXIT);
}

int main(int argc, char **argv)
{
	int steps, pause_ms;
	parse_args(argc, argv, &steps, &pause_ms);
	uint64_t total = (uint64_t)steps * PER_STEP;
	signal(SIGPIPE, SIG_IGN);

	int p[2];
	if (pipe(p))
		die("pipe");
	fflush(NULL);
	pid_t rel = fork();
	if (rel < 0)
		die("fork");
	if (rel == 0) {
		close(p[0]);
		relay(p[1], total);
	}
	close(p[1]);
	int in = p[0];

	/* The consumer replays the producer and the relay to check each record. */
	uint64_t state = 0x72656c6179ULL, seq = 0, check = 0, sum = 0;
	int exact = 1;
	static struct rec batch[PER_STEP];
	for (int s = 1; s <= steps; s++) {
		if (read_full(in, batch, sizeof batch, READ_TIMEOUT_MS) != 1) {
			printf("step %d records %llu LOST\n", s, (unsigned long long)seq);
			return 1;
		}
		for (int i = 0; i < PER_STEP; i++, seq++) {
			struct rec want = { seq, produced(seq), 0 };
			sum += want.val;
			want = relayed(&want, &state);
			if (memcmp(&want, &batch[i], sizeof want))
				exact = 0;
			check = mix64(check ^ batch[i].val ^ batch[i].aux << 1);
		}
		printf("step %d records %llu data %s checksum %016llx\n", s, (unsigned long long)seq,
		       exact ? "ok" : "WRONG", (unsigned long long)check);
		sleep_ms(step_pause_ms(s, pause_ms));
	}

	struct rec trailer;
	int tr = read_full(in, &trailer, sizeof trailer, READ_TIMEOUT_MS);
	struct rec extra;
	int more = read_full(in, &extra, sizeof extra, READ_TIMEOUT_MS);
	int trailer_ok = tr == 1 && trailer.seq == TRAILER && trailer.val == mix64(sum ^ state);
	int st = 0;
	pid_t r;
	do
		r = waitpid(rel, &st, 0);
	while (r < 0 && errno == EINTR);

	uint64_t flags = trailer_ok ? trailer.aux : 0;
	printf("trailer %s end of file %s\n", trailer_ok ? "ok" : "WRONG", more == 0 ? "ok" : "LATE");
	printf("producer ids %s trailer %s exit %s\n", flags & PRODUCER_IDS_OK ? "ok" : "CHANGED",
	       flags & PRODUCER_TRAILER_OK ? "ok" : "WRONG", flags & PRODUCER_EXIT_OK ? "ok" : "WRONG");
	printf("relay ids %s seq %s\n", flags & RELAY_IDS_OK ? "ok" : "CHANGED", flags & RELAY_SEQ_OK ? "ok" : "WRONG");
	if (r != rel)
		printf("relay NOT REAPED\n");
	else if (WIFEXITED(st))
		printf("relay exit %d\n", WEXITSTATUS(st));
	else
		printf("relay status %#x\n", st);
	check = mix64(check ^ flags ^ (uint64_t)st ^ (uint64_t)(trailer_ok * 2 + (more == 0)));
	printf("final %016llx\n", (unsigned long long)check);
	return 0;
}
