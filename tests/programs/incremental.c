/* incremental.c: a large buffer of which only a fixed 1% of the pages (one
 * in a hundred) ever change, a quarter of those each step, for incremental
 * checkpoints: however many steps lie between two checkpoints, at most 1%
 * of the pages changed.  Every fifth step a few pages are
 * dropped with MADV_DONTNEED (they must come back as zeros).  A forked
 * child does the same with its own buffer and seed; the parent prints the
 * child's final hash at the end.  A small second buffer grows with mremap
 * (moving, or in place) every seventh step.
 *
 * Prints "step N hash H" after each step and "final H child C" at the end,
 * where H covers every byte of the parent's buffer.
 *
 * Usage: incremental [STEPS [PAUSE_MS [MIB]]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096u

static uint64_t hash_all(const uint64_t *buf, size_t words)
{
	uint64_t f = 0x1badb002ULL;
	for (size_t i = 0; i < words; i += 8)
		f = mix64(f ^ buf[i] ^ (buf[i + 1] << 1));
	return f;
}

/* Runs the steps on a fresh buffer; prints the steps if `loud`. */
static uint64_t work(int steps, int pause, size_t bytes, uint64_t seed, int loud)
{
	size_t pages = bytes / PAGE, words = bytes / 8, per_page = PAGE / 8;
	uint64_t *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	for (size_t i = 0; i < words; i += 64)
		buf[i] = mix64(i ^ seed);
	size_t extra_len = 16 * PAGE;
	uint64_t *extra = mmap(NULL, extra_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (extra == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	for (size_t i = 0; i < extra_len / 8; i++)
		extra[i] = mix64(i + seed);
	uint64_t running = seed;
	for (int step = 1; step <= steps; step++) {
		uint64_t h = (uint64_t)step;
		if (step % 7 == 0) {
			/* Grows, moving where it must: its old pages come along. */
			uint64_t *grown = mremap(extra, extra_len, extra_len + 4 * PAGE, MREMAP_MAYMOVE);
			if (grown == MAP_FAILED) {
				perror("mremap");
				exit(1);
			}
			extra = grown;
			extra_len += 4 * PAGE;
			extra[extra_len / 8 - 1] = (uint64_t)step;
			extra[(uint64_t)step % (extra_len / 8)] ^= mix64((uint64_t)step);
		}
		for (size_t i = 0; i < extra_len / 8; i += 61)
			h = mix64(h ^ extra[i]);
		/* A quarter of the hot pages (one page in a hundred). */
		for (size_t k = 0; k < pages / 400 + 1; k++) {
			size_t p = mix64(seed ^ ((uint64_t)step << 32) ^ k) % (pages / 100) * 100;
			uint64_t *w = buf + p * per_page;
			w[step % per_page] = mix64(w[0] + (uint64_t)step);
			w[0] ^= (uint64_t)step;
			h = mix64(h ^ w[0] ^ w[step % per_page]);
		}
		if (step % 5 == 0) {
			size_t p = mix64(seed + (uint64_t)step) % (pages - 8);
			if (madvise(buf + p * per_page, 8 * PAGE, MADV_DONTNEED) != 0) {
				perror("madvise");
				exit(1);
			}
			/* Read back: zeros (and the pages stay unwritten). */
			for (size_t q = p; q < p + 8; q++)
				h = mix64(h ^ buf[q * per_page + 3]);
		}
		running = mix64(running ^ h);
		if (loud)
			printf("step %d hash %016llx\n", step, (unsigned long long)running);
		sleep_ms(step_pause_ms(step, pause));
	}
	uint64_t f = mix64(running ^ hash_all(buf, words));
	munmap(buf, bytes);
	return f;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	size_t mib = argc > 3 ? (size_t)atoi(argv[3]) : 32;
	int fds[2];
	if (pipe(fds) != 0) {
		perror("pipe");
		return 1;
	}
	pid_t child = fork();
	if (child < 0) {
		perror("fork");
		return 1;
	}
	if (child == 0) {
		close(fds[0]);
		uint64_t c = work(steps, pause, mib / 2 << 20, 0xc0ffeeULL, 0);
		if (write(fds[1], &c, sizeof c) != sizeof c)
			_exit(1);
		_exit(0);
	}
	close(fds[1]);
	uint64_t f = work(steps, pause, mib << 20, 0x5eedULL, 1);
	uint64_t c = 0;
	if (read(fds[0], &c, sizeof c) != sizeof c) {
		fprintf(stderr, "no result from the child\n");
		return 1;
	}
	int status;
	waitpid(child, &status, 0);
	printf("final %016llx child %016llx status %d\n", (unsigned long long)f, (unsigned long long)c, status);
	return 0;
}
