/* envwatch.c: reads variables with getenv at every step, as a program
 * that learns its surroundings from its environment does.
 *
 * Prints "step N NAME=<value or unset> ..." after each step (NAMES, by
 * default WATCHED and GONE) and "final N" at the end. Under --modify-env, a
 * restart with a dmtcp_env.txt that sets WATCHED and removes GONE shows the
 * new values from the first step after the restart on.
 *
 * Usage: envwatch [STEPS [PAUSE_MS [NAMES...]]]
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
	static char *defaults[] = { "WATCHED", "GONE" };
	char **names = argc > 3 ? argv + 3 : defaults;
	int n = argc > 3 ? argc - 3 : 2;
	for (int step = 1; step <= steps; step++) {
		printf("step %d", step);
		for (int i = 0; i < n; i++)
			printf(" %s=%s", names[i], or_unset(getenv(names[i])));
		printf("\n");
		sleep_ms(step_pause_ms(step, pause));
	}
	printf("final %d\n", steps);
	return 0;
}
