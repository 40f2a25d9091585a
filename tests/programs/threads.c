/* threads.c: main and 4 worker threads sharing a work queue.
 *
 * Main queues one item per step and waits (condition variable) until a
 * worker has done it, then prints "step N total T".  Workers keep __thread
 * counters.  Main holds an error-checking mutex for the whole run, so across
 * any checkpoint; relocking it must give EDEADLK and unlocking it 0, which
 * only works if the owner tid stored in the mutex is still main's tid.  Pids
 * and tids are taken at start and compared at the end; a worker is sent
 * SIGUSR1 with pthread_kill at the end and its handler must run on it.
 *
 * Usage: threads [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define NWORKERS 4
#define QSIZE 64

struct worker {
	pthread_t thread;
	pid_t tid_start, tid_end;
	int tls_tid_ok;
	/* Reported under qlock, to check the thread-locals against. */
	uint64_t sum;
	int count;
	/* The thread-locals' values, copied out at exit. */
	uint64_t tls_sum;
	int tls_count;
};

static pthread_mutex_t qlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t work_done = PTHREAD_COND_INITIALIZER;
static int queue[QSIZE];
static unsigned head, tail;
static int done_count, quitting;
static uint64_t total;
static struct worker workers[NWORKERS];

static __thread uint64_t tl_sum;
static __thread int tl_count;
static __thread pid_t tl_tid;

static volatile sig_atomic_t usr1_hits;
static volatile pid_t usr1_tid;

static void on_usr1(int sig)
{
	(void)sig;
	usr1_tid = gettid();
	usr1_hits++;
}

static uint64_t work(int item)
{
	uint64_t x = (uint64_t)item;
	for (int i = 0; i < 20000; i++)
		x = mix64(x + (uint64_t)i);
	return x;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	tl_tid = gettid();
	w->tid_start = tl_tid;

	pthread_mutex_lock(&qlock);
	for (;;) {
		while (head == tail && !quitting)
			pthread_cond_wait(&work_ready, &qlock);
		if (head == tail)
			break;
		int item = queue[head++ % QSIZE];
		pthread_mutex_unlock(&qlock);

		uint64_t v = work(item);
		tl_sum += v;
		tl_count++;

		pthread_mutex_lock(&qlock);
		total += v;
		w->sum += v;
		w->count++;
		done_count++;
		pthread_cond_broadcast(&work_done);
	}
	pthread_mutex_unlock(&qlock);

	w->tid_end = gettid();
	w->tls_tid_ok = tl_tid == w->tid_end;
	w->tls_sum = tl_sum;
	w->tls_count = tl_count;
	return NULL;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);

	pid_t pid0 = getpid(), tid0 = gettid();

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);

	pthread_mutexattr_t attr;
	pthread_mutex_t errcheck;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
	pthread_mutex_init(&errcheck, &attr);
	int lock_rc = pthread_mutex_lock(&errcheck);

	for (int i = 0; i < NWORKERS; i++) {
		int rc = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
		if (rc) {
			fprintf(stderr, "pthread_create: %s\n", strerror(rc));
			return 1;
		}
	}

	for (int step = 1; step <= steps; step++) {
		pthread_mutex_lock(&qlock);
		queue[tail++ % QSIZE] = step;
		pthread_cond_signal(&work_ready);
		while (done_count < step)
			pthread_cond_wait(&work_done, &qlock);
		uint64_t t = total;
		pthread_mutex_unlock(&qlock);
		printf("step %d total %016llx\n", step, (unsigned long long)t);
		sleep_ms(step_pause_ms(step, pause));
	}

	/* SIGUSR1 to worker 2, which is waiting for work. */
	pthread_kill(workers[2].thread, SIGUSR1);
	for (int i = 0; i < 10000 && !usr1_hits; i++)
		sleep_ms(1);
	int signal_ok = usr1_hits == 1 && usr1_tid == workers[2].tid_start;

	/* The error-checking mutex: still ours? */
	int relock_rc = pthread_mutex_lock(&errcheck);
	int unlock_rc = pthread_mutex_unlock(&errcheck);

	pthread_mutex_lock(&qlock);
	quitting = 1;
	pthread_cond_broadcast(&work_ready);
	pthread_mutex_unlock(&qlock);

	int ids_ok = getpid() == pid0 && gettid() == tid0;
	int tls_ok = 1, counts = 0;
	uint64_t sum = 0, check = 0;
	for (int i = 0; i < NWORKERS; i++) {
		struct worker *w = &workers[i];
		pthread_join(w->thread, NULL);
		ids_ok = ids_ok && w->tid_start == w->tid_end && w->tid_start != tid0;
		tls_ok = tls_ok && w->tls_tid_ok && w->tls_sum == w->sum && w->tls_count == w->count;
		counts += w->count;
		sum += w->sum;
	}
	check = mix64(sum ^ (uint64_t)counts);
	check = mix64(check ^ total);

	printf("ids %s\n", ids_ok ? "ok" : "changed");
	if (lock_rc == 0 && relock_rc == EDEADLK && unlock_rc == 0)
		printf("errorcheck mutex ok\n");
	else
		printf("errorcheck mutex lock=%d relock=%d unlock=%d\n", lock_rc, relock_rc, unlock_rc);
	printf("tls %s\n", tls_ok ? "ok" : "bad");
	printf("items %s\n", counts == steps && sum == total ? "ok" : "bad");
	printf("sigusr1 %s\n", signal_ok ? "ok" : "bad");
	printf("final %016llx\n", (unsigned long long)check);
	return 0;
}
