/* ptyname.c: a program that keeps its pseudo-terminal's name.  The parent
 * opens a pair (posix_openpt) and reads the slave's path once (ptsname);
 * its child starts a session and opens that path without O_NOCTTY, which
 * makes it its controlling terminal, as stdin, stdout and stderr.  Every
 * step the child opens the path again and checks that it is the same
 * terminal as its stdout, still its session's (TIOCGSID), with the settings
 * it had; it writes a line through the terminal, which the parent reads
 * from the master (non-blocking, as DMTCP's pty1 reads it) and prints.
 * A free number is left below the pair's, which a new pair would take.
 *
 * Usage: ptyname [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void child(const char *path, int steps, int pause)
{
	if (setsid() < 0)
		_exit(3);
	close(0);
	close(1);
	close(2);
	if (open(path, O_RDWR) != 0 || dup(0) != 1 || dup(0) != 2)
		_exit(3);
	struct termios first;
	if (tcgetattr(1, &first) != 0)
		_exit(3);
	uint64_t h = 0x9a7e9a7eULL;
	for (int step = 1; step <= steps; step++) {
		h = mix64(h + (uint64_t)step);
		const char *same = "ok", *session = "ok", *settings = "ok";
		int fd = open(path, O_RDWR | O_NOCTTY);
		struct stat a, b;
		pid_t sid = -1;
		struct termios now;
		if (fd < 0 || fstat(fd, &a) != 0 || fstat(1, &b) != 0 || a.st_rdev != b.st_rdev)
			same = "other";
		if (fd < 0 || ioctl(fd, TIOCGSID, &sid) != 0 || sid != getsid(0))
			session = "lost";
		if (tcgetattr(1, &now) != 0 || now.c_lflag != first.c_lflag || now.c_oflag != first.c_oflag ||
		    now.c_iflag != first.c_iflag)
			settings = "changed";
		if (fd >= 0)
			close(fd);
		char line[160];
		int n = snprintf(line, sizeof line, "step %d hash %016llx path %s session %s settings %s\n", step,
				 (unsigned long long)h, same, session, settings);
		if (write(1, line, (size_t)n) != n)
			_exit(4);
		sleep_ms(step_pause_ms(step, pause));
	}
	char line[64];
	int n = snprintf(line, sizeof line, "child done %016llx\n", (unsigned long long)h);
	if (write(1, line, (size_t)n) != n)
		_exit(4);
	_exit(0);
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	/* A pair opened first and closed at once leaves a free number below
	 * ours (devpts hands out the lowest): a new pair would take it. */
	int spare = posix_openpt(O_RDWR | O_NOCTTY);
	int master = posix_openpt(O_RDWR | O_NOCTTY);
	if (spare >= 0)
		close(spare);
	char *path;
	if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 || !(path = ptsname(master))) {
		perror("posix_openpt");
		return 1;
	}
	path = strdup(path);
	/* The child's lines reach the master as they were written. */
	struct termios t;
	if (tcgetattr(master, &t) != 0) {
		perror("tcgetattr");
		return 1;
	}
	t.c_oflag &= ~(tcflag_t)OPOST;
	t.c_lflag &= ~(tcflag_t)(ECHO | ICANON);
	if (tcsetattr(master, TCSANOW, &t) != 0) {
		perror("tcsetattr");
		return 1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) {
		close(master);
		child(path, steps, pause);
	}
	fcntl(master, F_SETFL, O_NONBLOCK);
	uint64_t f = 0x1a7e1a7eULL;
	char buf[4096];
	size_t have = 0;
	const char *end_seen = "?";
	for (;;) {
		ssize_t r = read(master, buf + have, sizeof buf - have);
		if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
			sleep_ms(20);
			continue;
		}
		if (r <= 0) {
			end_seen = r == 0 ? "eof" : errno == EIO ? "eio" : strerror(errno);
			break;
		}
		have += (size_t)r;
		char *nl;
		while ((nl = memchr(buf, '\n', have))) {
			size_t len = (size_t)(nl - buf) + 1;
			*nl = '\0';
			printf("pty: %s\n", buf);
			for (size_t i = 0; i < len; i++)
				f = mix64(f ^ (uint8_t)buf[i]);
			memmove(buf, buf + len, have - len);
			have -= len;
		}
		if (have == sizeof buf)
			have = 0;
	}
	int status = 0;
	if (waitpid(pid, &status, 0) != pid) {
		perror("waitpid");
		return 1;
	}
	const char *now = ptsname(master);
	printf("child exited %d, master saw %s, name %s\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, end_seen,
	       now && strcmp(now, path) == 0 ? "kept" : "changed");
	printf("final %016llx\n", (unsigned long long)f);
	return 0;
}
