#!/bin/bash
# script.sh: a bash script whose process tree changes all the time.
#
# Each step runs pipelines (seq | awk, seq | awk | sort | sed) inside
# command substitutions, a subshell in a command substitution, a subshell
# whose exit status is the result, and an external sleep; every 8 steps
# (from step 2) it starts a background job (a subshell running a pipeline
# into a file of its own, then exiting with a status of its own) that it
# waits for by pid 4 steps later. Shell variables (a running total, a string,
# an array) accumulate across steps, so the final line depends on them all.
#
# Files: bg-N.out in the current directory, one per background job, each
# written once (a restart that replays a step rewrites it the same).
#
# Prints "step N ..." each step, a line per waited job, and "final ...".
#
# Usage: bash script.sh [STEPS [PAUSE_MS]]
set -u
export LC_ALL=C

steps=${1:-40}
pause=${2:--1}
if [ "$steps" -lt 4 ]; then
    echo "$0: need at least 4 steps" >&2
    exit 2
fi

total=0
digits=""
medians=()
bg_pid=""
bg_step=0
bg_sum=0

for ((s = 1; s <= steps; s++)); do
    # Pipelines in command substitutions.
    squares=$(seq 1 $((s * 7)) | awk '{ t += $1 * $1 } END { print t }')
    n=$((s + 6))
    median=$(seq 1 "$n" | awk -v s="$s" '{ print ($1 * 7919 + s * 13) % 97 }' | sort -n |
        sed -n "$(((n + 1) / 2))p")
    # A subshell whose variables do not leak, in a command substitution.
    chain=$( (x=$s; for i in 1 2 3; do x=$((x * 3 + i)); done; echo "$x") )
    # A subshell's exit status.
    (exit $((s % 5)))
    rc=$?

    total=$(((total * 31 + squares + median * 7 + chain + rc) % 1000000007))
    digits="$digits$((median % 10))"
    medians+=("$median")

    # A background job that outlives a few steps, then is waited for.
    job=""
    if [ -n "$bg_pid" ] && [ "$s" -eq $((bg_step + 4)) ]; then
        wait "$bg_pid"
        status=$?
        out=$(cat "bg-$bg_step.out")
        bg_sum=$((bg_sum + out * 10 + status))
        job=" job $bg_step status $status out $out"
        bg_pid=""
    fi
    if [ -z "$bg_pid" ] && [ $((s % 8)) -eq 2 ]; then
        (
            sleep 0.3
            seq 1 $((s * 100)) | awk '{ t += $1 % 7 } END { print t }' >"bg-$s.out"
            exit $((s % 7 + 1))
        ) &
        bg_pid=$!
        bg_step=$s
    fi

    printf 'step %d squares %d median %d chain %d rc %d total %d jobs %d%s\n' \
        "$s" "$squares" "$median" "$chain" "$rc" "$total" "${#medians[@]}" "$job"

    if [ "$pause" -ge 0 ]; then
        ms=$pause
    else
        ms=$((50 + (s * 37) % 51))
    fi
    printf -v frac "%03d" $((ms % 1000))
    sleep "$((ms / 1000)).$frac"
done

if [ -n "$bg_pid" ]; then
    wait "$bg_pid"
    status=$?
    out=$(cat "bg-$bg_step.out")
    bg_sum=$((bg_sum + out * 10 + status))
    printf 'last job %d status %d out %d\n' "$bg_step" "$status" "$out"
fi
sum=$(printf '%s\n' "${medians[@]}" | cksum | cut -d' ' -f1)
printf 'final %d %s %d %s\n' "$total" "$sum" "$bg_sum" "$(printf '%s' "$digits" | cksum | cut -d' ' -f1)"
