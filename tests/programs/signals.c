/* signals.c: signal state that must survive a checkpoint/restart.
 *
 * - ITIMER_REAL every 10 ms, a SIGALRM handler counting ticks;
 * - a POSIX timer (CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN) every 20 ms;
 * - an alternate signal stack, and a SIGUSR2 handler with SA_ONSTACK that
 *   checks it runs on it (raised near the start and near the end);
 * - SIGUSR1 blocked and raised at the start, so pending across the run,
 *   unblocked at the end: its handler must run exactly once, then;
 * - SIGINT ignored at the start, checked with sigaction at the end.
 *
 * Timer counts depend on timing, so only whether they lie within bounds is
 * printed.  Prints "step N hash H" each step and "final H" at the end.
 *
 * Usage: signals [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/time.h>

#include "common.h"

#define ALT_SIZE (64 * 1024)
#define ALARM_MS 10
#define RT_MS 20

static volatile sig_atomic_t alarm_ticks, rt_ticks, usr1_count, usr2_count, usr2_onstack;
static char *altstack;

static void on_alarm(int sig) { (void)sig; alarm_ticks++; }
static void on_rt(int sig) { (void)sig; rt_ticks++; }
static void on_usr1(int sig) { (void)sig; usr1_count++; }

static void on_usr2(int sig)
{
	char probe;
	uintptr_t p = (uintptr_t)&probe, lo = (uintptr_t)altstack;
	(void)sig;
	if (p >= lo && p < lo + ALT_SIZE)
		usr2_onstack++;
	usr2_count++;
}

static void handle(int sig, void (*fn)(int), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = fn;
	sa.sa_flags = SA_RESTART | flags;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL)) {
		perror("sigaction");
		exit(1);
	}
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Lower bound: a quarter of what the nominal time would give. Upper bound:
 * what the time actually spent in steps could give, plus slack. */
static const char *in_bounds(long ticks, long nominal_ms, long spent_ms, long period_ms, int steps)
{
	long lo = nominal_ms / period_ms / 4;
	long hi = spent_ms / period_ms + steps + 10;
	return ticks >= lo && ticks <= hi ? "ok" : "out of bounds";
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);

	altstack = malloc(ALT_SIZE);
	stack_t ss = { .ss_sp = altstack, .ss_size = ALT_SIZE, .ss_flags = 0 };
	if (!altstack || sigaltstack(&ss, NULL)) {
		perror("sigaltstack");
		return 1;
	}
	handle(SIGALRM, on_alarm, 0);
	handle(SIGRTMIN, on_rt, 0);
	handle(SIGUSR1, on_usr1, 0);
	handle(SIGUSR2, on_usr2, SA_ONSTACK);
	signal(SIGINT, SIG_IGN);

	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	raise(SIGUSR1);

	struct itimerval it = { { 0, ALARM_MS * 1000 }, { 0, ALARM_MS * 1000 } };
	setitimer(ITIMER_REAL, &it, NULL);

	timer_t timer;
	struct sigevent sev;
	memset(&sev, 0, sizeof sev);
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = SIGRTMIN;
	if (timer_create(CLOCK_MONOTONIC, &sev, &timer)) {
		perror("timer_create");
		return 1;
	}
	struct itimerspec its = { { 0, RT_MS * 1000000L }, { 0, RT_MS * 1000000L } };
	timer_settime(timer, 0, &its, NULL);

	uint64_t h = 0x516a15ULL;
	long nominal_ms = 0, nominal_half_ms = 0, spent_ms = 0;
	long alarm_half = 0, rt_half = 0;
	int usr2_ok = 1;
	for (int step = 1; step <= steps; step++) {
		if (step == 2 || step == steps - 1) {
			int before = usr2_count, on_before = usr2_onstack;
			raise(SIGUSR2);
			usr2_ok = usr2_ok && usr2_count == before + 1 && usr2_onstack == on_before + 1;
		}
		for (int i = 0; i < 1000; i++)
			h = mix64(h + (uint64_t)(step * 1000 + i));
		printf("step %d hash %016llx\n", step, (unsigned long long)h);

		long pause_ms = step_pause_ms(step, pause);
		long t0 = now_ms();
		sleep_ms(pause_ms);
		long dt = now_ms() - t0;
		/* A step that spans a restart may read anything: clamp it. */
		spent_ms += dt < 0 ? 0 : dt > 5000 ? 5000 : dt;
		nominal_ms += pause_ms;
		if (step == steps / 2) {
			alarm_half = alarm_ticks;
			rt_half = rt_ticks;
		} else if (step > steps / 2) {
			nominal_half_ms += pause_ms;
		}
	}

	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);
	timer_delete(timer);
	long alarms = alarm_ticks, rts = rt_ticks;

	sigset_t pending;
	sigpending(&pending);
	int usr1_was_pending = sigismember(&pending, SIGUSR1) == 1;
	int usr1_before = usr1_count;
	sigprocmask(SIG_UNBLOCK, &usr1, NULL);
	int usr1_ok = usr1_was_pending && usr1_before == 0 && usr1_count == 1;

	struct sigaction cur;
	sigaction(SIGINT, NULL, &cur);
	int sigint_ok = cur.sa_handler == SIG_IGN;
	sigaction(SIGALRM, NULL, &cur);
	int alarm_handler_ok = cur.sa_handler == on_alarm;
	stack_t now;
	sigaltstack(NULL, &now);
	int altstack_ok = now.ss_sp == altstack && now.ss_size == ALT_SIZE && !(now.ss_flags & SS_DISABLE);

	const char *alarm_ok = in_bounds(alarms, nominal_ms, spent_ms, ALARM_MS, steps);
	const char *alarm_half_ok = in_bounds(alarms - alarm_half, nominal_half_ms, spent_ms, ALARM_MS, steps);
	const char *rt_ok = in_bounds(rts, nominal_ms, spent_ms, RT_MS, steps);
	const char *rt_half_ok = in_bounds(rts - rt_half, nominal_half_ms, spent_ms, RT_MS, steps);
	printf("alarm ticks %s, second half %s\n", alarm_ok, alarm_half_ok);
	printf("posix timer ticks %s, second half %s\n", rt_ok, rt_half_ok);
	printf("sigusr1 pending then handled once %s\n", usr1_ok ? "ok" : "bad");
	printf("sigusr2 on alternate stack %s\n", usr2_ok ? "ok" : "bad");
	printf("sigaltstack %s\n", altstack_ok ? "ok" : "bad");
	printf("sigint ignored %s\n", sigint_ok ? "ok" : "bad");
	printf("sigalrm handler %s\n", alarm_handler_ok ? "ok" : "bad");
	/* The raw counts, for whoever reads stderr when a bound is missed. */
	fprintf(stderr, "alarms=%ld (half %ld) rt=%ld (half %ld) nominal=%ld spent=%ld\n",
		alarms, alarms - alarm_half, rts, rts - rt_half, nominal_ms, spent_ms);

	h = mix64(h ^ (uint64_t)(usr1_ok + 2 * usr2_ok + 4 * sigint_ok + 8 * altstack_ok + 16 * alarm_handler_ok));
	printf("final %016llx\n", (unsigned long long)h);
	return 0;
}
