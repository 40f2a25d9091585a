#!/usr/bin/env bash
# The speed table of issue 11: every figure beside a reference measured in
# the same run on the same machine, with its target and whether it is met.
#
#   bench/speed.sh                 (builds release binaries; ~5-15 minutes)
#
# Environment:
#   STASIS_BENCH_SIZES    memory sizes in MiB (default "256 1024 4096")
#   STASIS_BENCH_THREADS  thread counts (default "50 200 800")
#   STASIS_BENCH_PROCS    processes in the tree (default 32)
#   BENCH_DIR             where checkpoints and references are written
#                         (default target/; choose the disk to measure)
#   STASIS_BENCH_NO_BUILD=1  use target/release as it is
#
# Progress goes to stderr, the table to stdout at the end. Figures are
# printed, never asserted: machines are shared and noisy (bench/README.md).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
root=$PWD

read -r -a sizes <<<"${STASIS_BENCH_SIZES:-256 1024 4096}"
read -r -a thread_counts <<<"${STASIS_BENCH_THREADS:-50 200 800}"
procs=${STASIS_BENCH_PROCS:-32}

# --- failure, cleanup ---------------------------------------------------------

step="starting"
work=""
sockets=()  # coordinators to quit at the end
groups=()   # process groups (setsid) to kill at the end

note() { printf 'bench: %s\n' "$*" >&2; }
die() { note "FAILED during: $step: $*"; exit 1; }
on_err() { note "FAILED during: $step (line $1: exit $2)"; }
trap 'on_err "$LINENO" "$?"' ERR

quit_coordinator() { # socket
  [ -S "$1" ] && timeout 10 "$stasis" command --coord-socket "$1" --quit >/dev/null 2>&1
  return 0
}
kill_group() { # pgid
  kill -9 -- "-$1" 2>/dev/null || true
}
cleanup() {
  trap - ERR
  local s g
  for s in "${sockets[@]}"; do quit_coordinator "$s"; done
  for g in "${groups[@]}"; do kill_group "$g"; done
  [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM HUP

# --- build --------------------------------------------------------------------

step="cargo build --release --workspace"
if [ "${STASIS_BENCH_NO_BUILD:-}" != 1 ]; then
  cargo build --release --workspace -q || die "the release build failed"
fi
stasis=$root/target/release/stasis
[ -x "$stasis" ] || die "no $stasis"

step="making the work directory"
mkdir -p "${BENCH_DIR:-$root/target}"
work=$(mktemp -d "${BENCH_DIR:-$root/target}/bench.XXXXXX")
chmod 700 "$work"

step="compiling bench/*.c"
for prog in fill tree sysloop; do
  cc -O2 -pthread -o "$work/$prog" "bench/$prog.c" || die "cc bench/$prog.c failed"
done

# Compression: --compress exists today (LZ4); the help says which codec.
compress_help=$("$stasis" launch --help 2>&1 | grep -i -A2 -- '--compress' || true)
if [ -z "$compress_help" ]; then
  codec=""
elif grep -qi zstd <<<"$compress_help"; then
  codec=zstd
elif grep -qi lz4 <<<"$compress_help"; then
  codec=lz4
else
  codec=compressed
fi
have_zstd=0
command -v zstd >/dev/null && have_zstd=1
can_drop=0
[ -w /proc/sys/vm/drop_caches ] && can_drop=1

# --- small helpers ------------------------------------------------------------

now_us() { printf '%s' "${EPOCHREALTIME/[.,]/}"; }
# seconds between two microsecond stamps
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e6 }'; }
median() { # numbers... -> median (n/a ignored)
  printf '%s\n' "$@" | { grep -v '^n/a$' || true; } | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
with_s() { # seconds -> "X s", or n/a
  case $1 in n/a) echo n/a ;; *) echo "$1 s" ;; esac
}
mib_of() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# ok / MISS: is value <= limit?
verdict() {
  case "$1$2" in *n/a*) echo "n/a"; return ;; esac
  awk -v v="$1" -v l="$2" 'BEGIN { print (v <= l) ? "ok" : "MISS" }'
}
# Byte counts as plain integers (mawk would print 2.1e+09).
bytes_alloc() { du -s -B1 "$@" | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
bytes_apparent() { du -s -B1 --apparent-size "$@" | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
newest_gen() { # ckptdir -> newest committed generation directory
  local g
  g=$(find "$1" -maxdepth 1 -type d -name 'gen-*' | sort | tail -n 1)
  [ -n "$g" ] || die "no committed generation in $1"
  printf '%s' "$g"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
wait_for() { # file regex timeout_s [pid that must stay alive]
  local end=$((SECONDS + $3))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    ((SECONDS < end)) || die "timed out after $3 s waiting for '$2' in $1${4:+ ($(tail -n 3 "${1%.out}.err" 2>/dev/null | tr '\n' ' '))}"
    if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then
      grep -q -- "$2" "$1" 2>/dev/null && return 0
      die "the process ended before '$2' appeared in $1: $(tail -n 3 "${1%.out}.err" 2>/dev/null | tr '\n' ' ')"
    fi
    sleep 0.005
  done
}
# Largest gap between ticks printed in [from_us, to_us], in ms.
max_gap_ms() {
  awk -v a="$2" -v b="$3" '$1 == "tick" && $4 >= a && $4 <= b && $3 > m { m = $3 }
    END { if (m == "") print "n/a"; else printf "%.1f", m / 1000 }' "$1"
}
# Median gap between ticks printed in [from_us, to_us]: the tick's period, in ms.
period_ms() {
  median "$(awk -v a="$2" -v b="$3" '$1 == "tick" && $4 >= a && $4 <= b { printf "%.2f\n", $3 / 1000 }' "$1")"
}

# Launch a program under stasis, its output through a pipe as from a batch
# job's log; returns when it prints "ready". Sets launch_pgid.
launch() { # name ckptdir socket [launch flags...] -- program args...
  local name=$1 ck=$2 sock=$3
  shift 3
  mkdir -p "$ck"
  sockets+=("$sock")
  setsid bash -c 'exec "$@" | cat' _ "$stasis" launch -q --keep 3 --interval 0 --ckptdir "$ck" \
    --coord-socket "$sock" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  launch_pgid=$!
  groups+=("$launch_pgid")
  disown "$launch_pgid"
  wait_for "$work/$name.out" '^ready' 600 "$launch_pgid"
}
stop() { # socket pgid
  quit_coordinator "$1"
  kill_group "$2"
}
# Checkpoint and wait until the generation is committed (the command
# returns only then: every file and the rename fsynced). Sets ck_t0, ck_t1 (us).
checkpoint() { # socket
  ck_t0=$(now_us)
  timeout 900 "$stasis" command --coord-socket "$1" --checkpoint >/dev/null 2>"$work/command.err" ||
    die "stasis command --checkpoint failed: $(tr '\n' ' ' <"$work/command.err")"
  ck_t1=$(now_us)
}
# The agent's own count of the last pause (the longest of its processes), ms.
agent_pause_ms() { # socket
  timeout 30 "$stasis" command --coord-socket "$1" --status --json 2>/dev/null | python3 -c '
import json, sys
print(round(max(p["pause_us"] for p in json.load(sys.stdin)["process_list"]) / 1000))' 2>/dev/null || echo n/a
}
# Restart and time it to the program's first tick line (its own clock, in
# the line), which must have read memory with the stride expected. Sets
# restart_s (seconds).
restarts=0
restart_to_first_tick() { # target stride
  local sock out t0 first pid stride
  restarts=$((restarts + 1))
  sock=$work/restart-$restarts.sock out=$work/restart-$restarts.out
  sockets+=("$sock")
  t0=$(now_us)
  setsid "$stasis" restart -q --interval 0 --coord-socket "$sock" "$1" >"$out" 2>"${out%.out}.err" &
  pid=$!
  groups+=("$pid")
  disown "$pid"
  wait_for "$out" '^tick' 600 "$pid"
  read -r first stride < <(awk '$1 == "tick" { print $4, $6; exit }' "$out")
  stop "$sock" "$pid"
  [ "$stride" = "$2" ] || die "the first tick after restart read every ${stride}th page, not every $2th"
  restart_s=$(secs "$t0" "$first")
}

# --- the table ----------------------------------------------------------------

rows=()
row() { # case measure stasis reference target verdict
  rows+=("$(printf '%-15s %-29s %-30s %-39s %-22s %s' "$@")")
  note "$(printf '%-15s %-29s %-30s %-39s %-22s %s' "$@")"
}
section() { rows+=("" "$1"); }

# --- memory sizes -------------------------------------------------------------

# The same bytes the program holds, compressed outside: sets zstd_s, zstd_bytes.
zstd_reference() { # mib
  zstd_s=n/a zstd_bytes=n/a
  ((have_zstd)) || return 0
  step="$1 MiB: writing the program's bytes for zstd"
  "$work/fill" "$1" -d "$work/bytes" || die "fill -d failed"
  step="$1 MiB: zstd -1 -T2"
  local t0 t1
  t0=$(now_us)
  zstd -q -f -1 -T2 "$work/bytes" -o "$work/bytes.zst"
  t1=$(now_us)
  zstd_s=$(secs "$t0" "$t1")
  zstd_bytes=$(stat -c %s "$work/bytes.zst")
  rm -f "$work/bytes" "$work/bytes.zst"
}

dd_reference() { # mib dir -> sets dd_s
  local t0 t1
  step="$1 MiB: dd conv=fsync"
  t0=$(now_us)
  dd if=/dev/zero of="$2/dd.tmp" bs=1M count="$1" conv=fsync status=none
  t1=$(now_us)
  rm -f "$2/dd.tmp"
  dd_s=$(secs "$t0" "$t1")
}

# Restart targets: <= 0.1 s up to 1 GiB, 0.2 s at 4 GiB (the issue's).
warm_target() { if (($1 > 1024)); then echo 0.2; else echo 0.1; fi; }
pause_target() { if (($1 > 1024)); then echo 100; else echo 50; fi; }

one_size() { # mib mode
  local mib=$1 mode=$2 flags=() ck sock name label
  label="$mib MiB $mode"
  [ "$mode" != plain ] && flags=(--compress)
  name=mem-$mib-$mode ck=$work/ck-$mib-$mode sock=$work/$name.sock
  mkdir -p "$work/ctl-$name"
  local ctl=$work/ctl-$name

  step="$label: launching fill"
  launch "$name" "$ck" "$sock" "${flags[@]}" -- "$work/fill" "$mib" -c "$ctl"
  local pgid=$launch_pgid out=$work/$name.out
  sleep 2
  local base_t0 base_t1
  base_t1=$(now_us)
  base_t0=$((base_t1 - 2000000))

  # 1. Full checkpoint, with the program reading every page.
  step="$label: full checkpoint"
  checkpoint "$sock"
  local full_s full_gen full_alloc full_apparent
  full_s=$(secs "$ck_t0" "$ck_t1")
  full_gen=$(newest_gen "$ck")
  full_alloc=$(bytes_alloc "$full_gen") full_apparent=$(bytes_apparent "$full_gen")
  local agent_ms
  agent_ms=$(agent_pause_ms "$sock")
  local dir_before
  dir_before=$(bytes_alloc "$ck")
  sleep 0.5
  local gap base_gap period pause
  gap=$(max_gap_ms "$out" "$ck_t0" "$((ck_t1 + 300000))")
  base_gap=$(max_gap_ms "$out" "$base_t0" "$base_t1")
  period=$(period_ms "$out" "$base_t0" "$base_t1")
  pause=$(awk -v g="$gap" -v p="$period" 'BEGIN { printf "%.0f", g - p }')

  # 2. 1% of the pages written, checkpoint again.
  step="$label: second checkpoint after 1% of pages changed"
  : >"$ctl/dirty"
  wait_for "$out" '^dirtied' 60 "$pgid"
  sleep 0.1
  checkpoint "$sock"
  local second_s second_gen second_alloc
  second_s=$(secs "$ck_t0" "$ck_t1")
  second_gen=$(newest_gen "$ck")
  [ "$second_gen" != "$full_gen" ] || die "the second checkpoint made no new generation"
  # What the directory grew by: right however a generation refers to
  # earlier ones (du counts a file linked twice once).
  second_alloc=$(awk -v a="$(bytes_alloc "$ck")" -v b="$dir_before" 'BEGIN { printf "%.0f", a - b }')
  local agent2_ms gap2 pause2
  agent2_ms=$(agent_pause_ms "$sock")
  sleep 0.4
  gap2=$(max_gap_ms "$out" "$ck_t0" "$((ck_t1 + 300000))")
  pause2=$(awk -v g="$gap2" -v p="$period" 'BEGIN { printf "%.0f", g - p }')

  # 3. The program idle (between ticks) for the restart image, so that its
  # first tick after restart is one whole pass over memory.
  step="$label: checkpoint for restart"
  : >"$ctl/hold"
  wait_for "$out" '^held' 60 "$pgid"
  checkpoint "$sock"
  local restart_gen
  restart_gen=$(newest_gen "$ck")
  stop "$sock" "$pgid"

  # Restarts: every page / 1% of them, warm / cold.
  local warm_all=() warm_one=() cold_all=n/a cold_one=n/a cat_s=n/a reps=3 i
  ((mib > 1024)) && reps=1
  rm -f "$ctl/hold" "$ctl/touch1"
  # Warm: a restart first, untimed, leaves in the page cache exactly what
  # a restart reads, however generations refer to each other.
  step="$label: warming the page cache with a restart"
  restart_to_first_tick "$restart_gen" 1
  for i in $(seq "$reps"); do
    step="$label: warm restart, first tick reads every page"
    rm -f "$ctl/touch1"
    restart_to_first_tick "$restart_gen" 1
    warm_all+=("$restart_s")
    step="$label: warm restart, first tick reads 1% of pages"
    : >"$ctl/touch1"
    restart_to_first_tick "$restart_gen" 100
    warm_one+=("$restart_s")
  done
  if ((can_drop)); then
    step="$label: cat IMAGE after dropping caches"
    drop_caches
    local t0 t1
    t0=$(now_us)
    find "$full_gen" -type f -exec cat {} + >/dev/null
    t1=$(now_us)
    cat_s=$(secs "$t0" "$t1")
    step="$label: cold restart, first tick reads every page"
    rm -f "$ctl/touch1"
    drop_caches
    restart_to_first_tick "$restart_gen" 1
    cold_all=$restart_s
    step="$label: cold restart, first tick reads 1% of pages"
    : >"$ctl/touch1"
    drop_caches
    restart_to_first_tick "$restart_gen" 100
    cold_one=$restart_s
  fi
  rm -rf "$ck"

  # The rows.
  local c="$mib MiB $mode" wt pt m
  wt=$(warm_target "$mib") pt=$(pause_target "$mib")
  if [ "$mode" = plain ]; then
    row "$c" "full checkpoint (durable)" "$full_s s" "dd conv=fsync $dd_s s" "<= 1.3 x dd" \
      "$(verdict "$full_s" "$(awk -v d="$dd_s" 'BEGIN { print 1.3 * d }')") ($(ratio "$full_s" "$dd_s") x)"
    row "$c" "image MiB allocated/apparent" "$(mib_of "$full_alloc") / $(mib_of "$full_apparent")" \
      "memory $mib MiB" "-" "-"
  else
    local zmib=n/a zlimit=n/a
    [ "$zstd_bytes" != n/a ] && zmib=$(mib_of "$zstd_bytes") && zlimit=$(awk -v z="$zstd_s" 'BEGIN { print 1.3 * z }')
    row "$c" "full checkpoint (durable)" "$full_s s" "zstd -1 -T2 $(with_s "$zstd_s")" "<= 1.3 x zstd" \
      "$(verdict "$full_s" "$zlimit") ($(ratio "$full_s" "$zstd_s") x)"
    row "$c" "image MiB allocated/apparent" "$(mib_of "$full_alloc") / $(mib_of "$full_apparent")" \
      "zstd -1 -T2 $zmib MiB" "<= zstd's" "$(verdict "$(mib_of "$full_apparent")" "$zmib")"
  fi
  row "$c" "pause seen (max tick gap)" "$pause ms (gap $gap, agent $agent_ms)" \
    "no ckpt: max gap $base_gap, tick $period ms" "<= $pt ms" "$(verdict "$pause" "$pt")"
  m=$(median "${warm_all[@]}")
  row "$c" "restart warm, every page" "$m s" "native tick $period ms" "<= $wt s" "$(verdict "$m" "$wt")"
  local cold_limit=n/a
  [ "$cat_s" != n/a ] && cold_limit=$(awk -v c="$cat_s" 'BEGIN { print c + 0.1 }')
  row "$c" "restart cold, every page" "$(with_s "$cold_all")" "cat IMAGE (cold) $(with_s "$cat_s")" "<= cat + 0.1 s" \
    "$(verdict "$cold_all" "$cold_limit")"
  m=$(median "${warm_one[@]}")
  row "$c" "restart warm, 1% of pages" "$m s" "-" "<= 0.1 s" "$(verdict "$m" 0.1)"
  row "$c" "restart cold, 1% of pages" "$(with_s "$cold_one")" "-" "<= 0.1 s" "$(verdict "$cold_one" 0.1)"
  local t_pct b_pct
  t_pct=$(awk -v a="$second_s" -v b="$full_s" 'BEGIN { printf "%.1f", 100 * a / b }')
  b_pct=$(awk -v a="$second_alloc" -v b="$full_alloc" 'BEGIN { printf "%.1f", 100 * a / b }')
  row "$c" "2nd ckpt, 1% pages changed" "$second_s s, $(mib_of "$second_alloc") MiB" \
    "full $full_s s, $(mib_of "$full_alloc") MiB" "<= 5% of full" \
    "$(verdict "$(awk -v a="$t_pct" -v b="$b_pct" 'BEGIN { print (a > b) ? a : b }')" 5) ($t_pct% / $b_pct%)"
  row "$c" "pause seen, 2nd ckpt" "$pause2 ms (gap $gap2, agent $agent2_ms)" \
    "no ckpt: max gap $base_gap, tick $period ms" "<= $pt ms" "$(verdict "$pause2" "$pt")"
}

# A bash expansion error (bad arithmetic) aborts the whole top-level
# command without running the ERR trap: each section counts what it did,
# and a section that stopped short is reported as such.
sizes_done=0
for mib in "${sizes[@]}"; do
  [[ $mib =~ ^[0-9]+$ ]] || die "STASIS_BENCH_SIZES: '$mib' is not a number of MiB"
  section "== $mib MiB: a program that fills it half random, half repetitive, then reads every page every 10 ms"
  avail_mib=$(awk '/^MemAvailable:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
  disk_mib=$(df -Pk "$work" | awk 'NR == 2 { printf "%d", $4 / 1024 }')
  if ((avail_mib < 2 * mib + 1024 || disk_mib < 4 * mib + 1024)); then
    row "$mib MiB" "skipped" "-" "needs $((2 * mib + 1024)) MiB memory, $((4 * mib + 1024)) MiB disk" \
      "has $avail_mib / $disk_mib" "-"
    sizes_done=$((sizes_done + 1))
    continue
  fi
  dd_reference "$mib" "$work"
  zstd_reference "$mib"
  one_size "$mib" plain
  if [ -n "$codec" ]; then
    one_size "$mib" "$codec"
  else
    row "$mib MiB" "compressed" "n/a (no --compress)" "-" "-" "-"
  fi
  sizes_done=$((sizes_done + 1))
done
((sizes_done == ${#sizes[@]})) || die "the memory sizes stopped after $sizes_done of ${#sizes[@]} (see above)"

# --- threads --------------------------------------------------------------------

section "== threads: a 16 MiB program ticking every 10 ms while N threads sleep"
threads_done=0
for n in "${thread_counts[@]}"; do
  step="$n threads"
  name=threads-$n sock=$work/threads-$n.sock
  launch "$name" "$work/ck-$name" "$sock" -- "$work/fill" 16 -t "$n"
  pgid=$launch_pgid
  sleep 1.5
  base_t1=$(now_us) base_t0=$((base_t1 - 1000000))
  base_gap=$(max_gap_ms "$work/$name.out" "$base_t0" "$base_t1")
  period=$(period_ms "$work/$name.out" "$base_t0" "$base_t1")
  gaps=() agents=()
  for i in 1 2 3; do
    checkpoint "$sock"
    agents+=("$(agent_pause_ms "$sock")")
    sleep 0.4
    gaps+=("$(max_gap_ms "$work/$name.out" "$ck_t0" "$((ck_t1 + 300000))")")
  done
  stop "$sock" "$pgid"
  rm -rf "$work/ck-$name"
  gap=$(median "${gaps[@]}")
  pause=$(awk -v g="$gap" -v p="$period" 'BEGIN { printf "%.0f", g - p }')
  if ((n >= 800)); then target="<= 30 ms" v=$(verdict "$pause" 30); else target="- (30 ms at 800)" v="-"; fi
  row "$n threads" "pause seen, median of 3" "$pause ms (gap $gap, agent $(median "${agents[@]}"))" \
    "no ckpt: max gap $base_gap, tick $period ms" "$target" "$v"
  threads_done=$((threads_done + 1))
done
((threads_done == ${#thread_counts[@]})) || die "the thread counts stopped after $threads_done of ${#thread_counts[@]}"

# --- a process tree -----------------------------------------------------------------

section "== a tree of $procs processes (1 MiB each, ticking every 10 ms)"
step="$procs-process tree"
name=tree sock=$work/tree.sock
launch "$name" "$work/ck-tree" "$sock" -- "$work/tree" "$procs"
pgid=$launch_pgid
sleep 1
times=()
for i in 1 2 3; do
  checkpoint "$sock"
  times+=("$(secs "$ck_t0" "$ck_t1")")
  sleep 0.3
done
stop "$sock" "$pgid"
tree_gen=$(newest_gen "$work/ck-tree")
rtimes=()
for i in 1 2 3; do
  step="$procs-process tree: restart $i"
  restart_to_first_tick "$tree_gen" 1
  rtimes+=("$restart_s")
done
row "$procs processes" "checkpoint, median of 3" "$(median "${times[@]}") s" "-" "-" "-"
row "$procs processes" "restart warm, median of 3" "$(median "${rtimes[@]}") s" "-" "-" "-"

# --- overhead between checkpoints -------------------------------------------------

section "== overhead between checkpoints: loops of system calls, native and under stasis launch (best of 5 interleaved runs: noise only adds)"
sys_native() {
  "$work/sysloop" >"$work/sys-native-$1" || die "sysloop failed"
}
sys_stasis() {
  sockets+=("$work/sys-$1.sock")
  "$stasis" launch -q --interval 0 --ckptdir "$work/ck-sys-$1" --coord-socket "$work/sys-$1.sock" \
    -- "$work/sysloop" >"$work/sys-stasis-$1" 2>"$work/sys-stasis-$1.err" ||
    die "sysloop under stasis failed: $(tail -n 3 "$work/sys-stasis-$1.err" | tr '\n' ' ')"
}
for i in 1 2 3 4 5; do
  step="sysloop, native and under stasis launch, run $i"
  # Alternate which goes first: a machine that slows down or speeds up
  # during the run favours neither.
  if ((i % 2)); then sys_native "$i"; sys_stasis "$i"; else sys_stasis "$i"; sys_native "$i"; fi
done
while read -r op _; do
  native=$(awk -v o="$op" '$1 == o { print $2 }' "$work"/sys-native-* | sort -g | head -n 1)
  under=$(awk -v o="$op" '$1 == o { print $2 }' "$work"/sys-stasis-[0-9] | sort -g | head -n 1)
  r=$(ratio "$under" "$native")
  limit=1.1
  [ "$op" = fork+waitpid ] && limit=1.2
  row "overhead" "$op" "$(awk -v u="$under" 'BEGIN { printf "%.2f us", u / 1000 }')" \
    "native $(awk -v u="$native" 'BEGIN { printf "%.2f us", u / 1000 }')" "<= $limit x native" \
    "$(verdict "$r" "$limit") ($r x)"
done <"$work/sys-native-1"

# --- print ----------------------------------------------------------------------------

step="printing"
echo
echo "stasis speed, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "checkpoints in $work ($(df -P "$work" | awk 'NR == 2 { print $1 }')); compressed = --compress (${codec:-none})"
((can_drop)) || echo "cold restarts: n/a (dropping the page cache needs root)"
((have_zstd)) || echo "zstd reference: n/a (no zstd installed)"
printf '%-15s %-29s %-30s %-39s %-22s %s\n' case measure stasis reference target verdict
printf '%s\n' "${rows[@]}"
