/* pty.c: a program that opens a pseudo-terminal pair itself (as mpirun,
 * script and expect do).  The parent opens the master with posix_openpt;
 * its child starts a session, makes the slave its controlling terminal
 * (TIOCSCTTY) and writes one line per step to it; the parent reads the
 * master and prints what it reads.
 *
 * Each child line checks the terminal: the session it belongs to
 * (TIOCGSID), its foreground group, its window size and that "\n" is not
 * turned into "\r\n" (OPOST was turned off by the parent: a terminal whose
 * settings were lost would show a "\r").  The parent reads slower than the
 * child writes, so that lines are waiting in the pair at a checkpoint.
 * When the child exits the parent must see end of file or EIO on the
 * master, then prints "final H".
 *
 * Usage: pty [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void child(const char *slave_path, int steps, int pause)
{
	if (setsid() < 0) {
		perror("setsid");
		_exit(3);
	}
	int fd = open(slave_path, O_RDWR | O_NOCTTY);
	if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) != 0) {
		perror("slave");
		_exit(3);
	}
	uint64_t h = 0x7e1e7e1eULL;
	for (int step = 1; step <= steps; step++) {
		h = mix64(h + (uint64_t)step);
		pid_t sid = -1;
		int sid_ok = ioctl(fd, TIOCGSID, &sid) == 0 && sid == getsid(0);
		int fg_ok = tcgetpgrp(fd) == getpgrp();
		struct winsize ws = { 0 };
		ioctl(fd, TIOCGWINSZ, &ws);
		char line[160];
		int n = snprintf(line, sizeof line, "step %d hash %016llx sid %s fg %s window %ux%u\n", step,
				 (unsigned long long)h, sid_ok ? "ok" : strerror(errno), fg_ok ? "ok" : "lost",
				 ws.ws_row, ws.ws_col);
		if (write(fd, line, (size_t)n) != n)
			_exit(4);
		sleep_ms(step_pause_ms(step, pause));
	}
	char line[64];
	int n = snprintf(line, sizeof line, "child done %016llx\n", (unsigned long long)h);
	if (write(fd, line, (size_t)n) != n)
		_exit(4);
	_exit(0);
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);

	int master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
		perror("posix_openpt");
		return 1;
	}
	char *path = ptsname(master);
	if (!path) {
		perror("ptsname");
		return 1;
	}
	struct termios t;
	if (tcgetattr(master, &t) != 0) {
		perror("tcgetattr");
		return 1;
	}
	t.c_oflag &= ~(tcflag_t)OPOST;
	t.c_lflag &= ~(tcflag_t)(ECHO | ICANON);
	struct winsize ws = { .ws_row = 41, .ws_col = 103 };
	if (tcsetattr(master, TCSANOW, &t) != 0 || ioctl(master, TIOCSWINSZ, &ws) != 0) {
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

	uint64_t f = 0x5157a515ULL;
	char buf[4096];
	size_t have = 0;
	const char *end_seen = "?";
	for (;;) {
		ssize_t r = read(master, buf + have, sizeof buf - have);
		if (r < 0 && errno == EINTR)
			continue;
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
			have = 0; /* no newline in 4 KiB: not ours */
		/* Read slower than the child writes: output is nearly always
		 * waiting in the pair when a checkpoint comes. */
		sleep_ms(150);
	}
	int status = 0;
	if (waitpid(pid, &status, 0) != pid) {
		perror("waitpid");
		return 1;
	}
	printf("child exited %d, master saw %s\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, end_seen);
	printf("final %016llx\n", (unsigned long long)f);
	return 0;
}
