/* attrmask.c: a thread started with a signal mask in its attributes
 * (pthread_attr_setsigmask_np, glibc 2.32) that blocks every signal, as a
 * library starts its worker threads.  The thread counts steps; each step
 * main prints what the thread's mask reads back (every signal blocked,
 * SIGRTMIN+28 -- the checkpoint signal's number -- included) and what
 * main's own reads (nothing blocked).  A checkpoint must still stop it.
 *
 * Usage: attrmask [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

static atomic_int thread_step;
static atomic_int thread_all_blocked = -1;
static atomic_int stop;

static int all_blocked(void)
{
	sigset_t now;
	pthread_sigmask(SIG_SETMASK, NULL, &now);
	for (int sig = 1; sig < 65; sig++)
		if (sig != SIGKILL && sig != SIGSTOP && sig != 32 && sig != 33 && !sigismember(&now, sig))
			return 0;
	return 1;
}

static void *worker(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		atomic_store(&thread_all_blocked, all_blocked());
		atomic_fetch_add(&thread_step, 1);
		sleep_ms(5);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	pthread_attr_t attr;
	sigset_t full;
	sigfillset(&full);
	pthread_attr_init(&attr);
	if (pthread_attr_setsigmask_np(&attr, &full) != 0) {
		fprintf(stderr, "pthread_attr_setsigmask_np failed\n");
		return 1;
	}
	pthread_t t;
	if (pthread_create(&t, &attr, worker, NULL) != 0) {
		perror("pthread_create");
		return 1;
	}
	uint64_t h = 0xa77a5c5cULL;
	for (int step = 1; step <= steps; step++) {
		int seen = atomic_load(&thread_step);
		while (atomic_load(&thread_step) == seen)
			sleep_ms(1);
		sigset_t mine;
		pthread_sigmask(SIG_SETMASK, NULL, &mine);
		int main_open = !sigismember(&mine, SIGRTMIN + 28) && !sigismember(&mine, SIGUSR1);
		h = mix64(h + (uint64_t)step);
		printf("step %d hash %016llx thread %s main %s\n", step, (unsigned long long)h,
		       atomic_load(&thread_all_blocked) == 1 ? "all-blocked" : "open", main_open ? "open" : "blocked");
		sleep_ms(step_pause_ms(step, pause));
	}
	atomic_store(&stop, 1);
	pthread_join(t, NULL);
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
