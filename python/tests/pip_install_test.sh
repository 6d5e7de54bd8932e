#!/usr/bin/env bash
# pip install ./python, as docs/python.md says, into a new virtual environment
# and without the network (--no-index), then the installed package used
# from outside the source tree, then pip uninstall. Also: python/setup.py
# on its own (not in a checkout) refuses with a clear message.
#
#   pip_install_test.sh PYTHON SOURCE_DIR
#
# Run by CTest (python/CMakeLists.txt); CMAKE_ARGS in the environment reaches
# the package's CMake build (the compiler and launcher of this build).
set -euo pipefail

fail() { echo "pip install test: FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }

python=${1:?usage: pip_install_test.sh PYTHON SOURCE_DIR}
source_dir=$(cd "${2:?usage: pip_install_test.sh PYTHON SOURCE_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
unset PYTHONPATH

tmp=$(mktemp -d "${TMPDIR:-/tmp}/libshm-pip-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
venv="$tmp/venv"

step "$python -m venv --system-site-packages $venv"
"$python" -m venv --system-site-packages "$venv" || fail "making the virtual environment (Debian: python3-venv)"

step "pip install --no-index ./python (in $source_dir)"
cd "$source_dir"
before=$(ls -A python)
"$venv/bin/pip" install --no-index -v ./python >"$tmp/pip.log" 2>&1 ||
    { cat "$tmp/pip.log"; fail "pip install --no-index ./python"; }
grep -E 'Successfully installed libshm-' "$tmp/pip.log" || { cat "$tmp/pip.log"; fail "pip did not install libshm"; }
if grep -E ': warning: |CMake Warning|Warning: ' "$tmp/pip.log"; then fail "the build printed warnings (log: above)"; fi
after=$(ls -A python)
[ "$before" = "$after" ] || fail "the build left files in python/: $(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ')"

step "import libshm from the virtual environment, outside the tree"
mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
"$here/run_private.sh" "$venv/bin/python" - "$venv" <<'PY' || fail "using the installed package"
import os
import sys

import libshm

venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(libshm.__file__)
assert where.startswith(venv + os.sep), f"libshm came from {where}, not from {venv}"
package = os.path.dirname(where)
for name in ("__init__.pyi", "queues.pyi", "synchronize.pyi", "managers.pyi", "py.typed"):
    assert os.path.exists(os.path.join(package, name)), f"{name} is not installed in {package}"
q = libshm.Queue()
q.put({"item": [1, "two"]})
got = q.get(timeout=60)
assert got == {"item": [1, "two"]}, got
print(f"  libshm {libshm.__version__} from {where}: put and got {got!r}")
PY

step "pip uninstall libshm"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
"$venv/bin/pip" uninstall -y libshm >"$tmp/uninstall.log" 2>&1 || { cat "$tmp/uninstall.log"; fail "pip uninstall"; }
[ ! -e "$site/libshm" ] || fail "pip uninstall left $(cd "$site" && find libshm | tr '\n' ' ')"

step "python/setup.py outside a libshm checkout"
mkdir "$tmp/lone"
cp "$source_dir/python/setup.py" "$tmp/lone/"
cd "$tmp/lone"
if "$venv/bin/python" setup.py --version >"$tmp/lone.log" 2>&1; then
    cat "$tmp/lone.log"
    fail "setup.py ran outside a checkout"
fi
grep -q "is not the python/ directory of a libshm checkout" "$tmp/lone.log" ||
    { cat "$tmp/lone.log"; fail "setup.py outside a checkout failed without saying why"; }
sed 's/^/  /' "$tmp/lone.log"

echo "pip install test: passed"
