#!/usr/bin/env python3
"""Python's multiprocessing.Manager().dict()/.list() (impl "python_manager").

The same cases, working set (keys "k0".."k999", int values) and method as
the C++ programs (harness.hpp): each case forks N worker processes that wait
for one start signal, run a short warm-up, then run for a fixed time; the
rate is all measured operations over the span from the first measured start
to the last end, read from CLOCK_MONOTONIC. Prints one JSON object per line:
{"bench": CASE, "impl": "python_manager", "value": OPS_PER_S, "unit": "ops/s"}.

A Manager dict has no atomic read-modify-write (d[k] += 1 is a get and a
set, two round trips that another process can interleave), so
dict.increment takes a multiprocessing.Lock around them, as a program that
wants exact counts must.
"""

import argparse
import json
import multiprocessing as mp
import sys
import time

IMPL = "python_manager"
KEYS = [f"k{i}" for i in range(1000)]
CASES = [f"dict.{op}.{n}proc" for n in (1, 2) for op in ("set", "get", "increment")] + [
    f"list.append.{n}proc" for n in (1, 2)
]
BATCH = 16  # operations between clock reads


def worker(case, container, lock, index, procs, seconds, warmup, ready, go, results):
    try:
        skew = len(KEYS) * index // procs
        nkeys = len(KEYS)
        d = container
        if case.startswith("dict.set"):
            def op(i):
                d[KEYS[(i + skew) % nkeys]] = i
        elif case.startswith("dict.get"):
            def op(i):
                return d[KEYS[(i + skew) % nkeys]]
        elif case.startswith("dict.increment"):
            def op(i):
                k = KEYS[(i + skew) % nkeys]
                with lock:
                    d[k] = d[k] + 1
        elif case.startswith("list.append"):
            def op(i):
                d.append(i)
        else:
            raise ValueError(f"unknown case {case}")
        op(0)  # opens this process's connection to the manager
        i = 1
        ready.release()
        go.wait()
        now = time.monotonic
        warm_end = now() + warmup
        while now() < warm_end:
            for _ in range(BATCH):
                op(i)
                i += 1
        first = i
        t0 = now()
        end = t0 + seconds
        t1 = t0
        while t1 < end:
            for _ in range(BATCH):
                op(i)
                i += 1
            t1 = now()
        results.put((index, i - first, i, t0, t1, None))
    except Exception as e:  # reported by the parent
        results.put((index, 0, 0, 0.0, 0.0, f"{type(e).__name__}: {e}"))


def run_case(manager, case, seconds, warmup):
    procs = int(case.rsplit(".", 1)[1].removesuffix("proc"))
    is_list = case.startswith("list.")
    container = manager.list() if is_list else manager.dict({k: 0 for k in KEYS})
    lock = mp.Lock()
    ready = mp.Semaphore(0)
    go = mp.Event()
    results = mp.Queue()
    ps = [
        mp.Process(target=worker, args=(case, container, lock, w, procs, seconds, warmup, ready, go, results))
        for w in range(procs)
    ]
    for p in ps:
        p.start()
    try:
        for _ in ps:
            if not ready.acquire(timeout=30):
                raise RuntimeError("workers not ready after 30 s")
        go.set()
        got = [results.get(timeout=warmup + seconds + 30) for _ in ps]
    finally:
        for p in ps:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [g[5] for g in got if g[5]]
    if errors:
        raise RuntimeError("; ".join(errors))
    ops = sum(g[1] for g in got)
    total = sum(g[2] for g in got)
    t0 = min(g[3] for g in got)
    t1 = max(g[4] for g in got)
    if ops == 0 or t1 <= t0:
        raise RuntimeError("no operation measured")
    # The same checks as the C++ programs: exact totals.
    if case.startswith("dict.increment"):
        s = sum(container.values())
        if s != total:
            raise RuntimeError(f"increments add up to {s}, not {total}")
    if is_list and len(container) != total:
        raise RuntimeError(f"the list holds {len(container)} items, not {total}")
    return ops / (t1 - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="measured time per case")
    ap.add_argument("--warmup", type=float, default=0.1, help="untimed time before it")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX", help="run the cases starting so")
    ap.add_argument("--list", action="store_true", help="print the case names and stop")
    a = ap.parse_args()
    if a.seconds <= 0 or a.warmup < 0:
        ap.error("--seconds must be above 0 and --warmup at least 0")
    cases = [c for c in CASES if not a.only or any(c.startswith(p) for p in a.only)]
    if a.list:
        print("\n".join(cases))
        return 0
    mp.set_start_method("fork")
    rc = 0
    with mp.Manager() as manager:
        for case in cases:
            try:
                rate = run_case(manager, case, a.seconds, a.warmup)
            except Exception as e:
                print(f"{IMPL} {case}: FAILED: {e}", file=sys.stderr)
                rc = 1
                continue
            print(json.dumps({"bench": case, "impl": IMPL, "value": round(rate, 1), "unit": "ops/s"}), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
