/* throng.c: many threads (300 by default) stopped at once, in different
 * states: a third sleep in nanosleep between computations, a third wait on
 * a condition variable that main broadcasts each step, a third block in
 * read() on a pipe main feeds one byte per step each; and one thread keeps
 * starting and joining short-lived threads, so that threads come and go
 * while a checkpoint stops the others. Prints "step N" each step and
 * "final H" from every thread's result (the same whatever the timing).
 *
 * Usage: throng [STEPS [PAUSE_MS [THREADS]]]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <unistd.h>

#include "common.h"

#define MAX_THREADS 2000

static int steps, pause_ms, nthreads;
static uint64_t results[MAX_THREADS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stepped = PTHREAD_COND_INITIALIZER;
static int step_now; /* under lock */
static int feed[2];

/* Folds step `s` into `h`: what each thread does once per step. */
static uint64_t fold(uint64_t h, long id, int s)
{
	return mix64(h ^ ((uint64_t)id << 32 | (uint64_t)s));
}

static void *sleeper(void *arg)
{
	long id = (long)arg;
	uint64_t h = 0;
	for (int s = 1; s <= steps; s++) {
		h = fold(h, id, s);
		sleep_ms(step_pause_ms(s, pause_ms) / 2 + id % 7);
	}
	results[id] = h;
	return NULL;
}

static void *waiter(void *arg)
{
	long id = (long)arg;
	uint64_t h = 0;
	int seen = 0;
	pthread_mutex_lock(&lock);
	while (seen < steps) {
		while (step_now == seen)
			pthread_cond_wait(&stepped, &lock);
		/* Every step since the last wake, in order: timing-independent. */
		for (; seen < step_now; )
			h = fold(h, id, ++seen);
	}
	pthread_mutex_unlock(&lock);
	results[id] = h;
	return NULL;
}

static void *reader(void *arg)
{
	long id = (long)arg;
	uint64_t h = 0;
	for (int s = 1; s <= steps; s++) {
		char c;
		if (read(feed[0], &c, 1) != 1) {
			perror("read");
			exit(1);
		}
		h = fold(h, id, s);
	}
	results[id] = h;
	return NULL;
}

static void *short_lived(void *arg)
{
	return (void *)(uintptr_t)mix64((uint64_t)(uintptr_t)arg);
}

/* Starts and joins 8 threads per step, as main reaches each step. */
static void *churn(void *arg)
{
	(void)arg;
	uint64_t h = 0;
	for (int s = 1; s <= steps; s++) {
		pthread_mutex_lock(&lock);
		while (step_now < s)
			pthread_cond_wait(&stepped, &lock);
		pthread_mutex_unlock(&lock);
		for (int j = 0; j < 8; j++) {
			pthread_t t;
			void *r;
			if (pthread_create(&t, NULL, short_lived, (void *)(uintptr_t)(s * 8 + j)) || pthread_join(t, &r)) {
				perror("pthread_create");
				exit(1);
			}
			h = mix64(h ^ (uint64_t)(uintptr_t)r);
		}
	}
	return (void *)(uintptr_t)h;
}

int main(int argc, char **argv)
{
	parse_args(argc, argv, &steps, &pause_ms);
	nthreads = argc > 3 ? atoi(argv[3]) : 300;
	if (nthreads < 3 || nthreads > MAX_THREADS) {
		fprintf(stderr, "throng: 3..%d threads\n", MAX_THREADS);
		return 2;
	}
	if (pipe(feed)) {
		perror("pipe");
		return 1;
	}
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 128 << 10);
	static pthread_t t[MAX_THREADS];
	int readers = 0;
	for (long i = 0; i < nthreads; i++) {
		void *(*fn)(void *) = i % 3 == 0 ? sleeper : i % 3 == 1 ? waiter : reader;
		readers += i % 3 == 2;
		if (pthread_create(&t[i], &attr, fn, (void *)i)) {
			perror("pthread_create");
			return 1;
		}
	}
	pthread_t churner;
	if (pthread_create(&churner, &attr, churn, NULL)) {
		perror("pthread_create");
		return 1;
	}
	for (int s = 1; s <= steps; s++) {
		pthread_mutex_lock(&lock);
		step_now = s;
		pthread_cond_broadcast(&stepped);
		pthread_mutex_unlock(&lock);
		for (int r = 0; r < readers; r++)
			if (write(feed[1], "x", 1) != 1) {
				perror("write");
				return 1;
			}
		printf("step %d\n", s);
		sleep_ms(step_pause_ms(s, pause_ms));
	}
	uint64_t h = 0;
	for (long i = 0; i < nthreads; i++) {
		pthread_join(t[i], NULL);
		h = mix64(h ^ results[i]);
	}
	void *c;
	pthread_join(churner, &c);
	h = mix64(h ^ (uint64_t)(uintptr_t)c);
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
