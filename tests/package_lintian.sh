#!/usr/bin/env bash
# Runs lintian on the built Debian packages and fails on any error or
# warning. Tags a package must carry are overridden in the package itself
# (debian/<package>.lintian-overrides, each with its reason), where lintian
# reads them. Run by CTest (tests/CMakeLists.txt), which passes:
#
#   DEB_DIR   the built packages (the package.build test makes them)
set -euo pipefail

fail() { echo "lintian test: FAILED: $*" >&2; exit 1; }
[ -n "${DEB_DIR:-}" ] || fail "DEB_DIR is not set (run this through ctest)"
command -v lintian >/dev/null ||
    { echo "lintian test: lintian not found (Debian package lintian: ./dev deps installs it); skipped"; exit 77; }
shopt -s nullglob
debs=("$DEB_DIR"/*.deb)
shopt -u nullglob
if [ ${#debs[@]} -eq 0 ]; then
    echo "lintian test: no packages in $DEB_DIR (package.build makes them); skipped"
    exit 77
fi
for p in libshm0 libshm-remote0 libshm-dev shmd python3-libshm; do
    ls "$DEB_DIR/${p}_"*.deb >/dev/null 2>&1 || fail "no $p package in $DEB_DIR"
done

echo "lintian $(lintian --version | awk '{ print $NF }') on: ${debs[*]##*/}"
# The overrides in force, with their reasons. (Not with --show-overrides
# below: lintian 2.116 then fails on the overridden tags too.)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/libshm-lintian-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$tmp"; done
for f in "$tmp"/usr/share/lintian/overrides/*; do
    [ -f "$f" ] || continue
    echo "overrides in $(basename "$f"):"
    sed 's/^/  /' "$f"
done
# --fail-on: the exit status says whether any error or warning was emitted;
# informational tags are printed but pass.
rc=0
lintian --fail-on error,warning --display-info --tag-display-limit 0 "${debs[@]}" || rc=$?
[ "$rc" -eq 0 ] || fail "lintian reports errors or warnings (above)"
echo "lintian test: no errors or warnings: passed"
