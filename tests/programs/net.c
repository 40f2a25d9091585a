/* net.c: a TCP server on one port over IPv4 and IPv6, as Open MPI's ranks
 * and many daemons set it up, with its clients, and socket options set
 * everywhere.
 *
 * - The parent listens on 0.0.0.0:P and on [::]:P (IPV6_V6ONLY, so that
 *   both can hold the port), SO_REUSEADDR on both, an ephemeral port P.
 * - Before its first step it connects to each listener three times and
 *   closes its accepted end first: those connections sit in TIME_WAIT on
 *   port P for a minute, as a killed server's do.
 * - Child "c4" connects to 127.0.0.1:P, child "c6" to [::1]:P; every step
 *   the parent sends each a request and reads its answer.
 * - A third listener on 127.0.0.1 (port Q) has no SO_REUSEADDR, as Open
 *   MPI's PMIx server in mpirun: c4 connects to it too and every step
 *   answers a request there as well. Killed, that connection may leave
 *   port Q in TIME_WAIT without SO_REUSEADDR.
 * - Options set by the program: on the listeners SO_RCVBUF and
 *   TCP_KEEPIDLE (the accepted ends inherit them), on the accepted ends
 *   TCP_NODELAY and SO_KEEPALIVE; on the clients TCP_NODELAY, SO_SNDBUF,
 *   SO_RCVBUF, SO_LINGER, SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT,
 *   IP_TOS (IPV6_TCLASS for c6), SO_RCVTIMEO, SO_SNDTIMEO, SO_OOBINLINE;
 *   on an unconnected UDP socket bound to 127.0.0.1 SO_BROADCAST,
 *   SO_RCVBUF, IP_TOS; on a TCP socket never bound nor connected
 *   SO_REUSEADDR, SO_SNDBUF, SO_LINGER, TCP_NODELAY. The clients never set
 *   SO_REUSEADDR: it must read 0 throughout.
 *   Every process reads each option back right after setting it and
 *   checks every step that getsockopt still reads the same; the parent also
 *   checks the listeners' names (same port on both) and its connections'
 *   peers. A client counts what it found wrong in its answers.
 *
 * The parent prints "step N ..." each step, each client's exit status and
 * "final H". No port or address is printed. With no IPv6 on the machine
 * it prints "ipv6 none" and runs without c6 (the same in every run).
 *
 * Usage: net [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

/* An option a process set, and what getsockopt read right after. */
struct opt {
	int fd, level, name;
	socklen_t len;
	unsigned char value[32];
	const char *what;
};

static struct opt opts[64];
static int nopts;

static void die(const char *what)
{
	fprintf(stderr, "net: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Records what getsockopt reads of an option now. */
static void watch_opt(int fd, int level, int name, const char *what)
{
	struct opt *o = &opts[nopts++];
	o->fd = fd;
	o->level = level;
	o->name = name;
	o->what = what;
	o->len = sizeof o->value;
	if (getsockopt(fd, level, name, o->value, &o->len))
		die(what);
}

/* Sets an option and records what the kernel reads back. */
static void set_opt(int fd, int level, int name, const void *v, socklen_t len, const char *what)
{
	if (setsockopt(fd, level, name, v, len))
		die(what);
	watch_opt(fd, level, name, what);
}

static void set_int(int fd, int level, int name, int v, const char *what)
{
	set_opt(fd, level, name, &v, sizeof v, what);
}

/* The options that no longer read back the same (their names on stderr). */
static int changed_options(void)
{
	int bad = 0;
	for (int i = 0; i < nopts; i++) {
		unsigned char now[32];
		socklen_t len = sizeof now;
		if (getsockopt(opts[i].fd, opts[i].level, opts[i].name, now, &len) || len != opts[i].len ||
		    memcmp(now, opts[i].value, len)) {
			fprintf(stderr, "net[%d]: %s changed\n", (int)getpid(), opts[i].what);
			bad++;
		}
	}
	return bad;
}

static void write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("write");
		p += w;
		n -= (size_t)w;
	}
}

/* Reads exactly n bytes; 0 at end of file before any. */
static int read_all(int fd, void *buf, size_t n)
{
	char *p = buf;
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r < 0)
			die("read");
		if (r == 0) {
			if (got)
				die("short read");
			return 0;
		}
		got += (size_t)r;
	}
	return 1;
}

struct request {
	int64_t step;
	uint64_t value;
};

struct answer {
	uint64_t value;
	int64_t bad;
};

static void client_options(int fd, int v6)
{
	struct linger lg = { 1, 3 };
	struct timeval rcv = { 20, 250000 }, snd = { 21, 0 };
	set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1, "client TCP_NODELAY");
	set_int(fd, SOL_SOCKET, SO_SNDBUF, 40000, "client SO_SNDBUF");
	set_int(fd, SOL_SOCKET, SO_RCVBUF, 30000, "client SO_RCVBUF");
	set_opt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg, "client SO_LINGER");
	set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "client SO_KEEPALIVE");
	set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, 77, "client TCP_KEEPIDLE");
	set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, 11, "client TCP_KEEPINTVL");
	set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, 4, "client TCP_KEEPCNT");
	if (v6)
		set_int(fd, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "client IPV6_TCLASS");
	else
		set_int(fd, IPPROTO_IP, IP_TOS, 0x08, "client IP_TOS");
	set_opt(fd, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof rcv, "client SO_RCVTIMEO");
	set_opt(fd, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd, "client SO_SNDTIMEO");
	set_int(fd, SOL_SOCKET, SO_OOBINLINE, 1, "client SO_OOBINLINE");
	/* Never set: it must keep reading 0. */
	watch_opt(fd, SOL_SOCKET, SO_REUSEADDR, "client SO_REUSEADDR");
}

/* The plain listener's address, which c4 connects to as well. */
static struct sockaddr_in plain;

/* A client: answers every request until step -1, then exits 0 if every
 * check passed. c4 also answers each request on its connection to the
 * plain listener. */
static void client(const struct sockaddr *server, socklen_t len, int v6)
{
	int q = -1;
	if (!v6) {
		q = socket(AF_INET, SOCK_STREAM, 0);
		if (q < 0 || connect(q, (struct sockaddr *)&plain, sizeof plain))
			die("connect to the plain listener");
		watch_opt(q, SOL_SOCKET, SO_REUSEADDR, "plain client SO_REUSEADDR");
	}
	int fd = socket(server->sa_family, SOCK_STREAM, 0);
	if (fd < 0)
		die("client socket");
	client_options(fd, v6);
	if (connect(fd, server, len))
		die("client connect");
	struct sockaddr_storage peer;
	socklen_t plen = sizeof peer;
	if (getpeername(fd, (struct sockaddr *)&peer, &plen))
		die("getpeername");
	uint64_t state = v6 ? 6 : 4;
	int64_t bad = 0;
	for (;;) {
		struct request r;
		if (!read_all(fd, &r, sizeof r))
			exit(3);
		if (r.step < 0)
			break;
		struct sockaddr_storage now;
		socklen_t nlen = sizeof now;
		bad += changed_options();
		if (getpeername(fd, (struct sockaddr *)&now, &nlen) || nlen != plen || memcmp(&now, &peer, plen))
			bad++;
		if (q >= 0) {
			uint64_t v;
			if (!read_all(q, &v, sizeof v))
				exit(5);
			v = mix64(v + 1);
			write_all(q, &v, sizeof v);
			state ^= v;
		}
		state = mix64(state ^ r.value);
		struct answer a = { state, bad };
		write_all(fd, &a, sizeof a);
	}
	close(fd);
	exit(bad ? 4 : 0);
}

static int listener(int family, const struct sockaddr *addr, socklen_t len, int reuse)
{
	int fd = socket(family, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	if (reuse)
		set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1, "listener SO_REUSEADDR");
	else
		watch_opt(fd, SOL_SOCKET, SO_REUSEADDR, "plain listener SO_REUSEADDR");
	if (family == AF_INET6)
		set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1, "listener IPV6_V6ONLY");
	set_int(fd, SOL_SOCKET, SO_RCVBUF, 50000, "listener SO_RCVBUF");
	set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, 99, "listener TCP_KEEPIDLE");
	if (bind(fd, addr, len) || listen(fd, 8)) {
		close(fd);
		return -1;
	}
	return fd;
}

static int accept_from(int l)
{
	int fd;
	while ((fd = accept(l, NULL, NULL)) < 0 && errno == EINTR)
		;
	if (fd < 0)
		die("accept");
	return fd;
}

/* Connections to `l` at `addr` whose server end closes first: they stay
 * in TIME_WAIT on the listener's port. */
static void leave_time_wait(int l, const struct sockaddr *addr, socklen_t len)
{
	for (int i = 0; i < 3; i++) {
		int c = socket(addr->sa_family, SOCK_STREAM, 0);
		if (c < 0 || connect(c, addr, len))
			die("connect to self");
		int s = accept_from(l);
		close(s);
		char b;
		while (read(c, &b, 1) > 0)
			;
		close(c);
	}
}

static uint16_t port_of(int fd)
{
	struct sockaddr_storage a;
	socklen_t len = sizeof a;
	if (getsockname(fd, (struct sockaddr *)&a, &len))
		die("getsockname");
	return a.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&a)->sin_port)
				      : ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);

	struct sockaddr_in any4 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY) };
	int l4 = listener(AF_INET, (struct sockaddr *)&any4, sizeof any4, 1);
	if (l4 < 0)
		die("IPv4 listener");
	uint16_t port = port_of(l4);
	struct sockaddr_in6 any6 = { .sin6_family = AF_INET6, .sin6_addr = in6addr_any, .sin6_port = htons(port) };
	int l6 = listener(AF_INET6, (struct sockaddr *)&any6, sizeof any6, 1);
	int have6 = l6 >= 0;
	if (!have6)
		printf("ipv6 none\n");

	struct sockaddr_in lo4 = { .sin_family = AF_INET, .sin_port = htons(port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in loq = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int lq = listener(AF_INET, (struct sockaddr *)&loq, sizeof loq, 0);
	if (lq < 0)
		die("plain listener");
	loq.sin_port = htons(port_of(lq));
	struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_loopback };
	leave_time_wait(l4, (struct sockaddr *)&lo4, sizeof lo4);
	if (have6)
		leave_time_wait(l6, (struct sockaddr *)&lo6, sizeof lo6);

	plain = loq;
	pid_t kids[2] = { 0, 0 };
	kids[0] = fork();
	if (kids[0] == 0) {
		close(lq);
		close(l4);
		if (have6)
			close(l6);
		nopts = 0;
		client((struct sockaddr *)&lo4, sizeof lo4, 0);
	}
	if (have6) {
		kids[1] = fork();
		if (kids[1] == 0) {
			close(lq);
			close(l4);
			close(l6);
			nopts = 0;
			client((struct sockaddr *)&lo6, sizeof lo6, 1);
		}
	}
	int qc = accept_from(lq);
	watch_opt(qc, SOL_SOCKET, SO_REUSEADDR, "plain accepted SO_REUSEADDR");
	int conn[2] = { accept_from(l4), have6 ? accept_from(l6) : -1 };
	for (int k = 0; k < 2; k++) {
		if (conn[k] < 0)
			continue;
		set_int(conn[k], IPPROTO_TCP, TCP_NODELAY, 1, "accepted TCP_NODELAY");
		set_int(conn[k], SOL_SOCKET, SO_KEEPALIVE, 1, "accepted SO_KEEPALIVE");
	}
	/* Not connected: a UDP socket bound to loopback, a TCP socket never used. */
	int udp = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in lo_any = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (udp < 0 || bind(udp, (struct sockaddr *)&lo_any, sizeof lo_any))
		die("udp");
	set_int(udp, SOL_SOCKET, SO_BROADCAST, 1, "udp SO_BROADCAST");
	set_int(udp, SOL_SOCKET, SO_RCVBUF, 20000, "udp SO_RCVBUF");
	set_int(udp, IPPROTO_IP, IP_TOS, 0x10, "udp IP_TOS");
	int idle = socket(AF_INET, SOCK_STREAM, 0);
	struct linger lg = { 1, 7 };
	if (idle < 0)
		die("idle socket");
	set_int(idle, SOL_SOCKET, SO_REUSEADDR, 1, "idle SO_REUSEADDR");
	set_int(idle, SOL_SOCKET, SO_SNDBUF, 12345, "idle SO_SNDBUF");
	set_opt(idle, SOL_SOCKET, SO_LINGER, &lg, sizeof lg, "idle SO_LINGER");
	set_int(idle, IPPROTO_TCP, TCP_NODELAY, 1, "idle TCP_NODELAY");

	struct sockaddr_storage peers[2];
	socklen_t plen[2];
	for (int k = 0; k < 2; k++) {
		plen[k] = sizeof peers[k];
		if (conn[k] >= 0 && getpeername(conn[k], (struct sockaddr *)&peers[k], &plen[k]))
			die("getpeername");
	}

	uint64_t h = 0x5eed;
	for (int step = 1; step <= steps; step++) {
		int bad = changed_options();
		if (port_of(l4) != port || (have6 && port_of(l6) != port))
			bad++;
		uint64_t got[2] = { 0, 0 };
		int64_t their_bad = 0;
		for (int k = 0; k < 2; k++) {
			if (conn[k] < 0)
				continue;
			struct sockaddr_storage now;
			socklen_t nlen = sizeof now;
			if (getpeername(conn[k], (struct sockaddr *)&now, &nlen) || nlen != plen[k] ||
			    memcmp(&now, &peers[k], nlen))
				bad++;
			struct request q = { step, mix64(h + (uint64_t)k) };
			write_all(conn[k], &q, sizeof q);
			if (k == 0) {
				uint64_t v = h, back;
				write_all(qc, &v, sizeof v);
				if (!read_all(qc, &back, sizeof back) || back != mix64(v + 1))
					bad++;
			}
			struct answer a;
			if (!read_all(conn[k], &a, sizeof a))
				die("client gone");
			got[k] = a.value;
			their_bad += a.bad;
			h = mix64(h ^ a.value);
		}
		printf("step %d v4 %016llx v6 %016llx checks %s\n", step, (unsigned long long)got[0],
		       (unsigned long long)got[1], bad || their_bad ? "FAILED" : "ok");
		sleep_ms(step_pause_ms(step, pause));
	}
	for (int k = 0; k < 2; k++) {
		if (conn[k] < 0)
			continue;
		struct request q = { -1, 0 };
		write_all(conn[k], &q, sizeof q);
		int status;
		if (waitpid(kids[k], &status, 0) != kids[k])
			die("waitpid");
		printf("client %s exit %d\n", k ? "c6" : "c4", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		close(conn[k]);
	}
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
