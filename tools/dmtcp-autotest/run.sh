#!/usr/bin/env bash
# Runs DMTCP's autotest with DMTCP's binaries replaced by Stasis's, in a
# fresh light copy of a DMTCP tree built outside this repository
# (DMTCP_SRC, default /opt/dmtcp-src/dmtcp: ./configure && make && make -C
# test tests unit/dmtcp_unit_tests). docs/dmtcp-compatibility.md, "DMTCP's
# autotest", has the results; table.py turns four runs' output into its
# table.
#   run.sh [-u USER] [-t DIR] [-k] [-d] [-- autotest args: -v, --suite all, --jobs N, test names]
# -t: where stasis and libstasis_agent.so are (default this checkout's target/debug)
# -u: run as that user (e.g. stasis-ci)
# -k: keep the tree (else removed when all passed)
# -d: run DMTCP's own binaries instead (the reference)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SRC=${DMTCP_SRC:-/opt/dmtcp-src/dmtcp}
target=$(cd "$(dirname "$0")/../.." && pwd)/target/debug
user=
keep=
dmtcp=
while getopts "u:t:kd" o; do
    case $o in u) user=$OPTARG ;; t) target=$OPTARG ;; k) keep=1 ;; d) dmtcp=1 ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
T=$(mktemp -d /tmp/at-XXXXXX)
chmod 755 "$T"
cp -as "$SRC/test" "$T/test"
for f in "$SRC"/test/*.py; do cp --remove-destination "$f" "$T/test/"; done
for d in "$SRC"/* "$SRC"/.[!.]*; do n=${d##*/}; case $n in bin|test) ;; *) ln -s "$d" "$T/$n" ;; esac; done
mkdir "$T/bin"
if [ -n "$dmtcp" ]; then
    for f in "$SRC"/bin/*; do ln -s "$f" "$T/bin/"; done
else
    cp "$target/stasis" "$target/libstasis_agent.so" "$T/bin/"
    for n in dmtcp_launch dmtcp_restart dmtcp_command dmtcp_coordinator dmtcp_nocheckpoint; do ln -s stasis "$T/bin/$n"; done
fi
echo "tree: $T" >&2
cd "$T"
if [ -n "$user" ]; then
    chown -R -h "$user": "$T"
    home=$(getent passwd "$user" | cut -d: -f6)
    runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        python3 "$here/subreaper.py" python3 "$T/test/autotest.py" "$@"
else
    python3 "$here/subreaper.py" python3 "$T/test/autotest.py" "$@"
fi
rc=$?
echo "tree: $T rc=$rc" >&2
if [ "$rc" = 0 ] && [ -z "$keep" ]; then rm -rf "$T"; fi
exit $rc
