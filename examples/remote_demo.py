#!/usr/bin/env python3
"""A job queue across hosts that loses a server and a consumer, and still
delivers every job (`./dev demo --remote`).

It starts a three-node nats-server cluster on loopback ports (JetStream,
temporary stores), then, through libshm.get_context(<the three URLs>):
a producer puts N jobs on a JoinableQueue replicated on the three servers;
three consumer processes get jobs, record each one done on a second queue,
and mark it task_done(). In the middle, one server and one consumer are
SIGKILLed. The jobs the killed consumer held come back once their lease
runs out, and the other consumers finish them; the producer's and the
consumers' connections fail over to the servers left.

At the end it reads every record (until the servers say none is left:
a get's time-out alone is no proof, as it also runs out while they elect
a leader) and counts: every job at least once (lost must be 0); a job recorded twice is one delivered again because its
lease ran out before task_done(): its consumer was killed after recording
it, or was held up longer than the lease (waiting out the election of new
leaders after the server's loss). That is at-least-once delivery. Exit status 0 when nothing was lost (77 without
nats-server).

    remote_demo.py [--jobs N] [--consumers C]
(PYTHONPATH must reach the built package; ./dev demo --remote sets it.)
"""

import argparse
import os
import queue
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import libshm  # noqa: E402
import nats_server  # noqa: E402  (tests/nats_server.py)

CAP = 300  # seconds: only a true hang ends the demo early
LEASE = 2.0  # seconds a job may stay unfinished before it is delivered again


def retrying(what, fn, *args, **kwargs):
    """fn(*args, **kwargs), again while the servers elect new leaders after
    the loss of one (libshm.Unavailable: they did not answer in time; or
    another libshm.Error a server going away gave), up to the cap. A put
    tried again may store the job twice: it is then done twice, never
    lost."""
    end = time.monotonic() + CAP
    while True:
        try:
            return fn(*args, **kwargs)
        except libshm.Error as e:
            if time.monotonic() > end:
                raise
            print(f"  {what}: {e.strerror or e}; again", flush=True)
            time.sleep(0.5)


def consumer(ctx, jobs, done, stop, ready, index):
    retrying(f"consumer {index}: connect", lambda: (stop.is_set(), done.qsize()))  # open this process's handles
    retrying(f"consumer {index}: ready", ready.put, index)
    failing_since = None
    while True:
        try:
            try:
                job = jobs.get(timeout=1.0)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            done.put((job, index))
            jobs.task_done()
            failing_since = None
        except libshm.Error as e:
            # Servers electing a new leader after the loss of one: the
            # client fails over; try again, up to the cap (the servers
            # gone for good). A job got and not marked done comes back
            # after its lease (recorded twice if the record went through).
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > CAP:
                raise
            print(f"  consumer {index}: {e.strerror}; again", flush=True)
            time.sleep(0.5)


def drain(q):
    """Every item left on q. A get's time-out is no proof that nothing is
    left: it also runs out while the servers elect a new leader for the
    queue (seconds, after the loss of a server). The end is the servers'
    word: nothing waiting and nothing out with a reader (qsize() and
    leased() both 0)."""
    items = []
    while True:
        try:
            items.append(retrying("get a record", q.get, timeout=2.0))
        except queue.Empty:
            left = retrying("count the records left", lambda: q.qsize() + q.leased())
            if left == 0:
                return items
            print(f"  get a record: none came within 2 s, but the servers hold {left} more; again", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=600, help="jobs to put (default 600)")
    ap.add_argument("--consumers", type=int, default=3, help="consumer processes (default 3)")
    a = ap.parse_args()
    if a.jobs < 10 or a.consumers < 2:
        ap.error("at least 10 jobs and 2 consumers")
    if nats_server.find_binary() is None:
        print("remote_demo: nats-server is not installed (./dev deps installs it)", file=sys.stderr)
        return 77  # ctest's skip

    with nats_server.NatsCluster(3) as cluster:
        print(f"three nats-servers with JetStream, routed to each other: pids {cluster.pids()}")
        print(f"  URL given to libshm: {cluster.url}")
        ctx = libshm.get_context(cluster.url, replicas=3, ack_wait=LEASE, request_timeout=10.0)
        jobs = ctx.JoinableQueue(lease=LEASE, name="demo-jobs")
        done = ctx.Queue(name="demo-done")
        stop = ctx.Event(name="demo-stop")
        ready = ctx.Queue(name="demo-ready")
        print(f"  queue {jobs.name!r}: 3 replicas, a job leased for {LEASE:g} s until task_done()")

        ps = [ctx.Process(target=consumer, args=(ctx, jobs, done, stop, ready, i)) for i in range(a.consumers)]
        try:
            return run(a, cluster, ctx, jobs, done, stop, ready, ps)
        finally:
            for p in ps:  # a step that failed for good leaves none behind
                if p.is_alive():
                    p.kill()
                    p.join()


def run(a, cluster, ctx, jobs, done, stop, ready, ps):
    """Start the consumers, put the jobs, kill a server and a consumer, and
    count what was done; 0 when nothing was lost."""
    for p in ps:
        p.start()
    for _ in ps:
        ready.get(timeout=CAP)
    print(f"{a.consumers} consumer processes connected: pids {[p.pid for p in ps]}")

    killed_server = killed_consumer = None
    t0 = time.monotonic()
    for i in range(a.jobs):
        retrying(f"put {i}", jobs.put, i)
        if i == a.jobs // 3:
            killed_server = cluster.members[1]
            print(f"after {i + 1} jobs put: SIGKILL nats-server {killed_server.name} (pid {killed_server.proc.pid})")
            cluster.kill(1)
        if i == a.jobs // 2:
            killed_consumer = ps[0]
            print(f"after {i + 1} jobs put: SIGKILL consumer 0 (pid {killed_consumer.pid})")
            os.kill(killed_consumer.pid, signal.SIGKILL)
    print(f"all {a.jobs} jobs put in {time.monotonic() - t0:.1f} s; waiting for every job to be done (join)")
    if not retrying("join", jobs.join, timeout=CAP):
        print("remote_demo: jobs still unfinished after the cap", file=sys.stderr)
    retrying("stop", stop.set)
    for p in ps:
        p.join(CAP)
        if p.is_alive():
            p.kill()
            p.join()

    recorded = drain(done)
    seen = {}
    for job, who in recorded:
        seen.setdefault(job, []).append(who)
    lost = [j for j in range(a.jobs) if j not in seen]
    twice = {j: w for j, w in seen.items() if len(w) > 1}
    by = {i: sum(1 for _, w in recorded if w == i) for i in range(a.consumers)}
    print()
    print(f"jobs put:             {a.jobs}")
    print(f"records of jobs done: {len(recorded)}  (per consumer: {by}; consumer 0 was killed)")
    print(f"distinct jobs done:   {len(seen)}")
    again = f"  (job: by consumers {dict(sorted(twice.items())[:10])})" if twice else ""
    print(f"delivered again:      {len(twice)} recorded twice, their lease out before task_done(){again}")
    print(f"lost:                 {len(lost)}" + (f"  (jobs {lost[:10]})" if lost else ""))
    for name in ("demo-jobs", "demo-done", "demo-stop", "demo-ready"):
        retrying("remove", ctx.remove, name)
    print("stopping the servers")
    return 0 if not lost and len(seen) == a.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
