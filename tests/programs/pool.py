"""pool.py: a multiprocessing pool and a shell pipeline every step.

Before step 1 the program starts a multiprocessing.Pool of 2 workers with
the "fork" start method (chosen explicitly, whatever the platform's
default): two forked worker processes, three helper threads in the parent
(task, result and worker handlers), pipes between them and semaphores in
shared memory, unlinked at once. Each step it maps a deterministic CPU
function over a few inputs on the pool, then runs a shell pipeline
(sh -c "seq ... | tr ... | sort | sed ... | paste ...", a new process tree
every step) with subprocess.run, capturing its output. Both results go
into a running SHA-256, so a step lost or done twice, a worker's answer
lost or a pipeline's output cut shows in every later line.

Prints "step N map M pipe P hash H" each step (flush=True, one write a
line), "workers ok" once the pool closed and its workers were joined, and
"final H".

Usage: python3 pool.py [STEPS [PAUSE_MS]]
"""

import hashlib
import multiprocessing
import subprocess
import sys
import time


def work(x):
    """A little deterministic CPU work (a few milliseconds)."""
    v = x * 2654435761 % (1 << 32) or 1
    for i in range(3000):
        v ^= (v << 13) % (1 << 32)
        v ^= v >> 17
        v ^= (v << 5) % (1 << 32)
        v = (v + i) % (1 << 32)
    return v


def pipeline(step):
    """A shell pipeline whose output depends on the step."""
    cmd = f"seq {step * 7} {step * 13 + 40} | tr 0-9 a-j | sort | sed -n '3p;$p' | paste -sd- -"
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["sh", "-c", cmd], capture_output=True, check=True, env=env)
    return done.stdout


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    fixed = int(sys.argv[2]) if len(sys.argv) > 2 else -1
    if steps < 4:
        print(f"{sys.argv[0]}: need at least 4 steps", file=sys.stderr)
        sys.exit(2)
    digest = hashlib.sha256()
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(2)
    for step in range(1, steps + 1):
        results = pool.map(work, [step * 8 + i for i in range(8)])
        out = pipeline(step)
        digest.update(repr(results).encode())
        digest.update(out)
        m = hashlib.sha256(repr(results).encode()).hexdigest()[:12]
        print(f"step {step} map {m} pipe {out.decode().strip()} hash {digest.hexdigest()[:16]}", flush=True)
        pause = fixed if fixed >= 0 else 50 + (step * 37) % 51
        time.sleep(pause / 1000)
    pool.close()
    pool.join()
    print("workers ok", flush=True)
    print(f"final {digest.hexdigest()}", flush=True)


if __name__ == "__main__":
    main()
