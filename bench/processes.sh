#!/usr/bin/env bash
# Process creation under stasis: a bash script that starts N programs
# (fork + exec of /bin/true) and N subshells (fork alone, in `$(...)`),
# timed natively and under `stasis launch` in the same run. Every process
# the program starts joins the computation (a checkpoint thread and a
# connection of its own), so this is the price of that.
#
#   bench/processes.sh [N ...]     (default: 500; builds release binaries)
#
# Figures are printed, never asserted: machines are shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-500}")
cargo build --release --workspace -q
stasis=$PWD/target/release/stasis
work=$(mktemp -d "${BENCH_DIR:-$PWD/target}/bench.XXXXXX")
chmod 700 "$work"
trap 'rm -rf "$work"' EXIT
cat >"$work/spawn.sh" <<'SH'
for i in $(seq "$1"); do /bin/true; x=$(echo "$i"); done
SH

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

printf '%-6s %10s %10s %12s %16s\n' N "native s" "stasis s" "processes" "extra ms/process"
for n in "${counts[@]}"; do
  t0=$(now); bash "$work/spawn.sh" "$n"; t1=$(now)
  "$stasis" launch -q --ckptdir "$work/ck-$n" --coord-socket "$work/c-$n.sock" -- bash "$work/spawn.sh" "$n"
  t2=$(now)
  native=$(secs "$t0" "$t1") under=$(secs "$t1" "$t2")
  extra=$(awk -v a="$native" -v b="$under" -v n="$n" 'BEGIN { printf "%.3f", (b - a) * 1000 / (2 * n) }')
  printf '%-6s %10s %10s %12s %16s\n' "$n" "$native" "$under" "$((2 * n))" "$extra"
done
