/* noreserve.c: a huge MAP_NORESERVE reservation with a few pages written,
 * and a huge PROT_NONE reservation, as sanitizers and runtimes make them.
 *
 * Maps 1 TiB MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE read-write (far more
 * than memory and swap: without MAP_NORESERVE the kernel's overcommit
 * heuristic refuses it) and 1 TiB PROT_NONE (never committed, as it was
 * never writable). Each step writes a byte in a page far into the first
 * region, checks every byte written so far, checks in /proc/self/smaps
 * that the first region is still marked `nr` (MAP_NORESERVE) and that the
 * second is still PROT_NONE, and prints a checksum.
 *
 * Usage: noreserve [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

#define HUGE ((size_t)1 << 40)
#define PAGE 4096

/* The smaps VmFlags line of the mapping starting at `start`, or "". */
static void vmflags(void *start, char *out, size_t len, char *perms)
{
	out[0] = perms[0] = 0;
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return;
	char line[512];
	int in = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long a, b;
		char p[8];
		if (sscanf(line, "%lx-%lx %7s", &a, &b, p) == 3 && strchr(line, '-') < strchr(line, ' ')) {
			in = (void *)a == start;
			if (in)
				strcpy(perms, p);
		} else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			snprintf(out, len, "%s", line + 8);
			break;
		}
	}
	fclose(f);
}

static size_t where(int step)
{
	/* Spread over the whole region, page aligned, different each step. */
	return (size_t)(mix64((uint64_t)step) % (HUGE / PAGE)) * PAGE + (size_t)step % PAGE;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	unsigned char *r = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r == MAP_FAILED) {
		perror("mmap MAP_NORESERVE");
		return 1;
	}
	void *none = mmap(NULL, HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (none == MAP_FAILED) {
		perror("mmap PROT_NONE");
		return 1;
	}
	uint64_t sum = 0;
	for (int step = 1; step <= steps; step++) {
		r[where(step)] = (unsigned char)(step * 7 + 1);
		int good = 1;
		for (int s = 1; s <= step; s++)
			good &= r[where(s)] == (unsigned char)(s * 7 + 1);
		char flags[512], perms[8];
		vmflags(r, flags, sizeof flags, perms);
		int nr = strstr(flags, " nr") != NULL;
		vmflags(none, flags, sizeof flags, perms);
		int prot_none = strcmp(perms, "---p") == 0;
		sum = mix64(sum ^ (uint64_t)where(step));
		printf("step %d bytes %s noreserve %s prot_none %s sum %016llx\n", step, good ? "ok" : "WRONG",
		       nr ? "yes" : "NO", prot_none ? "yes" : "NO", (unsigned long long)sum);
		sleep_ms(step_pause_ms(step, pause));
	}
	printf("final %016llx\n", (unsigned long long)sum);
	return 0;
}
