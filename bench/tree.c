/* tree.c: a tree of N small processes (the benchmark's many-processes case).
 * Process k forks processes 2k+1 and 2k+2 (those below N), so the tree is
 * as deep as a binary one; each touches 1 MiB of its own and then sleeps in
 * a 10 ms loop reading it. Once all N are up, process 0 prints "ready" and
 * then the same tick lines as fill.c:
 *
 *     tick COUNT GAP_US NOW_US START_US 1
 *
 * Usage: tree N */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MEM (1 << 20)

static long long clock_us(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void sleep_10ms(void)
{
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	while (nanosleep(&ts, &ts) != 0)
		;
}

static uint64_t read_pages(const uint8_t *p)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < MEM; i += PAGE)
		sum += p[i];
	return sum;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 32;
	int ready[2];
	if (n < 1 || pipe(ready) != 0) {
		fprintf(stderr, "usage: tree N (N >= 1)\n");
		return 2;
	}
	int k = 0;
	/* Descend: a child becomes node c and forks its own children. */
	for (int c = 1; c <= 2;) {
		int child = 2 * k + c;
		if (child >= n)
			break;
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			k = child;
			c = 1;
			continue;
		}
		c++;
	}
	uint8_t *p = malloc(MEM);
	if (!p)
		return 1;
	memset(p, k + 1, MEM);
	volatile uint64_t sink = 0;
	if (k != 0) {
		close(ready[0]);
		if (write(ready[1], "x", 1) != 1)
			return 1;
		close(ready[1]);
		for (;;) {
			sleep_10ms();
			sink += read_pages(p);
		}
	}
	close(ready[1]);
	char buf[64];
	for (int got = 0; got < n - 1;) {
		ssize_t r = read(ready[0], buf, sizeof buf);
		if (r <= 0) {
			fprintf(stderr, "tree: a process did not start\n");
			return 1;
		}
		got += (int)r;
	}
	close(ready[0]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	long long last = clock_us(CLOCK_MONOTONIC);
	for (unsigned long tick = 0;;) {
		sleep_10ms();
		long long start = clock_us(CLOCK_REALTIME);
		sink += read_pages(p);
		long long now = clock_us(CLOCK_MONOTONIC);
		printf("tick %lu %lld %lld %lld 1\n", tick++, now - last, clock_us(CLOCK_REALTIME), start);
		last = now;
	}
}
