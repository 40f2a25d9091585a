/* dup2.c: a program that puts its own descriptors at 900..1023, where the
 * agent keeps its connection to the coordinator: dup2() onto every one of
 * them at the start; at step 3, close_range() from 900 up and dup3() onto
 * them again (close-on-exec this time).  Checkpoints must go on working,
 * and every one of those numbers must be the program's /dev/null, step
 * after step, before and after a restart.
 *
 * Prints "step N fds ok limit L hash H" (or how many are wrong; L is the
 * soft limit of open files, which a restart must give back) and "final H".
 *
 * Usage: dup2 [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define FIRST 900
#define LAST 1023

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC 4
#endif

/* How many of FIRST..LAST are not /dev/null with close-on-exec `cloexec`. */
static int wrong(dev_t null_rdev, int cloexec)
{
	int bad = 0;
	for (int fd = FIRST; fd <= LAST; fd++) {
		struct stat st;
		int flags = fcntl(fd, F_GETFD);
		if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode) || st.st_rdev != null_rdev || flags < 0 ||
		    !!(flags & FD_CLOEXEC) != cloexec)
			bad++;
	}
	return bad;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	int null = open("/dev/null", O_RDWR);
	struct stat st;
	if (null < 0 || fstat(null, &st) != 0) {
		perror("/dev/null");
		return 1;
	}
	for (int fd = FIRST; fd <= LAST; fd++) {
		if (dup2(null, fd) != fd) {
			perror("dup2");
			return 1;
		}
	}
	int cloexec = 0;
	uint64_t running = 0xd002;
	for (int step = 1; step <= steps; step++) {
		if (step == 3) {
			if (close_range(FIRST, ~0u, 0) != 0) {
				perror("close_range");
				return 1;
			}
			for (int fd = FIRST; fd <= LAST; fd++) {
				if (dup3(null, fd, O_CLOEXEC) != fd) {
					perror("dup3");
					return 1;
				}
			}
			cloexec = 1;
		}
		int bad = wrong(st.st_rdev, cloexec);
		struct rlimit nofile;
		getrlimit(RLIMIT_NOFILE, &nofile);
		running = mix64(running ^ (uint64_t)step ^ ((uint64_t)bad << 32));
		if (bad)
			printf("step %d fds %d wrong", step, bad);
		else
			printf("step %d fds ok", step);
		printf(" limit %llu hash %016llx\n", (unsigned long long)nofile.rlim_cur, (unsigned long long)running);
		sleep_ms(step_pause_ms(step, pause));
	}
	printf("final %016llx\n", (unsigned long long)running);
	return 0;
}
