"""A worker killed in the middle of a map, under three pools.

Task 3 kills its own worker (SIGKILL, as the OOM killer would) the first
time it runs. multiprocessing.Pool waits forever for the lost task (here
for 5 seconds, then we give up); concurrent.futures.ProcessPoolExecutor
declares the pool broken and fails every pending task; libshm.Pool runs
task 3 again on a fresh worker, and the map completes.

    PYTHONPATH=build/release/python /usr/bin/python3 examples/pool_killed_worker.py
"""

import concurrent.futures
import functools
import multiprocessing
import os
import signal
import sys
import tempfile
import time

import libshm


def task(flag_dir, x):
    flag = os.path.join(flag_dir, "killed-once")
    if x == 3 and not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)
    return x * x


def with_multiprocessing(fn):
    pool = multiprocessing.Pool(4)
    try:
        return pool.map_async(fn, range(10)).get(timeout=5)
    except multiprocessing.TimeoutError:
        return "still waiting after 5 s: the task is lost, map() never returns"
    finally:
        pool.terminate()


def with_executor(fn):
    with concurrent.futures.ProcessPoolExecutor(4) as ex:
        try:
            return list(ex.map(fn, range(10)))
        except concurrent.futures.process.BrokenProcessPool as e:
            return f"BrokenProcessPool: {e}"


def with_libshm(fn):
    with libshm.Pool(4) as pool:
        return pool.map(fn, range(10))


def main():
    for name, run in [("multiprocessing.Pool", with_multiprocessing),
                      ("ProcessPoolExecutor", with_executor),
                      ("libshm.Pool", with_libshm)]:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.monotonic()
            out = run(functools.partial(task, d))
            print(f"{name:22} {time.monotonic() - t0:5.1f} s  {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
