"""The Stasis application API for Python (docs/api.md).

A thin ctypes layer over the functions the Stasis agent exports into every
process it runs in (include/stasis.h). Without Stasis every function says
so and does nothing, so a script runs the same with or without it:

    import stasis
    if stasis.is_enabled():
        print("generation", stasis.generation())
    with stasis.checkpoints_disabled():
        update_files_together()      # no checkpoint in the middle
    result = stasis.checkpoint()     # "checkpoint", "restart" or None

Put this file's directory on PYTHONPATH (or copy the file next to your
script); it needs nothing but the standard library.
"""

import contextlib
import ctypes

__all__ = ["is_enabled", "checkpoint", "generation", "disable_checkpoints",
           "enable_checkpoints", "checkpoints_disabled", "StasisError"]

# stasis_checkpoint()'s answers (include/stasis.h).
_AFTER_CHECKPOINT = 1
_AFTER_RESTART = 2
_NOT_PRESENT = 3


class StasisError(RuntimeError):
    """A request to Stasis failed (the agent's message is on stderr)."""


def _agent():
    """The agent's functions, from the process's global scope (the agent
    is preloaded there), or None without Stasis."""
    try:
        scope = ctypes.CDLL(None)
        f = scope.stasis_is_enabled
    except (OSError, AttributeError):
        return None
    f.restype = ctypes.c_int
    f.argtypes = []
    for name in ("stasis_checkpoint", "stasis_disable_checkpoints", "stasis_enable_checkpoints"):
        getattr(scope, name).restype = ctypes.c_int
        getattr(scope, name).argtypes = []
    scope.stasis_generation.restype = ctypes.c_ulonglong
    scope.stasis_generation.argtypes = []
    return scope


_lib = _agent()


def is_enabled():
    """True when this process runs under Stasis."""
    return _lib is not None and _lib.stasis_is_enabled() == 1


def checkpoint():
    """Checkpoints the whole computation now and waits until the checkpoint
    is committed: returns "checkpoint", or "restart" in a process restarted
    from that checkpoint; None without Stasis. Raises StasisError when the
    checkpoint failed. Not to be called inside checkpoints_disabled()."""
    if _lib is None:
        return None
    r = _lib.stasis_checkpoint()
    if r == _AFTER_CHECKPOINT:
        return "checkpoint"
    if r == _AFTER_RESTART:
        return "restart"
    if r == _NOT_PRESENT:
        return None
    raise StasisError("the checkpoint failed (see the agent's message on stderr)")


def generation():
    """The generation of the last checkpoint this process is in (0: none yet,
    or no Stasis)."""
    return 0 if _lib is None else int(_lib.stasis_generation())


def disable_checkpoints():
    """Enters a critical section: no checkpoint starts until the matching
    enable_checkpoints(); one requested meanwhile waits, then happens."""
    if _lib is not None:
        _lib.stasis_disable_checkpoints()


def enable_checkpoints():
    """Leaves a critical section entered with disable_checkpoints()."""
    if _lib is not None and _lib.stasis_enable_checkpoints() < 0:
        raise StasisError("enable_checkpoints() without disable_checkpoints()")


@contextlib.contextmanager
def checkpoints_disabled():
    """A critical section as a context manager: no checkpoint inside it."""
    disable_checkpoints()
    try:
        yield
    finally:
        enable_checkpoints()
