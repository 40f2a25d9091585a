/* crowd.c: many threads at once (200), each sleeping and computing in
 * steps, so that a checkpoint stops a crowd: the agent's own bookkeeping
 * for that many threads must fit in the image it writes (a real bug once).
 * Prints "step N" each step and "final H" with every thread's result.
 *
 * Usage: crowd [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "common.h"

#define THREADS 200

static int steps, pause_ms;
static uint64_t results[THREADS];

static void *worker(void *arg)
{
	long id = (long)arg;
	uint64_t h = (uint64_t)id * 0x9e3779b97f4a7c15ULL;
	for (int s = 1; s <= steps; s++) {
		h = mix64(h + (uint64_t)s);
		sleep_ms(step_pause_ms(s, pause_ms));
	}
	results[id] = h;
	return NULL;
}

int main(int argc, char **argv)
{
	parse_args(argc, argv, &steps, &pause_ms);
	pthread_t t[THREADS];
	for (long i = 0; i < THREADS; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)i)) {
			perror("pthread_create");
			return 1;
		}
	for (int s = 1; s <= steps; s++) {
		printf("step %d\n", s);
		sleep_ms(step_pause_ms(s, pause_ms));
	}
	uint64_t h = 0;
	for (long i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		h = mix64(h ^ results[i]);
	}
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
