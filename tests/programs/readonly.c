/* readonly.c: input files the program only reads, kept open read-only.
 *
 * Writes in/sub/table.txt (a few KiB of numbered lines) in the current
 * directory, closes it, opens it again read-only and keeps it open. Each
 * step reads the next line through the descriptor (its offset moves),
 * reads the whole file again with pread, and prints the line and a
 * checksum of the whole: a file that is not as it was at the checkpoint
 * shows in the output.
 *
 * Usage: readonly [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	if (mkdir("in", 0755) || mkdir("in/sub", 0755))
		die("mkdir");
	FILE *w = fopen("in/sub/table.txt", "w");
	if (!w)
		die("fopen");
	for (int i = 1; i <= steps + 10; i++)
		fprintf(w, "row %04d value %016llx\n", i, (unsigned long long)mix64((uint64_t)i));
	if (fclose(w))
		die("fclose");
	int fd = open("in/sub/table.txt", O_RDONLY);
	if (fd < 0)
		die("open");
	uint64_t sum = 0;
	for (int step = 1; step <= steps; step++) {
		/* One line through the descriptor's offset. */
		char line[64];
		size_t n = 0;
		while (n < sizeof line - 1) {
			ssize_t k = read(fd, line + n, 1);
			if (k < 0)
				die("read");
			if (k == 0 || line[n] == '\n')
				break;
			n++;
		}
		line[n] = 0;
		static char whole[1 << 16];
		ssize_t len = pread(fd, whole, sizeof whole, 0);
		if (len < 0)
			die("pread");
		uint64_t h = 0xcbf29ce484222325ULL;
		for (ssize_t i = 0; i < len; i++)
			h = (h ^ (unsigned char)whole[i]) * 0x100000001b3ULL;
		sum = mix64(sum ^ h);
		printf("step %d [%s] size %zd sum %016llx\n", step, line, len, (unsigned long long)sum);
		sleep_ms(step_pause_ms(step, pause));
	}
	printf("final %016llx\n", (unsigned long long)sum);
	return 0;
}
