/* rewrite.c: files written after a checkpoint must come back as they were
 * at it, not half old, half new.
 *
 * Works in the current directory:
 * - data.bin, opened O_RDWR: 64 records of 64 bytes; each step overwrites
 *   record 0 (a running counter) and record step % 64 in place, then reads
 *   the whole file back and compares it with the copy the program keeps in
 *   memory ("ok" or "MISMATCH" at the first differing record);
 * - log.txt, opened O_WRONLY|O_APPEND: one line per step; read back whole at
 *   the end, every step exactly once;
 * - still.bin, opened O_RDWR and written once at the start, never again (its
 *   saved copy is shared by every generation);
 * - with BIG > 0, big.bin, opened O_RDWR: BIG bytes written at the start and
 *   a line appended each step, never read back (the test sets the size
 *   limit below BIG: it is left as it is at restart).
 *
 * Usage: rewrite [STEPS [PAUSE_MS [BIG]]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define RECORDS 64
#define RECORD 64

static unsigned char mem[RECORDS * RECORD];

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void pwrite_all(int fd, const void *buf, size_t len, off_t at)
{
	if (pwrite(fd, buf, len, at) != (ssize_t)len)
		die("pwrite");
}

static void fill(int rec, uint64_t seed)
{
	for (int i = 0; i < RECORD; i += 8) {
		uint64_t v = mix64(seed * 131 + (uint64_t)i);
		memcpy(mem + rec * RECORD + i, &v, 8);
	}
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	long big = argc > 3 ? atol(argv[3]) : 0;

	int data = open("data.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	int log = open("log.txt", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	if (data < 0 || log < 0)
		die("open");
	for (int r = 0; r < RECORDS; r++)
		fill(r, (uint64_t)r);
	pwrite_all(data, mem, sizeof mem, 0);
	int still = open("still.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (still < 0)
		die("open still.bin");
	pwrite_all(still, mem, sizeof mem, 0);
	int bigfd = -1;
	if (big > 0) {
		bigfd = open("big.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
		if (bigfd < 0)
			die("open big.bin");
		char block[4096];
		memset(block, 'b', sizeof block);
		for (long done = 0; done < big; done += (long)sizeof block)
			pwrite_all(bigfd, block, sizeof block, done);
		lseek(bigfd, 0, SEEK_END);
	}

	uint64_t sum = 0;
	for (int step = 1; step <= steps; step++) {
		fill(0, 1000000 + (uint64_t)step);
		fill(step % RECORDS, 2000000 + (uint64_t)step);
		pwrite_all(data, mem, RECORD, 0);
		pwrite_all(data, mem + (step % RECORDS) * RECORD, RECORD, (off_t)(step % RECORDS) * RECORD);
		char line[64];
		int n = snprintf(line, sizeof line, "log step %d\n", step);
		if (write(log, line, (size_t)n) != n)
			die("write log");
		if (bigfd >= 0 && write(bigfd, line, (size_t)n) != n)
			die("write big.bin");

		static unsigned char disk[sizeof mem];
		if (pread(data, disk, sizeof disk, 0) != (ssize_t)sizeof disk)
			die("pread data.bin");
		int bad = -1;
		for (int r = 0; r < RECORDS && bad < 0; r++)
			if (memcmp(disk + r * RECORD, mem + r * RECORD, RECORD) != 0)
				bad = r;
		for (size_t i = 0; i < sizeof mem; i += 8) {
			uint64_t v;
			memcpy(&v, mem + i, 8);
			sum = mix64(sum ^ v);
		}
		if (bad < 0)
			printf("step %d data ok sum %016llx\n", step, (unsigned long long)sum);
		else
			printf("step %d data MISMATCH at record %d\n", step, bad);
		sleep_ms(step_pause_ms(step, pause));
	}

	/* The log holds every step once, in order. */
	char text[65536];
	int fd = open("log.txt", O_RDONLY);
	ssize_t len = fd < 0 ? -1 : read(fd, text, sizeof text - 1);
	if (len < 0)
		die("read log.txt");
	text[len] = 0;
	int expect = 1, good = 1;
	for (char *p = text; *p; expect++) {
		char want[64];
		int n = snprintf(want, sizeof want, "log step %d\n", expect);
		if (strncmp(p, want, (size_t)n) != 0) {
			good = 0;
			break;
		}
		p += n;
	}
	printf("log %s (%d lines)\n", good && expect == steps + 1 ? "ok" : "WRONG", expect - 1);
	printf("final %016llx\n", (unsigned long long)mix64(sum ^ (uint64_t)steps));
	return 0;
}
