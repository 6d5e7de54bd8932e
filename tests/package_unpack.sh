#!/usr/bin/env bash
# Unpacks the built Debian packages into a scratch root (dpkg-deb -x) and
# uses them from there: checks what each package holds, runs shmctl and
# shmd, imports the Python module, and builds and runs a program against
# libshm-dev's files with find_package(libshm), find_package(shm) and
# pkg-config. Run by CTest (tests/CMakeLists.txt), which passes:
#
#   DEB_DIR               the built packages (package.build makes them)
#   CMAKE CXX GENERATOR   the tools of this build
#   VERSION               the project's version
#   PYTHON                the interpreter python3-libshm is built for
set -euo pipefail

fail() { echo "unpack test: FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }
for v in DEB_DIR CMAKE CXX GENERATOR VERSION PYTHON; do
    [ -n "${!v:-}" ] || fail "$v is not set (run this through ctest)"
done
command -v dpkg-deb >/dev/null ||
    { echo "unpack test: dpkg-deb not found (Debian package dpkg); skipped"; exit 77; }
deb() {
    local f
    f=$(ls "$DEB_DIR/$1"_*.deb 2>/dev/null | head -n 1)
    [ -n "$f" ] || { echo "unpack test: no $1 package in $DEB_DIR (package.build makes them); skipped"; exit 77; }
    echo "$f"
}
lib=$(deb libshm0) remote=$(deb libshm-remote0) dev=$(deb libshm-dev) tools=$(deb shmd) py=$(deb python3-libshm)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/libshm-unpack-test.XXXXXX")
shmdir=""
cleanup() {
    rm -rf "$tmp"
    [ -z "$shmdir" ] || rm -rf "$shmdir"
}
trap cleanup EXIT
root="$tmp/root"

step "versions"
for f in "$lib" "$remote" "$dev" "$tools" "$py"; do
    v=$(dpkg-deb -f "$f" Version)
    [ "${v%%-*}" = "$VERSION" ] || fail "$(basename "$f") is version $v, the project $VERSION"
done
echo "  $VERSION"

step "dpkg-deb -x into $root"
for f in "$lib" "$remote" "$dev" "$tools" "$py"; do dpkg-deb -x "$f" "$root"; done

# has PACKAGE PATTERN: the package holds a file matching the pattern.
has() {
    dpkg-deb -c "$1" | awk '{ print $6 }' | grep -qE "$2" ||
        fail "$(basename "$1") holds no file matching $2"
    echo "  $(dpkg-deb -f "$1" Package): $2"
}
step "contents"
has "$lib" '^\./usr/lib/[^/]+/libshm\.so\.[0-9]+$'
has "$dev" '^\./usr/lib/[^/]+/libshm\.so$'
has "$remote" '^\./usr/lib/[^/]+/libshm_remote\.so\.[0-9]+$'
has "$dev" '^\./usr/lib/[^/]+/libshm_remote\.so$'
has "$dev" '^\./usr/include/shm/remote\.hpp$'
if dpkg-deb -c "$remote" | awk '{ print $6 }' | grep -vE '^\./usr/(lib/[^/]+/libshm_remote\.so\.|share/doc/libshm-remote0/)' | grep -v '/$'; then
    fail "libshm-remote0 holds more than the library (above)"
fi
has "$dev" '^\./usr/include/shm/shm\.hpp$'
has "$dev" '^\./usr/lib/[^/]+/cmake/libshm/libshmConfig\.cmake$'
has "$dev" '^\./usr/lib/[^/]+/cmake/shm/shmConfig\.cmake$'
has "$dev" '^\./usr/lib/[^/]+/pkgconfig/shm\.pc$'
has "$tools" '^\./usr/bin/shmctl$'
has "$tools" '^\./usr/bin/shmd$'
has "$tools" '^\./lib/systemd/system/shmd\.service$'
has "$tools" '^\./lib/systemd/system/shmctl-gc\.timer$'
has "$tools" '^\./etc/shmd\.conf$'
has "$py" '^\./usr/lib/python3/dist-packages/libshm/__init__\.py$'
has "$py" '^\./usr/lib/python3/dist-packages/libshm/_core\..*\.so$'
if dpkg-deb -c "$lib" | awk '{ print $6 }' | grep -vE '^\./usr/(lib/[^/]+/libshm\.so\.|share/doc/libshm0/)' | grep -v '/$'; then
    fail "libshm0 holds more than the library (above)"
fi
grep -qx "ExecStart=/usr/bin/shmd" "$root/lib/systemd/system/shmd.service" ||
    fail "shmd.service does not start /usr/bin/shmd: $(grep ExecStart "$root/lib/systemd/system/shmd.service")"

step "maintainer scripts of shmd"
dpkg-deb -e "$tools" "$tmp/control"
grep -qx /etc/shmd.conf "$tmp/control/conffiles" || fail "/etc/shmd.conf is not a conffile"
echo "  conffile: /etc/shmd.conf"
for unit in shmd.service shmctl-gc.timer; do
    grep -q "deb-systemd-helper enable '$unit'" "$tmp/control/postinst" || fail "postinst does not enable $unit"
    # Started on install, restarted on upgrade: deb-systemd-invoke $_dh_action.
    grep -q "deb-systemd-invoke .*'$unit'" "$tmp/control/postinst" && grep -q "_dh_action=start" "$tmp/control/postinst" ||
        fail "postinst does not start $unit"
    grep -q "deb-systemd-invoke stop.*$unit" "$tmp/control/prerm" || fail "prerm does not stop $unit"
    echo "  $unit: enabled and started on install, stopped on removal"
done
grep -q "deb-systemd-helper purge" "$tmp/control/postrm" || fail "postrm does not purge the units' state"

libdir=$(dirname "$(find "$root/usr/lib" -name 'libshm.so.[0-9]*' | head -n 1)")
export LD_LIBRARY_PATH="$libdir"
# Segments of the programs run below go to a private directory, and no
# program talks to a shmd of this machine.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    shmdir=$(mktemp -d /dev/shm/libshm-unpack-test.XXXXXX)
else
    shmdir="$tmp/shm"
    mkdir "$shmdir"
fi
export SHM_DIR="$shmdir" SHM_DAEMON=off

step "the programs (LD_LIBRARY_PATH=$libdir)"
uses_ours() { # PROGRAM: it loads libshm.so.N from the scratch root
    local got
    got=$(ldd "$1" | awk '/libshm\.so/ { print $3 }')
    [ "$(dirname "$got")" = "$libdir" ] || fail "$1 loads libshm from '$got', not from $libdir"
}
uses_ours "$root/usr/bin/shmctl"
uses_ours "$root/usr/bin/shmd"
out=$("$root/usr/bin/shmctl" --version) || fail "shmctl --version"
[[ "$out" == *"$VERSION"* ]] || fail "shmctl --version says '$out', not $VERSION"
echo "  shmctl --version: $out"
"$root/usr/bin/shmd" --help >"$tmp/help" || fail "shmd --help"
grep -q -- --socket "$tmp/help" || fail "shmd --help does not list --socket"
echo "  shmd --help: $(wc -l <"$tmp/help") lines"
"$root/usr/bin/shmctl" ls >/dev/null || fail "shmctl ls"

step "import libshm ($PYTHON, PYTHONPATH=$root/usr/lib/python3/dist-packages)"
(cd "$tmp" && PYTHONPATH="$root/usr/lib/python3/dist-packages" "$PYTHON" - "$root" <<'PY') || fail "importing the packaged module"
import os
import sys

import libshm

root = os.path.realpath(sys.argv[1])
where = os.path.realpath(libshm.__file__)
assert where.startswith(root + os.sep), f"libshm came from {where}, not from {root}"
q = libshm.Queue()
q.put([1, "two"])
got = q.get(timeout=60)
assert got == [1, "two"], got
print(f"  libshm {libshm.__version__} from {where}: put and got {got!r}")
PY

cat >"$tmp/hello.cpp" <<'CPP'
#include <shm/shm.hpp>

#include <cstdio>
#include <mutex>

int main() {
    shm::Segment seg = shm::Segment::create("unpack-test", 1 << 20);
    shm::Mutex& lock = seg.find_or_construct<shm::Mutex>("lock");
    std::lock_guard<shm::Mutex> g(lock);
    std::printf("ok\n");
}
CPP
for name in libshm shm; do
    step "find_package($name) from the scratch root"
    mkdir -p "$tmp/cm-$name"
    cat >"$tmp/cm-$name/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.20)
project(unpack_test LANGUAGES CXX)
find_package($name REQUIRED)
add_executable(hello "$tmp/hello.cpp")
target_link_libraries(hello PRIVATE shm::shm)
CM
    "$CMAKE" -S "$tmp/cm-$name" -B "$tmp/cm-$name/build" -G "$GENERATOR" -DCMAKE_CXX_COMPILER="$CXX" \
        -DCMAKE_PREFIX_PATH="$root/usr" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF \
        >"$tmp/cm-$name.log" 2>&1 || { cat "$tmp/cm-$name.log"; fail "configuring with find_package($name)"; }
    found=$(sed -n "s/^${name}_DIR:PATH=//p" "$tmp/cm-$name/build/CMakeCache.txt")
    [[ "$found" == "$root/usr/lib/"*"/cmake/$name" ]] || fail "find_package($name) found '$found', not the package in $root"
    echo "  ${name}_DIR: $found"
    "$CMAKE" --build "$tmp/cm-$name/build" >"$tmp/cm-$name.log" 2>&1 || { cat "$tmp/cm-$name.log"; fail "building with find_package($name)"; }
    uses_ours "$tmp/cm-$name/build/hello"
    [ "$("$tmp/cm-$name/build/hello")" = ok ] || fail "the program built with find_package($name) did not run"
    echo "  built and ran"
done

step "pkg-config shm from the scratch root"
export PKG_CONFIG_PATH="$libdir/pkgconfig" PKG_CONFIG_LIBDIR="$libdir/pkgconfig"
flags=$(pkg-config --cflags --libs shm) || fail "pkg-config does not find shm in $PKG_CONFIG_PATH"
echo "  $flags"
[ "$(pkg-config --modversion shm)" = "$VERSION" ] || fail "shm.pc says version $(pkg-config --modversion shm), not $VERSION"
seen=""
for f in $flags; do
    case "$f" in -I*) [ "$(cd "${f#-I}" 2>/dev/null && pwd -P)" = "$(cd "$root/usr/include" && pwd -P)" ] && seen=1 ;; esac
done
[ -n "$seen" ] || fail "pkg-config --cflags shm does not point at $root/usr/include"
# shellcheck disable=SC2086  # the flags are words
"$CXX" -std=c++17 "$tmp/hello.cpp" -o "$tmp/hello-pc" $flags || fail "compiling with pkg-config's flags"
uses_ours "$tmp/hello-pc"
[ "$("$tmp/hello-pc")" = ok ] || fail "the program built with pkg-config's flags did not run"
echo "  built and ran"
left=$(ls -A "$shmdir")
[ -z "$left" ] || fail "the programs left files in their shm directory: $left"
echo "unpack test: passed"
