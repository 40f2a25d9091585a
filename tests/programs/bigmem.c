/* bigmem.c: memory for the image writer's workers: 48 MiB of heap in
 * pages of three sorts (all zero, random, repetitive), so that a
 * checkpoint cuts it into many chunks, leaves zero pages out and
 * compresses some chunks but not others; and a region the program made
 * unreadable (PROT_NONE) holding data.
 *
 * Each step changes a few pages of every sort and prints a running hash;
 * the final line hashes everything, the unreadable region included (made
 * readable for that, then unreadable again).
 *
 * Usage: bigmem [STEPS [PAUSE_MS]]
 */
#include <string.h>
#include <sys/mman.h>

#include "common.h"

#define PAGE 4096u
#define HEAP_PAGES (48u * 256u) /* 48 MiB */
#define HIDDEN_PAGES 64u        /* 256 KiB */

static uint64_t running = 0xb16be11ULL;

/* Page `p` as it starts: zero, random or repetitive. */
static void fill_page(uint8_t *page, uint64_t p, uint64_t salt)
{
	switch (p % 5) {
	case 0:
		memset(page, 0, PAGE);
		break;
	case 1:
	case 2:
		for (unsigned i = 0; i < PAGE; i += 8) {
			uint64_t v = mix64(p * PAGE + i + salt);
			memcpy(page + i, &v, 8);
		}
		break;
	default:
		for (unsigned i = 0; i < PAGE; i++)
			page[i] = (uint8_t)((p + i + salt) % 23);
	}
}

static uint64_t hash_bytes(uint64_t h, const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v;
		memcpy(&v, p + i, 8);
		h = mix64(h ^ v);
	}
	return h;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);

	uint8_t *heap = mmap(0, (size_t)HEAP_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *hidden = mmap(0, (size_t)HIDDEN_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (heap == MAP_FAILED || hidden == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (uint64_t p = 0; p < HEAP_PAGES; p++)
		fill_page(heap + p * PAGE, p, 0);
	for (uint64_t p = 0; p < HIDDEN_PAGES; p++)
		fill_page(hidden + p * PAGE, p + 1, 99);
	if (mprotect(hidden, (size_t)HIDDEN_PAGES * PAGE, PROT_NONE) != 0) {
		perror("mprotect");
		return 1;
	}

	for (int step = 1; step <= steps; step++) {
		/* A page of each sort changes; a zero page stays zero. */
		for (uint64_t k = 0; k < 5; k++) {
			uint64_t p = ((uint64_t)step * 977 + k * 131) % HEAP_PAGES;
			if (p % 5 != 0)
				fill_page(heap + p * PAGE, p, (uint64_t)step);
			running = mix64(running ^ hash_bytes(p, heap + p * PAGE, PAGE));
		}
		printf("step %d hash %016llx\n", step, (unsigned long long)running);
		sleep_ms(step_pause_ms(step, pause));
	}

	uint64_t f = hash_bytes(running, heap, (size_t)HEAP_PAGES * PAGE);
	mprotect(hidden, (size_t)HIDDEN_PAGES * PAGE, PROT_READ);
	f = hash_bytes(f, hidden, (size_t)HIDDEN_PAGES * PAGE);
	mprotect(hidden, (size_t)HIDDEN_PAGES * PAGE, PROT_NONE);
	printf("final %016llx\n", (unsigned long long)f);
	return 0;
}
