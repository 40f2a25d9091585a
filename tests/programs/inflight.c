/* inflight.c: bytes in flight on sockets in the states a checkpoint may find
 * them in.
 *
 * - A TCP connection on loopback between the parent and its child "echo",
 *   one byte at a time each way (the child sends back each byte it reads,
 *   plus one), hundreds of round trips a step: at almost any moment one
 *   byte has been sent and not yet acknowledged (the peer acknowledges it
 *   with its answer, or a delayed ACK), and often one waits to be read.
 *   Both ends leave Nagle's algorithm on; the parent also sends a burst of
 *   small writes every step, which Nagle holds back behind the first one.
 * - A Unix stream socketpair and a Unix seqpacket socketpair whose other
 *   ends belonged to the child "gone": it wrote 256 bytes and 12 messages,
 *   then exited before the first step. The parent reads 8 bytes and one
 *   message a step, then sees end of file on both (read returns 0).
 * - Half-closed connections: the child "echo" also wrote 240 bytes on a
 *   second TCP connection and 160 on a Unix socketpair, then shut both
 *   down for writing (shutdown SHUT_WR) and kept them open. The parent
 *   reads 8 bytes of each a step, sees end of file, then answers on the
 *   same socket (its own direction still open) with the sum of the bytes;
 *   the child checks both answers before it exits.
 *
 * Prints "step N ..." each step, with what was read, then "final H".
 *
 * Usage: inflight [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define ROUNDS 300
#define BURST 5
#define ORPHAN_BYTES 256
#define ORPHAN_MSGS 12
#define HALF_TCP 240
#define HALF_UNIX 160

static unsigned char half_byte(int i)
{
	return (unsigned char)(i * 11 + 5);
}

static void die(const char *what)
{
	printf("FAIL %s: %s\n", what, strerror(errno));
	exit(1);
}

static void put(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write");
		p += n;
		len -= (size_t)n;
	}
}

/* Reads exactly len bytes; 0 at end of file before any. */
static size_t get(int fd, void *buf, size_t len)
{
	char *p = buf;
	size_t done = 0;
	while (done < len) {
		ssize_t n = read(fd, p + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("read");
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return done;
}

/* The child at the other end of the TCP connection: answers each byte with
 * the byte plus one, and each burst with its sum. */
static void echo(int fd, int half_tcp, int half_unix)
{
	for (;;) {
		unsigned char b;
		if (get(fd, &b, 1) == 0) {
			/* The parent's answers on the half-closed connections. */
			unsigned char a = 0, u = 0, want_a = 0, want_u = 0;
			for (int i = 0; i < HALF_TCP; i++)
				want_a = (unsigned char)(want_a + half_byte(i));
			for (int i = 0; i < HALF_UNIX; i++)
				want_u = (unsigned char)(want_u + half_byte(i));
			if (get(half_tcp, &a, 1) != 1 || a != want_a || get(half_unix, &u, 1) != 1 || u != want_u)
				_exit(4);
			_exit(0);
		}
		if (b == 0xff) {
			unsigned char burst[BURST], sum = 0;
			if (get(fd, burst, BURST) != BURST)
				_exit(3);
			for (int i = 0; i < BURST; i++)
				sum += burst[i];
			put(fd, &sum, 1);
			continue;
		}
		b = (unsigned char)(b + 1);
		put(fd, &b, 1);
	}
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	signal(SIGPIPE, SIG_IGN);

	/* The orphans: "gone" writes and exits before the first step. */
	int stream[2], seq[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, stream) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, seq))
		die("socketpair");
	pid_t gone = fork();
	if (gone < 0)
		die("fork");
	if (gone == 0) {
		close(stream[0]);
		close(seq[0]);
		unsigned char bytes[ORPHAN_BYTES];
		for (int i = 0; i < ORPHAN_BYTES; i++)
			bytes[i] = (unsigned char)(i * 7 + 3);
		put(stream[1], bytes, sizeof bytes);
		for (int m = 0; m < ORPHAN_MSGS; m++) {
			char msg[32];
			int len = snprintf(msg, sizeof msg, "message %d%.*s", m, m, "abcdefghijklmnop");
			if (send(seq[1], msg, (size_t)len, 0) != len)
				die("send");
		}
		_exit(0);
	}
	close(stream[1]);
	close(seq[1]);
	int status;
	if (waitpid(gone, &status, 0) != gone || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		die("gone");

	int half[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, half))
		die("socketpair");

	/* The TCP connections. */
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof addr;
	if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1) ||
	    getsockname(listener, (struct sockaddr *)&addr, &alen))
		die("listen");
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		close(listener);
		close(stream[0]);
		close(seq[0]);
		close(half[0]);
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&addr, sizeof addr))
			die("connect");
		int c2 = socket(AF_INET, SOCK_STREAM, 0);
		if (c2 < 0 || connect(c2, (struct sockaddr *)&addr, sizeof addr))
			die("connect");
		unsigned char bytes[HALF_TCP];
		for (int i = 0; i < HALF_TCP; i++)
			bytes[i] = half_byte(i);
		put(c2, bytes, HALF_TCP);
		put(half[1], bytes, HALF_UNIX);
		if (shutdown(c2, SHUT_WR) || shutdown(half[1], SHUT_WR))
			die("shutdown");
		echo(c, c2, half[1]);
	}
	close(half[1]);
	int conn = accept(listener, NULL, NULL);
	int conn2 = accept(listener, NULL, NULL);
	if (conn < 0 || conn2 < 0)
		die("accept");
	close(listener);
	struct half_closed {
		const char *name;
		int fd, read, eof;
		unsigned char sum;
	} halves[2] = { { "half-tcp", conn2, 0, 0, 0 }, { "half-unix", half[0], 0, 0, 0 } };

	uint64_t h = 0;
	int stream_eof = 0, seq_eof = 0, stream_read = 0, msgs = 0;
	unsigned char b = 0;
	for (int step = 1; step <= steps; step++) {
		for (int r = 0; r < ROUNDS; r++) {
			unsigned char want = (unsigned char)((b % 200) + 1);
			put(conn, &b, 1);
			if (get(conn, &b, 1) != 1)
				die("tcp end of file");
			if (b != want) {
				printf("FAIL tcp: got %d, expected %d\n", b, want);
				return 1;
			}
			b %= 200;
			h = mix64(h ^ b);
		}
		/* Nagle holds the burst's later writes behind its first. */
		unsigned char burst[BURST], sum = 0, got;
		for (int i = 0; i < BURST; i++) {
			burst[i] = (unsigned char)(step * 13 + i);
			sum += burst[i];
		}
		unsigned char mark = 0xff;
		put(conn, &mark, 1);
		for (int i = 0; i < BURST; i++)
			put(conn, &burst[i], 1);
		if (get(conn, &got, 1) != 1 || got != sum) {
			printf("FAIL burst: got %d, expected %d\n", got, sum);
			return 1;
		}

		char line[256] = "";
		if (!stream_eof) {
			unsigned char chunk[8];
			size_t n = get(stream[0], chunk, sizeof chunk);
			if (n == 0) {
				stream_eof = 1;
				strcat(line, " stream eof");
			} else {
				for (size_t i = 0; i < n; i++) {
					if (chunk[i] != (unsigned char)((stream_read + (int)i) * 7 + 3)) {
						printf("FAIL stream byte %zu\n", stream_read + i);
						return 1;
					}
				}
				stream_read += (int)n;
				snprintf(line + strlen(line), sizeof line - strlen(line), " stream %d", stream_read);
			}
		}
		if (!seq_eof) {
			char msg[64];
			ssize_t n = recv(seq[0], msg, sizeof msg - 1, 0);
			if (n < 0)
				die("recv");
			if (n == 0) {
				seq_eof = 1;
				strcat(line, " seq eof");
			} else {
				msg[n] = 0;
				char want[32];
				snprintf(want, sizeof want, "message %d%.*s", msgs, msgs, "abcdefghijklmnop");
				if (strcmp(msg, want) != 0) {
					printf("FAIL seq: got '%s', expected '%s'\n", msg, want);
					return 1;
				}
				msgs++;
				snprintf(line + strlen(line), sizeof line - strlen(line), " seq %d", msgs);
			}
		}
		for (int k = 0; k < 2; k++) {
			struct half_closed *hc = &halves[k];
			if (hc->eof)
				continue;
			unsigned char chunk[8];
			size_t n = get(hc->fd, chunk, sizeof chunk);
			for (size_t i = 0; i < n; i++) {
				if (chunk[i] != half_byte(hc->read + (int)i)) {
					printf("FAIL %s byte %zu\n", hc->name, hc->read + i);
					return 1;
				}
				hc->sum = (unsigned char)(hc->sum + chunk[i]);
			}
			hc->read += (int)n;
			if (n < sizeof chunk) {
				/* End of file: answer on our own direction. */
				hc->eof = 1;
				put(hc->fd, &hc->sum, 1);
			}
			snprintf(line + strlen(line), sizeof line - strlen(line), " %s %d%s", hc->name, hc->read,
				 hc->eof ? " eof" : "");
		}
		printf("step %d tcp %016llx%s\n", step, (unsigned long long)h, line);
		sleep_ms(step_pause_ms(step, pause));
	}
	close(conn);
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		printf("FAIL echo exit\n");
		return 1;
	}
	printf("final %016llx stream %d seq %d eof %d %d half %d %d eof %d %d\n", (unsigned long long)h, stream_read,
	       msgs, stream_eof, seq_eof, halves[0].read, halves[1].read, halves[0].eof, halves[1].eof);
	return 0;
}
