/* sockets.c: stream sockets between the processes of one computation, with
 * bytes in flight in both directions at almost any moment.
 *
 * - A socketpair(AF_UNIX, SOCK_STREAM) to the child "pair": the parent asks,
 *   3 requests ahead (the next goes out before its pause); the child reads
 *   a request only once the next one is queued behind it, so its receive
 *   queue is never empty mid-run, and its answers wait in the parent's.
 * - A Unix stream listener on a file in the current directory: "uclient"
 *   connects and asks, 3 requests ahead (they wait in the parent's queue
 *   through its pause); the parent answers.
 * - A TCP listener on 127.0.0.1 (ephemeral port): "tclient" connects and
 *   asks, 2 ahead, TCP_NODELAY on both ends. The listener stays open: at step
 *   STEPS*2/3 the parent sends "late" (blocked on a pipe till then) a token,
 *   and "late" connects to it and makes one exchange.
 *
 * A message is a header (step, the sender's count of failed checks, a value)
 * and padding derived from the value (40..2000 bytes). A request depends on
 * the asker's state (every answer so far), an answer on the request and the
 * answerer's state (every request so far); each side replays the other's
 * state and checks every value, and the parent checksums every byte it gets,
 * so a byte lost, doubled or moved shows. Each step the parent also checks
 * that its sockets keep their names and peers (getsockname, getpeername:
 * an accepted Unix connection is named after the listener's path) and
 * options (SO_ACCEPTCONN, SO_TYPE, SO_DOMAIN, TCP_NODELAY), and names any
 * that changed.
 *
 * At the end every child sends a final record (its state, its failed checks)
 * and exits with its own status (pair 21, uclient 22, tclient 23, late 24);
 * the parent checks them and end of file, reaps the children by pid, removes
 * the socket file. No pid, port or path is printed.
 *
 * Prints "step N ..." each step, then a line per connection, one for the
 * listeners and the socket file, each child's exit status, "final H".
 *
 * Usage: sockets [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

enum { PAIR, UCLIENT, TCLIENT, LATE, NCHAN };
static const char *const chan_name[NCHAN] = { "pair", "uclient", "tclient", "late" };
static const int chan_ahead[NCHAN] = { 3, 3, 2, 1 };
static const size_t chan_pad[NCHAN] = { 40, 300, 2000, 500 };
static const int chan_exit[NCHAN] = { 21, 22, 23, 24 };
#define LATE_WRONG 25
#define MAXPAD 2048
#define FINAL (-1)
#define TIMEOUT_MS 20000

struct hdr {
	int32_t step;
	uint32_t bad;
	uint64_t val;
};

/* One end of a conversation: its own state as asker (r) or answerer (p),
 * and its replay of the other side's. */
struct end {
	int fd, ahead;
	size_t pad;
	uint64_t r, p, ck;
	uint64_t hist[8]; /* answerer: the asker's r after j answers, at j % 8 */
	uint64_t sent[8]; /* asker: request k, at k % 8 */
	uint32_t bad, peer_bad;
};

static char sock_path[64];

/* Waits up to TIMEOUT_MS for `events` on fd: 0, or -1 (ETIMEDOUT if none). */
static int wait_for(int fd, short events)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int r;
	do
		r = poll(&pfd, 1, TIMEOUT_MS);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		errno = ETIMEDOUT;
	return r > 0 ? 0 : -1;
}

static int send_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Exactly n bytes: 1; 0 at end of file before the first byte; -1 on an
 * error, a timeout (no byte for TIMEOUT_MS) or a cut message. */
static int recv_full(int fd, void *buf, size_t n)
{
	char *p = buf;
	for (size_t got = 0; got < n;) {
		if (wait_for(fd, POLLIN))
			return -1;
		ssize_t k = recv(fd, p + got, n - got, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k == 0 && got == 0 ? 0 : -1;
		got += (size_t)k;
	}
	return 1;
}

static int connect_within(int fd, const void *addr, socklen_t len)
{
	if (connect(fd, addr, len) == 0)
		return 0;
	int err = 0;
	socklen_t n = sizeof err;
	return errno == EINTR && !wait_for(fd, POLLOUT) && !getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &n) && !err
		       ? 0
		       : -1;
}

static int accept_within(int lfd)
{
	int fd;
	do
		fd = wait_for(lfd, POLLIN) ? -1 : accept(lfd, NULL, NULL);
	while (fd < 0 && errno == EINTR);
	return fd;
}

/* Waits (up to TIMEOUT_MS) until fd has `need` bytes queued, or end of file. */
static void wait_queued(int fd, size_t need)
{
	for (int i = 0; i < TIMEOUT_MS / 2; i++) {
		int queued = 0;
		struct pollfd pfd = { .fd = fd, .events = POLLRDHUP };
		if (ioctl(fd, FIONREAD, &queued) || (size_t)queued >= need || poll(&pfd, 1, 0) != 0)
			return;
		sleep_ms(2);
	}
}

static void fill(unsigned char *p, size_t n, uint64_t v)
{
	for (size_t i = 0; i < n; i++) {
		if (i % 8 == 0)
			v = mix64(v + i);
		p[i] = (unsigned char)(v >> (i % 8 * 8));
	}
}

/* The protocol: request k from the asker's state; the answerer's state
 * takes in each request; the asker's takes in each answer. */
static uint64_t request_val(uint64_t r, int k)
{
	return mix64(r + (uint64_t)k * 0x9e3779b97f4a7c15ULL);
}

static uint64_t answer_val(uint64_t *p, uint64_t q, int k)
{
	*p = mix64(*p * 31 + q + (uint64_t)k);
	return *p ^ (q >> 1);
}

static void took_answer(uint64_t *r, uint64_t v, int k)
{
	*r = mix64(*r ^ v ^ (uint64_t)k << 32);
}

static void init_end(struct end *e, int fd, int chan, uint64_t seed)
{
	memset(e, 0, sizeof *e);
	e->fd = fd;
	e->ahead = chan_ahead[chan];
	e->pad = chan_pad[chan];
	e->r = e->hist[0] = seed ^ (uint64_t)chan;
	e->p = ~seed + (uint64_t)chan;
	e->ck = (uint64_t)chan;
}

static int send_msg(struct end *e, int step, uint64_t val)
{
	static unsigned char buf[sizeof(struct hdr) + MAXPAD];
	struct hdr h = { step, e->bad, val };
	memcpy(buf, &h, sizeof h);
	fill(buf + sizeof h, e->pad, val);
	return send_all(e->fd, buf, sizeof h + e->pad);
}

/* The message for `step` (1, counting what is wrong in e->bad), 0 at end
 * of file, -1 on an error or a timeout. */
static int recv_msg(struct end *e, int step, uint64_t *val)
{
	static unsigned char buf[sizeof(struct hdr) + MAXPAD], want[MAXPAD];
	int r = recv_full(e->fd, buf, sizeof(struct hdr) + e->pad);
	if (r != 1)
		return r;
	struct hdr h;
	memcpy(&h, buf, sizeof h);
	fill(want, e->pad, h.val);
	if (h.step != step || memcmp(want, buf + sizeof h, e->pad))
		e->bad++;
	for (size_t i = 0; i < sizeof h + e->pad; i++)
		e->ck = (e->ck ^ buf[i]) * 0x100000001b3ULL;
	e->ck = mix64(e->ck);
	e->peer_bad = h.bad;
	*val = h.val;
	return 1;
}

static int ask(struct end *e, int k)
{
	e->sent[k % 8] = request_val(e->r, k);
	return send_msg(e, k, e->sent[k % 8]);
}

static int take_answer(struct end *e, int k)
{
	uint64_t v;
	int r = recv_msg(e, k, &v);
	if (r == 1 && v != answer_val(&e->p, e->sent[k % 8], k))
		e->bad++;
	if (r == 1)
		took_answer(&e->r, v, k);
	return r;
}

/* Reads request k and answers it. */
static int serve(struct end *e, int k)
{
	uint64_t q;
	int r = recv_msg(e, k, &q);
	if (r != 1)
		return r;
	if (q != request_val(e->hist[(k > e->ahead ? k - e->ahead : 0) % 8], k))
		e->bad++;
	uint64_t v = answer_val(&e->p, q, k);
	took_answer(&e->r, v, k);
	e->hist[k % 8] = e->r;
	return send_msg(e, k, v) ? -1 : 1;
}

/* What the parent's sockets must keep, as two hashes: their names and
 * peers (id[0]) and their options (id[1]). */
static void sock_id(int fd, uint64_t id[2])
{
	static const int opts[][2] = { { SOL_SOCKET, SO_ACCEPTCONN }, { SOL_SOCKET, SO_TYPE },
				       { SOL_SOCKET, SO_DOMAIN }, { IPPROTO_TCP, TCP_NODELAY } };
	id[0] = id[1] = 1;
	for (int peer = 0; peer < 2; peer++) {
		struct sockaddr_storage a;
		socklen_t n = sizeof a;
		memset(&a, 0, sizeof a);
		int rc = peer ? getpeername(fd, (struct sockaddr *)&a, &n) : getsockname(fd, (struct sockaddr *)&a, &n);
		id[0] = mix64(id[0] ^ (uint64_t)rc ^ (uint64_t)n << 8);
		for (socklen_t i = 0; rc == 0 && i < n && i < sizeof a; i++)
			id[0] = mix64(id[0] ^ ((const unsigned char *)&a)[i]);
	}
	for (unsigned i = 0; i < sizeof opts / sizeof opts[0]; i++) {
		int v = -1;
		socklen_t n = sizeof v;
		int rc = getsockopt(fd, opts[i][0], opts[i][1], &v, &n);
		id[1] = mix64(id[1] ^ (uint64_t)(rc ? 0xee : v) << (i * 8));
	}
}

/* The parent's sockets, and what they were just after the accepts. */
enum { NWATCH = 5 };
static const char *const watch_name[NWATCH] = { "pair", "ulisten", "tlisten", "uclient", "tclient" };
static int watched[NWATCH];
static uint64_t watch_id0[NWATCH][2];

/* Appends to `out` each of them whose names or options changed. */
static void sockets_changed(char *out, size_t size)
{
	for (int i = 0; i < NWATCH; i++) {
		uint64_t id[2];
		sock_id(watched[i], id);
		for (int j = 0; j < 2; j++)
			if (id[j] != watch_id0[i][j]) {
				size_t len = strlen(out);
				snprintf(out + len, size - len, " %s:%s", watch_name[i], j ? "options" : "name");
			}
	}
}

static void fail(int s, const char *who)
{
	printf("step %d %s %s\n", s, who, errno == ETIMEDOUT ? "TIMEOUT" : "LOST");
	unlink(sock_path);
	exit(1);
}

int main(int argc, char **argv)
{
	int steps, pause_ms;
	parse_args(argc, argv, &steps, &pause_ms);
	signal(SIGPIPE, SIG_IGN);
	const int late_step = steps * 2 / 3;
	const uint64_t seed = 0x736f636b657473ULL;

	int sp[2], go[2], one = 1;
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || pipe(go))
		return perror("socketpair"), 1;
	snprintf(sock_path, sizeof sock_path, "srv-%d.sock", (int)getpid());
	unlink(sock_path);
	struct sockaddr_un ua = { .sun_family = AF_UNIX };
	strcpy(ua.sun_path, sock_path);
	int ul = socket(AF_UNIX, SOCK_STREAM, 0);
	if (ul < 0 || bind(ul, (struct sockaddr *)&ua, sizeof ua) || listen(ul, 4))
		return perror("unix listener"), 1;
	struct sockaddr_in ta = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t talen = sizeof ta;
	int tl = socket(AF_INET, SOCK_STREAM, 0);
	if (tl < 0 || bind(tl, (struct sockaddr *)&ta, sizeof ta) || listen(tl, 4) ||
	    getsockname(tl, (struct sockaddr *)&ta, &talen))
		return perror("tcp listener"), 1;

	const int inherited[] = { sp[0], sp[1], go[0], go[1], ul, tl };
	pid_t kid[NCHAN];
	fflush(NULL);
	for (int c = 0; c < NCHAN; c++) {
		if ((kid[c] = fork()) < 0)
			return perror("fork"), 1;
		if (kid[c])
			continue;
		int keep = c == PAIR ? sp[1] : c == LATE ? go[0] : -1;
		for (unsigned i = 0; i < sizeof inherited / sizeof inherited[0]; i++)
			if (inherited[i] != keep)
				close(inherited[i]);
		struct end e;
		uint64_t token = seed;
		if (c == PAIR) { /* answers until end of file, then a final record */
			init_end(&e, sp[1], c, seed);
			size_t len = sizeof(struct hdr) + e.pad;
			int r, k = 1;
			do /* request k waits for k + 1 behind it: never an empty queue */
				wait_queued(sp[1], k < steps ? 2 * len : len);
			while ((r = serve(&e, k++)) == 1);
			_exit(r < 0 ? 90 : send_msg(&e, FINAL, e.p) ? 91 : chan_exit[c]);
		}
		if (c == LATE) { /* waits for its token, then one exchange */
			ssize_t n;
			do
				n = read(go[0], &token, sizeof token);
			while (n < 0 && errno == EINTR);
			if (n != sizeof token)
				_exit(95);
		}
		int fd = c == UCLIENT ? socket(AF_UNIX, SOCK_STREAM, 0) : socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || (c == TCLIENT && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one)) ||
		    (c == UCLIENT ? connect_within(fd, &ua, sizeof ua) : connect_within(fd, &ta, sizeof ta)))
			_exit(96);
		int last = c == LATE ? 1 : steps;
		init_end(&e, fd, c, token);
		for (int k = 1; k <= e.ahead && k <= last; k++)
			if (ask(&e, k))
				_exit(97);
		for (int k = 1; k <= last; k++)
			if (take_answer(&e, k) != 1 || (k + e.ahead <= last && ask(&e, k + e.ahead)))
				_exit(98);
		if (c == LATE)
			_exit(e.bad || e.peer_bad ? LATE_WRONG : chan_exit[c]);
		_exit(send_msg(&e, FINAL, e.r) ? 99 : chan_exit[c]);
	}
	close(sp[1]);
	close(go[0]);

	int uc = accept_within(ul), tc = accept_within(tl);
	if (uc < 0 || tc < 0 || setsockopt(tc, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one))
		fail(0, "accept");
	struct end e[3];
	init_end(&e[PAIR], sp[0], PAIR, seed);
	init_end(&e[UCLIENT], uc, UCLIENT, seed);
	init_end(&e[TCLIENT], tc, TCLIENT, seed);
	const int fds[NWATCH] = { sp[0], ul, tl, uc, tc };
	for (int i = 0; i < NWATCH; i++)
		sock_id(watched[i] = fds[i], watch_id0[i]);

	uint64_t h = 0x736f636b00000000ULL, late_ck = 0;
	int late_ok = 0;
	for (int k = 1; k <= chan_ahead[PAIR] && k <= steps; k++)
		if (ask(&e[PAIR], k))
			fail(0, "pair");
	for (int s = 1; s <= steps; s++) {
		if (take_answer(&e[PAIR], s) != 1)
			fail(s, "pair");
		if (s + e[PAIR].ahead <= steps && ask(&e[PAIR], s + e[PAIR].ahead))
			fail(s, "pair");
		if (serve(&e[UCLIENT], s) != 1)
			fail(s, "uclient");
		if (serve(&e[TCLIENT], s) != 1)
			fail(s, "tclient");

		char late[32] = "";
		if (s == late_step) {
			/* The listener still takes connections: "late" connects now. */
			struct end le;
			uint64_t token = e[TCLIENT].p, byte;
			if (write(go[1], &token, sizeof token) != sizeof token)
				fail(s, "late token");
			int fd = accept_within(tl);
			if (fd < 0)
				fail(s, "late accept");
			init_end(&le, fd, LATE, token);
			late_ok = serve(&le, 1) == 1 && recv_full(fd, &byte, 1) == 0 && !le.bad;
			late_ck = le.ck;
			close(fd);
			snprintf(late, sizeof late, " late %08x %s", (unsigned)late_ck, late_ok ? "ok" : "BAD");
		}
		char changed[160] = "";
		sockets_changed(changed, sizeof changed);

		char line[256];
		int len = 0;
		for (int c = 0; c < 3; c++) {
			len += snprintf(line + len, sizeof line - (size_t)len, " %s %08x %s", chan_name[c],
					(unsigned)e[c].ck, e[c].bad || e[c].peer_bad ? "BAD" : "ok");
			h = mix64(h ^ e[c].ck ^ e[c].bad ^ (uint64_t)e[c].peer_bad << 32);
		}
		h = mix64(h ^ late_ck ^ (uint64_t)!changed[0] << 1 ^ (uint64_t)late_ok);
		printf("step %d%s sockets %s%s%s\n", s, line, changed[0] ? "CHANGED" : "ok", changed, late);
		sleep_ms(step_pause_ms(s, pause_ms));
	}

	/* The end: every child sends a final record, then end of file. */
	close(go[1]);
	shutdown(sp[0], SHUT_WR);
	for (int c = 0; c < 3; c++) {
		uint64_t v;
		char byte;
		int got = recv_msg(&e[c], FINAL, &v) == 1;
		int ok = got && v == (c == PAIR ? e[c].p : e[c].r) && !e[c].bad && !e[c].peer_bad;
		int eof = got && recv_full(e[c].fd, &byte, 1) == 0;
		printf("child %s checksum %016llx final %s end of file %s\n", chan_name[c],
		       (unsigned long long)e[c].ck, !got ? "MISSING" : ok ? "ok" : "BAD", eof ? "ok" : "NO");
		h = mix64(h ^ e[c].ck ^ (uint64_t)(ok + 2 * eof + 4 * got));
		close(e[c].fd);
	}
	struct pollfd lp[2] = { { .fd = ul, .events = POLLIN }, { .fd = tl, .events = POLLIN } };
	int idle = poll(lp, 2, 0) == 0;
	close(ul);
	close(tl);
	int removed = unlink(sock_path) == 0;
	printf("listeners idle %s socket file removed %s\n", idle ? "ok" : "NO", removed ? "ok" : "NO");
	h = mix64(h ^ (uint64_t)(idle + 2 * removed));

	for (int c = 0; c < NCHAN; c++) {
		int st = 0;
		pid_t r;
		do
			r = waitpid(kid[c], &st, 0);
		while (r < 0 && errno == EINTR);
		if (r != kid[c])
			printf("reaped %s NOT REAPED\n", chan_name[c]);
		else if (WIFEXITED(st))
			printf("reaped %s exit %d\n", chan_name[c], WEXITSTATUS(st));
		else
			printf("reaped %s status %#x\n", chan_name[c], st);
		h = mix64(h ^ (uint64_t)(r == kid[c] ? st : -1));
	}
	int st;
	printf("no more children %s\n", waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD ? "ok" : "LEFT");
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
