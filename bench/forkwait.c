/* forkwait.c: the cost of process creation and of plain system calls, as a
 * program sees it. Prints the mean time of fork + waitpid of a child that
 * _exit(0)s, and of getpid, read, write and poll on a pipe.
 * Usage: forkwait [FORKS] [CALLS] */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	int forks = argc > 1 ? atoi(argv[1]) : 2000;
	int calls = argc > 2 ? atoi(argv[2]) : 200000;
	double t0 = now();
	for (int i = 0; i < forks; i++) {
		pid_t p = fork();
		if (p == 0)
			_exit(0);
		if (p < 0 || waitpid(p, NULL, 0) != p) {
			perror("fork");
			return 1;
		}
	}
	double t1 = now();
	printf("fork+wait %.1f us\n", (t1 - t0) / forks * 1e6);
	int fds[2];
	if (pipe(fds))
		return 1;
	char c = 'x';
	struct pollfd pfd = { fds[0], POLLIN, 0 };
	volatile long sink = 0;
	t0 = now();
	for (int i = 0; i < calls; i++)
		sink += getpid();
	t1 = now();
	printf("getpid %.3f us\n", (t1 - t0) / calls * 1e6);
	t0 = now();
	for (int i = 0; i < calls; i++) {
		if (write(fds[1], &c, 1) != 1 || poll(&pfd, 1, 0) != 1 || read(fds[0], &c, 1) != 1)
			return 1;
	}
	t1 = now();
	printf("write+poll+read %.3f us\n", (t1 - t0) / calls * 1e6);
	return 0;
}
