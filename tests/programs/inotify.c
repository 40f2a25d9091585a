/* inotify.c: an inotify instance whose watches must keep their numbers.
 *
 * Before step 1 it makes two directories in its working directory and
 * watches the first (watch 1), a file (watch 2, removed at once: a gap in
 * the numbers) and the second directory (watch 3). Each step it creates
 * and removes a file in each directory and reads the events (with a
 * timeout, so a lost watch shows as "none" instead of a hang), printing
 * each event's watch number, kind and name; the sum folds them all.
 *
 * Prints "step N ..." each step and "final H". Usage: inotify [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static char dir_a[64], dir_b[64], other[64];

static void touch(const char *path)
{
	int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
	if (fd >= 0)
		close(fd);
}

/* Reads the events of one step: four expected (create and delete in each
 * directory), waiting at most 5 s for each batch. */
static int read_events(int in, char *line, size_t room, uint64_t *sum)
{
	size_t used = strlen(line);
	int seen = 0;
	while (seen < 4) {
		struct pollfd p = { .fd = in, .events = POLLIN };
		int r = poll(&p, 1, 5000);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
		ssize_t n = read(in, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (char *q = buf; q < buf + n;) {
			struct inotify_event *e = (struct inotify_event *)q;
			const char *kind = e->mask & IN_CREATE ? "create" : e->mask & IN_DELETE ? "delete" : "other";
			used += snprintf(line + used, room - used, " %d:%s:%s", e->wd, kind, e->len ? e->name : "-");
			*sum = mix64(*sum ^ ((uint64_t)e->wd << 32) ^ e->mask ^ (e->len ? (uint64_t)e->name[0] : 0));
			seen++;
			q += sizeof *e + e->len;
		}
	}
	return seen;
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	snprintf(dir_a, sizeof dir_a, "watched-a-%d", (int)getpid());
	snprintf(dir_b, sizeof dir_b, "watched-b-%d", (int)getpid());
	snprintf(other, sizeof other, "unwatched-%d", (int)getpid());
	if (mkdir(dir_a, 0700) || mkdir(dir_b, 0700)) {
		perror("mkdir");
		return 1;
	}
	touch(other);
	int in = inotify_init1(IN_CLOEXEC);
	int wa = inotify_add_watch(in, dir_a, IN_CREATE | IN_DELETE);
	int gap = inotify_add_watch(in, other, IN_ATTRIB);
	inotify_rm_watch(in, gap);
	int wb = inotify_add_watch(in, dir_b, IN_CREATE | IN_DELETE);
	printf("watches %d %d (gap %d)\n", wa, wb, gap);
	/* The IN_IGNORED of the removed watch. */
	char drain[256];
	if (read(in, drain, sizeof drain) < 0)
		perror("read");

	uint64_t sum = 0;
	for (int step = 1; step <= steps; step++) {
		char path[160];
		for (int d = 0; d < 2; d++) {
			snprintf(path, sizeof path, "%s/f%d", d ? dir_b : dir_a, step % 10);
			touch(path);
			unlink(path);
		}
		char line[512];
		snprintf(line, sizeof line, "step %d", step);
		int seen = read_events(in, line, sizeof line, &sum);
		printf("%s%s sum %016llx\n", line, seen == 4 ? "" : " MISSING", (unsigned long long)sum);
		sleep_ms(step_pause_ms(step, pause));
	}
	inotify_rm_watch(in, wa);
	inotify_rm_watch(in, wb);
	close(in);
	rmdir(dir_a);
	rmdir(dir_b);
	unlink(other);
	printf("final %016llx\n", (unsigned long long)sum);
	return 0;
}
