/* Signals sent to a process and still pending at the checkpoint keep who
 * sent them: a parent sends its child, which blocks them, a SIGUSR1 with
 * kill() and two SIGRTMIN+1 with sigqueue() (values 1000+step and
 * 2000+step) each step; the child sleeps a while with the three pending,
 * then takes them with sigwaitinfo() and checks each one's sender, code,
 * value and order. Almost all the time the child has them pending, so a
 * checkpoint almost always finds them there.
 *
 * pending [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int read_all(int fd, void *buf, size_t len)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* One signal from the parent: what is wrong with it, or "" if nothing. */
static const char *check(const siginfo_t *si, int sig, int code, int value)
{
	if (si->si_signo != sig)
		return "signal";
	if (si->si_pid != getppid())
		return "sender";
	if (si->si_code != code)
		return "code";
	if (code == SI_QUEUE && si->si_value.sival_int != value)
		return "value";
	return "";
}

static void child(int steps, int pause_ms, int ack)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGRTMIN + 1);
	uint64_t acc = 0;
	int bad = 0;
	for (int s = 1; s <= steps; s++) {
		/* The step's signals are pending meanwhile. */
		sleep_ms(step_pause_ms(s, pause_ms));
		siginfo_t si[3];
		for (int i = 0; i < 3; i++) {
			while (sigwaitinfo(&set, &si[i]) < 0)
				if (errno != EINTR) {
					perror("pending: sigwaitinfo");
					_exit(3);
				}
		}
		/* A standard signal comes before real-time ones; those in the
		 * order they were sent. */
		const char *why[3] = {
			check(&si[0], SIGUSR1, SI_USER, 0),
			check(&si[1], SIGRTMIN + 1, SI_QUEUE, 1000 + s),
			check(&si[2], SIGRTMIN + 1, SI_QUEUE, 2000 + s),
		};
		int ok = !*why[0] && !*why[1] && !*why[2];
		if (!ok)
			bad++;
		acc = mix64(acc + (uint64_t)s * 31 + (uint64_t)ok);
		if (ok) {
			printf("step %d ok\n", s);
		} else {
			printf("step %d WRONG [%s] [%s] [%s]\n", s, why[0], why[1], why[2]);
			fprintf(stderr, "pending: step %d: [%s] [%s] [%s]\n", s, why[0], why[1], why[2]);
		}
		char c = 1;
		if (write(ack, &c, 1) != 1)
			_exit(4);
	}
	printf("final %016llx bad %d\n", (unsigned long long)acc, bad);
	_exit(bad ? 1 : 0);
}

int main(int argc, char **argv)
{
	int steps, pause_ms;
	parse_args(argc, argv, &steps, &pause_ms);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGRTMIN + 1);
	sigprocmask(SIG_BLOCK, &set, NULL);

	int ack[2];
	if (pipe(ack)) {
		perror("pending: pipe");
		return 2;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		perror("pending: fork");
		return 2;
	}
	if (pid == 0) {
		close(ack[0]);
		child(steps, pause_ms, ack[1]);
	}
	close(ack[1]);
	for (int s = 1; s <= steps; s++) {
		union sigval v1 = { .sival_int = 1000 + s }, v2 = { .sival_int = 2000 + s };
		if (kill(pid, SIGUSR1) || sigqueue(pid, SIGRTMIN + 1, v1) || sigqueue(pid, SIGRTMIN + 1, v2)) {
			perror("pending: send");
			return 2;
		}
		char c;
		if (read_all(ack[0], &c, 1)) {
			fprintf(stderr, "pending: the child is gone at step %d\n", s);
			return 2;
		}
	}
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 2;
}
