#!/usr/bin/env python3
"""Python's multiprocessing.Queue (impl "python_mp_queue") in the queue benchmarks.

The same cases, items and method as the C++ programs (queue_harness.hpp):
every item has exactly the case's size and carries a header (producer,
phase, sequence number) that the consumers check; the queue holds as many
items as libshm's does (maxsize). Producers put for the measured time after
a warm-up; the rate is the items put in the measured time over the span from
the producers' measured start to the last item got, read from
CLOCK_MONOTONIC. queue.pingpong.64B times round trips through two queues,
blocking get on both sides, and reports the median and the 99th percentile.
Prints one JSON object per line:
{"bench": CASE, "impl": "python_mp_queue", "value": NUMBER, "unit": UNIT, "note": ...}.
"""

import argparse
import json
import multiprocessing as mp
import struct
import sys
import time

IMPL = "python_mp_queue"
HEADER = struct.Struct("<IIQ")  # producer, phase, sequence number
TRAILER = struct.Struct("<Q")  # the sequence number again
WARMUP, MEASURED, STOP = 0, 1, 2
KIB, MIB = 1024, 1024 * 1024
# name: (item bytes, producers, consumers); None for the round trip case
CASES = {
    "queue.1to1.64B": (64, 1, 1),
    "queue.2to2.64B": (64, 2, 2),
    "queue.pingpong.64B": (64, None, None),
    "queue.1to1.4KiB": (4 * KIB, 1, 1),
    "queue.1to1.1MiB": (MIB, 1, 1),
}
MAX_SAMPLES = 4_000_000


def capacity_for(item):
    """The capacity libshm's queue gets in the same case."""
    return 1024 if item <= 64 else 256 if item <= 4 * KIB else 8


def make_item(middle, producer, phase, seq):
    return HEADER.pack(producer, phase, seq) + middle + TRAILER.pack(seq)


def read_item(b, size):
    if len(b) != size:
        raise RuntimeError(f"item of {len(b)} bytes, expected {size}")
    producer, phase, seq = HEADER.unpack_from(b)
    if TRAILER.unpack_from(b, size - TRAILER.size)[0] != seq:
        raise RuntimeError("torn item: header and trailer differ")
    return producer, phase, seq


def middle_for(size):
    n = size - HEADER.size - TRAILER.size
    return bytes((97 + i % 26) for i in range(n))


def producer(q, index, size, batch, seconds, warmup, ready, go, results):
    try:
        middle = middle_for(size)
        seq = 0
        ready.release()
        go.wait()
        now = time.monotonic
        warm_end = now() + warmup
        while now() < warm_end:
            for _ in range(batch):
                q.put(make_item(middle, index, WARMUP, seq))
                seq += 1
        first = seq
        t0 = now()
        end = t0 + seconds
        # At least one batch, however late this process runs: a smoke run's
        # window is shorter than a time slice on a busy machine.
        while True:
            for _ in range(batch):
                q.put(make_item(middle, index, MEASURED, seq))
                seq += 1
            if now() >= end:
                break
        q.close()
        q.join_thread()  # every item is in the pipe before we report
        results.put(("producer", index, t0, seq, seq - first, None))
    except Exception as e:  # reported by the parent
        results.put(("producer", index, 0.0, 0, 0, f"{type(e).__name__}: {e}"))


def consumer(q, index, size, producers, ready, go, results):
    try:
        got = [0] * producers
        sums = [0] * producers
        nxt = [0] * producers
        measured = 0
        t_last = 0.0
        now = time.monotonic
        ready.release()
        go.wait()
        while True:
            b = q.get()
            t_last_item = now()
            p, phase, seq = read_item(b, size)
            if phase == STOP:
                break
            if p >= producers or phase > MEASURED or seq < nxt[p]:
                raise RuntimeError(f"producer {p}: item {seq} out of order")
            nxt[p] = seq + 1
            got[p] += 1
            sums[p] += seq
            measured += phase == MEASURED
            t_last = t_last_item
        results.put(("consumer", index, t_last, got, sums, measured, None))
    except Exception as e:
        results.put(("consumer", index, 0.0, [], [], 0, f"{type(e).__name__}: {e}"))


def collect(procs, results, timeout):
    got = []
    deadline = time.monotonic() + timeout
    for _ in procs:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError("workers did not finish in time")
        got.append(results.get(timeout=left))
    return got


def start(procs, ready, go):
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=30):
            raise RuntimeError("workers not ready after 30 s")
    go.set()


def stop_all(procs):
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()


def throughput(size, producers, consumers, seconds, warmup):
    q = mp.Queue(maxsize=capacity_for(size))
    results = mp.Queue()
    ready, go = mp.Semaphore(0), mp.Event()
    batch = max(1, min(32, 65536 // size))
    prods = [mp.Process(target=producer, args=(q, i, size, batch, seconds, warmup, ready, go, results))
             for i in range(producers)]
    cons = [mp.Process(target=consumer, args=(q, i, size, producers, ready, go, results))
            for i in range(consumers)]
    try:
        start(prods + cons, ready, go)
        prod_res = collect(prods, results, warmup + seconds + 30)
        # Every producer has flushed its items into the pipe: the stop items
        # come after them all.
        for p in prods:
            p.join(timeout=30)
        stop = make_item(middle_for(size), 0, STOP, 0)
        for _ in cons:
            q.put(stop)
        cons_res = collect(cons, results, 30)
    finally:
        stop_all(prods + cons)
    errors = [r[-1] for r in prod_res + cons_res if r[-1]]
    if errors:
        raise RuntimeError("; ".join(errors))
    t0 = min(r[2] for r in prod_res)
    t1 = max(r[2] for r in cons_res)
    measured = sum(r[4] for r in prod_res)
    for _, i, _, total, _, _ in prod_res:
        got = sum(r[3][i] for r in cons_res)
        sums = sum(r[4][i] for r in cons_res)
        if got != total or sums != total * (total - 1) // 2:
            raise RuntimeError(f"producer {i} put {total} items, consumers got {got}")
    if sum(r[5] for r in cons_res) != measured:
        raise RuntimeError("measured items got != put")
    if measured == 0 or t1 <= t0:
        raise RuntimeError("no item measured")
    return measured / (t1 - t0)


def server(req, rep, size, ready, go, results):
    try:
        ready.release()
        go.wait()
        while True:
            b = req.get()
            if read_item(b, size)[1] == STOP:
                break
            rep.put(b)
        results.put(("server", None))
    except Exception as e:
        results.put(("server", f"{type(e).__name__}: {e}"))


def client(req, rep, size, seconds, warmup, ready, go, results):
    try:
        middle = middle_for(size)
        seq = 0
        samples = []
        now_ns = time.monotonic_ns

        def round_trip(phase):
            nonlocal seq
            req.put(make_item(middle, 0, phase, seq))
            _, ph, s = read_item(rep.get(), size)
            if s != seq or ph != phase:
                raise RuntimeError("reply to another request")
            seq += 1

        ready.release()
        go.wait()
        warm_end = time.monotonic() + warmup
        while time.monotonic() < warm_end:
            round_trip(WARMUP)
        end = now_ns() + int(seconds * 1e9)
        t = now_ns()
        while not samples or (t < end and len(samples) < MAX_SAMPLES):  # at least one
            round_trip(MEASURED)
            t2 = now_ns()
            samples.append(t2 - t)
            t = t2
        req.put(make_item(middle, 0, STOP, seq))
        if not samples:
            raise RuntimeError("no round trip measured")
        samples.sort()
        n = len(samples)
        results.put(("client", samples[int(0.5 * (n - 1))] / 1e3, samples[int(0.99 * (n - 1))] / 1e3, None))
    except Exception as e:
        results.put(("client", 0.0, 0.0, f"{type(e).__name__}: {e}"))


def pingpong(size, seconds, warmup):
    req, rep = mp.Queue(maxsize=capacity_for(size)), mp.Queue(maxsize=capacity_for(size))
    results = mp.Queue()
    ready, go = mp.Semaphore(0), mp.Event()
    procs = [mp.Process(target=client, args=(req, rep, size, seconds, warmup, ready, go, results)),
             mp.Process(target=server, args=(req, rep, size, ready, go, results))]
    try:
        start(procs, ready, go)
        got = collect(procs, results, warmup + seconds + 30)
    finally:
        stop_all(procs)
    errors = [r[-1] for r in got if r[-1]]
    if errors:
        raise RuntimeError("; ".join(errors))
    c = next(r for r in got if r[0] == "client")
    return c[1], c[2]


def emit(bench, value, unit, note):
    print(json.dumps({"bench": bench, "impl": IMPL, "value": round(value, 1) if value >= 100 else float(f"{value:.4g}"),
                      "unit": unit, "note": note}), flush=True)


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
    for case in cases:
        size, producers, consumers = CASES[case]
        note = f"multiprocessing.Queue(maxsize={capacity_for(size)}), put() / get()"
        try:
            if producers is None:
                p50, p99 = pingpong(size, a.seconds, a.warmup)
                emit(case + ".p50", p50, "us", note)
                emit(case + ".p99", p99, "us", note)
            else:
                rate = throughput(size, producers, consumers, a.seconds, a.warmup)
                if size <= 64:
                    emit(case, rate, "items/s", note)
                else:
                    emit(case, rate * size / 1e9, "GB/s", note)
        except Exception as e:
            print(f"{IMPL} {case}: FAILED: {e}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
