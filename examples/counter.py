"""A tiny program to checkpoint: counts to N, one line a second.

Its state is a loop counter and a running sum of squares, so a restart that
loses or repeats a step shows in the output.

Usage: python3 examples/counter.py [N]   (N defaults to 60)
"""

import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 60
total = 0
for i in range(1, n + 1):
    total += i * i
    print(f"{i:4d}  sum of squares {total}", flush=True)
    time.sleep(1)
print(f"done: {total}", flush=True)
