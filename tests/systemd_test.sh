#!/usr/bin/env bash
# Runs `systemd-analyze verify` on the systemd units and fails on anything it
# says about them. Run by CTest (tests/CMakeLists.txt), which passes:
#
#   CMAKE          cmake, to run UNITS_SCRIPT
#   UNITS_SCRIPT   systemd/configure_units.cmake, which writes the units at
#                  install time too
#   SHMD SHMCTL    programs for ExecStart= (verify checks that they exist)
#
# systemd need not be running: verify reads the files and the unit
# directories only. Its lines that do not name our units (a missing
# machine-id, no D-Bus, other units on this machine) are not ours to judge.
set -euo pipefail

fail() { echo "systemd test: FAILED: $*" >&2; exit 1; }
for v in CMAKE UNITS_SCRIPT SHMD SHMCTL; do
    [ -n "${!v:-}" ] || fail "$v is not set (run this through ctest)"
done
if ! command -v systemd-analyze >/dev/null; then
    echo "systemd test: systemd-analyze not found (Debian package systemd, which ./dev deps installs); skipped"
    exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/libshm-systemd-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
units=(shmd.service shmctl-gc.service shmctl-gc.timer)
ours='(shmd\.service|shmctl-gc\.service|shmctl-gc\.timer)'

# verify DIR: prints what systemd-analyze says about our units in DIR.
verify() {
    local dir=$1 out rc=0
    out=$(cd "$dir" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "${units[@]/#/./}" 2>&1) || rc=$?
    printf '%s\n' "$out" | grep -E "$ours" || true
    if [ "$rc" -ne 0 ] && ! printf '%s\n' "$out" | grep -qE "$ours"; then
        # Failed without naming a unit of ours: show why, but do not judge.
        printf 'systemd-analyze verify exited with %d, saying nothing about our units:\n%s\n' "$rc" "$out" >&2
    fi
}

"$CMAKE" -DSHM_UNIT_OUT="$tmp/good" -DSHM_UNIT_SHMD="$SHMD" -DSHM_UNIT_SHMCTL="$SHMCTL" -P "$UNITS_SCRIPT" ||
    fail "writing the units with $UNITS_SCRIPT"
grep -qxF "ExecStart=$SHMD" "$tmp/good/shmd.service" || fail "shmd.service: ExecStart= is not $SHMD"
grep -qxF "ExecStart=$SHMCTL gc" "$tmp/good/shmctl-gc.service" || fail "shmctl-gc.service: ExecStart= is not '$SHMCTL gc'"
for unit in shmd.service shmctl-gc.service; do
    grep -qE '^RemoveIPC=yes' "$tmp/good/$unit" && fail "$unit sets RemoveIPC=yes, which deletes live segments"
done

# First make sure this systemd-analyze reports a broken unit at all, so that
# silence below means something: the same units with an unknown key and a
# missing program.
mkdir "$tmp/bad"
cp "$tmp/good/"* "$tmp/bad/"
sed -i 's|^ExecStart=.*|ExecStart=/nonexistent/shmd\nNoSuchSetting=yes|' "$tmp/bad/shmd.service"
said=$(verify "$tmp/bad")
if ! grep -q 'NoSuchSetting' <<<"$said" || ! grep -q '/nonexistent/shmd' <<<"$said"; then
    fail "systemd-analyze verify did not report a unit with an unknown key and a missing program (it said: '$said'); it cannot check the units here"
fi

said=$(verify "$tmp/good")
if [ -n "$said" ]; then
    printf '%s\n' "$said" >&2
    fail "systemd-analyze verify warns about the units (above)"
fi
echo "systemd test: systemd-analyze verify says nothing about ${units[*]}: passed"
