"""The Python API (python/stasis.py): what it says alone and under stasis.
Usage: api.py DIR [tick]: DIR holds stasis.py. Asks for a checkpoint
itself, then ticks (until killed) when given "tick"."""
import sys
import time

sys.path.insert(0, sys.argv[1])
import stasis  # noqa: E402

print("enabled", stasis.is_enabled(), flush=True)
with stasis.checkpoints_disabled():
    print("in critical section", flush=True)
result = stasis.checkpoint()
print("checkpoint", result, "generation", stasis.generation(), flush=True)
if sys.argv[2:] == ["tick"]:
    i = 0
    while True:
        print("tick", i, flush=True)
        i += 1
        time.sleep(0.2)
