/*
 * stasis.h: the application API of Stasis (docs/api.md).
 *
 * Include it and build as usual: no library to link. The functions are
 * declared weak; the Stasis agent, preloaded into a program launched under
 * Stasis, defines them. Without Stasis each is a null pointer and the
 * macros below answer STASIS_NOT_PRESENT (or 0), so one binary runs with
 * or without Stasis.
 *
 * Build the program position-independent (-fPIE or -fPIC; gcc's default on
 * most distributions), or link with -Wl,-z,dynamic-undefined-weak: a weak
 * function a non-PIC executable does not define is bound to 0 at link time
 * and never looked up in the agent.
 *
 * The same functions are exported under DMTCP's dmtcp.h names
 * (dmtcp_is_enabled, dmtcp_checkpoint, ...): programs built against DMTCP's
 * header work unchanged.
 */
#ifndef STASIS_H
#define STASIS_H

#ifdef __cplusplus
extern "C" {
#endif

/* stasis_checkpoint()'s answers (DMTCP's values). */
#define STASIS_AFTER_CHECKPOINT 1 /* the checkpoint is committed */
#define STASIS_AFTER_RESTART 2    /* this process was restarted from it */
#define STASIS_NOT_PRESENT 3      /* not running under Stasis */
/* Negative: the checkpoint could not be asked for, or failed. */

/* Events given to hooks (stasis_add_hook). */
enum stasis_event {
  STASIS_EVENT_PRECHECKPOINT = 1, /* a checkpoint is about to be taken */
  STASIS_EVENT_RESUME = 2,        /* the program runs on after a checkpoint */
  STASIS_EVENT_RESTART = 3        /* the program runs again after a restart */
};

typedef void (*stasis_hook_fn)(int event, void *arg);

/* 1 under Stasis, 0 otherwise. */
int stasis_is_enabled(void) __attribute__((weak));
#define stasis_is_enabled() (stasis_is_enabled ? stasis_is_enabled() : 0)

/* Checkpoints the whole computation now. Blocks until the checkpoint is
 * committed (STASIS_AFTER_CHECKPOINT) or, in a process restarted from it,
 * until it runs again (STASIS_AFTER_RESTART). Must not be called inside a
 * critical section (stasis_disable_checkpoints) nor from a hook. */
int stasis_checkpoint(void) __attribute__((weak));
#define stasis_checkpoint() \
  (stasis_checkpoint ? stasis_checkpoint() : STASIS_NOT_PRESENT)

/* The generation of the last committed checkpoint this process is in;
 * 0 before the first (and without Stasis). */
unsigned long long stasis_generation(void) __attribute__((weak));
#define stasis_generation() (stasis_generation ? stasis_generation() : 0ULL)

/* A critical section: no checkpoint starts between these two calls (one
 * requested meanwhile waits, then happens); one under way when the section
 * is entered finishes first. Sections nest and may be held by several
 * threads at once. 1 on success, STASIS_NOT_PRESENT without Stasis,
 * negative for an enable without a disable. Keep them short: the
 * coordinator gives up on a process that does not stop within 40 s. */
int stasis_disable_checkpoints(void) __attribute__((weak));
#define stasis_disable_checkpoints() \
  (stasis_disable_checkpoints ? stasis_disable_checkpoints() : STASIS_NOT_PRESENT)
int stasis_enable_checkpoints(void) __attribute__((weak));
#define stasis_enable_checkpoints() \
  (stasis_enable_checkpoints ? stasis_enable_checkpoints() : STASIS_NOT_PRESENT)

/* Registers hook(event, arg) for every later checkpoint: called on Stasis's
 * checkpoint thread, while the program's other threads run, with
 * STASIS_EVENT_PRECHECKPOINT before the checkpoint, then STASIS_EVENT_RESUME
 * once the program runs on, or STASIS_EVENT_RESTART in a restarted
 * process. 1 on success, STASIS_NOT_PRESENT without Stasis. */
int stasis_add_hook(stasis_hook_fn hook, void *arg) __attribute__((weak));
#define stasis_add_hook(hook, arg) \
  (stasis_add_hook ? stasis_add_hook((hook), (arg)) : STASIS_NOT_PRESENT)

#ifdef __cplusplus
}
#endif

#endif /* STASIS_H */
