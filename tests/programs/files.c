/* files.c: open files and file mappings that must survive a checkpoint.
 *
 * Works in the current directory:
 * - log.txt, opened O_APPEND: one line per step, so after a restart it must
 *   hold every step exactly once (the restart cuts it back to its size at
 *   checkpoint time);
 * - counters.bin, mapped MAP_SHARED (its descriptor closed): each step does a
 *   read-modify-write of one counter through the mapping;
 * - a scratch file unlinked right after creation but kept open: written at
 *   the start and one record per step, read back whole at the end;
 * - input.dat, written at the start and kept open read-only: each step reads
 *   the next 100 bytes, so the offset must survive.
 *
 * At the end it checks the log line by line and prints checksums of the
 * log, the mapped file (read with read(2), not through the mapping), the
 * deleted file and the input read.
 *
 * Usage: files [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

#define NCOUNTERS 16
#define MAP_BYTES 4096
#define INPUT_BYTES 65536
#define INPUT_CHUNK 100

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		p += n;
		len -= (size_t)n;
	}
}

/* Reads the whole of `fd` from offset 0 into a fresh buffer. */
static char *read_whole(int fd, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (n == cap)
			buf = realloc(buf, cap *= 2);
		ssize_t r = pread(fd, buf + n, cap - n, (off_t)n);
		if (r < 0)
			die("pread");
		if (r == 0)
			break;
		n += (size_t)r;
	}
	*len = n;
	return buf;
}

static uint64_t checksum(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return mix64(h ^ len);
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);

	int log = open("log.txt", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	if (log < 0)
		die("open log.txt");

	int mfd = open("counters.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (mfd < 0 || ftruncate(mfd, MAP_BYTES))
		die("counters.bin");
	uint64_t *counters = mmap(NULL, MAP_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (counters == MAP_FAILED)
		die("mmap");
	close(mfd);
	for (int i = 0; i < NCOUNTERS; i++)
		counters[i] = (uint64_t)i;

	int scratch = open("scratch.tmp", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (scratch < 0)
		die("open scratch.tmp");
	if (unlink("scratch.tmp"))
		die("unlink scratch.tmp");
	char block[1000];
	for (size_t i = 0; i < sizeof block; i++)
		block[i] = (char)('a' + i % 26);
	write_all(scratch, block, sizeof block);

	int out = open("input.dat", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0)
		die("open input.dat for writing");
	for (int i = 0; i < INPUT_BYTES / 8; i++) {
		uint64_t w = mix64((uint64_t)i);
		write_all(out, &w, sizeof w);
	}
	close(out);
	int input = open("input.dat", O_RDONLY);
	if (input < 0)
		die("open input.dat");
	uint64_t input_hash = 0;

	char line[128];
	for (int step = 1; step <= steps; step++) {
		int len = snprintf(line, sizeof line, "log line for step %d\n", step);
		write_all(log, line, (size_t)len);

		uint64_t *c = &counters[step % NCOUNTERS];
		*c = mix64(*c * 31 + (uint64_t)step);

		len = snprintf(line, sizeof line, "scratch record %d\n", step);
		write_all(scratch, line, (size_t)len);

		unsigned char chunk[INPUT_CHUNK];
		ssize_t got = read(input, chunk, sizeof chunk);
		if (got != INPUT_CHUNK)
			die("read input.dat");
		input_hash = mix64(input_hash ^ checksum(chunk, sizeof chunk));

		uint64_t h = input_hash;
		for (int i = 0; i < NCOUNTERS; i++)
			h = mix64(h ^ counters[i]);
		printf("step %d state %016llx\n", step, (unsigned long long)h);
		sleep_ms(step_pause_ms(step, pause));
	}

	/* The log must hold each step once, in order. */
	int rlog = open("log.txt", O_RDONLY);
	if (rlog < 0)
		die("reopen log.txt");
	size_t log_len;
	char *log_text = read_whole(rlog, &log_len);
	close(rlog);
	int log_ok = 1, expect = 1;
	for (char *p = log_text, *end = log_text + log_len; p < end; expect++) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		int n = snprintf(line, sizeof line, "log line for step %d\n", expect);
		if (!nl || nl + 1 - p != n || memcmp(p, line, (size_t)n)) {
			log_ok = 0;
			break;
		}
		p = nl + 1;
	}
	log_ok = log_ok && expect == steps + 1;

	if (msync(counters, MAP_BYTES, MS_SYNC))
		die("msync");
	int rmap = open("counters.bin", O_RDONLY);
	if (rmap < 0)
		die("reopen counters.bin");
	size_t map_len;
	char *map_text = read_whole(rmap, &map_len);
	close(rmap);
	int map_ok = map_len == MAP_BYTES && memcmp(map_text, counters, MAP_BYTES) == 0;

	size_t scratch_len;
	char *scratch_text = read_whole(scratch, &scratch_len);
	off_t scratch_off = lseek(scratch, 0, SEEK_CUR);
	int scratch_ok = scratch_off == (off_t)scratch_len && scratch_len > sizeof block &&
			 memcmp(scratch_text, block, sizeof block) == 0;

	off_t input_off = lseek(input, 0, SEEK_CUR);
	int input_ok = input_off == (off_t)steps * INPUT_CHUNK;

	printf("log %s\n", log_ok ? "ok" : "bad");
	printf("mapped file %s\n", map_ok ? "ok" : "bad");
	printf("deleted file %s\n", scratch_ok ? "ok" : "bad");
	printf("input offset %s\n", input_ok ? "ok" : "bad");
	printf("log checksum %016llx\n", (unsigned long long)checksum(log_text, log_len));
	printf("mapped file checksum %016llx\n", (unsigned long long)checksum(map_text, map_len));
	printf("deleted file checksum %016llx\n", (unsigned long long)checksum(scratch_text, scratch_len));
	uint64_t f = mix64(checksum(log_text, log_len) ^ checksum(map_text, map_len));
	f = mix64(f ^ checksum(scratch_text, scratch_len));
	f = mix64(f ^ input_hash);
	printf("final %016llx\n", (unsigned long long)f);
	return 0;
}
