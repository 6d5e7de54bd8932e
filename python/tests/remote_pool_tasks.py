"""The tasks of test_remote_pool.py: in a module of their own, so that a
worker started by `python3 -m libshm.remote_pool` (not a child of the test)
can import them, as a worker on another host imports a program's."""

import os
import signal
import time


def square(x):
    return x * x


def add(a, b):
    return a + b


def fail_on_three(x):
    if x == 3:
        raise ValueError("three is refused")
    return x


def whoami(_):
    return os.getpid()


def kill_once(args):
    """Kill the worker the first time (the marker file does not exist yet),
    in the middle of the task; return x when run again."""
    x, marker = args
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return x
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


def always_kill(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def slow(x):
    """Longer than the lease the tests give: its worker must renew it."""
    time.sleep(2.5)
    return x


def unpicklable_result(x):
    return lambda: x
