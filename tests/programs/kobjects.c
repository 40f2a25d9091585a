/* kobjects.c: kernel objects without a path, within one process, that
 * must survive a checkpoint/restart with what they hold.
 *
 * - an eventfd: each step writes the step number and the next step reads
 *   it back (the count is in the kernel across the pause);
 * - a signalfd for SIGUSR1, blocked: each step raises SIGUSR1 and the next
 *   step reads it from the signalfd (pending across the pause);
 * - a periodic timerfd (20 ms): each step waits for it to fire;
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
		if (s > 1) {
			unsigned want = 1u << EVENT | 1u << SIGNAL;
			ready = wait_ready(ep, want) == want ? "ok" : "MISSING";
			if (read(efd, &count, sizeof count) != sizeof count)
				count = 0;
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof si) == sizeof si)
				signo = (int)si.ssi_signo;
		}
		const char *timer = wait_ready(ep, 1u << TIMER) ? "ok" : "MISSING";
		uint64_t ticks;
		if (read(tfd, &ticks, sizeof ticks) != sizeof ticks)
			timer = "UNREADABLE";
		h = mix64(h + count * 131 + (uint64_t)signo);
		printf("step %d eventfd %llu signal %d epoll %s timer %s\n", s, (unsigned long long)count, signo,
		       ready, timer);

		/* Left in the kernel across the pause, where a checkpoint may fall. */
		uint64_t one = (uint64_t)s;
		if (write(efd, &one, sizeof one) != sizeof one)
			die("write eventfd");
		kill(getpid(), SIGUSR1);
		sleep_ms(step_pause_ms(s, pause_ms));
	}
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
