#!/bin/bash
# nocheckpoint.sh: runs a short command outside the computation at every
# step, through dmtcp_nocheckpoint, and prints what that command saw: no
# coordinator to join, the LD_PRELOAD launch's caller had (none here).
#
# Usage: bash nocheckpoint.sh PATH_OF_dmtcp_nocheckpoint [STEPS]
set -u
nocheckpoint=$1
steps=${2:-40}
total=0
for ((i = 0; i < steps; i++)); do
    seen=$("$nocheckpoint" /usr/bin/env)
    case "$seen" in
    *STASIS_COORD_ADDR=*) echo "step $i: the command outside was given the coordinator"; exit 1 ;;
    esac
    preload=$(printf '%s\n' "$seen" | sed -n 's/^LD_PRELOAD=//p')
    total=$((total + i))
    echo "step $i preload=[$preload] total=$total"
    sleep 0.1
done
echo "final total=$total"
