/* single.c: one thread; a running hash over a heap array, a stack array and
 * globals, advanced step by step.
 *
 * Prints "step N hash H" after each step and "final H" at the end, where the
 * final hash covers every byte of the three arrays.  Memory that is lost,
 * stale or duplicated by a checkpoint/restart changes the result.
 *
 * Usage: single [STEPS [PAUSE_MS]]
 */
#include "common.h"

#define HEAP_WORDS (1u << 19) /* 4 MiB */
#define STACK_WORDS 2048u     /* 16 KiB */
#define GLOBAL_WORDS 512u

static uint64_t globals[GLOBAL_WORDS];
static uint64_t running = 0x5157a515ULL;

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);

	uint64_t *heap = malloc(HEAP_WORDS * sizeof *heap);
	if (!heap) {
		perror("malloc");
		return 1;
	}
	uint64_t stack[STACK_WORDS];
	for (uint64_t i = 0; i < HEAP_WORDS; i++)
		heap[i] = mix64(i);
	for (uint64_t i = 0; i < STACK_WORDS; i++)
		stack[i] = mix64(i ^ 0xabcdefULL);
	for (uint64_t i = 0; i < GLOBAL_WORDS; i++)
		globals[i] = mix64(i + 7);

	for (int step = 1; step <= steps; step++) {
		uint64_t h = (uint64_t)step;
		/* A different seventh of the heap each step. */
		for (uint64_t i = (uint64_t)step % 7; i < HEAP_WORDS; i += 7) {
			heap[i] = mix64(heap[i] + (uint64_t)step);
			h += heap[i];
		}
		for (uint64_t i = 0; i < STACK_WORDS; i++) {
			stack[i] = mix64(stack[i] ^ heap[(i * 131 + (uint64_t)step) % HEAP_WORDS]);
			h ^= stack[i];
		}
		globals[step % GLOBAL_WORDS] ^= h;
		for (uint64_t i = 0; i < GLOBAL_WORDS; i++)
			h = mix64(h + globals[i]);
		running = mix64(running ^ h);
		printf("step %d hash %016llx\n", step, (unsigned long long)running);
		sleep_ms(step_pause_ms(step, pause));
	}

	uint64_t f = running;
	for (uint64_t i = 0; i < HEAP_WORDS; i++)
		f = mix64(f ^ heap[i]);
	for (uint64_t i = 0; i < STACK_WORDS; i++)
		f = mix64(f ^ stack[i]);
	for (uint64_t i = 0; i < GLOBAL_WORDS; i++)
		f = mix64(f ^ globals[i]);
	free(heap);
	printf("final %016llx\n", (unsigned long long)f);
	return 0;
}
