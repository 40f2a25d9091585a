/* ipcq.c: message queues and semaphores between a parent and its child.
 *
 * - a System V message queue (keyed, its capacity set to 4096 bytes):
 *   messages of types 1..3, always two or three in flight;
 * - a System V semaphore set (private) of three: "go" (parent to child),
 *   "done" (child to parent) and a counter both change;
 * - a named POSIX message queue (8 messages of at most 64 bytes), the
 *   parent's end non-blocking, with priorities: always two or three in
 *   flight, so the child takes them in priority order, not in the order
 *   they were sent;
 * - an unlinked POSIX queue on which the child answers;
 * - an unlinked POSIX queue with the parent's mq_notify registration
 *   (SIGUSR1 with a value): the child sends on it at step STEPS*3/4.
 *
 * The two work in lock step, so what the child takes each step is the
 * same in every run: the parent prints it, with the counter, the queue's
 * capacity, its own flags and how many messages are in flight. At the end
 * the parent removes every object (the named queue by its name, which a
 * restart must have made again) and prints "final ...".
 *
 * Usage: ipcq [STEPS [PAUSE_MS]]; "ipcq clean" removes what a killed run
 * left behind in the current directory's name (its keys and names come
 * from the directory's path, so that concurrent runs in other directories
 * never meet; the private semaphore set's id is in ipcq.semid).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

struct msg {
	long mtype;
	char text[32];
};

static uint32_t dir_hash(void)
{
	char cwd[4096];
	if (!getcwd(cwd, sizeof cwd))
		return 1;
	uint32_t h = 2166136261u;
	for (char *p = cwd; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return h;
}

static key_t queue_key;
static char named[64], reply_name[64], notify_name[64];

static void names(void)
{
	uint32_t h = dir_hash();
	queue_key = (key_t)(0x51000000u | (h & 0x00ffffffu));
	snprintf(named, sizeof named, "/stasis-ipcq-%08x", h);
	snprintf(reply_name, sizeof reply_name, "/stasis-ipcq-%08x-r", h);
	snprintf(notify_name, sizeof notify_name, "/stasis-ipcq-%08x-n", h);
}

/* The private semaphore set has no key to be found by: its id is kept in
 * a file of the directory. */
static void clean(void)
{
	int q = msgget(queue_key, 0);
	if (q >= 0)
		msgctl(q, IPC_RMID, NULL);
	FILE *f = fopen("ipcq.semid", "r");
	int set;
	struct semid_ds ds;
	/* Only a set that still looks like ours: three semaphores, no key. */
	if (f && fscanf(f, "%d", &set) == 1 && semctl(set, 0, IPC_STAT, &ds) == 0 && ds.sem_nsems == 3 &&
	    ds.sem_perm.__key == IPC_PRIVATE && ds.sem_perm.uid == getuid())
		semctl(set, 0, IPC_RMID);
	if (f)
		fclose(f);
	unlink("ipcq.semid");
	mq_unlink(named);
	mq_unlink(reply_name);
	mq_unlink(notify_name);
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* semop that carries on after a signal (the parent's SIGUSR1). */
static void sem_add(int set, int which, int delta)
{
	struct sembuf op = { (unsigned short)which, (short)delta, 0 };
	while (semop(set, &op, 1) != 0)
		if (errno != EINTR)
			die("semop");
}

static mqd_t open_queue(const char *name, int flags, long maxmsg)
{
	struct mq_attr attr;
	memset(&attr, 0, sizeof attr);
	attr.mq_maxmsg = maxmsg;
	attr.mq_msgsize = 64;
	mqd_t q = mq_open(name, flags | O_CREAT | O_EXCL, 0600, &attr);
	if (q == (mqd_t)-1)
		die("mq_open");
	return q;
}

static volatile sig_atomic_t notified_value, notified_code;

static void on_usr1(int sig, siginfo_t *info, void *uc)
{
	(void)sig;
	(void)uc;
	notified_value = info->si_value.sival_int;
	notified_code = info->si_code;
}

static void child(int steps, int q, int set, mqd_t named_q, mqd_t reply, mqd_t notify)
{
	for (int i = 1; i <= steps; i++) {
		sem_add(set, 0, -1);
		struct msg m;
		ssize_t n;
		while ((n = msgrcv(q, &m, sizeof m.text, 0, 0)) < 0)
			if (errno != EINTR)
				die("msgrcv");
		char posix[65] = { 0 };
		unsigned prio = 0;
		while (mq_receive(named_q, posix, 64, &prio) < 0)
			if (errno != EINTR)
				die("mq_receive");
		char answer[64];
		snprintf(answer, 64, "sysv %ld:%.*s posix %u:%.16s", m.mtype, (int)(n > 16 ? 16 : n), m.text, prio, posix);
		if (mq_send(reply, answer, strlen(answer) + 1, 0) != 0)
			die("mq_send reply");
		if (i == steps * 3 / 4 && mq_send(notify, "ring", 5, 0) != 0)
			die("mq_send notify");
		sem_add(set, 2, 2);
		sem_add(set, 1, 1);
	}
	_exit(0);
}

/* Sends message number `seq` on both queues. */
static void send_both(int q, mqd_t named_q, int seq)
{
	struct msg m = { 1 + seq % 3, { 0 } };
	int len = snprintf(m.text, sizeof m.text, "s%d", seq);
	if (msgsnd(q, &m, (size_t)len, 0) != 0)
		die("msgsnd");
	char text[16];
	snprintf(text, sizeof text, "p%d", seq);
	if (mq_send(named_q, text, strlen(text) + 1, (unsigned)(seq * 7 % 5)) != 0)
		die("mq_send");
}

int main(int argc, char **argv)
{
	names();
	if (argc > 1 && strcmp(argv[1], "clean") == 0) {
		clean();
		return 0;
	}
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	clean();

	int q = msgget(queue_key, IPC_CREAT | IPC_EXCL | 0600);
	int set = semget(IPC_PRIVATE, 3, IPC_CREAT | 0600);
	if (q < 0 || set < 0)
		die("msgget/semget");
	FILE *ids = fopen("ipcq.semid", "w");
	if (!ids)
		die("ipcq.semid");
	fprintf(ids, "%d\n", set);
	fclose(ids);
	struct msqid_ds ds;
	if (msgctl(q, IPC_STAT, &ds) != 0)
		die("msgctl");
	ds.msg_qbytes = 4096;
	if (msgctl(q, IPC_SET, &ds) != 0)
		die("msgctl IPC_SET");
	unsigned short zero[3] = { 0, 0, 0 };
	if (semctl(set, 0, SETALL, zero) != 0)
		die("semctl SETALL");

	mqd_t named_q = open_queue(named, O_RDWR, 8);
	mqd_t reply = open_queue(reply_name, O_RDWR, 8);
	mq_unlink(reply_name);
	mqd_t notify = open_queue(notify_name, O_RDWR, 2);
	mq_unlink(notify_name);

	struct sigaction sa = { 0 };
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGUSR1, &sa, NULL);
	struct sigevent sev = { 0 };
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = SIGUSR1;
	sev.sigev_value.sival_int = 4242;
	if (mq_notify(notify, &sev) != 0)
		die("mq_notify");

	send_both(q, named_q, 0);
	send_both(q, named_q, 1);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		mqd_t mine = mq_open(named, O_RDONLY);
		if (mine == (mqd_t)-1)
			die("mq_open child");
		child(steps, q, set, mine, reply, notify);
	}
	/* The parent only sends on the named queue, without waiting. */
	struct mq_attr nb;
	memset(&nb, 0, sizeof nb);
	nb.mq_flags = O_NONBLOCK;
	mq_setattr(named_q, &nb, NULL);

	uint64_t sum = 0;
	for (int i = 1; i <= steps; i++) {
		send_both(q, named_q, i + 1);
		sem_add(set, 0, 1);
		sem_add(set, 1, -1);
		sem_add(set, 2, -1);
		char answer[65] = { 0 };
		while (mq_receive(reply, answer, 64, NULL) < 0)
			if (errno != EINTR)
				die("mq_receive reply");
		struct mq_attr a;
		struct msqid_ds now;
		if (mq_getattr(named_q, &a) != 0 || msgctl(q, IPC_STAT, &now) != 0)
			die("attributes");
		int counter = semctl(set, 2, GETVAL);
		char line[256];
		snprintf(line, sizeof line,
			 "step %d %s counter %d qbytes %lu sysv-inflight %lu posix-inflight %ld nonblock %d "
			 "maxmsg %ld notified %d/%d\n",
			 i, answer, counter, (unsigned long)now.msg_qbytes, (unsigned long)now.msg_qnum, a.mq_curmsgs,
			 (a.mq_flags & O_NONBLOCK) != 0, a.mq_maxmsg, (int)notified_value,
			 notified_code == SI_MESGQ);
		sum = mix64(sum ^ strlen(line) ^ (uint64_t)line[6]);
		for (char *p = line; *p; p++)
			sum = sum * 31 + (unsigned char)*p;
		fputs(line, stdout);
		sleep_ms(step_pause_ms(i, pause));
	}
	int status;
	waitpid(pid, &status, 0);
	/* What is left: two messages on each queue. */
	struct msg m;
	ssize_t n1 = msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT);
	char last[65] = { 0 };
	ssize_t n2 = mq_receive(named_q, last, 64, NULL);
	int removed = msgctl(q, IPC_RMID, NULL) == 0 && semctl(set, 0, IPC_RMID) == 0;
	int unlinked = mq_unlink(named) == 0;
	printf("final %016llx child %d left %.*s %s removed %d unlinked %d\n", (unsigned long long)sum,
	       WIFEXITED(status) ? WEXITSTATUS(status) : -1, (int)(n1 > 0 ? n1 : 0), m.text, n2 > 0 ? last : "-",
	       removed, unlinked);
	return 0;
}
