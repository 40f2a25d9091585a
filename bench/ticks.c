/* ticks.c: measures the pause a program sees. Fills MIB MiB of heap (every
 * page written), starts THREADS threads that each sleep a second at a time (idle, as
 * a thread pool mostly is), prints
 * "ready", then ticks every millisecond and prints "gap US" whenever the
 * time between two of its own ticks exceeds 5 ms (a checkpoint's pause
 * shows as one such line). Each tick writes to one page of the heap, as a
 * running program does.  Usage: ticks MIB [THREADS] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static void *sleeper(void *arg)
{
	(void)arg;
	struct timespec ts = { 1, 0 }; /* mostly idle, as a pool */
	for (;;)
		nanosleep(&ts, NULL);
	return NULL;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
	int threads = argc > 2 ? atoi(argv[2]) : 0;
	size_t len = mib << 20;
	uint8_t *p = malloc(len ? len : 1);
	if (!p) {
		perror("malloc");
		return 1;
	}
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i + 8 <= len; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		*(uint64_t *)(p + i) = x;
	}
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 << 10);
	for (int i = 0; i < threads; i++) {
		pthread_t t;
		if (pthread_create(&t, &attr, sleeper, NULL) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	struct timespec ts = { 0, 1000 * 1000 };
	uint64_t last = now_us();
	for (unsigned long tick = 0;; tick++) {
		nanosleep(&ts, NULL);
		uint64_t t = now_us();
		if (t - last > 5000)
			printf("gap %llu\n", (unsigned long long)(t - last));
		last = t;
		if (len)
			p[(tick * 4096 * 7) % len]++;
	}
}
