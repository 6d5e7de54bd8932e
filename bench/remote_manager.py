#!/usr/bin/env python3
"""Python's own way across hosts (impl "python_basemanager"): a
multiprocessing.managers.BaseManager server process serving a queue.Queue
and a dict over TCP (on loopback here; another host's address works the
same), with client processes that connect to it by address and authkey.

The remote cases of remote_harness.hpp, with the same method and checks:
  remote.queue.1to1.64B      a producer process puts 64-byte items for the
                             measured time, a consumer process gets them;
                             items/s over the span from the producer's
                             measured start to the consumer's stop item.
                             Sequence numbers are checked in order, totals
                             and sums at the end.
  remote.queue.1to1.64B.pipelined
                             the same: a BaseManager proxy's put() always
                             waits for the server's answer (there is no
                             pipelined put), so this is its best way too.
  remote.queue.pingpong.64B  a client puts a request to one queue and gets
                             the reply from another, a server process echoes;
                             .p50 and .p99 of the round trips, microseconds.
  remote.dict.get / .set     one client process cycling through "k0".."k999";
                             ops/s. get checks every value read; after set
                             every key holds the last value written to it.
  remote.dict.set.pipelined  the same as .set: a proxy's call always waits
                             for the server's answer.
Prints one JSON object per line (bench/run.py's protocol).
"""

import argparse
import json
import multiprocessing as mp
import os
import queue
import struct
import sys
import time
from multiprocessing.managers import BaseManager, DictProxy

IMPL = "python_basemanager"
NOTE = "BaseManager server process over TCP loopback, proxies in client processes"
CASES = ["remote.queue.1to1.64B", "remote.queue.1to1.64B.pipelined", "remote.queue.pingpong.64B", "remote.dict.get",
         "remote.dict.set", "remote.dict.set.pipelined"]
ITEM = 64
HEADER = struct.Struct("<IIQ")  # producer, phase, sequence number (as queue_harness.hpp)
TAIL = struct.Struct("<Q")
WARMUP, MEASURED, STOP = 0, 1, 2
KEYS = [f"k{i}" for i in range(1000)]
BATCH = 16  # operations between clock reads

_queues = {}
_dict = {}


def _get_queue(name):
    return _queues.setdefault(name, queue.Queue())


def _get_dict():
    return _dict


class Remote(BaseManager):
    pass


Remote.register("get_queue", callable=_get_queue)
Remote.register("get_dict", callable=_get_dict, proxytype=DictProxy)


def item(phase, seq, pad=b"x" * (ITEM - HEADER.size - TAIL.size)):
    return HEADER.pack(0, phase, seq) + pad + TAIL.pack(seq)


def read_item(b):
    if len(b) != ITEM:
        raise RuntimeError(f"item of {len(b)} bytes, expected {ITEM}")
    producer, phase, seq = HEADER.unpack_from(b)
    if TAIL.unpack_from(b, ITEM - TAIL.size)[0] != seq:
        raise RuntimeError("torn item: header and trailer differ")
    return phase, seq


def client(address, authkey):
    m = Remote(address=address, authkey=authkey)
    m.connect()
    return m


# ---- workers (each in its own process) ----------------------------------------------

def producer(address, authkey, name, seconds, warmup, ready, go, results):
    q = client(address, authkey).get_queue(name)
    ready.release()
    go.wait()
    seq, now = 0, time.monotonic
    end = now() + warmup
    while now() < end:
        for _ in range(BATCH):
            q.put(item(WARMUP, seq))
            seq += 1
    first, t0 = seq, now()
    end = t0 + seconds
    while True:
        for _ in range(BATCH):
            q.put(item(MEASURED, seq))
            seq += 1
        if now() >= end:
            break
    q.put(item(STOP, 0))
    results.put(("producer", t0, seq, seq - first))


def consumer(address, authkey, name, ready, go, results):
    q = client(address, authkey).get_queue(name)
    ready.release()
    go.wait()
    expect, got, sums, measured = 0, 0, 0, 0
    while True:
        phase, seq = read_item(q.get())
        if phase == STOP:
            break
        if seq != expect:
            raise RuntimeError(f"got item {seq}, expected {expect}")
        expect = seq + 1
        got += 1
        sums += seq
        measured += phase == MEASURED
    results.put(("consumer", time.monotonic(), got, sums, measured))


def echo(address, authkey, ready, go, results):
    m = client(address, authkey)
    req, rep = m.get_queue("req"), m.get_queue("rep")
    ready.release()
    go.wait()
    while True:
        b = req.get()
        if read_item(b)[0] == STOP:
            break
        rep.put(b)
    results.put(("echo",))


def pinger(address, authkey, seconds, warmup, ready, go, results):
    m = client(address, authkey)
    req, rep = m.get_queue("req"), m.get_queue("rep")
    ready.release()
    go.wait()
    seq, now = 0, time.perf_counter

    def round_trip(phase):
        nonlocal seq
        req.put(item(phase, seq))
        p, s = read_item(rep.get())
        if (p, s) != (phase, seq):
            raise RuntimeError("reply to another request")
        seq += 1

    end = now() + warmup
    while now() < end:
        round_trip(WARMUP)
    samples = []
    end = now() + seconds
    t = now()
    while not samples or t < end:
        round_trip(MEASURED)
        t2 = now()
        samples.append(t2 - t)
        t = t2
    req.put(item(STOP, seq))
    samples.sort()
    n = len(samples)
    results.put(("pinger", samples[int(0.5 * (n - 1))] * 1e6, samples[int(0.99 * (n - 1))] * 1e6, n))


def dict_worker(address, authkey, op, seconds, warmup, ready, go, results):
    d = client(address, authkey).get_dict()
    nkeys = len(KEYS)
    for k, key in enumerate(KEYS):
        d[key] = k
    if op == "set":
        def step(i):
            d[KEYS[i % nkeys]] = i
    else:
        def step(i):
            v = d[KEYS[i % nkeys]]
            if v != i % nkeys:
                raise RuntimeError(f"{KEYS[i % nkeys]} read back as {v}")
    ready.release()
    go.wait()
    i, now = 0, time.monotonic
    end = now() + warmup
    while now() < end:
        for _ in range(BATCH):
            step(i)
            i += 1
    first, t0 = i, now()
    end = t0 + seconds
    t1 = t0
    while True:
        for _ in range(BATCH):
            step(i)
            i += 1
        t1 = now()
        if t1 >= end:
            break
    if op == "set":  # every key holds the last value written to it
        for k in range(min(nkeys, i)):
            last = k + (i - 1 - k) // nkeys * nkeys
            if d[KEYS[k]] != last:
                raise RuntimeError(f"{KEYS[k]} holds {d[KEYS[k]]}, not the last value set ({last})")
    results.put(("dict", t0, t1, i - first))


# ---- driver ---------------------------------------------------------------------------

def run(targets, seconds, warmup):
    """Start one process per (function, args); wait for them (bounded);
    return what each put on the results queue."""
    ready, go, results = mp.Semaphore(0), mp.Event(), mp.Queue()
    ps = [mp.Process(target=_wrap, args=(f, args + (ready, go, results), results)) for f, args in targets]
    for p in ps:
        p.start()
    try:
        for _ in ps:
            if not ready.acquire(timeout=30):
                raise RuntimeError("workers not ready after 30 s")
        go.set()
        got = [results.get(timeout=warmup + seconds + 60) for _ in ps]
    finally:
        for p in ps:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [g[1] for g in got if g[0] == "error"]
    if errors:
        raise RuntimeError("; ".join(errors))
    return {g[0]: g for g in got}


def _wrap(f, args, results):
    try:
        f(*args)
    except BaseException as e:  # reported by the parent
        results.put(("error", f"{f.__name__}: {type(e).__name__}: {e}"))
        args[-3].release()  # never leave the parent waiting for ready


def emit(bench, value, unit, note=NOTE):
    print(json.dumps({"bench": bench, "impl": IMPL, "value": round(value, 3), "unit": unit, "note": note}),
          flush=True)


def run_case(case, address, authkey, seconds, warmup):
    if case in ("remote.queue.1to1.64B", "remote.queue.1to1.64B.pipelined"):
        name = f"q{time.monotonic_ns()}"
        r = run([(producer, (address, authkey, name, seconds, warmup)),
                 (consumer, (address, authkey, name))], seconds, warmup)
        _, t0, put_total, put_measured = r["producer"]
        _, t1, got, sums, measured = r["consumer"]
        if got != put_total or sums != put_total * (put_total - 1) // 2 or measured != put_measured:
            raise RuntimeError(f"the consumer got {got} items, the producer put {put_total}")
        if t1 <= t0 or put_measured == 0:
            raise RuntimeError("no item measured")
        note = NOTE if case == "remote.queue.1to1.64B" else NOTE + "; no pipelined put: the proxy's put() waits"
        emit(case, put_measured / (t1 - t0), "items/s", note)
    elif case == "remote.queue.pingpong.64B":
        r = run([(pinger, (address, authkey, seconds, warmup)), (echo, (address, authkey))], seconds, warmup)
        _, p50, p99, n = r["pinger"]
        if n == 0:
            raise RuntimeError("no round trip measured")
        emit(case + ".p50", p50, "us")
        emit(case + ".p99", p99, "us")
    elif case in ("remote.dict.get", "remote.dict.set", "remote.dict.set.pipelined"):
        op = "get" if case == "remote.dict.get" else "set"
        r = run([(dict_worker, (address, authkey, op, seconds, warmup))], seconds, warmup)
        _, t0, t1, ops = r["dict"]
        if t1 <= t0 or ops == 0:
            raise RuntimeError("no operation measured")
        note = NOTE if case != "remote.dict.set.pipelined" else NOTE + "; no pipelined set: the proxy's call waits"
        emit(case, ops / (t1 - t0), "ops/s", note)
    else:
        raise ValueError(f"unknown case {case}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="measured time per case")
    ap.add_argument("--warmup", type=float, default=0.1, help="untimed time before it")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX", help="run the cases starting so")
    ap.add_argument("--list", action="store_true", help="print the case names and stop")
    a = ap.parse_args()
    if a.seconds <= 0 or a.warmup < 0:
        ap.error("--seconds must be above 0 and --warmup at least 0")
    cases = [c for c in CASES if not a.only or any(c.startswith(p) or p.startswith(c + ".") for p in a.only)]
    if a.list:
        print("\n".join(cases))
        return 0
    mp.set_start_method("fork")
    authkey = os.urandom(16)
    rc = 0
    server = Remote(address=("127.0.0.1", 0), authkey=authkey)
    server.start()  # the server process: listens on a port the kernel picks
    try:
        for case in cases:
            try:
                run_case(case, server.address, authkey, a.seconds, a.warmup)
            except Exception as e:
                print(f"{IMPL} {case}: FAILED: {e}", file=sys.stderr)
                rc = 1
    finally:
        server.shutdown()
    return rc


if __name__ == "__main__":
    sys.exit(main())
