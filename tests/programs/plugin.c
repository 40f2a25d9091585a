/* A DMTCP-style plugin, written without dmtcp.h (its ABI by hand): built
 * as a shared library and loaded with dmtcp_launch --with-plugin. It
 * registers an event hook the way DMTCP_DECL_PLUGIN does, wraps write(2)
 * and reaches the real one through dmtcp_dlsym(RTLD_NEXT) (NEXT_FNC), and
 * checks that its constructor ran before the agent initialized it.
 * Its lines go straight to fd 1 with the raw system call. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* DmtcpEvent_t's numbers and DmtcpPluginDescriptor_t's layout. */
enum { EV_INIT = 0, EV_PRESUSPEND = 15, EV_PRECHECKPOINT = 16, EV_RESUME = 17, EV_RESTART = 18 };
typedef struct {
    const char *api_version, *dmtcp_version, *name, *author, *email, *description;
    void (*event_hook)(int event, void *data);
} descriptor_t;

extern void dmtcp_register_plugin(descriptor_t) __attribute__((weak));
extern void *dmtcp_dlsym(void *, const char *) __attribute__((weak));

static int constructed;
static volatile long wrapped_writes;

__attribute__((constructor)) static void construct(void) { constructed = 1; }

static void say(const char *s) { syscall(SYS_write, 1, s, strlen(s)); }

ssize_t write(int fd, const void *buf, size_t n) {
    static ssize_t (*next)(int, const void *, size_t);
    if (!next) next = (ssize_t (*)(int, const void *, size_t))dmtcp_dlsym(RTLD_NEXT, "write");
    wrapped_writes++;
    return next(fd, buf, n);
}

static void hook(int event, void *data) {
    (void)data;
    switch (event) {
    case EV_INIT: say(constructed ? "plugin init after its constructor\n" : "plugin init BEFORE its constructor\n"); break;
    case EV_PRESUSPEND: say("plugin presuspend\n"); break;
    case EV_PRECHECKPOINT: say(wrapped_writes > 0 ? "plugin precheckpoint, write wrapped\n" : "plugin precheckpoint, write NOT wrapped\n"); break;
    case EV_RESUME: say("plugin resume\n"); break;
    case EV_RESTART: say("plugin restart\n"); break;
    default: break;
    }
}

static descriptor_t plugin = { "4", "stasis-test", "test-plugin", "stasis", "-", "an e2e test's plugin", hook };

/* What DMTCP_DECL_PLUGIN expands to: register, then the next plugin's. */
void dmtcp_initialize_plugin(void) {
    dmtcp_register_plugin(plugin);
    void (*next)(void) = (void (*)(void))dmtcp_dlsym(RTLD_NEXT, "dmtcp_initialize_plugin");
    if (next) next();
}
