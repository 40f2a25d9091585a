#!/usr/bin/env bash
# Checkpoint benchmark: fills N MiB (half random, half repetitive) and
# reports checkpoint time, image size and restart-to-first-output, beside
# `dd` writing the same amount to the same disk in the same run.
#
#   bench/run.sh [MIB ...]        (default: 1024; builds release binaries)
#
# Each size runs twice: images as they are, then LZ4-compressed
# (--compress, what dmtcp_launch does by default). `pause` is how long the
# program was stopped; the rest of the checkpoint runs beside it.
#
# Figures are printed, never asserted: machines are shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-1024}")
cargo build --release --workspace -q
stasis=$PWD/target/release/stasis
work=$(mktemp -d "${BENCH_DIR:-$PWD/target}/bench.XXXXXX")
trap 'kill -9 -- -$launch_pgid 2>/dev/null || true; kill -9 -- -$restart_pid 2>/dev/null || true; pkill -9 -f "$work/fill" 2>/dev/null || true; rm -rf "$work"' EXIT
launch_pgid=0 restart_pid=0
cc -O2 -o "$work/fill" bench/fill.c

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
wait_for() { # file pattern timeout
  local end=$(( $(date +%s) + $3 ))
  until grep -q "$2" "$1" 2>/dev/null; do
    (( $(date +%s) < end )) || { echo "timed out waiting for $2 in $1" >&2; exit 1; }
    sleep 0.005
  done
}

printf '%-6s %-5s %8s %8s %8s %8s %9s %9s %10s\n' MiB mode "dd s" "dd MB/s" "ckpt s" "pause ms" "ckpt MB/s" "image MiB" "restart s"
for mib in "${sizes[@]}"; do
  for mode in plain lz4; do
    ck=$work/ck-$mib-$mode sock=$work/coord-$mib-$mode.sock
    rm -rf "$ck"; mkdir -p "$ck"
    flags=()
    [ "$mode" = lz4 ] && flags=(--compress)

    # Reference: the disk's sequential write speed for the same amount.
    t0=$(now)
    dd if=/dev/zero of="$ck/dd.tmp" bs=1M count="$mib" conv=fsync status=none
    t1=$(now)
    rm -f "$ck/dd.tmp"
    dd_s=$(secs "$t0" "$t1")

    # Output through a pipe, as from a batch job's log: at restart, stdout
    # becomes the restart command's own, where the first line is timed.
    setsid bash -c 'exec "$@" | cat' _ "$stasis" launch "${flags[@]}" --ckptdir "$ck" --coord-socket "$sock" \
      -- "$work/fill" "$mib" >"$work/out-$mib" 2>"$work/err-$mib" &
    launch_pgid=$!
    disown "$launch_pgid"
    wait_for "$work/out-$mib" ready 300
    t0=$(now)
    "$stasis" command --coord-socket "$sock" --checkpoint >/dev/null
    t1=$(now)
    ckpt_s=$(secs "$t0" "$t1")
    pause_ms=$("$stasis" command --coord-socket "$sock" --status --json |
      python3 -c 'import json, sys; print(round(json.load(sys.stdin)["process_list"][0]["pause_us"] / 1000))')
    kill -9 -- -"$launch_pgid" 2>/dev/null || true
    image_mib=$(du -sm "$ck"/gen-* | awk '{ s += $1 } END { print s }')

    : >"$work/rout-$mib"
    t0=$(now)
    setsid "$stasis" restart --coord-socket "$sock.2" "$ck" >"$work/rout-$mib" 2>"$work/rerr-$mib" &
    restart_pid=$!
    disown "$restart_pid" # killed below on purpose: no job-control notice
    wait_for "$work/rout-$mib" tick 300
    t1=$(now)
    restart_s=$(secs "$t0" "$t1")
    kill -9 -- -"$restart_pid" 2>/dev/null || true
    pkill -9 -f "$work/fill" 2>/dev/null || true
    rm -rf "$ck"

    printf '%-6s %-5s %8s %8.0f %8s %8s %9.0f %9s %10s\n' "$mib" "$mode" "$dd_s" \
      "$(awk -v m="$mib" -v s="$dd_s" 'BEGIN { print m * 1.048576 / s }')" "$ckpt_s" "$pause_ms" \
      "$(awk -v m="$mib" -v s="$ckpt_s" 'BEGIN { print m * 1.048576 / s }')" "$image_mib" "$restart_s"
  done
done
