/* shm.c: memory shared between a parent and its child, four ways.
 *
 * Before step 1 the parent maps, and then forks a child that inherits:
 *
 * - "anon": MAP_SHARED|MAP_ANONYMOUS, holding two process-shared POSIX
 *   semaphores (their futexes live there) and a counter;
 * - "posix": a POSIX shared memory object (shm_open, left in /dev/shm and
 *   removed at the end);
 * - "gone": a POSIX shared memory object unlinked at once, as
 *   multiprocessing does with its semaphores;
 * - "sysv": a SysV segment (shmget, IPC_RMID once attached).
 *
 * Each step the parent writes a number into every area and posts "go"; the
 * child waits for it, reads the four areas, checks each holds the parent's
 * number, adds its own transform in place, and posts "done"; the parent
 * waits and folds what the child wrote into its running sum. If any area
 * stopped being shared (each process with its own copy), the child sees
 * stale numbers or the parent does: the line says so.
 *
 * Prints "step N ..." each step and "final H". Usage: shm [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <semaphore.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

struct anon {
	sem_t go, done;
	uint64_t value;
	int stop;
};

static void *map_posix(const char *name, int unlink_now)
{
	int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0 || ftruncate(fd, 4096) != 0) {
		perror("shm_open");
		exit(1);
	}
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	if (unlink_now)
		shm_unlink(name);
	return p;
}

static uint64_t transform(uint64_t v, int which)
{
	return mix64(v * 4 + (uint64_t)which);
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);

	char posix_name[64], gone_name[64];
	snprintf(posix_name, sizeof posix_name, "/stasis-test-shm-%d", (int)getpid());
	snprintf(gone_name, sizeof gone_name, "/stasis-test-gone-%d", (int)getpid());

	struct anon *a = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t *posix = map_posix(posix_name, 0);
	uint64_t *gone = map_posix(gone_name, 1);
	int seg = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
	uint64_t *sysv = seg >= 0 ? shmat(seg, NULL, 0) : (void *)-1;
	if (a == MAP_FAILED || sysv == (void *)-1) {
		perror("shared memory");
		return 1;
	}
	shmctl(seg, IPC_RMID, NULL);
	sem_init(&a->go, 1, 0);
	sem_init(&a->done, 1, 0);

	pid_t child = fork();
	if (child < 0) {
		perror("fork");
		return 1;
	}
	if (child == 0) {
		uint64_t *areas[4] = { &a->value, posix, gone, sysv };
		int bad = 0;
		for (;;) {
			while (sem_wait(&a->go) != 0 && errno == EINTR)
				;
			if (a->stop)
				break;
			uint64_t want = a->value;
			for (int i = 0; i < 4; i++) {
				if (*areas[i] != want)
					bad = 1;
				areas[i][1] = transform(*areas[i], i);
			}
			sem_post(&a->done);
		}
		_exit(bad ? 9 : 21);
	}

	uint64_t *areas[4] = { &a->value, posix, gone, sysv };
	const char *names[4] = { "anon", "posix", "gone", "sysv" };
	uint64_t sum = 0;
	for (int step = 1; step <= steps; step++) {
		uint64_t v = mix64(sum + (uint64_t)step);
		for (int i = 0; i < 4; i++) {
			*areas[i] = v;
			areas[i][1] = 0;
		}
		sem_post(&a->go);
		while (sem_wait(&a->done) != 0 && errno == EINTR)
			;
		char line[256];
		int n = snprintf(line, sizeof line, "step %d", step);
		for (int i = 0; i < 4; i++) {
			int ok = areas[i][1] == transform(v, i);
			sum = mix64(sum ^ areas[i][1]);
			n += snprintf(line + n, sizeof line - n, " %s %s", names[i], ok ? "ok" : "STALE");
		}
		printf("%s sum %016llx\n", line, (unsigned long long)sum);
		sleep_ms(step_pause_ms(step, pause));
	}
	a->stop = 1;
	sem_post(&a->go);
	int st = 0;
	waitpid(child, &st, 0);
	shm_unlink(posix_name);
	printf("child exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	printf("final %016llx\n", (unsigned long long)mix64(sum + (uint64_t)st));
	return 0;
}
