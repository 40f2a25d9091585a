"""gen.py: Python state that must survive a checkpoint/restart.

A generator is suspended mid-computation between steps (its frame holds
the loop state); the main loop pulls one value per step, sleeps, and grows a
list and a dict.  Prints "step N value V" each step and "final H" at the
end, H being the SHA-256 of everything accumulated.

Usage: python3 gen.py [STEPS [PAUSE_MS]]
"""

import hashlib
import sys
import time


def sequence():
    """Yields a value per round of a small deterministic computation."""
    a, b, n = 1, 1, 0
    seen = []
    while True:
        n += 1
        a, b = b, (a + b) % 1_000_000_007
        seen.append(a % 97)
        if len(seen) > 16:
            seen.pop(0)
        yield (n, a, sum(seen))


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    fixed = int(sys.argv[2]) if len(sys.argv) > 2 else -1
    gen = sequence()
    history = []
    buckets = {}
    for step in range(1, steps + 1):
        n, a, window = next(gen)
        history.append((n, a, window))
        buckets.setdefault(a % 10, []).append(step)
        print(f"step {step} value {a} window {window}", flush=True)
        pause = fixed if fixed >= 0 else 50 + (step * 37) % 51
        time.sleep(pause / 1000)
    digest = hashlib.sha256()
    digest.update(repr(history).encode())
    digest.update(repr(sorted(buckets.items())).encode())
    print(f"buckets {len(buckets)} history {len(history)}", flush=True)
    print(f"final {digest.hexdigest()}", flush=True)


if __name__ == "__main__":
    main()
