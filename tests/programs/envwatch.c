/* envwatch.c: reads two variables with getenv at every step, as a program
 * that learns its surroundings from its environment does.
 *
 * Prints "step N WATCHED=<value or unset> GONE=<value or unset>" after each
 * step and "final N" at the end. Under --modify-env, a restart with a
 * dmtcp_env.txt that sets WATCHED and removes GONE shows the new values from
 * the first step after the restart on.
 *
 * Usage: envwatch [STEPS [PAUSE_MS]]
 */
#include "common.h"

static const char *or_unset(const char *v)
{
	return v ? v : "unset";
}

int main(int argc, char **argv)
{
	int steps, pause;
	parse_args(argc, argv, &steps, &pause);
	for (int step = 1; step <= steps; step++) {
		printf("step %d WATCHED=%s GONE=%s\n", step, or_unset(getenv("WATCHED")), or_unset(getenv("GONE")));
		sleep_ms(step_pause_ms(step, pause));
	}
	printf("final %d\n", steps);
	return 0;
}
