/* sysloop.c: what the program pays between checkpoints. Times loops of
 * fork + waitpid and of a few other system calls (some wrapped by the
 * agent, some not) and prints one line per loop:
 *
 *     NAME NS_PER_CALL
 *
 * Usage: sysloop [SCALE]   (SCALE multiplies the iteration counts; default 1) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double scale = 1;
static int fds[2];

static long long clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void fork_wait(void)
{
	pid_t pid = fork();
	if (pid == 0)
		_exit(0);
	if (pid < 0 || waitpid(pid, NULL, 0) != pid) {
		perror("fork/waitpid");
		exit(1);
	}
}

static void do_getpid(void) { syscall(SYS_getpid); }

static void pipe_rw(void)
{
	char c = 'x';
	if (write(fds[1], &c, 1) != 1 || read(fds[0], &c, 1) != 1) {
		perror("pipe");
		exit(1);
	}
}

static void do_poll(void)
{
	struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
	poll(&pfd, 1, 0);
}

static void do_sigprocmask(void)
{
	sigset_t none, old;
	sigemptyset(&none);
	sigprocmask(SIG_BLOCK, &none, &old);
}

static void dup_close(void)
{
	int fd = dup(fds[0]);
	if (fd < 0 || close(fd) != 0) {
		perror("dup/close");
		exit(1);
	}
}

static void nanosleep0(void)
{
	struct timespec ts = { 0, 0 };
	nanosleep(&ts, NULL);
}

static void run(const char *name, void (*op)(void), long count)
{
	count = (long)(count * scale);
	if (count < 1)
		count = 1;
	op(); /* warm up */
	long long t0 = clock_ns();
	for (long i = 0; i < count; i++)
		op();
	printf("%s %.1f\n", name, (double)(clock_ns() - t0) / count);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		scale = atof(argv[1]);
	if (pipe(fds) != 0) {
		perror("pipe");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	run("fork+waitpid", fork_wait, 1000);
	run("getpid", do_getpid, 300000);
	run("pipe-write+read", pipe_rw, 100000);
	run("poll", do_poll, 300000);
	run("sigprocmask", do_sigprocmask, 300000);
	run("dup+close", dup_close, 200000);
	run("nanosleep-0", nanosleep0, 3000);
	return 0;
}
