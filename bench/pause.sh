#!/usr/bin/env bash
# The pause a program sees during a checkpoint: bench/ticks.c ticks every
# millisecond and prints the longest gap between its own ticks; this runs it
# under `stasis launch`, checkpoints it a few times, and reports that gap
# beside the pause the agent measured itself.
#
#   bench/pause.sh MIB THREADS [plain|compressed] [ROUNDS]   (release binaries)
#
# Figures are printed, never asserted: machines are shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-256} threads=${2:-0} mode=${3:-plain} rounds=${4:-3}
stasis=${STASIS:-$PWD/target/release/stasis}
work=$(mktemp -d "${BENCH_DIR:-$PWD/target}/pause.XXXXXX")
trap 'kill -9 -- -$pg 2>/dev/null || true; rm -rf "$work"' EXIT
pg=0
cc -O2 -pthread -o "$work/ticks" bench/ticks.c
flags=()
[ "$mode" != plain ] && flags=(--compress)
sock=$work/c.sock
setsid bash -c 'exec "$@"' _ "$stasis" launch -q "${flags[@]}" --ckptdir "$work/ck" --coord-socket "$sock" \
  -- "$work/ticks" "$mib" "$threads" >"$work/out" 2>"$work/err" &
pg=$!
for _ in $(seq 3000); do grep -q ready "$work/out" 2>/dev/null && break; sleep 0.01; done
sleep 0.5
for r in $(seq "$rounds"); do
  before=$(grep -c gap "$work/out" || true)
  "$stasis" command --coord-socket "$sock" --checkpoint >/dev/null
  sleep 0.3
  agent=$("$stasis" command --coord-socket "$sock" --status --json |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["process_list"][0]["pause_us"] / 1000, 1))')
  seen=$(tail -n +"$((before + 1))" "$work/out" | awk '/^gap/ { if ($2 > m) m = $2 } END { printf "%.1f", m / 1000 }')
  [ -n "${VERBOSE:-}" ] && printf '%-6s %-7s %-5s round %d: seen by program %7s ms, agent %7s ms\n' "$mib" "$threads" "$mode" "$r" "$seen" "$agent"
  echo "$seen $agent" >>"$work/rounds"
  rm -rf "$work"/ck/gen-* 2>/dev/null || true
done
sort -n "$work/rounds" | awk -v m="$mib" -v t="$threads" -v mode="$mode" '{ s[NR] = $1; a[NR] = $2 }
  END { printf "%-6s MiB %4s threads %-5s seen by program: min %6.1f median %6.1f ms (agent min %6.1f)\n", m, t, mode, s[1], s[int((NR + 1) / 2)], a[1] }'
grep "pause phases" "$work/err" >&2 || true
