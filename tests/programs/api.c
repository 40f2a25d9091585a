/* The application API (include/stasis.h): one binary, with or without
 * stasis.  Usage: api alone | api self | api critical
 *   alone:    prints what each function answers, then exits.
 *   self:     registers a hook that prints each event, asks for a checkpoint
 *             itself and prints what it returned, then ticks until killed.
 *   critical: enters a critical section and stays in it until the
 *             coordinator shows a checkpoint waiting (DMTCP's
 *             dmtcp_get_coordinator_status), then leaves it; the hook shows
 *             when the checkpoint went on.
 * Lines are written with write(2), from the hook too (it runs on stasis's
 * thread). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "stasis.h" /* include/stasis.h: the e2e test passes -I */

/* Declared by hand as a program built for DMTCP would (dmtcp.h). */
extern int dmtcp_get_coordinator_status(int *num_peers, int *is_running) __attribute__((weak));
extern int dmtcp_is_enabled(void) __attribute__((weak));

static void say(const char *fmt, long a, long b) {
    char line[200];
    int n = snprintf(line, sizeof line, fmt, a, b);
    if (write(1, line, (size_t)n) < 0) _exit(3);
}

static void hook(int event, void *arg) {
    const char *tag = arg;
    switch (event) {
    case STASIS_EVENT_PRECHECKPOINT: say("hook precheckpoint\n", 0, 0); break;
    case STASIS_EVENT_RESUME: say("hook resume\n", 0, 0); break;
    case STASIS_EVENT_RESTART: say("hook restart\n", 0, 0); break;
    default: say("hook unknown %ld\n", event, 0); break;
    }
    if (strcmp(tag, "tag") != 0) say("hook got a wrong argument\n", 0, 0);
}

static void tick_forever(void) {
    for (long i = 0;; i++) {
        say("tick %ld generation %ld\n", i, (long)stasis_generation());
        usleep(200 * 1000);
    }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "alone";
    static char tag[] = "tag";
    say("enabled %ld dmtcp %ld\n", stasis_is_enabled(), dmtcp_is_enabled ? dmtcp_is_enabled() : 0);
    if (strcmp(mode, "alone") == 0) {
        say("checkpoint %ld generation %ld\n", stasis_checkpoint(), (long)stasis_generation());
        say("disable %ld enable %ld\n", stasis_disable_checkpoints(), stasis_enable_checkpoints());
        say("hook %ld\n", stasis_add_hook(hook, tag), 0);
        return 0;
    }
    say("hook %ld\n", stasis_add_hook(hook, tag), 0);
    if (strcmp(mode, "self") == 0) {
        int r = stasis_checkpoint();
        say("checkpoint returned %ld generation %ld\n", r, (long)stasis_generation());
        tick_forever();
    }
    if (strcmp(mode, "critical") == 0) {
        /* In the coordinator's count first, so that it waits for us. */
        for (int peers = 0; peers < 1;) {
            int running = 1;
            if (dmtcp_get_coordinator_status(&peers, &running) != 4) {
                say("no coordinator status\n", 0, 0);
                return 2;
            }
            if (peers < 1) usleep(50 * 1000);
        }
        say("disable %ld\n", stasis_disable_checkpoints(), 0);
        say("in critical section\n", 0, 0);
        for (;;) {
            int peers = 0, running = 1;
            if (dmtcp_get_coordinator_status(&peers, &running) != 4) {
                say("no coordinator status\n", 0, 0);
                return 2;
            }
            if (!running) break;
            usleep(50 * 1000);
        }
        say("checkpoint waiting; leaving critical section\n", 0, 0);
        say("enable %ld\n", stasis_enable_checkpoints(), 0);
        tick_forever();
    }
    return 1;
}
