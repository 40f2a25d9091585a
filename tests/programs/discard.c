/* discard.c: memory given back with madvise(MADV_DONTNEED) reads zeros.
 *
 * Fills a 16 MiB private anonymous mapping at start and never writes most
 * of it again. Step N discards block N (64 KiB) with MADV_DONTNEED, checks
 * that it now reads zeros (as anonymous memory must: allocators such as
 * jemalloc rely on it), writes it again, and prints a hash of the whole
 * mapping. After a restart the untouched blocks come back mapped from the
 * image: discarding them must still give zeros, not the image's bytes.
 * Step N also marks block 255-N (never written since the start)
 * MADV_WIPEONFORK, which anonymous memory accepts, keeping its contents.
 * The initial contents compress well (one value per page), so that a
 * compressed image has them in compressed chunks.
 *
 * Usage: discard [STEPS [PAUSE_MS]]   (STEPS <= 250)
 */
#include "common.h"

#include <string.h>
#include <sys/mman.h>

#define BLOCK (64u << 10)
#define BLOCKS 256u
#define WORDS_PER_BLOCK (BLOCK / sizeof(uint64_t))

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	if (steps >= (int)BLOCKS) {
		fprintf(stderr, "discard: at most %u steps\n", BLOCKS - 1);
		return 2;
	}
	uint64_t *mem = mmap(NULL, (size_t)BLOCK * BLOCKS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	/* One value per page: compressible, for runs with --compress. */
	for (uint64_t i = 0; i < WORDS_PER_BLOCK * BLOCKS; i++)
		mem[i] = mix64(i / 512 + 1);

	uint64_t running = 0xd15ca4dULL;
	for (int step = 1; step <= steps; step++) {
		uint64_t *block = mem + (uint64_t)step * WORDS_PER_BLOCK;
		if (madvise(block, BLOCK, MADV_DONTNEED) != 0) {
			perror("madvise");
			return 1;
		}
		uint64_t nonzero = 0;
		for (uint64_t i = 0; i < WORDS_PER_BLOCK; i++)
			nonzero += block[i] != 0;
		for (uint64_t i = 0; i < WORDS_PER_BLOCK; i++)
			block[i] = mix64(i ^ (uint64_t)step << 40);
		/* A block never written since the start asked to be wiped in
		 * fork children: allowed on anonymous memory only, so memory
		 * restored from an image must still count as such. */
		uint64_t *wiped = mem + (uint64_t)(BLOCKS - 1 - step) * WORDS_PER_BLOCK;
		int wipe_rc = madvise(wiped, BLOCK, MADV_WIPEONFORK);
		uint64_t h = running;
		for (uint64_t i = 0; i < WORDS_PER_BLOCK * BLOCKS; i += 61)
			h = mix64(h ^ mem[i]);
		running = h;
		printf("step %d nonzero words after MADV_DONTNEED %llu wipeonfork %d hash %016llx\n", step,
		       (unsigned long long)nonzero, wipe_rc, (unsigned long long)running);
		sleep_ms(step_pause_ms(step, pause));
	}
	uint64_t f = running;
	for (uint64_t i = 0; i < WORDS_PER_BLOCK * BLOCKS; i++)
		f = mix64(f ^ mem[i]);
	printf("final %016llx\n", (unsigned long long)f);
	return 0;
}
