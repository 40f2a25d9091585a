/* dontfork.c: memory the program marked MADV_DONTFORK and MADV_WIPEONFORK
 * (as V8 marks its heap and code).  A checkpoint must save those pages all
 * the same, and the restarted program must find them marked as before.
 *
 * A 1 MiB DONTFORK region filled with 0x5a and a 1 MiB WIPEONFORK region
 * filled with 0xa5; each step changes one page of each and checks every
 * byte of both, and the VmFlags of both in /proc/self/smaps ("dc", "wf").
 * Prints "step N dd ok wf ok hash H" (or what went wrong) and "final H".
 *
 * Usage: dontfork [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

#define LEN (1u << 20)
#define PAGE 4096u

/* Whether the smaps entry starting at `start` lists VmFlags `flag`. */
static int has_flag(void *start, const char *flag)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -1;
	char line[512];
	int in = 0, found = 0;
	unsigned long want = (unsigned long)start;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = lo <= want && want < hi;
			continue;
		}
		if (in && strncmp(line, "VmFlags:", 8) == 0) {
			char key[4] = { ' ', flag[0], flag[1], 0 };
			found = strstr(line + 8, key) != NULL;
			break;
		}
	}
	fclose(f);
	return found;
}

/* Every byte of `r` is `fill` except the first byte of pages 1..step. */
static int intact(const unsigned char *r, unsigned char fill, int step)
{
	for (unsigned i = 0; i < LEN; i++) {
		unsigned page = i / PAGE;
		unsigned char want = fill;
		if (i % PAGE == 0 && page >= 1 && page <= (unsigned)step)
			want = (unsigned char)(fill ^ page);
		if (r[i] != want)
			return 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	if (steps >= (int)(LEN / PAGE)) {
		fprintf(stderr, "dontfork: at most %u steps\n", LEN / PAGE - 1);
		return 2;
	}
	int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
	unsigned char *dd = mmap(NULL, LEN, prot, flags, -1, 0);
	unsigned char *wf = mmap(NULL, LEN, prot, flags, -1, 0);
	if (dd == MAP_FAILED || wf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	if (madvise(dd, LEN, MADV_DONTFORK) != 0 || madvise(wf, LEN, MADV_WIPEONFORK) != 0) {
		perror("madvise");
		return 1;
	}
	memset(dd, 0x5a, LEN);
	memset(wf, 0xa5, LEN);

	uint64_t running = 0xd0f0;
	for (int step = 1; step <= steps; step++) {
		dd[step * PAGE] ^= (unsigned char)step;
		wf[step * PAGE] ^= (unsigned char)step;
		int dd_ok = intact(dd, 0x5a, step), wf_ok = intact(wf, 0xa5, step);
		int dd_flag = has_flag(dd, "dc"), wf_flag = has_flag(wf, "wf");
		for (unsigned i = 0; i < LEN; i += 64)
			running = mix64(running ^ dd[i] ^ ((uint64_t)wf[i] << 8));
		printf("step %d dd %s wf %s hash %016llx\n", step,
		       !dd_ok ? "CONTENTS-LOST" : dd_flag == 1 ? "ok" : "FLAG-LOST",
		       !wf_ok ? "CONTENTS-LOST" : wf_flag == 1 ? "ok" : "FLAG-LOST",
		       (unsigned long long)running);
		sleep_ms(step_pause_ms(step, pause));
	}
	printf("final %016llx\n", (unsigned long long)running);
	return 0;
}
