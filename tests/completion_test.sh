#!/usr/bin/env bash
# shmctl's bash completion: source completion/shmctl in bash and check what
# it offers for a few command lines, segment names included, read from a
# private shm directory made here (through SHM_DIR and through --dir).
#   completion_test.sh COMPLETION_SCRIPT
set -u
script=${1:?usage: completion_test.sh COMPLETION_SCRIPT}
# shellcheck source=/dev/null
source "$script" || { echo "FAIL: cannot source $script"; exit 1; }

# The function `complete -p shmctl` names: what bash would call.
spec=$(complete -p shmctl 2>/dev/null) || { echo "FAIL: $script registers no completion for shmctl"; exit 1; }
fn=$(sed -n 's/.*-F \([^ ]*\) .*/\1/p' <<<"$spec")
[ -n "$fn" ] || { echo "FAIL: no completion function in '$spec'"; exit 1; }

base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
dir=$(mktemp -d "$base/completion-test.XXXXXX") || exit 1
other=$(mktemp -d "$base/completion-test.XXXXXX") || exit 1
trap 'rm -rf "$dir" "$other"' EXIT
: >"$dir/libshm.jobs"
: >"$dir/libshm.jobs-2"
: >"$dir/libshm.results"
: >"$dir/psm_1a2b"          # not a libshm segment: never offered
mkdir "$dir/libshm.adir"    # not a file: never offered
: >"$other/libshm.elsewhere"

failures=0
# check "EXPECTED WORDS" WORD... : complete the last WORD of the command line.
check() {
    local want=$1
    shift
    COMP_WORDS=("$@")
    COMP_CWORD=$(($# - 1))
    COMP_LINE="$*"
    COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    "$fn" shmctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]:-}"
    local got
    got=$(printf '%s\n' "${COMPREPLY[@]}" | sed '/^$/d' | sort | tr '\n' ' ')
    want=$(printf '%s\n' $want | sed '/^$/d' | sort | tr '\n' ' ')
    if [ "$got" = "$want" ]; then
        echo "ok:   [$*] -> $got"
    else
        echo "FAIL: [$*] -> '$got', expected '$want'"
        failures=$((failures + 1))
    fi
}

export SHM_DIR=$dir
check "ls stat df gc rm status" shmctl ""
check "stat status" shmctl st
check "--help --version --dir --bytes --socket" shmctl --
check "-a --all --noheadings --json -h --help -V --version --dir -b --bytes --socket" shmctl ls -
check "--dry-run --foreign --min-age --json --help --version --dir --bytes --socket" shmctl gc --
check "--force" shmctl rm --f
check "--json" shmctl status --j
check "jobs jobs-2 results" shmctl rm ""
check "jobs jobs-2" shmctl stat j
check "jobs jobs-2 results" shmctl rm jobs ""
check "" shmctl stat jobs ""            # stat takes one name
check "" shmctl gc ""                   # gc takes no name
check "jobs jobs-2 results" shmctl -b stat ""
check "elsewhere" shmctl --dir "$other" rm ""
check "elsewhere" shmctl rm --dir "$other" ""
check "elsewhere" shmctl --dir = "$other" stat ""
SHM_DIR=$other check "elsewhere" shmctl stat ""
SHM_DIR="" check "" shmctl --dir "$dir/none" stat ""
check "0 30s 5m 2h 1d" shmctl gc --min-age ""

if [ "$failures" -ne 0 ]; then
    echo "$failures completion case(s) failed"
    exit 1
fi
echo "all completion cases passed"
