/* Blocking calls that a checkpoint may interrupt, each with a short
 * timeout (or woken by a thread or a timer of the program's own), called
 * over and over: none may fail with EINTR unless the program's own signal
 * caused it, and none may return before its time.
 *
 * Every step calls each of them once; the step's line counts the calls,
 * the EINTRs not caused by the program, the calls that came back early
 * and the calls that returned something else than expected: all but the
 * first are 0 when no checkpoint shows. Details go to stderr.
 *
 * SysV message queues and semaphores are not saved by a checkpoint: the
 * helper thread sends until it is answered, and when they are gone the
 * program makes new ones, quietly (semaphore 0 is never posted, 1 is the
 * helper's, which may be posted more than once); the helper's two are not
 * timed (a killed run may have left what they wait for).
 *
 * With "nosock", accept and recv are left out.
 *
 * eintr [STEPS [TIMEOUT_MS [nosock]]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/select.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static long timeout_ms = 15;
static int eintrs, early, wrong, calls;

static int64_t now_ns(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static struct timespec rel_ts(void)
{
	struct timespec t = { timeout_ms / 1000, (timeout_ms % 1000) * 1000000L };
	return t;
}

static struct timespec abs_ts(clockid_t c)
{
	int64_t at = now_ns(c) + timeout_ms * 1000000L;
	struct timespec t = { at / 1000000000, at % 1000000000 };
	return t;
}

/* One timed call: `r` its result, `want` the expected one, `err` the errno
 * after it, `t0` when it started; `timed` when it must take the timeout. */
static void check(const char *what, long r, long want, int err, int64_t t0, int timed)
{
	int64_t took = now_ns(CLOCK_MONOTONIC) - t0;
	calls++;
	if (r < 0 && err == EINTR) {
		eintrs++;
		fprintf(stderr, "eintr: %s failed with EINTR\n", what);
		return;
	}
	if (r != want) {
		wrong++;
		fprintf(stderr, "eintr: %s returned %ld (errno %d), wanted %ld\n", what, r, err, want);
	}
	/* 1 ms of slack: absolute deadlines are on another clock; socket
	 * timeouts (timed == 2) count in scheduler ticks and may end one tick
	 * (up to 10 ms) early. */
	int64_t slack = timed == 2 ? 10000000 : 1000000;
	if (timed && took < timeout_ms * 1000000L - slack) {
		early++;
		fprintf(stderr, "eintr: %s returned after %lld us, asked %ld ms\n", what, (long long)took / 1000,
			timeout_ms);
	}
}

#define CALL(what, expr, want, timed)                                   \
	do {                                                            \
		int64_t t0_ = now_ns(CLOCK_MONOTONIC);                  \
		errno = 0;                                              \
		long r_ = (long)(expr);                                 \
		check(what, r_, want, errno, t0_, timed);               \
	} while (0)

/* Same, for functions that return an error number. */
#define CALL_ERRNO(what, expr, want, timed)                              \
	do {                                                             \
		int64_t t0_ = now_ns(CLOCK_MONOTONIC);                   \
		int e_ = (expr);                                         \
		check(what, e_ == EINTR ? -1 : e_, want, e_, t0_, timed); \
	} while (0)

/* ---- a helper thread that wakes the main thread's SysV waits ---------- */

/* SysV queues and semaphores come back from a restart as they were at the
 * checkpoint (docs/ipc.md); still, which request the main thread had seen
 * by then depends on timing. So
 * the helper sends again and again until the main thread says it got it,
 * each request with a type of its own. */
static int cmd_pipe[2];
static atomic_int msq, semid;
static atomic_long asked, answered;

/* New SysV objects when the old ones are gone. */
static void ensure_ipc(void)
{
	struct msqid_ds q;
	if (msgctl(atomic_load(&msq), IPC_STAT, &q) != 0)
		atomic_store(&msq, msgget(IPC_PRIVATE, 0600));
	if (semctl(atomic_load(&semid), 0, GETVAL) < 0)
		atomic_store(&semid, semget(IPC_PRIVATE, 2, 0600));
}

static int gone(int err)
{
	return err == EINVAL || err == EIDRM;
}

/* Requests are numbered: odd ones want a message (of that type), even ones
 * a post of semaphore 1. The helper serves the newest request until it is
 * answered (what the main thread finds may be left over from a killed run,
 * so it may be answered before the helper even looks). */
static void *waker(void *arg)
{
	(void)arg;
	char c;
	while (read(cmd_pipe[0], &c, 1) == 1 && c != 'q') {
		for (;;) {
			long want = atomic_load(&asked);
			if (atomic_load(&answered) >= want)
				break;
			sleep_ms(timeout_ms);
			want = atomic_load(&asked);
			if (atomic_load(&answered) >= want)
				break;
			if (want % 2) {
				struct {
					long type;
					char text[8];
				} m = { want, "hello" };
				msgsnd(atomic_load(&msq), &m, sizeof m.text, IPC_NOWAIT);
			} else {
				struct sembuf up = { 1, 1, 0 };
				semop(atomic_load(&semid), &up, 1);
			}
		}
	}
	return NULL;
}

/* ---- a thread sleeping with sleep(): it must sleep whole seconds ------ */

static atomic_int sleeper_bad;
static atomic_int stop_sleeper;

static void *sleeper(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop_sleeper)) {
		int64_t t0 = now_ns(CLOCK_MONOTONIC);
		unsigned left = sleep(1);
		int64_t took = now_ns(CLOCK_MONOTONIC) - t0;
		if (left != 0 || took < 999000000) {
			atomic_fetch_add(&sleeper_bad, 1);
			fprintf(stderr, "eintr: sleep(1) left %u after %lld ms\n", left, (long long)took / 1000000);
		}
	}
	return NULL;
}

/* ---- the program's own timer signal ------------------------------------ */

static volatile sig_atomic_t alarms;

/* A timer that fires while the checkpoint is taken must come back (armed
 * or pending: docs/signals.md); should a restart ever lose it, the watchdog
 * sends the alarm itself after 2 s and says so on stderr ("note:"). Which
 * wait is going on: its number, 0 when none. */
static atomic_long waiting;
static atomic_int stop_watchdog;
static pthread_t main_thread;

static void *watchdog(void *arg)
{
	(void)arg;
	long seen = 0;
	int ticks = 0;
	while (!atomic_load(&stop_watchdog)) {
		sleep_ms(200);
		long w = atomic_load(&waiting);
		ticks = w != 0 && w == seen ? ticks + 1 : 0;
		seen = w;
		if (ticks == 10) {
			fprintf(stderr, "note: no alarm after 2 s in wait %ld: sent it\n", w);
			pthread_kill(main_thread, SIGALRM);
		}
	}
	return NULL;
}

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

static void arm_alarm(void)
{
	struct itimerval it = { { 0, 0 }, { 0, timeout_ms * 1000 } };
	setitimer(ITIMER_REAL, &it, NULL);
}

int main(int argc, char **argv)
{
	int steps, pause_ms;
	parse_args(argc, argv, &steps, &pause_ms);
	if (argc > 2)
		timeout_ms = pause_ms;
	int sockets = !(argc > 3 && strcmp(argv[3], "nosock") == 0);

	/* SIGALRM and SIGUSR1 reach the main thread only. */
	sigset_t alrm;
	sigemptyset(&alrm);
	sigaddset(&alrm, SIGALRM);
	sigaddset(&alrm, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &alrm, NULL);
	if (pipe(cmd_pipe) != 0)
		return 1;
	atomic_store(&msq, msgget(IPC_PRIVATE, 0600));
	atomic_store(&semid, semget(IPC_PRIVATE, 2, 0600));
	if (msq < 0 || semid < 0) {
		perror("eintr: SysV IPC");
		return 1;
	}
	pthread_t wt, st, dt;
	main_thread = pthread_self();
	pthread_create(&wt, NULL, waker, NULL);
	pthread_create(&st, NULL, sleeper, NULL);
	pthread_create(&dt, NULL, watchdog, NULL);
	sigdelset(&alrm, SIGALRM);
	pthread_sigmask(SIG_SETMASK, &alrm, NULL); /* SIGALRM open, SIGUSR1 blocked */
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);

	int pfd[2];
	if (pipe(pfd) != 0)
		return 1;
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN };
	epoll_ctl(ep, EPOLL_CTL_ADD, pfd[0], &ev);
	sigset_t empty;
	sigemptyset(&empty);

	int lis = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (bind(lis, (struct sockaddr *)&a, sizeof a) != 0 || listen(lis, 4) != 0) {
		perror("eintr: listen");
		return 1;
	}
	struct timeval tv = { 0, timeout_ms * 1000 };
	setsockopt(lis, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	int sp[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
	setsockopt(sp[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

	pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
	sem_t psem;
	sem_init(&psem, 0, 0);
	uint64_t sum = 0;

	for (int step = 1; step <= steps; step++) {
		eintrs = early = wrong = calls = 0;
		struct pollfd p = { pfd[0], POLLIN, 0 };
		CALL("poll", poll(&p, 1, timeout_ms), 0, 1);
		struct timespec ts = rel_ts();
		CALL("ppoll", ppoll(&p, 1, &ts, NULL), 0, 1);
		fd_set rs;
		FD_ZERO(&rs);
		FD_SET(pfd[0], &rs);
		struct timeval stv = { 0, timeout_ms * 1000 };
		CALL("select", select(pfd[0] + 1, &rs, NULL, NULL, &stv), 0, 1);
		FD_SET(pfd[0], &rs);
		ts = rel_ts();
		CALL("pselect", pselect(pfd[0] + 1, &rs, NULL, NULL, &ts, &empty), 0, 1);
		struct epoll_event out;
		CALL("epoll_wait", epoll_wait(ep, &out, 1, timeout_ms), 0, 1);
		CALL("epoll_pwait", epoll_pwait(ep, &out, 1, timeout_ms, &empty), 0, 1);
		struct timespec rem;
		ts = rel_ts();
		CALL("nanosleep", nanosleep(&ts, &rem), 0, 1);
		ts = rel_ts();
		CALL_ERRNO("clock_nanosleep relative", clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL), 0, 1);
		ts = abs_ts(CLOCK_MONOTONIC);
		CALL_ERRNO("clock_nanosleep absolute", clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL), 0, 1);
		CALL("usleep", usleep(timeout_ms * 1000), 0, 1);
		sigset_t usr1;
		sigemptyset(&usr1);
		sigaddset(&usr1, SIGUSR1);
		ts = rel_ts();
		CALL("sigtimedwait", sigtimedwait(&usr1, NULL, &ts) == -1 && errno == EAGAIN ? 0 : -1, 0, 1);
		pthread_mutex_lock(&mu);
		ts = abs_ts(CLOCK_REALTIME);
		CALL_ERRNO("pthread_cond_timedwait", pthread_cond_timedwait(&cv, &mu, &ts), ETIMEDOUT, 1);
		pthread_mutex_unlock(&mu);
		ts = abs_ts(CLOCK_REALTIME);
		CALL("sem_timedwait", sem_timedwait(&psem, &ts) == -1 && errno == ETIMEDOUT ? 0 : -1, 0, 1);
		struct sembuf down = { 0, -1, 0 };
		ensure_ipc();
		ts = rel_ts();
		CALL("semtimedop", semtimedop(semid, &down, 1, &ts) == -1 && (errno == EAGAIN || gone(errno)) ? 0 : -1,
		     0, 1);
		/* Set again each time: not every socket option comes back. */
		setsockopt(lis, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		setsockopt(sp[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		if (sockets) {
			CALL("accept with SO_RCVTIMEO", accept(lis, NULL, NULL) == -1 && errno == EAGAIN ? 0 : -1, 0,
			     2);
			char buf[16];
			CALL("recv with SO_RCVTIMEO", recv(sp[0], buf, sizeof buf, 0) == -1 && errno == EAGAIN ? 0 : -1,
			     0, 2);
		} else {
			calls += 2;
		}

		/* Woken by the program's own timer: EINTR, with its handler run. */
		int before = alarms;
		arm_alarm();
		sigset_t susp;
		pthread_sigmask(SIG_BLOCK, NULL, &susp);
		sigdelset(&susp, SIGALRM);
		errno = 0;
		atomic_store(&waiting, step * 2L);
		int r = sigsuspend(&susp);
		atomic_store(&waiting, 0);
		calls++;
		if (!(r == -1 && errno == EINTR && alarms == before + 1)) {
			wrong++;
			fprintf(stderr, "eintr: sigsuspend returned %d errno %d, alarms %d->%d\n", r, errno, before,
				(int)alarms);
		}
		before = alarms;
		arm_alarm();
		errno = 0;
		atomic_store(&waiting, step * 2L + 1);
		r = pause();
		atomic_store(&waiting, 0);
		calls++;
		if (!(r == -1 && errno == EINTR && alarms == before + 1)) {
			wrong++;
			fprintf(stderr, "eintr: pause returned %d errno %d, alarms %d->%d\n", r, errno, before,
				(int)alarms);
		}

		/* Woken by the helper thread. */
		struct {
			long type;
			char text[8];
		} m;
		struct sembuf take = { 1, -1, 0 };
		long req = atomic_load(&asked) + 1; /* odd: a message */
		ensure_ipc();
		atomic_store(&asked, req);
		if (write(cmd_pipe[1], "m", 1) != 1)
			return 1;
		int64_t t0 = now_ns(CLOCK_MONOTONIC);
		long got;
		while ((got = msgrcv(atomic_load(&msq), &m, sizeof m.text, req, 0)) < 0 && gone(errno))
			ensure_ipc();
		check("msgrcv", got, (long)sizeof m.text, errno, t0, 0);
		atomic_store(&answered, req);
		while (msgrcv(atomic_load(&msq), &m, sizeof m.text, 0, IPC_NOWAIT) >= 0)
			; /* what the helper sent twice */
		atomic_store(&asked, ++req);
		if (write(cmd_pipe[1], "s", 1) != 1)
			return 1;
		t0 = now_ns(CLOCK_MONOTONIC);
		while ((got = semop(atomic_load(&semid), &take, 1)) < 0 && gone(errno))
			ensure_ipc();
		check("semop", got, 0, errno, t0, 0);
		atomic_store(&answered, req);

		int bad_sleeps = atomic_exchange(&sleeper_bad, 0);
		sum = mix64(sum ^ (uint64_t)(step * 131 + calls));
		printf("step %d calls=%d eintr=%d early=%d wrong=%d sleeps=%d\n", step, calls, eintrs, early, wrong,
		       bad_sleeps);
	}
	atomic_store(&stop_sleeper, 1);
	atomic_store(&stop_watchdog, 1);
	pthread_join(dt, NULL);
	if (write(cmd_pipe[1], "q", 1) != 1)
		return 1;
	pthread_join(wt, NULL);
	pthread_join(st, NULL);
	msgctl(msq, IPC_RMID, NULL);
	semctl(semid, 0, IPC_RMID);
	printf("final %016llx\n", (unsigned long long)sum);
	return 0;
}
