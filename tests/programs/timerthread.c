/* timerthread.c: POSIX timers that notify by starting a thread
 * (SIGEV_THREAD), as vim arms one.  A periodic timer's function counts
 * ticks and posts a semaphore; main waits for three ticks per step and
 * prints what the function saw: the value given at timer_create, a thread
 * other than main's, and its signal mask (libc blocks the program's
 * signals there).
 * Halfway through, the timer is deleted and a new one made.
 *
 * Usage: timerthread [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static sem_t ticks;
static pid_t main_tid;
static volatile int bad_value, on_main, masked;
static int cookie[2];

static void tick(union sigval v)
{
	if (v.sival_ptr != &cookie[0] && v.sival_ptr != &cookie[1])
		bad_value = 1;
	if ((pid_t)syscall(SYS_gettid) == main_tid)
		on_main = 1;
	sigset_t now;
	pthread_sigmask(SIG_SETMASK, NULL, &now);
	if (sigismember(&now, SIGUSR1) || sigismember(&now, SIGTERM))
		masked = 1;
	sem_post(&ticks);
}

static timer_t start_timer(int which)
{
	struct sigevent sev;
	memset(&sev, 0, sizeof sev);
	sev.sigev_notify = SIGEV_THREAD;
	sev.sigev_notify_function = tick;
	sev.sigev_value.sival_ptr = &cookie[which];
	timer_t id;
	if (timer_create(CLOCK_MONOTONIC, &sev, &id) != 0) {
		perror("timer_create");
		exit(1);
	}
	struct itimerspec its = { { 0, 20 * 1000000L }, { 0, 20 * 1000000L } };
	if (timer_settime(id, 0, &its, NULL) != 0) {
		perror("timer_settime");
		exit(1);
	}
	return id;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	main_tid = (pid_t)syscall(SYS_gettid);
	sem_init(&ticks, 0, 0);
	timer_t id = start_timer(0);
	uint64_t h = 0x71e71e71ULL;
	for (int step = 1; step <= steps; step++) {
		for (int i = 0; i < 3; i++)
			while (sem_wait(&ticks) != 0 && errno == EINTR)
				;
		if (step == steps / 2) {
			if (timer_delete(id) != 0) {
				perror("timer_delete");
				return 1;
			}
			id = start_timer(1);
		}
		struct itimerspec left;
		int armed = timer_gettime(id, &left) == 0 && (left.it_interval.tv_nsec == 20 * 1000000L);
		h = mix64(h + (uint64_t)step);
		printf("step %d hash %016llx value %s thread %s mask %s timer %s\n", step, (unsigned long long)h,
		       bad_value ? "wrong" : "ok", on_main ? "main" : "own", masked ? "blocked" : "open",
		       armed ? "armed" : "lost");
		sleep_ms(step_pause_ms(step, pause));
	}
	if (timer_delete(id) != 0) {
		perror("timer_delete");
		return 1;
	}
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
