"""The type stubs (libshm/*.pyi) against mypy and against the package.

    check_typing.py PACKAGE_DIR

PACKAGE_DIR is a built package (a build tree's python/libshm). With mypy
(Debian: python3-mypy) this checks that

- mypy.stubtest finds the stubs consistent with the package at run time
  (every public name, argument and default);
- typing_example.py passes mypy --strict, and runs;
- typing_errors.py gets from mypy --strict exactly the errors its lines
  marked "# error: <text>" expect.

Without mypy it exits 77 (CTest's skip). Run by CTest inside
run_private.sh, so anything the example makes goes to a private SHM_DIR.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, env):
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout, end="", flush=True)
    return proc


def main():
    package = os.path.abspath(sys.argv[1])
    try:
        import mypy  # noqa: F401
    except ImportError:
        print("check_typing: mypy is not installed (Debian: python3-mypy); skipped")
        return 77

    failures = []
    with tempfile.TemporaryDirectory(prefix="libshm-typing-") as tmp:
        # The stubs alone, as a type checker sees the package; the package
        # itself (with the extension) for what runs.
        stubs = os.path.join(tmp, "stubs", "libshm")
        os.makedirs(stubs)
        names = [n for n in sorted(os.listdir(package)) if n.endswith(".pyi") or n == "py.typed"]
        if "py.typed" not in names or "__init__.pyi" not in names:
            print(f"check_typing: {package} has no py.typed or __init__.pyi")
            return 1
        for n in names:
            shutil.copy(os.path.join(package, n), stubs)
        env = dict(os.environ, MYPYPATH=os.path.dirname(stubs),
                   PYTHONPATH=os.pathsep.join([os.path.dirname(package), HERE]))
        mypy = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", os.devnull]
        os.chdir(tmp)

        proc = run([sys.executable, "-m", "mypy.stubtest", "--concise", "libshm"], env)
        if proc.returncode != 0 or proc.stdout.strip():
            failures.append("stubtest: the stubs differ from the package")

        example = os.path.join(HERE, "typing_example.py")
        if run(mypy + [example], env).returncode != 0:
            failures.append("typing_example.py does not pass mypy --strict")
        if run([sys.executable, example], env).returncode != 0:
            failures.append("typing_example.py failed when run")

        wrong = os.path.join(HERE, "typing_errors.py")
        expected = {}
        with open(wrong) as f:
            for number, line in enumerate(f, 1):
                m = re.search(r"#\s*error:\s*(.+)$", line)
                if m:
                    expected[number] = m.group(1).strip()
        proc = run(mypy + [wrong], env)
        reported = {}
        for line in proc.stdout.splitlines():
            m = re.match(r"(.*?):(\d+): error: (.*)", line)
            if m and os.path.basename(m.group(1)) == "typing_errors.py":
                reported.setdefault(int(m.group(2)), []).append(m.group(3))
            elif m:
                failures.append(f"an error outside typing_errors.py: {line}")
        if proc.returncode != 1:
            failures.append(f"mypy exited {proc.returncode} on typing_errors.py, not 1")
        for number, text in sorted(expected.items()):
            if not any(text in r for r in reported.get(number, [])):
                failures.append(f"typing_errors.py:{number}: no error with {text!r}")
        for number in sorted(set(reported) - set(expected)):
            failures.append(f"typing_errors.py:{number}: unexpected error {reported[number]}")

    for f in failures:
        print("check_typing: FAILED:", f)
    if not failures:
        print(f"check_typing: passed ({len(expected)} wrong calls reported)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
