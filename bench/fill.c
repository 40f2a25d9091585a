/* fill.c: the benchmark's workload. Fills N MiB of heap, half with random
 * bytes and half with a repetitive pattern, prints "ready", then prints a
 * "tick" line every 5 ms forever, so that a restart can be timed to its
 * first output.  Usage: fill MIB */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
	size_t len = mib << 20;
	uint8_t *p = malloc(len);
	if (!p) {
		perror("malloc");
		return 1;
	}
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i < len / 2; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		*(uint64_t *)(p + i) = x;
	}
	for (size_t i = len / 2; i < len; i++)
		p[i] = (uint8_t)(i % 251);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	struct timespec ts = { 0, 5 * 1000 * 1000 };
	for (unsigned long tick = 0;; tick++) {
		nanosleep(&ts, NULL);
		printf("tick %lu %u\n", tick, p[(tick * 4099) % len]);
	}
}
