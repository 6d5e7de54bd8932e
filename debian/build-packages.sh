#!/usr/bin/env bash
# Builds the Debian packages of this source tree into OUT_DIR:
#
#   debian/build-packages.sh OUT_DIR
#
# dpkg-buildpackage writes its results beside the source tree, so it runs
# on a copy of the tree in OUT_DIR/src (without build/ and .git), and the
# .deb files (with their debug symbols, .ddeb, and the .changes and
# .buildinfo) are moved to OUT_DIR. The log is OUT_DIR/build.log.
#
# Exits 77 when a tool it needs is missing (./dev deps installs them), 1 on
# any other failure. DEB_BUILD_OPTIONS from the environment is kept; the
# number of jobs is that of the CPUs unless it says parallel=N.
set -euo pipefail

fail() { echo "build-packages: FAILED: $*" >&2; exit 1; }
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

missing=()
for t in dpkg-buildpackage dpkg-parsechangelog dh dh_python3; do
    command -v "$t" >/dev/null || missing+=("$t")
done
if [ "$(id -u)" -ne 0 ] && ! command -v fakeroot >/dev/null; then missing+=(fakeroot); fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-packages: ${missing[*]} not found (Debian packages dpkg-dev, debhelper, dh-python, fakeroot: ./dev deps installs them); skipped"
    exit 77
fi

# The package's version is the project's: debian/changelog needs a new
# entry whenever CMakeLists.txt's version changes.
project=$(sed -nE 's/^project\(libshm VERSION ([0-9.]+).*/\1/p' "$src/CMakeLists.txt")
[ -n "$project" ] || fail "no version in $src/CMakeLists.txt"
deb=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
[ "${deb%%-*}" = "$project" ] ||
    fail "debian/changelog is at version $deb, the project (CMakeLists.txt) at $project: add a changelog entry"

# A fresh copy each time: nothing of an earlier package build is reused.
work="$out/src"
rm -rf "$work"
mkdir -p "$work/libshm-$project"
tar -C "$src" --exclude=./build --exclude=./.git -cf - . | tar -C "$work/libshm-$project" -xf -
rm -f "$out"/*.deb "$out"/*.ddeb "$out"/*.changes "$out"/*.buildinfo

opts="${DEB_BUILD_OPTIONS:-}"
[[ "$opts" == *parallel=* ]] || opts="${opts:+$opts }parallel=$(nproc)"
root=()
[ "$(id -u)" -eq 0 ] || root=(-rfakeroot)
echo "build-packages: dpkg-buildpackage in $work/libshm-$project (log: $out/build.log)"
if ! (cd "$work/libshm-$project" && DEB_BUILD_OPTIONS="$opts" dpkg-buildpackage -b --no-sign "${root[@]}") \
        >"$out/build.log" 2>&1; then
    tail -n 60 "$out/build.log" >&2
    fail "dpkg-buildpackage (the whole log: $out/build.log)"
fi
mv "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo "$out"/
mv "$work"/*.ddeb "$out"/ 2>/dev/null || true
rm -rf "$work"
echo "build-packages: built in $out:"
(cd "$out" && ls -1 ./*.deb | sed 's|^\./|  |')
