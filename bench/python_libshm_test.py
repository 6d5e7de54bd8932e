#!/usr/bin/env python3
"""The unit test of bench/python_libshm.py's SIGTERM handling. The script
turns SIGTERM into sys.exit(1), so that a time-out still empties its private
shm directory; a process it forks must die of SIGTERM all the same, or
multiprocessing.Pool.terminate() waits for ever on a worker that lived on.
Checks, in a child interpreter that sets the script up as it does: a forked
child dies of SIGTERM (exit code -15), also when the signal comes at once,
while the child runs its at-fork hooks (many times); pools of two workers
are terminated straight after their map; and the script's own process
still leaves through sys.exit(1) with its shm directory removed. It
measures nothing; each wait has a generous cap that only a hang reaches."""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = textwrap.dedent("""
    import multiprocessing as mp, os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    import python_libshm
    python_libshm.private_shm_dir()
    mp.set_start_method("fork")
    print("dir", os.environ["SHM_DIR"], flush=True)

    p = mp.Process(target=time.sleep, args=(120,))
    p.start()
    time.sleep(0.2)
    p.terminate()
    p.join(60)
    print("settled", p.exitcode, flush=True)

    codes = []
    for _ in range(100):
        p = mp.Process(target=time.sleep, args=(120,))
        p.start()
        p.terminate()
        p.join(30)
        codes.append(p.exitcode)
        if p.exitcode is None:  # lived on: no need to wait for more
            p.kill()
            break
    print("at once", sorted(set(codes), key=str), flush=True)

    def identity(x):
        return x

    for _ in range(50):
        pool = mp.Pool(2)
        pool.map(identity, range(1000))
        pool.terminate()
        pool.join()
    print("pools done", flush=True)
    print("waiting", flush=True)
    time.sleep(120)
""")


def main():
    failures = []

    def check(ok, what):
        if not ok:
            failures.append(what)
            print(f"FAILED: {what}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="libshm-pybench-test.", dir="/dev/shm") as base:
        env = dict(os.environ, SHM_DIR=base)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, HERE], stdout=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        # The cap on a hang: the whole group killed, the output ends, and
        # the checks below fail on what is missing.
        def kill_group():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        watchdog = threading.Timer(240, kill_group)
        watchdog.start()
        lines = {}
        try:
            for line in proc.stdout:
                key, _, value = line.rstrip("\n").partition(" ")
                if key == "at":  # "at once ..."
                    key, value = "at once", value.partition(" ")[2]
                elif key == "pools":
                    key = "pools done"
                lines[key] = value
                print(line, end="")
                if key == "waiting":
                    proc.send_signal(signal.SIGTERM)
                    break
            rc = proc.wait(timeout=60)
        finally:
            watchdog.cancel()
            kill_group()  # whatever is left of it (a hang's workers too)
            proc.wait()
        check(lines.get("settled") == str(-signal.SIGTERM),
              f"a forked child ends with -SIGTERM after terminate(), not {lines.get('settled')}")
        check(lines.get("at once") == f"[{-signal.SIGTERM}]",
              f"a child SIGTERMed straight after its start always ends with -SIGTERM: {lines.get('at once')}")
        check("pools done" in lines, "50 multiprocessing pools terminated after their map")
        check(rc == 1, f"the script's own process leaves through sys.exit(1) on SIGTERM, not {rc}")
        d = lines.get("dir")
        check(d is not None and not os.path.exists(d), f"its private shm directory {d} is removed")
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
