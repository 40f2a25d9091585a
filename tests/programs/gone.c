/* gone.c: an open file whose path and directories are gone.
 *
 * Creates x/d1/d2/f in the current directory, writes it, maps its first
 * page MAP_SHARED, then removes f and the directories x/d1/d2, x/d1 and x.
 * Each step writes through the descriptor and through the mapping, reads
 * both back (the descriptor and the mapping must stay one file), and prints
 * a checksum of the whole file; the end prints the file's size.
 *
 * Usage: gone [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define PAGE 4096

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	if (mkdir("x", 0755) || mkdir("x/d1", 0755) || mkdir("x/d1/d2", 0755))
		die("mkdir");
	int fd = open("x/d1/d2/f", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open");
	char page[PAGE];
	memset(page, '.', sizeof page);
	if (write(fd, page, sizeof page) != PAGE)
		die("write");
	char *map = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		die("mmap");
	if (unlink("x/d1/d2/f") || rmdir("x/d1/d2") || rmdir("x/d1") || rmdir("x"))
		die("remove");

	uint64_t sum = 0;
	for (int step = 1; step <= steps; step++) {
		char line[32];
		int n = snprintf(line, sizeof line, "step %d\n", step);
		/* Through the descriptor, at its offset (the file grows). */
		if (write(fd, line, (size_t)n) != n)
			die("write");
		/* Through the mapping, then read back through the descriptor. */
		map[step % PAGE] = (char)('a' + step % 26);
		char back;
		if (pread(fd, &back, 1, step % PAGE) != 1)
			die("pread");
		/* And the other way round. */
		char b = (char)('A' + step % 26);
		if (pwrite(fd, &b, 1, PAGE / 2 + step) != 1)
			die("pwrite");
		int shared = back == map[step % PAGE] && map[PAGE / 2 + step] == b;
		struct stat st;
		if (fstat(fd, &st))
			die("fstat");
		static char whole[1 << 16];
		ssize_t len = pread(fd, whole, sizeof whole, 0);
		if (len < 0)
			die("pread");
		uint64_t h = 0xcbf29ce484222325ULL;
		for (ssize_t i = 0; i < len; i++)
			h = (h ^ (unsigned char)whole[i]) * 0x100000001b3ULL;
		sum = mix64(sum ^ h);
		printf("step %d size %lld shared %s links %d sum %016llx\n", step, (long long)st.st_size,
		       shared ? "ok" : "BROKEN", (int)st.st_nlink, (unsigned long long)sum);
		sleep_ms(step_pause_ms(step, pause));
	}
	printf("final %016llx\n", (unsigned long long)sum);
	return 0;
}
