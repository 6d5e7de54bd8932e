"""Pool across hosts: multiprocessing.Pool's API on a JetStream work queue.

    ctx = libshm.get_context("nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222")
    with ctx.Pool(4, name="render") as pool:      # 4 workers here ...
        print(pool.map(render, frames))

    # ... and more on any other host, for as long as the pool runs:
    #   python3 -m libshm.remote_pool nats://10.0.0.1:4222,... render --processes 8

The pool's tasks go to a remote JoinableQueue; a worker takes one at a time
(nothing fetched ahead), holds it on a lease that it renews while the task
runs, sends the result back on a remote Queue, then acknowledges the task.
A worker that dies or is cut off mid-task stops renewing: a lease later
(``lease=``, 10 s by default) the task is delivered again, to any worker on
any host, up to ``max_retries`` more times (3 by default). Past that, that
task alone fails with WorkerLostError; every other task completes. Local
workers that die are replaced.

Tasks run at least once: a task whose worker died after it had finished
(before it acknowledged) runs again, and its result is taken once.
Functions and arguments travel pickled, so a worker on another host must be
able to import the function (as for multiprocessing's spawn). Liveness
across hosts is a time-out: a task is run again only once its lease has
run out.

The pool removes its objects from the servers when it is joined or
terminated; workers elsewhere then exit, as they do when the pool's
process dies (its ownership, a remote Lock on the same lease, runs out).
"""

import argparse
import itertools
import os
import pickle
import socket
import sys
import threading
import time
import uuid
import warnings
from multiprocessing import TimeoutError  # noqa: F401  (re-exported, as multiprocessing.pool has it)
from multiprocessing.pool import ExceptionWithTraceback, MaybeEncodingError

from . import _core
from .remote import _store as _remote_store
from .pool import (_APPLY, _CLOSE, _MAP, _RUN, _STARMAP, _TERMINATE, AsyncResult, IMapIterator,
                   IMapUnorderedIterator, MapResult, WorkerLostError)

__all__ = ["Pool", "serve", "WorkerLostError"]

_IDLE = 1.0  # seconds a worker waits for a task before it checks whether the pool is still there
_MAX_TASKS = 1 << 20  # tasks waiting at once; a submit beyond waits for room


# ---- the worker --------------------------------------------------------------------

def _run_chunk(kind, func, items):
    """(values, errors): errors is None, or {0: the exception, with its traceback}."""
    try:
        if kind == _APPLY:
            args, kwds = items
            return [func(*args, **kwds)], None
        if kind == _STARMAP:
            return [func(*x) for x in items], None
        return [func(x) for x in items], None
    except Exception as e:
        return [], {0: ExceptionWithTraceback(e, e.__traceback__)}


class _Renewer:
    """Renews a task's lease every third of it while the task runs."""

    def __init__(self, lease, every):
        self._lease, self._every, self._stop = lease, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self._every):
            try:
                self._lease.extend()
            except Exception:  # the servers will tell the ack; a lost lease means a rerun, not a loss
                pass

    def stop(self):
        self._stop.set()
        self._thread.join()


def _pool_gone(stop, owner):
    """True once the pool is joined or terminated (its stop event set, or
    removed with the rest of it), or its process died (its ownership no
    longer renewed). Servers that do not answer are not a verdict: the
    workers wait through an outage."""
    try:
        if _remote_store(stop._spec).kind(stop.name) is None or stop.is_set():
            return True
        if owner.acquire(False):  # free: the pool's process no longer renews it
            owner.release()
            return True
        return False
    except _core.NotFound:
        return True
    except Exception:
        return False


def _worker(objects, initializer, initargs, maxtasks):
    tasks, results, stop, owner, lease_s = objects
    if initializer is not None:
        initializer(*initargs)
    h = tasks._h
    h.prefetch = 1  # one task at a time: none waits here, leased, while this one runs
    done = 0
    while maxtasks is None or done < maxtasks:
        try:
            lease = h.get(_IDLE)
        except _core.NotFound:  # the pool removed its queue
            return
        except Exception:  # the servers did not answer (or the queue is being removed): look again
            lease = None
        if lease is None:
            if _pool_gone(stop, owner):
                return
            continue
        job, index, kind, func, items, cs, tries = pickle.loads(lease.item)
        if lease.deliveries > tries:
            # Each of its tries ended with its worker gone before it could
            # acknowledge: this task fails alone.
            lost = WorkerLostError(
                f"task {index} of job {job} ran {lease.deliveries - 1} times and each time its worker was lost "
                f"(killed, or cut off from the servers for longer than the {lease_s:g} s lease)")
            results.put((job, index, cs, [], {0: lost}, 0.0))
            lease.ack()
            continue
        renewer = _Renewer(lease, lease_s / 3)
        t0 = time.perf_counter()
        try:
            values, errors = _run_chunk(kind, func, items)
        finally:
            renewer.stop()
        spent = time.perf_counter() - t0
        try:
            results.put((job, index, cs, values, errors, spent))
        except Exception as e:  # a value that does not pickle: this task fails with MaybeEncodingError
            value = values[0] if kind == _APPLY else values
            error = ExceptionWithTraceback(MaybeEncodingError(e, value), None)
            results.put((job, index, cs, [], {0: error}, spent))
        lease.ack()
        done += 1


def _worker_main(objects, initializer, initargs, maxtasks):
    try:
        _worker(objects, initializer, initargs, maxtasks)
    except KeyboardInterrupt:
        pass


# ---- the pool -----------------------------------------------------------------------

class Pool:
    """multiprocessing.Pool across hosts (see the module's documentation).

    processes: workers this process starts (by spawn); 0 for none, when
    workers on other hosts (``serve()``, ``python3 -m libshm.remote_pool``)
    do the work. Keyword-only: ``ctx`` (the remote context), ``name`` (what
    workers elsewhere join; a fresh one by default), ``lease`` (seconds a
    worker may go silent before its task runs again, 10), ``max_retries``
    (3, as the local Pool's)."""

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, *, ctx, name=None,
                 lease=10.0, max_retries=3):
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 0:
            raise ValueError("Number of processes must be at least 0")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if lease <= 0:
            raise ValueError("lease must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be at least 0")
        self._ctx = ctx
        self._name = name or "pool-" + uuid.uuid4().hex[:16]
        self._processes = processes
        self._initializer, self._initargs, self._maxtasks = initializer, initargs, maxtasksperchild
        self._tries = max_retries + 1
        self._lease = float(lease)
        self._jobs = {}
        self._job_ids = itertools.count()
        self._state = _TERMINATE  # until it is set up
        self._workers = []
        self._lock = threading.Lock()
        # The owner's hold is renewed by this process's client, on the same
        # lease as the tasks: workers elsewhere see it free once it died.
        self._owner = ctx.Lock(name=self._name + ".owner", lease=self._lease)
        if not self._owner.acquire(False):
            raise _core.AlreadyExists(17, f"a pool named {self._name!r} is running on {ctx.servers}")
        self._tasks = ctx.JoinableQueue(_MAX_TASKS, name=self._name + ".tasks", lease=self._lease,
                                        max_deliveries=self._tries + 1)
        self._results = ctx.Queue(name=self._name + ".results")
        self._stop = ctx.Event(name=self._name + ".stop")
        self._stop.clear()
        self._objects = (self._tasks, self._results, self._stop, self._owner, self._lease)
        # What workers on other hosts open by the pool's name.
        conf = ctx.dict(name=self._name + ".conf")
        conf["objects"] = pickle.dumps(self._objects)
        conf["worker"] = pickle.dumps((initializer, initargs, maxtasksperchild))
        self._conf = conf
        self._state = _RUN
        for _ in range(processes):
            self._start_worker()
        self._handler = threading.Thread(target=self._handle, name=f"libshm pool {self._name}", daemon=True)
        self._handler.start()

    @property
    def name(self):
        """The pool's name on the servers: what workers on other hosts join."""
        return self._name

    def _start_worker(self):
        p = self._ctx.Process(target=_worker_main, args=(self._objects, self._initializer, self._initargs,
                                                          self._maxtasks), daemon=True)
        p.start()
        self._workers.append(p)

    def _check_workers(self):
        # A local worker that exited (maxtasksperchild, or killed) is
        # replaced while the pool runs; a task it held runs again a lease
        # later.
        for p in list(self._workers):
            if p.exitcode is not None:
                self._workers.remove(p)
                if self._state == _RUN or (self._state == _CLOSE and self._jobs):
                    self._start_worker()

    def _handle(self):
        last_check = 0.0
        while self._state != _TERMINATE:
            try:
                got = self._results.get(timeout=0.2)
            except Exception:
                got = None
                if self._state == _TERMINATE:
                    break
            if got is not None:
                job_id, index, cs, values, errors, spent = got
                job = self._jobs.get(job_id)
                if job is not None:
                    job._set_parcel(index, 1, cs, values, errors, None, spent)
            now = time.monotonic()
            if now - last_check >= 0.2:
                last_check = now
                with self._lock:
                    if self._state != _TERMINATE:
                        self._check_workers()

    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _send(self, job, kind, func, chunks, cs):
        try:
            # All pickled before any is sent: a task that does not pickle
            # refuses the whole job, and sends nothing.
            data = [pickle.dumps((job._job, index, kind, func, items, cs, self._tries), pickle.HIGHEST_PROTOCOL)
                    for index, items in enumerate(chunks)]
        except BaseException:
            self._jobs.pop(job._job, None)
            raise
        # Pipelined: sent without a round trip each (blocking while the
        # queue is full, in order), and all stored when flush() returns, as
        # when each put waited.
        with self._tasks._put_lock:
            h = self._tasks._h
            for d in data:
                h.put_async(d, None)
            h.flush()

    @staticmethod
    def _chunked(items, chunksize):
        return [items[i:i + chunksize] for i in range(0, len(items), chunksize)]

    def _default_chunksize(self, n):
        workers = max(self._processes, 1)
        chunksize, extra = divmod(n, workers * 4)
        return chunksize + 1 if extra else max(chunksize, 1)

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        self._check_running()
        job = AsyncResult(self, callback, error_callback, 1)
        self._send(job, _APPLY, func, [(tuple(args), dict(kwds))], 1)
        return job

    def apply(self, func, args=(), kwds={}):
        return self.apply_async(func, args, kwds).get()

    def _map_async(self, func, iterable, kind, chunksize, callback, error_callback):
        self._check_running()
        items = list(iterable)
        if chunksize is None:
            chunksize = self._default_chunksize(len(items))
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        chunks = self._chunked(items, chunksize)
        job = MapResult(self, len(chunks), callback, error_callback, len(items), chunksize)
        self._send(job, kind, func, chunks, chunksize)
        return job

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, _MAP, chunksize, callback, error_callback)

    def map(self, func, iterable, chunksize=None):
        return self.map_async(func, iterable, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, _STARMAP, chunksize, callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        return self.starmap_async(func, iterable, chunksize).get()

    def _imap(self, cls, func, iterable, chunksize):
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        chunks = self._chunked(list(iterable), chunksize)
        it = cls(self)
        self._send(it, _MAP, func, chunks, chunksize)
        it._set_length(len(chunks))
        return it

    def imap(self, func, iterable, chunksize=1):
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def close(self):
        """No more tasks; join() then waits for those submitted."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self):
        """Stop at once: local workers are killed, workers elsewhere stop
        at their next task, and the pool's objects leave the servers."""
        with self._lock:
            if self._state == _TERMINATE:
                return
            self._state = _TERMINATE
        self._shutdown(kill=True)

    def join(self):
        """After close(): wait until every submitted task is done, then stop
        the workers and remove the pool's objects from the servers."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        if self._state == _CLOSE:
            while self._jobs:
                time.sleep(0.01)
            with self._lock:
                if self._state == _TERMINATE:
                    return
                self._state = _TERMINATE
            self._shutdown(kill=False)
        self._handler.join()

    def _shutdown(self, kill):
        try:
            self._stop.set()
        except Exception:
            pass
        for p in self._workers:
            if kill:
                p.kill()
            p.join(_IDLE * 10 if not kill else None)
            if p.exitcode is None:  # a worker stuck in a task of its own: it has no more to do
                p.kill()
                p.join()
        self._workers = []
        if threading.current_thread() is not self._handler:
            self._handler.join()
        # The stop event goes first: a worker elsewhere that looks for it
        # and finds no such object knows the pool is gone.
        for obj in (self._conf, self._stop, self._tasks, self._results):
            try:
                self._ctx.remove(obj)
            except Exception:
                pass
        try:
            self._owner.release()
            self._ctx.remove(self._owner)
        except Exception:
            pass

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        self.terminate()

    def __repr__(self):
        return f"<libshm remote Pool {self._name!r} state={self._state} local workers={len(self._workers)}>"

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn=warnings.warn):
        if getattr(self, "_state", _TERMINATE) == _RUN:
            _warn(f"unclosed running remote pool {self!r}", ResourceWarning, source=self)


# ---- workers on other hosts -------------------------------------------------------------

def serve(ctx, name, processes=1):
    """Run `processes` workers of the pool `name` (on ctx's servers) until
    the pool is joined or terminated, or its process dies. Returns the
    number of workers started."""
    conf = ctx.dict(name=name + ".conf")
    try:
        objects = pickle.loads(conf["objects"])
        initializer, initargs, maxtasks = pickle.loads(conf["worker"])
    except KeyError:
        raise _core.NotFound(2, f"no pool named {name!r} runs on {ctx.servers}") from None
    # The objects as this host reaches the servers.
    for obj in objects[:4]:
        obj._setup(ctx._spec, obj._name, obj._options)
    workers = []
    started = 0
    tasks, results, stop, owner, _ = objects
    while not _pool_gone(stop, owner):
        workers = [p for p in workers if p.exitcode is None]
        while len(workers) < processes:  # a worker that exited (maxtasksperchild, killed) is replaced
            p = ctx.Process(target=_worker_main, args=(objects, initializer, initargs, maxtasks), daemon=True)
            p.start()
            workers.append(p)
            started += 1
        time.sleep(_IDLE)
    for p in workers:
        p.join()
    return started


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python3 -m libshm.remote_pool",
        description="Run workers for a libshm Pool across hosts (ctx.Pool(name=...)) until that pool is "
                    "joined or terminated, or its process dies. The pool's functions must be importable here.")
    ap.add_argument("servers", help="the NATS servers, as given to libshm.get_context() (nats://host:4222,...)")
    ap.add_argument("name", help="the pool's name (Pool.name)")
    ap.add_argument("-p", "--processes", type=int, default=os.cpu_count() or 1,
                    help="workers to run on this host (default: the number of CPUs)")
    ap.add_argument("--request-timeout", type=float, default=5.0, help="seconds any one request may wait (5)")
    a = ap.parse_args(argv)
    if a.processes < 1:
        ap.error("--processes must be at least 1")
    from .context import get_context
    ctx = get_context(a.servers, request_timeout=a.request_timeout)
    print(f"libshm pool {a.name!r}: {a.processes} workers on {socket.gethostname()}", file=sys.stderr, flush=True)
    try:
        started = serve(ctx, a.name, a.processes)
    except _core.NotFound as e:
        print(f"libshm pool: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"libshm pool {a.name!r}: done ({started} workers started here)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
