"""pip install ./python: the libshm package, built by CMake from this checkout.

There is deliberately no pyproject.toml: with one, pip (23.0, Debian 12's)
builds in an isolated environment and downloads setuptools into it, which
fails offline. Without one, pip uses the setuptools and wheel already
installed (python3-setuptools and python3-wheel on Debian), so

    pip install ./python

needs no network. build_ext configures the repository (the parent of this
directory) with CMake for the interpreter running this script, builds the
library and the extension (target python_package: _core and the .py, .pyi
and py.typed files beside it, as in a build tree's python/libshm) in a
temporary directory, and copies that package into the wheel. Extra CMake
arguments can be given in the CMAKE_ARGS environment variable (for example
-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); CMAKE_BUILD_PARALLEL_LEVEL sets the
number of compile jobs (all CPUs otherwise).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.develop import develop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _project_version():
    """The version in the top-level CMakeLists.txt, refusing to go on
    outside a libshm checkout (this directory copied on its own, or an
    sdist: the package is built from the C++ sources next to it)."""
    top = ROOT / "CMakeLists.txt"
    ok = (top.is_file() and (ROOT / "libshm" / "include" / "shm" / "shm.hpp").is_file()
          and (HERE / "CMakeLists.txt").is_file())
    m = re.search(r"project\(\s*libshm\s+VERSION\s+([0-9.]+)", top.read_text()) if ok else None
    if not m:
        sys.exit(f"libshm: {HERE} is not the python/ directory of a libshm checkout: the package "
                 f"is built from the C++ sources in its parent directory ({ROOT}), which are not "
                 "there. Run pip install ./python from a complete libshm source tree.")
    return m.group(1)


# Building the wheel (what pip does) runs setuptools' install command into
# the wheel's directory, and setuptools warns about that as if "setup.py
# install" had been typed; silenced for the wheel only.
if "bdist_wheel" in sys.argv[1:]:
    warnings.filterwarnings("ignore", message="setup.py install is deprecated")

# setuptools' own build directories (build/, libshm.egg-info/) go to a
# temporary directory rather than into the source tree, which pip builds in.
_scratch = tempfile.TemporaryDirectory(prefix="libshm-setup-")


_NO_EDITABLE = ("libshm: an editable install (pip install -e, setup.py develop, build_ext --inplace) is "
                "not supported: the package is assembled by CMake. Work from a build tree instead "
                "(PYTHONPATH=build/release/python after ./dev build).")


class CMakeBuild(build_ext):
    """Builds libshm._core with the project's CMake build and places the
    whole package (the extension and the pure-Python files) in build_lib."""

    def run(self):
        if self.inplace:
            sys.exit(_NO_EDITABLE)
        cmake = shutil.which("cmake")
        if cmake is None:
            sys.exit("libshm: building the package needs cmake (Debian: apt-get install cmake)")
        with tempfile.TemporaryDirectory(prefix="libshm-cmake-") as build:
            configure = [
                cmake, "-S", str(ROOT), "-B", build,
                "-DCMAKE_BUILD_TYPE=Release",
                "-DSHM_BUILD_TESTS=OFF", "-DSHM_BUILD_TOOLS=OFF", "-DSHM_BUILD_EXAMPLES=OFF",
                "-DSHM_BUILD_BENCH=OFF", "-DSHM_BUILD_PYTHON=ON",
                f"-DSHM_PYTHON={sys.executable}",
            ] + shlex.split(os.environ.get("CMAKE_ARGS", ""))
            compile_ = [cmake, "--build", build, "--target", "python_package"]
            if not os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL"):
                compile_ += ["--parallel", str(os.cpu_count() or 1)]
            for cmd in (configure, compile_):
                print(" ".join(shlex.quote(c) for c in cmd), flush=True)
                subprocess.run(cmd, check=True)
            self._place(Path(build) / "python" / "libshm")

    def _place(self, package):
        dest = Path(self.build_lib) / "libshm"
        dest.mkdir(parents=True, exist_ok=True)
        for name in sorted(p.name for p in package.iterdir()):
            shutil.copy2(package / name, dest / name)
            print(f"copied {name} -> {dest}", flush=True)

    def get_outputs(self):
        # Every file placed in build_lib, so that an install records them all
        # (and pip uninstall removes them all).
        outputs = super().get_outputs()
        dest = Path(self.build_lib) / "libshm"
        for pattern in ("*.py", "*.pyi", "py.typed"):
            outputs += [str(dest / p.name) for p in sorted((HERE / "libshm").glob(pattern))]
        # libshm._remote, when the build made it (the NATS C client found).
        outputs += [str(p) for p in sorted(dest.glob("_remote*.so"))]
        return outputs


class NoDevelop(develop):
    def run(self):
        sys.exit(_NO_EDITABLE)


setup(
    name="libshm",
    version=_project_version(),
    description="multiprocessing's Queue, locks, Barrier and Manager dict/list in shared memory, "
                "safe against killed processes",
    python_requires=">=3.8",
    # The package comes whole from the CMake build (see CMakeBuild): no
    # packages= here, one extension standing for it.
    ext_modules=[Extension("libshm._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild, "develop": NoDevelop},
    zip_safe=False,
    options={
        "build": {"build_base": os.path.join(_scratch.name, "build")},
        "egg_info": {"egg_base": _scratch.name},
    },
)
