/* timersig.c: POSIX timers' signals pending at a checkpoint.  Two periodic
 * timers (SIGEV_SIGNAL, both on SIGRTMIN, as DMTCP's timer1 has them) each
 * carry a pointer to their own record in si_value.  SIGRTMIN stays blocked
 * while main sleeps, so that a checkpoint nearly always finds the timers'
 * signals pending; then main takes what is pending with sigtimedwait and
 * checks each siginfo: code SI_TIMER, the value one of the two records,
 * the timer id the record's.  A signal raised again without its value (a
 * bare SIGRTMIN) reads "lost".
 *
 * Usage: timersig [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <string.h>
#include <time.h>

struct record {
	timer_t id;
	int which;
};

static struct record records[2];

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	sigset_t rt;
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN);
	if (sigprocmask(SIG_BLOCK, &rt, NULL) != 0) {
		perror("sigprocmask");
		return 1;
	}
	for (int i = 0; i < 2; i++) {
		struct sigevent sev;
		memset(&sev, 0, sizeof sev);
		sev.sigev_notify = SIGEV_SIGNAL;
		sev.sigev_signo = SIGRTMIN;
		sev.sigev_value.sival_ptr = &records[i];
		records[i].which = i;
		if (timer_create(CLOCK_MONOTONIC, &sev, &records[i].id) != 0) {
			perror("timer_create");
			return 1;
		}
		struct itimerspec its = { { 0, (5 + 3 * i) * 1000000L }, { 0, (5 + 3 * i) * 1000000L } };
		if (timer_settime(records[i].id, 0, &its, NULL) != 0) {
			perror("timer_settime");
			return 1;
		}
	}
	uint64_t h = 0x5195195eULL;
	for (int step = 1; step <= steps; step++) {
		sleep_ms(step_pause_ms(step, pause));
		int taken = 0, bad = 0;
		siginfo_t si;
		struct timespec none = { 0, 0 };
		while (sigtimedwait(&rt, &si, &none) == SIGRTMIN) {
			taken++;
			struct record *r = si.si_value.sival_ptr;
			if (si.si_code != SI_TIMER || (r != &records[0] && r != &records[1]) ||
			    si.si_timerid != (int)(intptr_t)r->id)
				bad++;
		}
		h = mix64(h + (uint64_t)step);
		/* How many were taken depends on timing: only whether any was,
		 * and whether every one was whole, is printed. */
		printf("step %d hash %016llx signals %s values %s\n", step, (unsigned long long)h,
		       taken > 0 ? "came" : "none", bad ? "lost" : "ok");
	}
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
