"""Pool and ProcessPoolExecutor: multiprocessing.Pool's and
concurrent.futures' API on a queue that delivers each task at least once.

A worker killed in the middle of a task (SIGKILL, the OOM killer, a crash)
does not hang the pool, as multiprocessing.Pool does, nor break it, as
ProcessPoolExecutor does: its task goes back to the front of the task queue
(libshm.WorkQueue) and runs again on another worker, up to ``max_retries``
more times. Past that, that task alone fails with WorkerLostError, naming the
worker, the signal and the number of tries; every other task completes. The
dead worker is replaced.

Tasks run at least once: a task whose worker died after it had finished
(before it acknowledged) runs again, and its result is taken once. A task
with side effects outside the pool should therefore be idempotent, or
check for itself whether it already ran.

Workers are started with multiprocessing's start method (``context=``, as
multiprocessing.Pool takes it), and exit when the pool's process dies.
"""

import concurrent.futures
import ctypes
import itertools
import os
import pickle
import queue
import signal
import threading
import time
import warnings
import weakref
import multiprocessing
import multiprocessing.util
from multiprocessing.pool import ExceptionWithTraceback, MaybeEncodingError

from . import _arena, _core
from .queues import Queue as _Queue

__all__ = ["Pool", "ProcessPoolExecutor", "WorkerLostError", "AsyncResult"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
_MAP, _STARMAP, _APPLY = 0, 1, 2
_POLL = 0.05  # how often the pool's thread looks at its workers


class WorkerLostError(Exception):
    """A task whose worker died every time it ran it (max_retries + 1 times)."""


# ---- the worker --------------------------------------------------------------------

def _die_with_parent(parent):
    # PR_SET_PDEATHSIG: SIGKILL when the parent dies (and it may have
    # died already, before this call).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover
        pass
    if os.getppid() != parent:
        os._exit(1)


def _run(kind, func, chunk):
    if kind == _MAP:
        return [func(x) for x in chunk]
    if kind == _STARMAP:
        return [func(*x) for x in chunk]
    args, kwds = chunk
    return func(*args, **kwds)


def _worker(segment, tasks_name, results, parent, initializer, initargs, maxtasks):
    _die_with_parent(parent)
    tasks = _core.WorkQueue.open(_arena.segment(segment), tasks_name)
    if initializer is not None:
        initializer(*initargs)
    done = 0
    while maxtasks is None or done < maxtasks:
        try:
            lease, data, _deliveries = tasks.get()
        except ValueError:  # closed, and every task done
            break
        except queue.Empty:  # pragma: no cover (a blocking get returns an item or raises ValueError)
            continue
        job, index, kind, func, chunk = pickle.loads(data)
        try:
            out = (True, _run(kind, func, chunk))
        except Exception as e:
            out = (False, ExceptionWithTraceback(e, e.__traceback__))
        try:
            results.put((job, index, out))
        except Exception as e:  # the result does not pickle
            wrapped = MaybeEncodingError(e, out[1])
            results.put((job, index, (False, ExceptionWithTraceback(wrapped, None))))
        tasks.ack(lease)
        done += 1


# ---- results ------------------------------------------------------------------------

class AsyncResult:
    """multiprocessing.pool.AsyncResult: get(timeout), wait(timeout), ready(), successful()."""

    def __init__(self, pool, callback, error_callback, parts):
        self._pool = pool
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._parts = parts          # how many results make this one
        self._values = [None] * parts
        self._seen = [False] * parts
        self._left = parts
        self._error = None
        self._job = next(pool._job_ids)
        pool._jobs[self._job] = self
        if parts == 0:
            self._finish()

    def ready(self):
        return self._event.is_set()

    def successful(self):
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout=None):
        self._event.wait(timeout)

    def get(self, timeout=None):
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._error is not None:
            raise self._error
        return self._value()

    def _value(self):
        return self._values[0]

    def _set(self, index, ok, value):
        """A result from a worker, taken once (a task that ran twice sends two)."""
        if self._seen[index] or self.ready():
            return
        self._seen[index] = True
        if ok:
            self._values[index] = value
        elif self._error is None:
            self._error = value
        self._left -= 1
        if self._left == 0 or (not ok and self._fail_fast()):
            self._finish()

    def _fail_fast(self):
        return False

    def _finish(self):
        self._pool._jobs.pop(self._job, None)
        self._event.set()
        try:
            if self._error is None:
                if self._callback is not None:
                    self._callback(self._value())
            elif self._error_callback is not None:
                self._error_callback(self._error)
        finally:
            self._pool = None


ApplyResult = AsyncResult


class MapResult(AsyncResult):
    def __init__(self, pool, chunks, callback, error_callback):
        super().__init__(pool, callback, error_callback, chunks)

    def _value(self):
        return list(itertools.chain.from_iterable(self._values))

    def _fail_fast(self):
        return True  # the first error is the result, as multiprocessing's map has it


class IMapIterator:
    """multiprocessing.pool.IMapIterator: results in order, next(timeout)."""

    _ordered = True

    def __init__(self, pool):
        self._pool = pool
        self._cond = threading.Condition(threading.Lock())
        self._ready = {}       # index -> (ok, list of values)
        self._order = []       # unordered: indexes as they came
        self._next = 0         # the next chunk to hand out
        self._buffer = []      # values of the chunk being handed out
        self._chunks = None    # set once every chunk has been submitted
        self._seen = set()
        self._job = next(pool._job_ids)
        pool._jobs[self._job] = self

    def __iter__(self):
        return self

    def _set(self, index, ok, value):
        with self._cond:
            if index in self._seen:
                return
            self._seen.add(index)
            self._ready[index] = (ok, value)
            self._order.append(index)
            self._cond.notify_all()

    def _set_length(self, chunks):
        with self._cond:
            self._chunks = chunks
            self._cond.notify_all()

    def _done(self):
        return self._chunks is not None and self._next >= self._chunks

    def next(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._buffer:
                if self._done():
                    self._pool._jobs.pop(self._job, None)
                    raise StopIteration
                key = self._next if self._ordered else (self._order[0] if self._order else None)
                if key is not None and key in self._ready:
                    if not self._ordered:
                        self._order.pop(0)
                    ok, value = self._ready.pop(key)
                    self._next += 1
                    if not ok:
                        raise value
                    self._buffer = list(value)
                    self._buffer.reverse()
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise multiprocessing.TimeoutError
                self._cond.wait(left)
            return self._buffer.pop()

    __next__ = next


class IMapUnorderedIterator(IMapIterator):
    _ordered = False


# ---- the pool -----------------------------------------------------------------------

class Pool:
    """multiprocessing.Pool(processes, initializer, initargs, maxtasksperchild,
    context), plus max_retries (3): how many more times a task runs after its
    worker died running it."""

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None, *,
                 max_retries=3):
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._ctx = context or multiprocessing.get_context()
        self._processes = processes
        self._initializer, self._initargs = initializer, tuple(initargs)
        self._maxtasks = maxtasksperchild
        self.max_retries = max_retries
        self._state = _RUN
        self._jobs = {}
        self._job_ids = itertools.count()
        self._exits = {}  # pid -> exit code, of workers that have gone
        capacity = max(1024, 64 * processes)
        seg = _arena.new_segment(_arena.new_name("pool"), (64 << 20) + capacity * 64)
        self._segment = seg.name
        self._tasks = _core.WorkQueue.open_or_create(seg, "tasks", capacity, max_retries + 1)
        self._results = _Queue()
        self._pool = []
        for _ in range(processes):
            self._start_worker()
        self._feed = queue.SimpleQueue()  # (job, chunks) for the feeder thread
        self._feeder = threading.Thread(target=self._feed_tasks, daemon=True, name="libshm.Pool feeder")
        self._handler = threading.Thread(target=self._handle, daemon=True, name="libshm.Pool handler")
        self._feeder.start()
        self._handler.start()
        # At exit, before libshm lets go of its segments (as multiprocessing's
        # Pool is terminated then).
        # (Through a weak reference: an unreferenced pool is collected.)
        multiprocessing.util.Finalize(self, _terminate_if_alive, args=(weakref.ref(self),), exitpriority=15)

    # ---- workers ----
    def _start_worker(self):
        p = self._ctx.Process(target=_worker, daemon=True,
                              args=(self._segment, "tasks", self._results, os.getpid(), self._initializer,
                                    self._initargs, self._maxtasks))
        p.name = p.name.replace("Process", "PoolWorker")
        p.start()
        self._pool.append(p)

    def _check_workers(self):
        """Reap workers that have gone: deliver a dead one's task again (or
        fail it, past max_retries), and start another in its place."""
        gone = [p for p in self._pool if p.exitcode is not None]
        if not gone:
            return
        for p in gone:
            self._pool.remove(p)
            self._exits[p.pid] = p.exitcode
            p.join()
        self._tasks.recover()
        while True:
            dead = self._tasks.get_dead()
            if dead is None:
                break
            self._fail_dead_letter(*dead)
        if self._state == _RUN or (self._state == _CLOSE and self._tasks.unfinished):
            while len(self._pool) < self._processes:
                self._start_worker()

    def _fail_dead_letter(self, data, deliveries, pid):
        job, index, _kind, _func, _chunk = pickle.loads(data)
        code = self._exits.get(pid)
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        elif code is not None:
            how = f"exited with code {code}"
        else:
            how = "gone"
        err = WorkerLostError(f"task {index} of job {job}: its worker (pid {pid}) was {how}, on each of "
                              f"{deliveries} tries (max_retries={self.max_retries})")
        target = self._jobs.get(job)
        if target is not None:
            target._set(index, False, err)

    # ---- threads ----
    def _feed_tasks(self):
        while True:
            item = self._feed.get()
            if item is None or not self._feed_job(*item):
                return
            item = None  # nothing of a job kept once it is fed

    def _feed_job(self, job, kind, func, chunks):
        """Put a job's chunks on the task queue; False if the pool was terminated meanwhile."""
        ordered = isinstance(job, IMapIterator)
        n = 0
        try:
            for n, chunk in enumerate(chunks, 1):
                data = pickle.dumps((job._job, n - 1, kind, func, chunk), pickle.HIGHEST_PROTOCOL)
                while True:
                    try:
                        self._tasks.put(data, True, _POLL)
                        break
                    except queue.Full:
                        if self._state == _TERMINATE:
                            return False
        except Exception as e:  # the iterable, or pickling, failed: that job fails
            job._set(n if ordered else 0, False, e)
            if ordered:
                job._set_length(n + 1)
            return True
        if ordered:
            job._set_length(n)
        return True

    def _handle(self):
        last = 0.0
        while True:
            try:
                job, index, (ok, value) = self._results.get(timeout=_POLL)
                target = self._jobs.get(job)
                if target is not None:
                    target._set(index, ok, value)
                del target, value  # a result is kept by its job alone
            except queue.Empty:
                pass
            now = time.monotonic()
            if now - last >= _POLL:
                last = now
                self._check_workers()
                if self._state == _TERMINATE:
                    return
                if self._state == _CLOSE and not self._pool and self._results.empty():
                    return

    # ---- submitting ----
    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _submit(self, job, kind, func, chunks):
        self._feed.put((job, kind, func, chunks))
        return job

    @staticmethod
    def _chunks(iterable, chunksize):
        it = iter(iterable)
        while True:
            chunk = tuple(itertools.islice(it, chunksize))
            if not chunk:
                return
            yield chunk

    def _map_async(self, func, iterable, kind, chunksize, callback, error_callback):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            if extra:
                chunksize += 1
        if chunksize < 1:
            chunksize = 1
        chunks = (len(iterable) + chunksize - 1) // chunksize
        job = MapResult(self, chunks, callback, error_callback)
        return self._submit(job, kind, func, self._chunks(iterable, chunksize))

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        self._check_running()
        job = AsyncResult(self, callback, error_callback, 1)
        return self._submit(job, _APPLY, func, iter([(tuple(args), dict(kwds))]))

    def apply(self, func, args=(), kwds={}):
        return self.apply_async(func, args, kwds).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, _MAP, chunksize, callback, error_callback)

    def map(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, _MAP, chunksize, None, None).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, _STARMAP, chunksize, callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, _STARMAP, chunksize, None, None).get()

    def _imap(self, cls, func, iterable, chunksize):
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        job = cls(self)
        return self._submit(job, _MAP, func, self._chunks(iterable, chunksize))

    def imap(self, func, iterable, chunksize=1):
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    # ---- ending ----
    def close(self):
        if self._state == _RUN:
            self._state = _CLOSE
            self._feed.put(None)
            self._feeder.join()
            self._tasks.close()

    def terminate(self):
        if self._state == _TERMINATE and not self._handler.is_alive():
            return
        self._state = _TERMINATE
        self._feed.put(None)
        try:
            self._tasks.close()
        except Exception:  # pragma: no cover
            pass
        for p in list(self._pool):
            if p.exitcode is None:
                p.kill()
        self._handler.join()
        for p in self._pool:
            p.join()
        self._feeder.join()

    def join(self):
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._handler.join()
        for p in self._pool:
            p.join()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        self.terminate()

    def __repr__(self):
        return f"<{type(self).__name__} state={self._state} pool_size={self._processes}>"

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn=warnings.warn):
        if getattr(self, "_state", None) == _RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)


def _terminate_if_alive(ref):
    pool = ref()
    if pool is not None:
        pool.terminate()


# ---- concurrent.futures ----------------------------------------------------------

class ProcessPoolExecutor(concurrent.futures.Executor):
    """concurrent.futures.ProcessPoolExecutor(max_workers, mp_context,
    initializer, initargs, max_tasks_per_child), plus max_retries: a worker
    that dies fails nothing but, past max_retries, the task it was running
    (WorkerLostError); the executor is never broken."""

    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(), *,
                 max_tasks_per_child=None, max_retries=3):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._pool = Pool(max_workers, initializer, initargs, max_tasks_per_child, mp_context,
                          max_retries=max_retries)
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            f = concurrent.futures.Future()
            f.set_running_or_notify_cancel()

            def done(value):
                if not f.done():
                    f.set_result(value)

            def failed(e):
                if not f.done():
                    f.set_exception(e)

            self._pool.apply_async(fn, args, kwargs, done, failed)
            return f

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if timeout is not None:
            end = time.monotonic() + timeout
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            it = self._pool._imap(IMapIterator, _Star(fn), zip(*iterables), chunksize)

        def results():
            while True:
                try:
                    yield it.next(None if timeout is None else max(0.0, end - time.monotonic()))
                except StopIteration:
                    return
                except multiprocessing.TimeoutError:
                    raise concurrent.futures.TimeoutError from None

        return results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if cancel_futures:
            self._pool.terminate()
            return
        self._pool.close()
        if wait:
            self._pool.join()


class _Star:
    """fn(*args), picklable when fn is."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, args):
        return self.fn(*args)
