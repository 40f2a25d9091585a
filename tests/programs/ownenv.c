/* ownenv.c: children exec'd with an environment of their own, as a program
 * that trusts nothing it inherited builds it (DMTCP's forkexec test does
 * the same with LD_PRELOAD=taco).  Child "a" is started by execve with an
 * array of two entries, one an empty LD_PRELOAD; child "b" by execv after
 * clearenv() and one setenv, so with no LD_PRELOAD at all.  Each writes one
 * line per step to its pipe, saying what it sees of its environment; the
 * parent reads a line from each in turn and prints them.  Under stasis both
 * children must stay in the computation: a checkpoint must stop them too.
 *
 * Usage: ownenv [STEPS [PAUSE_MS]]
 */
#define _GNU_SOURCE
#include "common.h"

#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int child(const char *name, int steps, int pause)
{
	const char *own = getenv("OWN_ENV");
	int own_ok = own && strcmp(own, name) == 0;
	int home_gone = getenv("HOME") == NULL;
	FILE *out = fdopen(3, "w");
	if (!out)
		return 3;
	setvbuf(out, NULL, _IOLBF, 0);
	uint64_t h = mix64((uint64_t)(unsigned char)name[0]);
	for (int step = 1; step <= steps; step++) {
		h = mix64(h + (uint64_t)step);
		fprintf(out, "%s step %d hash %016llx own %s inherited %s\n", name, step, (unsigned long long)h,
			own_ok ? "ok" : "lost", home_gone ? "gone" : "kept");
		sleep_ms(step_pause_ms(step, pause));
	}
	fprintf(out, "%s done %016llx\n", name, (unsigned long long)h);
	return 0;
}

static pid_t start(const char *self, const char *name, const char *steps, const char *pause, int *read_end)
{
	int p[2];
	if (pipe(p) != 0) {
		perror("pipe");
		exit(1);
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(1);
	}
	if (pid == 0) {
		close(p[0]);
		if (dup2(p[1], 3) != 3)
			_exit(3);
		char *argv[] = { (char *)self, "child", (char *)name, (char *)steps, (char *)pause, NULL };
		if (name[0] == 'a') {
			char *env[] = { "OWN_ENV=a", "LD_PRELOAD=", NULL };
			execve(self, argv, env);
		} else {
			clearenv();
			setenv("OWN_ENV", "b", 1);
			execv(self, argv);
		}
		perror("exec");
		_exit(127);
	}
	close(p[1]);
	*read_end = p[0];
	return pid;
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "child") == 0)
		return child(argv[2], atoi(argv[3]), atoi(argv[4]));
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	char steps_text[16], pause_text[16];
	snprintf(steps_text, sizeof steps_text, "%d", steps);
	snprintf(pause_text, sizeof pause_text, "%d", pause);
	int fds[2];
	pid_t pids[2] = { start("/proc/self/exe", "a", steps_text, pause_text, &fds[0]),
			  start("/proc/self/exe", "b", steps_text, pause_text, &fds[1]) };
	FILE *in[2] = { fdopen(fds[0], "r"), fdopen(fds[1], "r") };
	uint64_t f = 0x0e1e0e1eULL;
	char line[256];
	for (int open_ = 2; open_ > 0;) {
		open_ = 0;
		for (int i = 0; i < 2; i++) {
			if (!in[i])
				continue;
			if (!fgets(line, sizeof line, in[i])) {
				fclose(in[i]);
				in[i] = NULL;
				continue;
			}
			open_++;
			printf("%s", line);
			for (char *c = line; *c; c++)
				f = mix64(f ^ (uint8_t)*c);
		}
	}
	for (int i = 0; i < 2; i++) {
		int status = 0;
		if (waitpid(pids[i], &status, 0) != pids[i]) {
			perror("waitpid");
			return 1;
		}
		printf("child %c exited %d\n", 'a' + i, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	}
	printf("final %016llx\n", (unsigned long long)f);
	return 0;
}
