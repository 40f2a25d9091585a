/* Shared helpers for the Stasis end-to-end test programs.
 *
 * Every program prints one line per step to stdout (line buffered, so each
 * line reaches the pipe in a single write) and a final line that depends on
 * all the work done.  Output must not depend on timing, pids or paths: the
 * test harness compares it with an uninterrupted reference run.
 */
#ifndef STASIS_TEST_COMMON_H
#define STASIS_TEST_COMMON_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* A 64-bit finaliser (the usual xor-shift-multiply construction). */
static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 31;
	x *= 0x7fb5d329728ea185ULL;
	x ^= x >> 27;
	x *= 0x81dadef4bc2dd44dULL;
	x ^= x >> 33;
	return x;
}

/* Sleeps `ms` milliseconds of relative time, carrying on after signals. */
static inline void sleep_ms(long ms)
{
	struct timespec req = { ms / 1000, (ms % 1000) * 1000000L };
	struct timespec rem;
	while (nanosleep(&req, &rem) == -1 && errno == EINTR)
		req = rem;
}

/* The pause after step `step` (1-based): 50..100 ms, fixed per step. */
static inline long step_pause_ms(int step, int fixed)
{
	if (fixed >= 0)
		return fixed;
	return 50 + (step * 37) % 51;
}

/* argv[1]: number of steps (default 40); argv[2]: fixed pause in ms. */
static inline void parse_args(int argc, char **argv, int *steps, int *pause)
{
	*steps = argc > 1 ? atoi(argv[1]) : 40;
	*pause = argc > 2 ? atoi(argv[2]) : -1;
	if (*steps < 4) {
		fprintf(stderr, "%s: need at least 4 steps\n", argv[0]);
		exit(2);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
}

#endif
