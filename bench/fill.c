/* fill.c: the benchmark's workload. Fills N MiB of heap, half with random
 * bytes and half with a repetitive pattern (the same bytes every run),
 * prints "ready", then ticks every 10 ms forever: sleep 10 ms, read every
 * page of the buffer (or 1% of them), print one line
 *
 *     tick COUNT GAP_US NOW_US START_US STRIDE
 *
 * GAP_US: microseconds since the previous tick line (CLOCK_MONOTONIC), the
 * pause a checkpoint makes shows up there; NOW_US: CLOCK_REALTIME when the
 * line is printed (a restart is timed to it); START_US: CLOCK_REALTIME when
 * the pass over memory began; STRIDE: 1 (every page) or 100 (1% of them).
 *
 * Usage: fill MIB [-t THREADS] [-c CTLDIR] [-d FILE]
 *   -t N    also start N threads that sleep in a loop (a many-threads case)
 *   -c DIR  control files, checked at every tick:
 *             DIR/hold    while it exists: no pass and no tick line (prints
 *                         "held" once), so a checkpoint finds the program
 *                         idle and its first tick after restart is a whole
 *                         pass
 *             DIR/dirty   write 1% of the pages once, remove the file,
 *                         print "dirtied"
 *             DIR/touch1  read 1% of the pages per pass instead of all
 *   -d FILE write the filled buffer to FILE and exit (the same bytes, for
 *           compressing them outside)
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define SPARSE_STRIDE 100 /* one page in 100: 1% */

static long long clock_us(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0)
		;
}

static void *sleeper(void *arg)
{
	(void)arg;
	for (;;)
		sleep_ms(50);
	return NULL;
}

static void fill(uint8_t *p, size_t len)
{
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i + 8 <= len / 2; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
	for (size_t i = len / 2; i < len; i++)
		p[i] = (uint8_t)(i % 251);
}

static int dump(const uint8_t *p, size_t len, const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	for (size_t off = 0; off < len;) {
		ssize_t n = write(fd, p + off, len - off);
		if (n <= 0) {
			perror(path);
			return 1;
		}
		off += (size_t)n;
	}
	return close(fd) != 0;
}

static int exists(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
	long threads = 0;
	const char *ctl = NULL, *dump_path = NULL;
	for (int i = 2; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "-t"))
			threads = strtol(argv[i + 1], 0, 10);
		else if (!strcmp(argv[i], "-c"))
			ctl = argv[i + 1];
		else if (!strcmp(argv[i], "-d"))
			dump_path = argv[i + 1];
		else {
			fprintf(stderr, "fill: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	size_t len = mib << 20;
	if (len < PAGE)
		len = PAGE;
	uint8_t *p = malloc(len);
	if (!p) {
		perror("malloc");
		return 1;
	}
	fill(p, len);
	if (dump_path)
		return dump(p, len, dump_path);

	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 << 10);
	for (long i = 0; i < threads; i++) {
		pthread_t t;
		if (pthread_create(&t, &attr, sleeper, NULL) != 0) {
			fprintf(stderr, "fill: could not start thread %ld\n", i);
			return 1;
		}
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	volatile uint64_t sink = 0;
	long long last = clock_us(CLOCK_MONOTONIC);
	int held = 0;
	for (unsigned long tick = 0;;) {
		sleep_ms(10);
		size_t stride = 1;
		if (ctl) {
			char path[4096];
			if (exists(ctl, "hold")) {
				if (!held)
					printf("held\n");
				held = 1;
				last = clock_us(CLOCK_MONOTONIC);
				continue;
			}
			held = 0;
			snprintf(path, sizeof path, "%s/dirty", ctl);
			if (access(path, F_OK) == 0) {
				for (size_t i = 0; i < len; i += SPARSE_STRIDE * PAGE)
					p[i]++;
				unlink(path);
				printf("dirtied\n");
			}
			if (exists(ctl, "touch1"))
				stride = SPARSE_STRIDE;
		}
		long long start = clock_us(CLOCK_REALTIME);
		uint64_t sum = 0;
		for (size_t i = 0; i < len; i += stride * PAGE)
			sum += p[i];
		sink += sum;
		long long now = clock_us(CLOCK_MONOTONIC);
		printf("tick %lu %lld %lld %lld %zu\n", tick++, now - last, clock_us(CLOCK_REALTIME),
		       start, stride);
		last = now;
	}
}
