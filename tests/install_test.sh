#!/usr/bin/env bash
# Installs the build tree into a temporary prefix and uses it the way a user
# would: checks the installed files, builds examples/ out of tree with
# find_package(libshm) and runs counter_demo, and compiles a program with
# pkg-config. Run by CTest (tests/CMakeLists.txt), which passes:
#
#   CMAKE CXX GENERATOR BUILD_TYPE   the tools and settings of this build
#   VERSION                          the project's version
#   BUILD_DIR SOURCE_DIR             the build tree to install, the sources
#   LIBDIR BINDIR INCLUDEDIR DOCDIR  GNUInstallDirs' relative directories
#   UNIT_DIR                         SHM_SYSTEMD_UNIT_DIR ("" without tools)
#   EXPECT_SHMCTL EXPECT_SHMD        1 when the build has that program
#   SAN_CXXFLAGS SAN_LDFLAGS         this build's sanitizer (and warning)
#                                    flags: an ASan-built libshm.a only links
#                                    into programs built with them
#   PYTHON PYTHON_DIR SANITIZE       with the Python package: its interpreter,
#                                    its install directory under the prefix
#                                    (SHM_PYTHON_INSTALL_DIR) and SHM_SANITIZE
#                                    (a sanitized extension is not imported)
set -euo pipefail

fail() { echo "install test: FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }

for v in CMAKE CXX GENERATOR VERSION BUILD_DIR SOURCE_DIR LIBDIR BINDIR INCLUDEDIR DOCDIR; do
    [ -n "${!v:-}" ] || fail "$v is not set (run this through ctest)"
done
if [[ "${UNIT_DIR:-}" == /* ]]; then
    echo "install test: SHM_SYSTEMD_UNIT_DIR is absolute ($UNIT_DIR): installing would write outside the temporary prefix; skipped"
    exit 77
fi

if [[ "${BASH_COMPLETION_DIR:-}" == /* ]]; then
    echo "install test: SHM_BASH_COMPLETION_DIR is absolute ($BASH_COMPLETION_DIR): installing would write outside the temporary prefix; skipped"
    exit 77
fi

if [[ "${PYTHON_DIR:-}" == /* ]]; then
    echo "install test: SHM_PYTHON_INSTALL_DIR is absolute ($PYTHON_DIR): installing would write outside the temporary prefix; skipped"
    exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/libshm-install-test.XXXXXX")
shmdir=""
cleanup() {
    rm -rf "$tmp"
    [ -z "$shmdir" ] || rm -rf "$shmdir"
}
trap cleanup EXIT
prefix="$tmp/prefix"

step "cmake --install $BUILD_DIR --prefix $prefix"
"$CMAKE" --install "$BUILD_DIR" --prefix "$prefix" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log"; fail "cmake --install"; }

step "installed files"
expect() {
    [ -e "$prefix/$1" ] || fail "not installed: $1 (installed: $(cd "$prefix" && find . -type f | sort | tr '\n' ' '))"
    echo "  $1"
}
expect_exec() { expect "$1"; [ -x "$prefix/$1" ] || fail "not executable: $1"; }
expect "$INCLUDEDIR/shm/shm.hpp"
expect "$INCLUDEDIR/shm/admin.hpp"
if [ -e "$prefix/$LIBDIR/libshm.so" ]; then expect "$LIBDIR/libshm.so"; else expect "$LIBDIR/libshm.a"; fi
expect "$LIBDIR/cmake/libshm/libshmConfig.cmake"
expect "$LIBDIR/cmake/libshm/libshmConfigVersion.cmake"
expect "$LIBDIR/cmake/libshm/libshmTargets.cmake"
expect "$LIBDIR/cmake/shm/shmConfig.cmake"
expect "$LIBDIR/pkgconfig/shm.pc"
if [ "${EXPECT_SHMCTL:-0}" = 1 ]; then
    expect_exec "$BINDIR/shmctl"
    "$prefix/$BINDIR/shmctl" --version >/dev/null || fail "the installed shmctl does not run"
fi
[ "${EXPECT_SHMD:-0}" = 1 ] && expect_exec "$BINDIR/shmd"
if [ "${EXPECT_MAN:-0}" = 1 ]; then
    expect "$MANDIR/man7/libshm.7"
    if [ "${EXPECT_SHMCTL:-0}" = 1 ]; then
        for page in man1/shmctl.1 man8/shmd.8 man5/shmd.conf.5; do expect "$MANDIR/$page"; done
    fi
fi
[ -n "${BASH_COMPLETION_DIR:-}" ] && expect "$BASH_COMPLETION_DIR/shmctl"
if [ -n "${UNIT_DIR:-}" ]; then
    for unit in shmd.service shmctl-gc.service shmctl-gc.timer; do expect "$UNIT_DIR/$unit"; done
    expect "$DOCDIR/shmd.conf.example"
    # ExecStart= names the programs in this prefix, given only at install time.
    grep -qxF "ExecStart=$prefix/$BINDIR/shmd" "$prefix/$UNIT_DIR/shmd.service" ||
        fail "shmd.service does not start $prefix/$BINDIR/shmd: $(grep ExecStart "$prefix/$UNIT_DIR/shmd.service")"
    grep -qxF "ExecStart=$prefix/$BINDIR/shmctl gc" "$prefix/$UNIT_DIR/shmctl-gc.service" ||
        fail "shmctl-gc.service does not start $prefix/$BINDIR/shmctl gc: $(grep ExecStart "$prefix/$UNIT_DIR/shmctl-gc.service")"
fi
if [ -n "${PYTHON:-}" ]; then
    for f in __init__.py queues.py synchronize.py managers.py _arena.py __init__.pyi py.typed; do
        expect "$PYTHON_DIR/libshm/$f"
    done
    core=$(cd "$prefix" && find "$PYTHON_DIR/libshm" -name '_core*.so')
    [ -n "$core" ] || fail "not installed: the extension $PYTHON_DIR/libshm/_core*.so"
    echo "  $core"
fi

# Segments of the programs run below go to a private directory, on the shm
# tmpfs when there is one, removed at the end.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    shmdir=$(mktemp -d /dev/shm/libshm-install-test.XXXXXX)
else
    shmdir="$tmp/shm"
    mkdir "$shmdir"
fi
export SHM_DIR="$shmdir"

if [ -n "${PYTHON:-}" ] && [ -z "${SANITIZE:-}" ]; then
    step "import libshm with PYTHONPATH=$prefix/$PYTHON_DIR ($PYTHON, SHM_DIR=$shmdir)"
    (cd "$tmp" && PYTHONPATH="$prefix/$PYTHON_DIR" "$PYTHON" - "$prefix" <<'PY') || fail "importing the installed package"
import os
import sys

import libshm

prefix = os.path.realpath(sys.argv[1])
where = os.path.realpath(libshm.__file__)
assert where.startswith(prefix + os.sep), f"libshm came from {where}, not from {prefix}"
q = libshm.Queue()
q.put({"item": [1, "two"]})
got = q.get(timeout=60)
assert got == {"item": [1, "two"]}, got
with libshm.Lock():
    pass
print(f"  libshm {libshm.__version__} from {where}: put and got {got!r}")
PY
    left=$(ls -A "$shmdir")
    [ -z "$left" ] || fail "the Python program left files in its shm directory: $left"
fi

step "examples/ built out of tree against the installed package"
build="$tmp/examples"
"$CMAKE" -S "$SOURCE_DIR/examples" -B "$build" -G "$GENERATOR" \
    -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-}" \
    -DCMAKE_CXX_FLAGS="${SAN_CXXFLAGS:-}" -DCMAKE_EXE_LINKER_FLAGS="${SAN_LDFLAGS:-}" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
    >"$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log"; fail "configuring examples/ against $prefix"; }
found=$(sed -n 's/^libshm_DIR:PATH=//p' "$build/CMakeCache.txt")
[ "$found" = "$prefix/$LIBDIR/cmake/libshm" ] ||
    fail "find_package(libshm) found '$found', not the package in $prefix/$LIBDIR/cmake/libshm"
echo "  find_package(libshm): $found"
"$CMAKE" --build "$build" -j 4 >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "building examples/"; }
if grep -i 'warning' "$tmp/build.log"; then fail "building examples/ out of tree printed warnings"; fi
[ -x "$build/counter_demo" ] || fail "no counter_demo in $build"
[ -x "$build/queue_demo" ] || fail "no queue_demo in $build"

step "counter_demo (SHM_DIR=$shmdir)"
timeout 120 "$build/counter_demo" >"$tmp/demo.log" 2>&1 || { cat "$tmp/demo.log"; fail "counter_demo"; }
tail -n 1 "$tmp/demo.log"
left=$(ls -A "$shmdir")
[ -z "$left" ] || fail "counter_demo left files in its shm directory: $left"

step "pkg-config --cflags --libs shm"
export PKG_CONFIG_PATH="$prefix/$LIBDIR/pkgconfig"
flags=$(pkg-config --cflags --libs shm) || fail "pkg-config does not find shm in $PKG_CONFIG_PATH"
echo "  $flags"
[ "$(pkg-config --modversion shm)" = "$VERSION" ] ||
    fail "shm.pc says version $(pkg-config --modversion shm), the project is $VERSION"
cflags=$(pkg-config --cflags shm)
includes=$(cd "$prefix/$INCLUDEDIR" && pwd -P)
seen=""
for f in $cflags; do
    case "$f" in -I*) [ "$(cd "${f#-I}" 2>/dev/null && pwd -P)" = "$includes" ] && seen=1 ;; esac
done
[ -n "$seen" ] || fail "pkg-config --cflags shm ($cflags) does not point at $prefix/$INCLUDEDIR"
cat >"$tmp/hello.cpp" <<'CPP'
#include <shm/shm.hpp>

#include <cstdio>
#include <mutex>

int main() {
    shm::Segment seg = shm::Segment::create("pkg-config-test", 1 << 20);
    shm::Mutex& lock = seg.find_or_construct<shm::Mutex>("lock");
    std::lock_guard<shm::Mutex> g(lock);
    std::printf("ok\n");
}
CPP
# shellcheck disable=SC2086  # the flags are words
"$CXX" -std=c++17 ${SAN_CXXFLAGS:-} "$tmp/hello.cpp" -o "$tmp/hello" $flags ${SAN_LDFLAGS:-} ||
    fail "compiling with pkg-config's flags"
[ "$("$tmp/hello")" = ok ] || fail "the program built with pkg-config's flags did not run"
left=$(ls -A "$shmdir")
[ -z "$left" ] || fail "the pkg-config program left files in its shm directory: $left"

echo "install test: passed"
