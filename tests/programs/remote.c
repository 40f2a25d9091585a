/* remote.c: a TCP connection to a server outside the computation.
 *
 * Each step sends "ping N" and reads the server's echo. Such a connection
 * cannot be saved: after a restart the program must see an error it can
 * handle (end of file or ECONNRESET/EPIPE), not a vanished descriptor, and
 * carry on without it.
 *
 * Prints "step N echo ok" while connected, "step N connection lost: WHY"
 * once, "step N offline" after, and "final H" at the end.
 *
 * Usage: remote STEPS PAUSE_MS PORT   (PAUSE_MS -1: the usual 50-100 ms)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv)
{
	int steps, pause_ms;
	parse_args(argc, argv, &steps, &pause_ms);
	if (argc < 4) {
		fprintf(stderr, "usage: remote STEPS PAUSE_MS PORT\n");
		return 2;
	}
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3])) };
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr)) {
		perror("connect");
		return 1;
	}
	int connected = 1;
	uint64_t h = 0;
	for (int i = 1; i <= steps; i++) {
		if (connected) {
			char msg[32], reply[32];
			int len = snprintf(msg, sizeof msg, "ping %d\n", i);
			const char *why = NULL;
			ssize_t n = send(s, msg, (size_t)len, MSG_NOSIGNAL);
			if (n != len) {
				why = strerror(errno);
			} else {
				ssize_t got = 0;
				while (got < len) {
					ssize_t r = read(s, reply + got, (size_t)(len - got));
					if (r <= 0) {
						why = r == 0 ? "EOF" : strerror(errno);
						break;
					}
					got += r;
				}
				if (!why && memcmp(reply, msg, (size_t)len))
					why = "wrong echo";
			}
			if (why) {
				printf("step %d connection lost: %s\n", i, why);
				close(s);
				connected = 0;
			} else {
				printf("step %d echo ok\n", i);
				h = mix64(h + (uint64_t)i);
			}
		} else {
			printf("step %d offline\n", i);
		}
		sleep_ms(step_pause_ms(i, pause_ms));
	}
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
