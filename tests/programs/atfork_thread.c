/* A library whose constructor registers a fork child handler that starts
 * a thread (as tclsh 8.6 does), and a program linked with it that forks: the
 * child's extra thread must not inherit the checkpoint signal blocked
 * (the library's handler runs before the agent's has reopened it).
 *
 * Built twice by its e2e test (not by the harness): with -DLIB -shared as
 * libatfork_thread.so, and without, linked with it. The child prints the
 * steps; the parent waits for it and exits with its status.
 *
 * atfork_thread [STEPS [PAUSE_MS]]
 */
#include "common.h"

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef LIB

static volatile int ticks;

static void *ticker(void *arg)
{
	(void)arg;
	for (;;) {
		ticks++;
		sleep_ms(20);
	}
	return NULL;
}

static void start_ticker(void)
{
	pthread_t t;
	pthread_create(&t, NULL, ticker, NULL);
}

__attribute__((constructor)) static void register_handler(void)
{
	pthread_atfork(NULL, NULL, start_ticker);
}

int atfork_thread_ticks(void)
{
	return ticks;
}

#else

int atfork_thread_ticks(void);

int main(int argc, char **argv)
{
	int steps, pause_ms;
	parse_args(argc, argv, &steps, &pause_ms);
	pid_t pid = fork();
	if (pid == 0) {
		uint64_t sum = 0;
		for (int step = 1; step <= steps; step++) {
			sum = mix64(sum ^ (uint64_t)step);
			printf("step %d %016llx\n", step, (unsigned long long)sum);
			sleep_ms(step_pause_ms(step, pause_ms));
		}
		printf("final %016llx ticker %s\n", (unsigned long long)sum, atfork_thread_ticks() > 0 ? "ran" : "never ran");
		return 0;
	}
	int st;
	if (waitpid(pid, &st, 0) != pid)
		return 1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}

#endif
