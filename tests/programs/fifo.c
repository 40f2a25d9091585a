/* fifo.c: a parent and its child talking through two named pipes and a pair
 * of connected UDP sockets.
 *
 * The parent makes two FIFOs in its working directory and forks; the child
 * reads numbers from "down" and answers on "up"; the parent keeps two
 * steps of numbers ahead in "down", so bytes are in flight across a
 * checkpoint. Each step the parent also sends a datagram to the child over
 * loopback UDP (both sockets bound and connected to each other) and waits
 * for the answer. Reads wait at most 10 s, so a lost channel prints
 * "LOST" instead of hanging.
 *
 * Prints "step N ..." each step, the child's exit status and "final H".
 * Usage: fifo [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

static int wait_readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	for (;;) {
		int r = poll(&p, 1, 10000);
		if (r < 0 && errno == EINTR)
			continue;
		return r;
	}
}

static int read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		if (wait_readable(fd) <= 0)
			return -1;
		ssize_t n = read(fd, (char *)buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

static int udp_bound(struct sockaddr_in *a)
{
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	socklen_t len = sizeof *a;
	memset(a, 0, sizeof *a);
	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || bind(s, (struct sockaddr *)a, sizeof *a) || getsockname(s, (struct sockaddr *)a, &len)) {
		perror("udp");
		exit(1);
	}
	return s;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	char down[64], up[64];
	snprintf(down, sizeof down, "down-%d.fifo", (int)getpid());
	snprintf(up, sizeof up, "up-%d.fifo", (int)getpid());
	unlink(down);
	unlink(up);
	if (mkfifo(down, 0600) || mkfifo(up, 0600)) {
		perror("mkfifo");
		return 1;
	}
	struct sockaddr_in pa, ca;
	int pu = udp_bound(&pa), cu = udp_bound(&ca);
	if (connect(pu, (struct sockaddr *)&ca, sizeof ca) || connect(cu, (struct sockaddr *)&pa, sizeof pa)) {
		perror("connect");
		return 1;
	}

	pid_t child = fork();
	if (child == 0) {
		close(pu);
		int in = open(down, O_RDONLY), out = open(up, O_WRONLY);
		uint64_t acc = 0, v;
		while (read_full(in, &v, sizeof v) == 0 && v != 0) {
			acc = mix64(acc ^ v);
			if (write_full(out, &acc, sizeof acc))
				_exit(9);
			char msg[64];
			if (wait_readable(cu) > 0) {
				ssize_t n = recv(cu, msg, sizeof msg, 0);
				if (n > 0) {
					for (ssize_t i = 0; i < n; i++)
						if (msg[i] >= 'a' && msg[i] <= 'z')
							msg[i] -= 'a' - 'A';
					send(cu, msg, (size_t)n, 0);
				}
			}
		}
		_exit(31);
	}
	close(cu);
	int out = open(down, O_WRONLY), in = open(up, O_RDONLY);
	uint64_t sum = 0;
	const int ahead = 2;
	for (int s = 1; s <= ahead; s++) {
		uint64_t v = mix64((uint64_t)s);
		write_full(out, &v, sizeof v);
	}
	for (int step = 1; step <= steps; step++) {
		if (step + ahead <= steps) {
			uint64_t v = mix64((uint64_t)(step + ahead));
			write_full(out, &v, sizeof v);
		}
		char msg[32];
		int len = snprintf(msg, sizeof msg, "udp%d", step);
		send(pu, msg, (size_t)len, 0);
		uint64_t acc;
		char reply[64] = "";
		int ok = read_full(in, &acc, sizeof acc) == 0;
		ssize_t n = ok && wait_readable(pu) > 0 ? recv(pu, reply, sizeof reply - 1, 0) : -1;
		if (!ok || n <= 0) {
			printf("step %d LOST\n", step);
			return 1;
		}
		reply[n] = 0;
		sum = mix64(sum ^ acc);
		printf("step %d fifo %016llx udp %s sum %016llx\n", step, (unsigned long long)acc, reply,
		       (unsigned long long)sum);
		sleep_ms(step_pause_ms(step, pause));
	}
	uint64_t zero = 0;
	write_full(out, &zero, sizeof zero);
	int st = 0;
	while (waitpid(child, &st, 0) < 0 && errno == EINTR)
		;
	unlink(down);
	unlink(up);
	printf("child exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	printf("final %016llx\n", (unsigned long long)mix64(sum + (uint64_t)st));
	return 0;
}
