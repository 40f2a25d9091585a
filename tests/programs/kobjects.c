/* kobjects.c: kernel objects without a path, within one process, that
 * must survive a checkpoint/restart with what they hold.
 *
 * - an eventfd: each step writes the step number and the next step reads
 *   it back (the count is in the kernel across the pause);
 * - a signalfd for SIGUSR1, blocked: each step raises SIGUSR1 and the next
 *   step reads it from the signalfd (pending across the pause);
 * - a periodic timerfd (20 ms): each step waits for it to fire;
 * - a pipe to itself (O_NONBLOCK read end): each step writes a few bytes
 *   and the next step reads them (bytes in flight across the pause);
 * - an epoll instance watching all three with distinct epoll_data: the
 *   eventfd and the signalfd must be reported ready at each step's start,
 *   the timerfd soon after.
 *
 * Prints "step N ..." each step and "final H" at the end.
 *
 * Usage: kobjects [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "common.h"

enum { EVENT = 1, SIGNAL = 2, TIMER = 3 };

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void watch(int ep, int fd, uint64_t data)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = data };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("epoll_ctl");
}

/* Waits (5 s at most) until epoll has reported every one of `want`
 * (bits 1 << data); returns the ones it saw. */
static unsigned wait_ready(int ep, unsigned want)
{
	unsigned seen = 0;
	for (int tries = 0; tries < 50 && (seen & want) != want; tries++) {
		struct epoll_event evs[4];
		int n = epoll_wait(ep, evs, 4, 100);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++)
			seen |= 1u << evs[i].data.u64;
	}
	return seen & want;
}

int main(int argc, char **argv)
{
	int steps, pause_ms;
	parse_args(argc, argv, &steps, &pause_ms);

	int efd = eventfd(0, EFD_NONBLOCK);
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	int sfd = signalfd(-1, &usr1, SFD_NONBLOCK);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec every = { { 0, 20000000 }, { 0, 20000000 } };
	int self_pipe[2];
	if (pipe2(self_pipe, O_NONBLOCK) || fcntl(self_pipe[1], F_SETFL, 0))
		die("pipe");
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (efd < 0 || sfd < 0 || tfd < 0 || ep < 0 || timerfd_settime(tfd, 0, &every, NULL))
		die("create");
	watch(ep, efd, EVENT);
	watch(ep, sfd, SIGNAL);
	watch(ep, tfd, TIMER);

	uint64_t h = 0;
	for (int s = 1; s <= steps; s++) {
		uint64_t count = 0;
		int signo = 0;
		const char *ready = "-";
		char piped[32] = "-";
		if (s > 1) {
			unsigned want = 1u << EVENT | 1u << SIGNAL;
			ready = wait_ready(ep, want) == want ? "ok" : "MISSING";
			if (read(efd, &count, sizeof count) != sizeof count)
				count = 0;
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof si) == sizeof si)
				signo = (int)si.ssi_signo;
			ssize_t n = read(self_pipe[0], piped, sizeof piped - 1);
			piped[n > 0 ? n : 0] = 0;
			if (n <= 0)
				strcpy(piped, "EMPTY");
		}
		const char *timer = wait_ready(ep, 1u << TIMER) ? "ok" : "MISSING";
		uint64_t ticks;
		if (read(tfd, &ticks, sizeof ticks) != sizeof ticks)
			timer = "UNREADABLE";
		h = mix64(h + count * 131 + (uint64_t)signo + (uint64_t)piped[0]);
		printf("step %d eventfd %llu signal %d pipe %s epoll %s timer %s\n", s, (unsigned long long)count,
		       signo, piped, ready, timer);

		/* Left in the kernel across the pause, where a checkpoint may fall. */
		uint64_t one = (uint64_t)s;
		if (write(efd, &one, sizeof one) != sizeof one)
			die("write eventfd");
		kill(getpid(), SIGUSR1);
		char token[16];
		int len = snprintf(token, sizeof token, "p%d", s);
		if (write(self_pipe[1], token, (size_t)len) != len)
			die("write pipe");
		sleep_ms(step_pause_ms(s, pause_ms));
	}
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
