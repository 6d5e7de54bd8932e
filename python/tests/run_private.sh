#!/bin/sh
# Run a command with SHM_DIR set to a new directory of its own, and fail if
# the command leaves a file in it once it and its children have exited.
set -u
dir=$(mktemp -d /dev/shm/libshm-python.XXXXXX) || exit 1
SHM_DIR=$dir "$@"
rc=$?
left=$(ls -A "$dir")
if [ -n "$left" ]; then
    echo "run_private: left behind in the shm directory:" >&2
    echo "$left" >&2
    [ "$rc" -eq 0 ] && rc=1
fi
rm -rf "$dir"
exit "$rc"
