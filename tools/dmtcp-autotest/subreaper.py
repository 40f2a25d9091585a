#!/usr/bin/env python3
# Runs a command as a child subreaper: orphans of the test programs are
# reaped here at once (PID 1 of this machine reaps slowly, and DMTCP's
# harness counts leftover processes).
import ctypes, os, sys
PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
while True:
    try:
        p, st = os.wait()
    except ChildProcessError:
        sys.exit(1)
    if p == pid:
        sys.exit(os.waitstatus_to_exitcode(st))
