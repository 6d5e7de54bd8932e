#!/usr/bin/env python3
"""libshm's Python package next to multiprocessing and the floors (cases py.*).

bench/run.py runs it with the interpreter the package is built for (Debian's
/usr/bin/python3) and PYTHONPATH=<build>/python. It works in a private shm
directory of its own (SHM_DIR, a new directory under $SHM_DIR or /dev/shm),
removed at the end; a file left in it fails the run.

Cases, and their implementations (impl):

  py.queue.1to1.bytes64  items/s: one producer process puts 64-byte bytes
                         items, one consumer process gets them
      libshm             libshm.Queue(maxsize=1024), put() / get()
      python_mp_queue    multiprocessing.Queue(maxsize=1024), put() / get()
      noop_call_floor    the same two loops calling a C function that does
                         nothing (libshm._core._noop): what the Python loop
                         and one call cost, without any binding
  py.queue.1to1.pyobj    items/s: the same with the tuple (1, "abc", 2.5)
      libshm, python_mp_queue   as above (both pickle it)
      pickle_floor       the pickling alone: one process running the same
                         loop over pickle.loads(pickle.dumps(item))
      pickle_split_floor the same two loops, the producer calling
                         pickle.dumps(item), the consumer pickle.loads() on
                         its pickle: the pickling alone, in parallel as a
                         queue between two processes can do it
  py.dict.get            ops/s, one process: d[k] over the keys k0 .. k999
  py.dict.set            ops/s, one process: d[k] = n over the same keys
      libshm             libshm.dict()
      python_manager     multiprocessing.Manager().dict()
      python_dict        a plain dict (the floor)
  py.lock                ns per acquire() + release() pair, one process
      libshm             libshm.Lock()
      python_mp_lock     multiprocessing.Lock()

Every figure is timed by count: an implementation first runs untimed
warm-up passes of 1024 items or pairs (1000 operations for the dict, one
pass over its keys), doubling the count until the warm-up time is spent;
the last pass gives its rate, from which the measured count (a multiple of
that unit, about --seconds worth) is set; that count is run once and timed
with CLOCK_MONOTONIC read at its start and end, never in between. The
two-process cases fork the producer and the consumer once, and tell them
each count through a pipe (the consumer first, so that it waits in get());
the time is from the earlier start to the later end. Every 1024th item
carries its number and the consumer checks it, so items lost, doubled or
out of order fail the run, as does a queue left non-empty; the dict and
lock cases check the dict's values and that the lock is free.

Prints one JSON object a line, as every benchmark program does (run.py):
{"bench": CASE, "impl": IMPL, "value": NUMBER, "unit": UNIT, "note": HOW}.
"""

import argparse
import atexit
import functools
import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time

CASES = ["py.queue.1to1.bytes64", "py.queue.1to1.pyobj", "py.dict.get", "py.dict.set", "py.lock",
         "py.pool.map.tiny.c1", "py.pool.map.tiny.default"]
BLOCK = 1024                 # items between two checked ones; every count is a multiple
INNER = range(BLOCK - 1)
CAPACITY = 1024              # the queues' maxsize, as in the C++ queue cases
KEYS = [f"k{i}" for i in range(1000)]
MAX_COUNT = 1 << 26          # no measured run is longer, however fast the machine
PILOTS = 40                  # warm-up passes at most

monotonic = time.monotonic

# The items: BLOCK - 1 copies of the filler, then a numbered one.
MIDDLE = bytes(97 + i % 26 for i in range(56))
BYTES_FILLER = b"\xff" * 8 + MIDDLE


def bytes_mark(j, _pack=struct.Struct("<Q").pack, _middle=MIDDLE):
    return _pack(j) + _middle


OBJ_FILLER = (1, "abc", 2.5)


def obj_mark(j):
    return (j + 2, "abc", 2.5)


def produce(first, blocks, put, filler, mark):
    inner = INNER
    for j in range(first, first + blocks):
        for _ in inner:
            put(filler)
        put(mark(j))


def consume(first, blocks, get, mark):
    inner = INNER
    for j in range(first, first + blocks):
        for _ in inner:
            get()
        if get() != mark(j):
            raise RuntimeError(f"item {j * BLOCK + BLOCK - 1} is not the one put there: lost, doubled or reordered")


def pickle_round_trips(first, blocks, filler, mark, dumps=pickle.dumps, loads=pickle.loads):
    inner = INNER
    for j in range(first, first + blocks):
        for _ in inner:
            loads(dumps(filler))
        if loads(dumps(mark(j))) != mark(j):
            raise RuntimeError("pickle.loads(pickle.dumps(x)) != x")


def _worker(conn, loop, *args):
    """A producer or a consumer: runs `loop` for each count the parent sends
    and answers (start, end, error)."""
    try:
        first = 0
        while True:
            n = conn.recv()
            if n is None:
                return
            blocks = n // BLOCK
            t0 = monotonic()
            loop(first, blocks, *args)
            t1 = monotonic()
            conn.send((t0, t1, None))
            first += blocks
    except Exception as e:  # reported by the parent
        conn.send((0.0, 0.0, f"{type(e).__name__}: {e}"))


class Pair:
    """A consumer and a producer process, forked once, each running as many
    items as the parent asks at a time."""

    def __init__(self, consumer_args, producer_args, seconds):
        self.timeout = 30 + 4 * seconds
        self.conns, self.procs = [], []
        try:
            for loop, args in ((consume, consumer_args), (produce, producer_args)):
                mine, theirs = mp.Pipe()
                p = mp.Process(target=_worker, args=(theirs, loop) + args, daemon=True)
                p.start()
                theirs.close()
                self.conns.append(mine)
                self.procs.append(p)
        except BaseException:
            self.close()
            raise

    def run(self, n):
        for c in self.conns:  # the consumer first: it waits in get()
            c.send(n)
        got = []
        deadline = monotonic() + self.timeout
        for c in self.conns:
            if not c.poll(max(0.0, deadline - monotonic())):
                raise RuntimeError(f"{n} items not through after {self.timeout:.0f} s")
            got.append(c.recv())
        errors = [g[2] for g in got if g[2]]
        if errors:
            raise RuntimeError("; ".join(errors))
        return max(g[1] for g in got) - min(g[0] for g in got)

    def close(self):
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()


def measure(run, seconds, warmup, unit=BLOCK):
    """Warm up with run(count) (returning its seconds), doubling the count
    from `unit` until `warmup` seconds are spent; then run about `seconds`
    worth, a multiple of `unit`, once. Returns (count, seconds)."""
    count, spent, dt = unit, 0.0, 0.0
    for _ in range(PILOTS):
        dt = run(count)
        spent += dt
        if spent >= warmup or count >= MAX_COUNT:
            break
        count *= 2
    rate = count / max(dt, 1e-9)
    n = min(max(int(rate * seconds) // unit * unit, unit), MAX_COUNT // unit * unit)
    return n, run(n)


def queue_case(case, impl, seconds, warmup):
    """items/s of one implementation of a queue case."""
    import libshm
    from libshm import _core
    objects = case.endswith(".pyobj")
    filler, mark = (OBJ_FILLER, obj_mark) if objects else (BYTES_FILLER, bytes_mark)
    if impl == "pickle_floor":  # one process, no pair
        done = 0

        def run(n):
            nonlocal done
            t0 = monotonic()
            pickle_round_trips(done, n // BLOCK, filler, mark)
            done += n // BLOCK
            return monotonic() - t0

        n, dt = measure(run, seconds, warmup)
        return n / dt
    q = None
    if impl == "libshm":
        q = libshm.Queue(maxsize=CAPACITY)
    elif impl == "python_mp_queue":
        q = mp.Queue(maxsize=CAPACITY)
    if q is not None:
        consumer = (q.get, mark)
        producer = (q.put, filler, mark)
    elif impl == "noop_call_floor":
        consumer = (_core._noop, lambda j: None)
        producer = (_core._noop, filler, mark)
    elif impl == "pickle_split_floor":
        consumer = (functools.partial(pickle.loads, pickle.dumps(filler, pickle.HIGHEST_PROTOCOL)), lambda j: filler)
        producer = (pickle.dumps, filler, mark)
    else:
        raise ValueError(impl)
    pair = Pair(consumer, producer, seconds)
    try:
        n, dt = measure(pair.run, seconds, warmup)
    finally:
        pair.close()
    if q is not None and not q.empty():
        raise RuntimeError("items left in the queue")
    if impl == "python_mp_queue":
        q.close()
        q.join_thread()
    return n / dt


def dict_get(d, rounds):
    keys = KEYS
    for _ in range(rounds):
        for k in keys:
            d[k]


def dict_set(d, first, rounds):
    keys = KEYS
    for j in range(first, first + rounds):
        for k in keys:
            d[k] = j


def dict_case(case, impl, seconds, warmup):
    """ops/s of one implementation of a dict case."""
    import libshm
    manager = None
    if impl == "libshm":
        d = libshm.dict({k: 0 for k in KEYS})
    elif impl == "python_manager":
        manager = mp.Manager()
        d = manager.dict({k: 0 for k in KEYS})
    elif impl == "python_dict":
        d = {k: 0 for k in KEYS}
    else:
        raise ValueError(impl)
    try:
        done = 0

        def run(n):
            nonlocal done
            rounds = n // len(KEYS)  # passes over the keys
            t0 = monotonic()
            if case == "py.dict.get":
                dict_get(d, rounds)
            else:
                dict_set(d, done, rounds)
            dt = monotonic() - t0
            done += rounds
            return dt

        n, dt = measure(run, seconds, warmup, unit=len(KEYS))
        want = done - 1 if case == "py.dict.set" else 0
        c = d.copy()
        if len(c) != len(KEYS) or any(c[k] != want for k in KEYS):
            raise RuntimeError(f"the dict does not hold {want} at each of its {len(KEYS)} keys")
        return n / dt
    finally:
        if manager is not None:
            manager.shutdown()


def lock_pairs(n, acquire, release):
    for _ in range(n):
        acquire()
        release()


def lock_case(impl, seconds, warmup):
    """ns per acquire() + release() pair of one implementation."""
    import libshm
    lock = libshm.Lock() if impl == "libshm" else mp.Lock()
    acquire, release = lock.acquire, lock.release

    def run(n):
        t0 = monotonic()
        lock_pairs(n, acquire, release)
        return monotonic() - t0

    n, dt = measure(run, seconds, warmup)
    if not lock.acquire(False):
        raise RuntimeError("the lock is held after the pairs")
    lock.release()
    return dt / n * 1e9


# ---- py.pool.map.tiny: map() of a function that returns its argument ----------

POOL_CALLS = 100_000  # per map (at --seconds 1); the executor, far slower at chunksize 1, does a tenth
POOL_PROCESSES = 2


def identity(x):
    return x


def pool_case(case, impl, seconds, warmup):
    """Calls per second of a map() of POOL_CALLS calls (the median of up to
    nine), on a pool of POOL_PROCESSES made (and warmed up) beforehand."""
    import concurrent.futures

    import libshm
    chunksize = 1 if case.endswith(".c1") else None
    # POOL_CALLS at --seconds 1 (the default); fewer for a shorter run (the smoke test).
    n = max(1000, int(POOL_CALLS * min(1.0, seconds)))
    if impl == "python_executor":
        n //= 10
    if impl == "python_executor":
        pool = concurrent.futures.ProcessPoolExecutor(POOL_PROCESSES)

        def run(k):
            return list(pool.map(identity, range(k), chunksize=chunksize or 1))
    else:
        pool = libshm.Pool(POOL_PROCESSES) if impl == "libshm" else mp.Pool(POOL_PROCESSES)

        def run(k):
            return pool.map(identity, range(k), chunksize=chunksize)
    try:
        # Every pool alike: warmed up by full runs (as many as fit in a
        # second, at least one, at most 30), so that its workers are started
        # and its memory touched (a first touch of fresh pages costs more
        # here than the work: a short map takes ten runs to settle), then
        # timed over up to nine runs within a second: the median run.
        # (Each run's result is kept until the next has returned, in the
        # warm-up as in the timed runs.)
        out = run(1000)
        start = time.perf_counter()
        for k in range(30):
            if k and time.perf_counter() - start > 1.0:
                break
            out = run(n)
        times = []
        while len(times) < 9 and sum(times) < 1.0:
            t = time.perf_counter()
            out = run(n)
            times.append(time.perf_counter() - t)
            if len(out) != n or out[-1] != n - 1:
                raise RuntimeError("wrong results")
        return n / statistics.median(times)
    finally:
        if impl == "python_executor":
            pool.shutdown()
        else:
            pool.terminate()
            pool.join()


POOL_NOTE = {
    "libshm": "libshm.Pool(2).map(f, range(N), chunksize)",
    "python_mp_pool": "multiprocessing.Pool(2).map(f, range(N), chunksize)",
    "python_executor": "concurrent.futures.ProcessPoolExecutor(2).map(f, range(N // 10), chunksize)",
}

QUEUE_NOTE = {
    "libshm": "libshm.Queue(maxsize=1024), put() / get()",
    "python_mp_queue": "multiprocessing.Queue(maxsize=1024), put() / get()",
    "noop_call_floor": "the same loops calling a C no-op (_core._noop) instead",
    "pickle_floor": "pickle.loads(pickle.dumps(x)) alone, one process",
    "pickle_split_floor": "the same two loops calling pickle.dumps() / pickle.loads() instead",
}
PLAN = {
    "py.queue.1to1.bytes64": (["libshm", "python_mp_queue", "noop_call_floor"], "items/s"),
    "py.queue.1to1.pyobj": (["libshm", "python_mp_queue", "pickle_floor", "pickle_split_floor"], "items/s"),
    "py.dict.get": (["libshm", "python_manager", "python_dict"], "ops/s"),
    "py.dict.set": (["libshm", "python_manager", "python_dict"], "ops/s"),
    "py.lock": (["libshm", "python_mp_lock"], "ns"),
    "py.pool.map.tiny.c1": (["libshm", "python_mp_pool", "python_executor"], "calls/s"),
    "py.pool.map.tiny.default": (["libshm", "python_mp_pool", "python_executor"], "calls/s"),
}
NOTE = {
    "python_manager": "multiprocessing.Manager().dict()",
    "python_dict": "a plain dict",
    "python_mp_lock": "multiprocessing.Lock(), acquire() / release()",
}


def note_for(case, impl):
    if case.startswith("py.pool."):
        return POOL_NOTE[impl] + (", chunksize=1" if case.endswith(".c1") else ", default chunksize")
    if case.startswith("py.queue."):
        return QUEUE_NOTE[impl]
    if impl == "libshm":
        return "libshm.Lock(), acquire() / release()" if case == "py.lock" else "libshm.dict()"
    return NOTE[impl]


def run_case(case, impl, seconds, warmup):
    if case.startswith("py.pool."):
        return pool_case(case, impl, seconds, warmup)
    if case.startswith("py.queue."):
        return queue_case(case, impl, seconds, warmup)
    if case.startswith("py.dict."):
        return dict_case(case, impl, seconds, warmup)
    return lock_case(impl, seconds, warmup)


def private_shm_dir():
    """A new shm directory for this run, as SHM_DIR; at exit (after libshm
    has let go of its segments) it must be empty, and is removed."""
    base = os.environ.get("SHM_DIR") or "/dev/shm"
    d = tempfile.mkdtemp(prefix="libshm-pybench.", dir=base)
    os.environ["SHM_DIR"] = d
    me = os.getpid()

    def remove():
        if os.getpid() != me:
            return
        left = sorted(os.listdir(d))
        shutil.rmtree(d, ignore_errors=True)
        if left:
            print(f"python_libshm: left in the shm directory: {' '.join(left)}", file=sys.stderr)
            os._exit(1)

    # Registered before libshm is imported: atexit runs it after libshm's own.
    atexit.register(remove)
    # SIGTERM (run.py's time-out) leaves through atexit too, in this process
    # alone. A forked child must die of it as it would without the handler:
    # multiprocessing.Pool.terminate() SIGTERMs its workers, and one that
    # raised SystemExit instead, or lost the signal (Python drops one that
    # comes between the fork and its own reinitialisation), lived on,
    # waiting for the task queue's lock that terminate() holds while it
    # waits for the worker. So SIGTERM is held from before each fork until
    # the child has the default disposition back, then let through.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    term = {signal.SIGTERM}

    def child():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, term)

    os.register_at_fork(before=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, term),
                        after_in_parent=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, term),
                        after_in_child=child)


def emit(case, impl, value, unit, note):
    print(json.dumps({"bench": case, "impl": impl,
                      "value": round(value, 1) if value >= 100 else float(f"{value:.4g}"),
                      "unit": unit, "note": note}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="measured time per case and implementation, about")
    ap.add_argument("--warmup", type=float, default=0.1, help="untimed warm-up before it")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX", help="run the cases starting so")
    ap.add_argument("--list", action="store_true", help="print the case names and stop")
    a = ap.parse_args()
    if a.seconds <= 0 or a.warmup < 0:
        ap.error("--seconds must be above 0 and --warmup at least 0")
    cases = [c for c in CASES if not a.only or any(c.startswith(p) for p in a.only)]
    if a.list:
        print("\n".join(cases))
        return 0
    private_shm_dir()
    mp.set_start_method("fork")
    rc = 0
    for case in cases:
        impls, unit = PLAN[case]
        for impl in impls:
            try:
                value = run_case(case, impl, a.seconds, a.warmup)
            except Exception as e:
                print(f"python_libshm {case} {impl}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
                rc = 1
                continue
            emit(case, impl, value, unit, note_for(case, impl))
    return rc


if __name__ == "__main__":
    sys.exit(main())
