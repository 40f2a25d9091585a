/* A program that uses the checkpoint signal's number for itself (62, or
 * SIGUSR2 under --ckpt-signal 12): its handler must run with its siginfo,
 * its sigaction and its mask must read back as it set them, a signal sent
 * while it has the number blocked must come when it unblocks it, and a
 * thread that blocks everything and waits in sigwaitinfo() on the full set
 * gets the signals sent to it and never stops a checkpoint (and another in
 * sigwait() likewise).
 *
 * ownsig SIGNAL [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int sig;
static volatile sig_atomic_t runs, last_value, last_code_ok, mask_ok_in_handler;

static void on_sig(int s, siginfo_t *si, void *uc)
{
	(void)uc;
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	/* The signal itself and the action's mask are blocked meanwhile. */
	mask_ok_in_handler = sigismember(&cur, s) == 1 && sigismember(&cur, SIGUSR1) == 1;
	last_code_ok = s == sig && si->si_signo == sig && si->si_pid == getpid() &&
		       (si->si_code == SI_QUEUE || si->si_code == SI_TKILL || si->si_code == SI_USER);
	last_value = si->si_code == SI_QUEUE ? si->si_value.sival_int : -1;
	runs++;
}

/* The waiter: everything blocked, sigwaitinfo on the full set. */
static int to_main[2];
static pthread_t waiter_thread;

static void *waiter(void *arg)
{
	(void)arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	int ready = 0;
	if (write(to_main[1], &ready, sizeof ready) != sizeof ready)
		return NULL;
	for (;;) {
		siginfo_t si;
		int s = sigwaitinfo(&all, &si);
		if (s == SIGTERM)
			break;
		if (s < 0)
			fprintf(stderr, "ownsig: sigwaitinfo: %s\n", strerror(errno));
		int v = s == sig ? si.si_value.sival_int : -1000 - s;
		if (write(to_main[1], &v, sizeof v) != sizeof v)
			break;
	}
	return NULL;
}

/* A second waiter, in sigwait() on the full set, says which signal came. */
static int from_sigwaiter[2];
static pthread_t sigwaiter_thread;

static void *sigwaiter(void *arg)
{
	(void)arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	int ready = 0;
	if (write(from_sigwaiter[1], &ready, sizeof ready) != sizeof ready)
		return NULL;
	for (;;) {
		int s = 0;
		int r = sigwait(&all, &s);
		if (r == 0 && s == SIGTERM)
			break;
		int v = r == 0 ? s : -r;
		if (write(from_sigwaiter[1], &v, sizeof v) != sizeof v)
			break;
	}
	return NULL;
}

static int install(int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_sig;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | flags;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR1);
	if (sigaction(sig, &sa, NULL) != 0)
		return 0;
	struct sigaction back;
	sigaction(sig, NULL, &back);
	return back.sa_sigaction == on_sig && (back.sa_flags & (SA_SIGINFO | SA_RESTART | flags)) ==
						      (SA_SIGINFO | SA_RESTART | flags) &&
	       sigismember(&back.sa_mask, SIGUSR1) == 1;
}

static int queue_to(pthread_t t, int value)
{
	union sigval v = { .sival_int = value };
	return pthread_sigqueue(t, sig, v);
}

/* A child that leaves the signal to its default action dies of it; one
 * forked with the signal blocked has it blocked too. */
static int forked_mask_kept(void)
{
	sigset_t one, old;
	sigemptyset(&one);
	sigaddset(&one, sig);
	pthread_sigmask(SIG_BLOCK, &one, &old);
	pid_t pid = fork();
	if (pid == 0) {
		sigset_t now;
		pthread_sigmask(SIG_BLOCK, NULL, &now);
		_exit(sigismember(&now, sig) == 1 ? 0 : 1);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	int st;
	return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static int default_action_kills(void)
{
	pid_t pid = fork();
	if (pid == 0) {
		signal(sig, SIG_DFL);
		raise(sig);
		_exit(0);
	}
	int st;
	if (waitpid(pid, &st, 0) != pid)
		return 0;
	return WIFSIGNALED(st) && WTERMSIG(st) == sig;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: ownsig SIGNAL [STEPS [PAUSE_MS]]\n");
		return 2;
	}
	sig = atoi(argv[1]);
	int steps, pause_ms;
	parse_args(argc - 1, argv + 1, &steps, &pause_ms);
	if (pipe(to_main) != 0)
		return 1;
	pthread_create(&waiter_thread, NULL, waiter, NULL);
	int ready;
	if (read(to_main[0], &ready, sizeof ready) != sizeof ready)
		return 1;
	if (pipe(from_sigwaiter) != 0)
		return 1;
	pthread_create(&sigwaiter_thread, NULL, sigwaiter, NULL);
	if (read(from_sigwaiter[0], &ready, sizeof ready) != sizeof ready)
		return 1;

	printf("sigaction reads back: %s\n", install(0) ? "ok" : "WRONG");
	printf("default action kills a child: %s\n", default_action_kills() ? "ok" : "WRONG");
	printf("a child forked with it blocked has it blocked: %s\n", forked_mask_kept() ? "ok" : "WRONG");
	uint64_t sum = 0;
	for (int step = 1; step <= steps; step++) {
		/* Delivered to this thread, handler run with the value. */
		int before = runs;
		queue_to(pthread_self(), step);
		int handled = runs == before + 1 && last_value == step && last_code_ok && mask_ok_in_handler;

		/* kill() to the process: the main thread takes it (SI_USER). */
		before = runs;
		kill(getpid(), sig);
		int killed = runs == before + 1 && last_code_ok;

		/* raise(): SI_TKILL, no value. */
		before = runs;
		raise(sig);
		int raised = runs == before + 1 && last_value == -1 && last_code_ok;

		/* Blocked: held until unblocked; the mask reads back blocked. */
		sigset_t one, old, now;
		sigemptyset(&one);
		sigaddset(&one, sig);
		pthread_sigmask(SIG_BLOCK, &one, &old);
		pthread_sigmask(SIG_BLOCK, NULL, &now);
		before = runs;
		queue_to(pthread_self(), 1000 + step);
		sigset_t waiting;
		sigpending(&waiting);
		int held = runs == before && sigismember(&now, sig) == 1 && sigismember(&old, sig) == 0 &&
			   sigismember(&waiting, sig) == 1;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		int released = runs == before + 1 && last_value == 1000 + step;

		/* Ignored: nothing runs. */
		signal(sig, SIG_IGN);
		before = runs;
		raise(sig);
		int ignored = runs == before && signal(sig, SIG_IGN) == SIG_IGN;
		install(step % 3 == 0 ? SA_RESETHAND : 0);
		if (step % 3 == 0) {
			raise(sig);
			struct sigaction back;
			sigaction(sig, NULL, &back);
			ignored = ignored && back.sa_handler == SIG_DFL;
			install(0);
		}

		/* The waiter takes what is sent to it. */
		queue_to(waiter_thread, 2000 + step);
		int got = 0;
		if (read(to_main[0], &got, sizeof got) != sizeof got)
			got = -1;

		/* And the sigwait() one. */
		queue_to(sigwaiter_thread, step);
		int waited = 0;
		if (read(from_sigwaiter[0], &waited, sizeof waited) != sizeof waited)
			waited = -1;

		sum = mix64(sum ^ (uint64_t)(step * 7 + got));
		printf("step %d handler %s kill %s raise %s blocked %s/%s ignored %s waiter %d sigwait %s\n", step,
		       handled ? "ok" : "WRONG", killed ? "ok" : "WRONG", raised ? "ok" : "WRONG", held ? "ok" : "WRONG",
		       released ? "ok" : "WRONG", ignored ? "ok" : "WRONG", got, waited == sig ? "ok" : "WRONG");
		sleep_ms(step_pause_ms(step, pause_ms));
	}
	pthread_kill(waiter_thread, SIGTERM);
	pthread_join(waiter_thread, NULL);
	pthread_kill(sigwaiter_thread, SIGTERM);
	pthread_join(sigwaiter_thread, NULL);
	printf("final %016llx runs %d\n", (unsigned long long)sum, (int)runs);
	return 0;
}
