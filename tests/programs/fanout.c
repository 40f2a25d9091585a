/* fanout.c: a tree of N processes (default 32) that do nothing but wait:
 * process i forks processes 2i+1 and 2i+2 (heap numbering), so the tree is
 * log2(N) levels deep.  For tests that kill a whole computation: each
 * process lives until it is killed (or 10 minutes pass).
 *
 * Prints "process I" once per process as it starts (order varies).
 *
 * Usage: fanout [N]
 */
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 32;
	setvbuf(stdout, NULL, _IOLBF, 0);
	int me = 0;
	for (int child = 1; child <= 2; child++) {
		int id = 2 * me + child;
		if (id >= n)
			continue;
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			me = id;
			child = 0; /* this process now forks its own two */
		}
	}
	printf("process %d\n", me);
	for (int i = 0; i < 600 * 20; i++)
		sleep_ms(50);
	return 0;
}
