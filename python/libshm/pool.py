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

import collections
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
_REAP_WAIT = 5.0  # the longest wait for a dead worker's exit status (it comes at once)

# Parcels. The feeder sends a job's chunks to the workers in parcels of
# several consecutive chunks, one task queue item each, so that a tiny task
# does not pay a queue round trip of its own; the worker returns a parcel's
# results in one message. A parcel is sized from what the job's chunks have
# cost so far (as joblib's auto batching does): about _PARCEL_SECONDS of
# work, at most _PARCEL_CHUNKS chunks and _PARCEL_BYTES bytes, and at most
# an eighth of what is left of the job per worker, so that the last chunks
# still spread over the workers. A job's first chunks go one to a parcel,
# until one of them has come back with its cost; a chunk that takes longer
# than _PARCEL_SECONDS always goes alone.
#
# Retries stay per chunk. A worker writes, in its slot of a shared array,
# which chunk of which parcel it is running. The task queue delivers a
# parcel once (max_deliveries 1): when its worker dies, the parcel becomes a
# dead letter, and the pool's thread reads the dead worker's slot: the chunk
# it was running is charged one try and sent again alone; the chunks before
# and after it are sent again, uncharged, together. (A worker that died
# outside any chunk, between taking the parcel and starting it or while
# sending its results, charges every chunk of it, and they go alone.)
_PARCEL_SECONDS = 0.002
_PARCEL_CHUNKS = 1024
_PARCEL_BYTES = 64 << 10
_SLOT_SHIFT = 16      # a slot holds parcel id << 16 | the chunk's place in it
_SLOT_OUTSIDE = 0xFFFF  # ... or this place: not in any chunk


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


def _run_parcel(slots, w, parcel, kind, func, n, items, cs):
    """(values, errors): the values of the chunks that succeeded, in order,
    and {place: exception} of those that raised."""
    base = parcel << _SLOT_SHIFT
    values = []
    errors = None
    if kind == _APPLY:
        slots[w] = base
        args, kwds = items[0]
        try:
            values.append(func(*args, **kwds))
        except Exception as e:
            errors = {0: ExceptionWithTraceback(e, e.__traceback__)}
        return values, errors
    star = kind == _STARMAP
    append = values.append
    for j in range(n):
        slots[w] = base + j
        mark = len(values)
        try:
            if cs == 1:
                append(func(*items[j]) if star else func(items[j]))
            else:
                chunk = items[j * cs:(j + 1) * cs]
                values.extend(itertools.starmap(func, chunk) if star else map(func, chunk))
        except Exception as e:
            del values[mark:]
            if errors is None:
                errors = {}
            errors[j] = ExceptionWithTraceback(e, e.__traceback__)
    return values, errors


def _chunk_lengths(kind, n, items, cs, errors):
    """How many values each chunk of a parcel gave (0 for one that raised)."""
    if kind == _APPLY:
        return [0 if errors else 1]
    return [0 if errors and j in errors else len(items[j * cs:(j + 1) * cs]) for j in range(n)]


def _worker(segment, tasks_name, results, parent, slot, initializer, initargs, maxtasks):
    _die_with_parent(parent)
    seg = _arena.segment(segment)
    tasks = _core.WorkQueue.open(seg, tasks_name)
    slots = memoryview(_core.SharedBlock.open(seg, "slots")).cast("q")
    slots[slot] = _SLOT_OUTSIDE
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
        parcel, job, kind, func, first, n, items, cs, _tries = pickle.loads(data)
        t0 = time.perf_counter()
        values, errors = _run_parcel(slots, slot, parcel, kind, func, n, items, cs)
        spent = time.perf_counter() - t0
        slots[slot] = parcel << _SLOT_SHIFT | _SLOT_OUTSIDE
        try:
            lengths = _chunk_lengths(kind, n, items, cs, errors) if errors else None
            results.put((job, first, n, cs, values, errors, lengths, spent))
        except Exception:  # a result does not pickle: that chunk fails with MaybeEncodingError
            lengths = _chunk_lengths(kind, n, items, cs, errors)
            kept, errors, at = [], dict(errors or {}), 0
            for j, k in enumerate(lengths):
                part = values[at:at + k]
                at += k
                if j in errors:
                    continue
                try:
                    pickle.dumps(part, pickle.HIGHEST_PROTOCOL)
                    kept.extend(part)
                except Exception as e:
                    value = part[0] if kind == _APPLY else part
                    errors[j] = ExceptionWithTraceback(MaybeEncodingError(e, value), None)
            results.put((job, first, n, cs, kept, errors, _chunk_lengths(kind, n, items, cs, errors), spent))
        tasks.ack(lease)
        done += n
        slots[slot] = _SLOT_OUTSIDE


# ---- results ------------------------------------------------------------------------

class _Job:
    """What every kind of result has: its id in the pool, which of its
    chunks have come (each is taken once: a chunk that ran twice sends two),
    and what its chunks cost."""

    def _register(self, pool):
        self._job = next(pool._job_ids)
        self._arrived = bytearray()
        self._cost = None   # seconds per chunk, once one has come
        self._cost_known = None  # an Event, while the feeder waits for _cost
        pool._jobs[self._job] = self

    def _has(self, index):
        return index < len(self._arrived) and self._arrived[index]

    def _fresh(self, first, n):
        """Mark chunks first..first+n as come; the list of those new, or True if all are."""
        a = self._arrived
        if len(a) < first + n:
            a.extend(bytes(first + n - len(a)))
        if a.find(1, first, first + n) < 0:
            a[first:first + n] = b"\x01" * n
            return True
        new = {j for j in range(n) if not a[first + j]}
        for j in new:
            a[first + j] = 1
        return new

    def _set_parcel(self, first, n, cs, values, errors, lengths, spent):
        """A parcel's results: the values of chunks first..first+n (of
        `lengths` values each; None: cs each, the last one the rest) except
        those in `errors`."""
        cost = spent / n
        self._cost = cost if self._cost is None else 0.5 * (self._cost + cost)
        waiter = self._cost_known
        if waiter is not None:
            waiter.set()
        fresh = self._fresh(first, n)
        if fresh is True and not errors and self._take_run(first, n, values):
            return
        if lengths is None:
            lengths = [cs] * (n - 1) + [len(values) - (n - 1) * cs]
        at = 0
        for j, k in enumerate(lengths):
            part = values[at:at + k]
            at += k
            if fresh is True or j in fresh:
                if errors and j in errors:
                    self._set(first + j, False, errors[j])
                else:
                    self._set(first + j, True, part)

    def _take_run(self, first, n, values):
        """Take n consecutive chunks' values at once, if this kind can."""
        return False

    def _fail(self, index, error):
        """A chunk that cannot be done (its workers died, or its input failed)."""
        if not self._has(index):
            self._fresh(index, 1)
            self._set(index, False, error)


class AsyncResult(_Job):
    """multiprocessing.pool.AsyncResult: get(timeout), wait(timeout), ready(), successful()."""

    def __init__(self, pool, callback, error_callback, parts=1, value=None):
        self._pool = pool
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._left = parts
        self._value = value
        self._error = None
        self._register(pool)
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
        return self._value

    def _set(self, index, ok, value):
        """Chunk `index`'s outcome: for apply, a list of its one value."""
        if self.ready():
            return
        if not ok:
            self._error = value
            self._finish()
            return
        self._store(index, value)
        self._left -= 1
        if self._left == 0:
            self._finish()

    def _store(self, index, values):
        self._value = values[0]

    def _finish(self):
        self._pool._jobs.pop(self._job, None)
        self._event.set()
        try:
            if self._error is None:
                if self._callback is not None:
                    self._callback(self._value)
            elif self._error_callback is not None:
                self._error_callback(self._error)
        finally:
            self._pool = None


ApplyResult = AsyncResult


class MapResult(AsyncResult):
    """map_async()'s result: the values of `items` items in chunks of
    `chunksize`, in one list; the first error is the result, as in
    multiprocessing."""

    def __init__(self, pool, chunks, callback, error_callback, items=0, chunksize=1):
        self._chunksize = chunksize
        super().__init__(pool, callback, error_callback, chunks, [None] * items)

    def _store(self, index, values):
        at = index * self._chunksize
        self._value[at:at + len(values)] = values

    def _take_run(self, first, n, values):
        if self.ready():
            return True
        at = first * self._chunksize
        self._value[at:at + len(values)] = values
        self._left -= n
        if self._left == 0:
            self._finish()
        return True


class IMapIterator(_Job):
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
        self._count = 0        # chunks come
        self._register(pool)

    def __iter__(self):
        return self

    def _set(self, index, ok, value):
        with self._cond:
            self._ready[index] = (ok, value)
            self._order.append(index)
            self._count += 1
            self._all_came()
            self._cond.notify_all()

    def _set_length(self, chunks):
        with self._cond:
            self._chunks = chunks
            self._all_came()
            self._cond.notify_all()

    def _all_came(self):
        # Then the pool forgets it (as multiprocessing's does), read or not.
        if self._chunks is not None and self._count >= self._chunks:
            self._pool._jobs.pop(self._job, None)

    def _done(self):
        return self._chunks is not None and self._next >= self._chunks

    def next(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._buffer:
                if self._done():
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
        self._parcel_ids = itertools.count(1)
        self._largest_parcel = 0  # chunks (for the tests)
        self._exits = {}       # pid -> exit code, of workers that have gone
        self._last_slot = {}   # pid -> its slot's last value, of workers that have gone
        self._requeue = collections.deque()  # parcels to send again, when there is room
        capacity = max(1024, 64 * processes)
        seg = _arena.new_segment(_arena.new_name("pool"), (64 << 20) + capacity * 64)
        self._segment = seg.name
        self._tasks = _core.WorkQueue.open_or_create(seg, "tasks", capacity, 1)
        self._slots_block = _core.SharedBlock.create(seg, "slots", "q", processes, False, False)
        self._slots = memoryview(self._slots_block).cast("q")
        self._free_slots = list(range(processes))
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
        slot = self._free_slots.pop()
        p = self._ctx.Process(target=_worker, daemon=True,
                              args=(self._segment, "tasks", self._results, os.getpid(), slot, self._initializer,
                                    self._initargs, self._maxtasks))
        p.name = p.name.replace("Process", "PoolWorker")
        p.start()
        p._libshm_slot = slot
        self._pool.append(p)

    def _check_workers(self):
        """Reap workers that have gone, send again the chunks a dead one
        held (or fail them, past max_retries), and start workers in their
        place."""
        gone = [p for p in self._pool if p.exitcode is not None]
        for p in gone:
            self._pool.remove(p)
            self._exits[p.pid] = p.exitcode
            self._last_slot[p.pid] = self._slots[p._libshm_slot]
            self._free_slots.append(p._libshm_slot)
            p.join()
        if gone:
            self._tasks.recover()
        while True:
            dead = self._tasks.get_dead()
            if dead is None:
                break
            self._resend(*dead)
        self._flush_requeue()
        if self._state == _RUN or (self._state == _CLOSE and not self._tasks.closed) or self._tasks.unfinished:
            if self._state != _TERMINATE:
                while len(self._pool) < self._processes:
                    self._start_worker()

    def _slot_of(self, pid):
        if pid in self._last_slot:
            return self._last_slot[pid]
        for p in self._pool:  # dead, not yet reaped: its slot is not yet another's
            if p.pid == pid:
                return self._slots[p._libshm_slot]
        return None

    def _resend(self, data, _deliveries, pid):
        """A parcel whose worker died: charge the chunk it was running one
        try, and send it again alone, and the others again together."""
        parcel, job, kind, func, first, n, items, cs, tries = pickle.loads(data)
        target = self._jobs.get(job)
        if target is None:
            return  # done already (failed, or every chunk came)
        tries = list(tries) if tries else [0] * n
        at = self._slot_of(pid)
        if at is not None and at >> _SLOT_SHIFT == parcel and (at & _SLOT_OUTSIDE) < n:
            culprits = {at & _SLOT_OUTSIDE}
        else:
            culprits = set(range(n))
        for j in culprits:
            tries[j] += 1
        run = []  # consecutive uncharged chunks, sent together

        def send(js):
            if js:
                a, b = js[0], js[-1] + 1
                part = items[0:1] if kind == _APPLY else items[a * cs:b * cs]
                t = tuple(tries[a:b])
                self._requeue.append(pickle.dumps(
                    (next(self._parcel_ids), job, kind, func, first + a, b - a, part, cs, t if any(t) else None),
                    pickle.HIGHEST_PROTOCOL))

        for j in range(n):
            if target._has(first + j) or (run and self._maxtasks is not None):
                send(run)  # (one chunk a parcel, under maxtasksperchild)
                run = []
            if target._has(first + j):
                continue
            elif j in culprits:
                send(run)
                run = []
                if tries[j] > self.max_retries:
                    target._fail(first + j, self._lost(job, first + j, pid, tries[j]))
                else:
                    send([j])
            else:
                run.append(j)
        send(run)

    def _lost(self, job, index, pid, tries):
        code = self._exits.get(pid)
        if code is None:
            # The task queue may report a death this thread has not reaped
            # yet (the worker died after this round looked at the workers,
            # or is still exiting): wait for its exit status, which comes at
            # once for a process that is dying; _check_workers reaps it as
            # usual.
            for p in self._pool:
                if p.pid == pid:
                    p.join(_REAP_WAIT)
                    code = p.exitcode
                    break
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        elif code is not None:
            how = f"exited with code {code}"
        else:
            how = "gone"
        return WorkerLostError(f"task {index} of job {job}: its worker (pid {pid}) was {how}, on each of "
                               f"{tries} tries (max_retries={self.max_retries})")

    def _flush_requeue(self):
        while self._requeue:
            data = self._requeue[0]
            try:
                self._tasks.put(data, False)
            except queue.Full:
                return
            except Exception as e:  # no room in the heap, say: those chunks fail
                _parcel, job, _kind, _func, first, n, _items, _cs, _tries = pickle.loads(data)
                target = self._jobs.get(job)
                if target is not None:
                    for j in range(n):
                        target._fail(first + j, e)
            self._requeue.popleft()

    # ---- threads ----
    def _feed_tasks(self):
        while True:
            item = self._feed.get()
            if item is None or not self._feed_job(*item):
                return
            item = None  # nothing of a job kept once it is fed

    def _put(self, data):
        """Put a parcel, waiting for room (the parcels sent again first);
        False if the pool was terminated meanwhile."""
        while True:
            if self._state == _TERMINATE:
                return False
            if self._requeue:
                time.sleep(_POLL / 10)
                continue
            try:
                self._tasks.put(data, True, _POLL)
                return True
            except queue.Full:
                pass

    def _parcel_size(self, job, left):
        """How many chunks the next parcel of `job` takes (`left`: chunks
        not yet sent, or None if unknown)."""
        if self._maxtasks is not None or job._cost is None:
            return 1
        k = int(_PARCEL_SECONDS / max(job._cost, 1e-9))
        if left is not None:
            k = min(k, left // (8 * self._processes))  # (so 1 while left < 16 per worker)
        return max(1, min(k, _PARCEL_CHUNKS))

    def _feed_job(self, job, kind, func, iterable, chunksize, chunks):
        """Put a job's chunks on the task queue, in parcels; False if the
        pool was terminated meanwhile. `chunks`: how many, if known."""
        ordered = isinstance(job, IMapIterator)
        cs = chunksize
        if kind == _APPLY:
            data = pickle.dumps((next(self._parcel_ids), job._job, kind, func, 0, 1, [iterable], 1, None),
                                pickle.HIGHEST_PROTOCOL)
            return self._put(data)
        sliceable = isinstance(iterable, (list, tuple, range))
        total = len(iterable) if sliceable else None
        it = None if sliceable else iter(iterable)
        sent = 0        # chunks
        unknown = 0     # chunks sent before the job's cost was known
        per_chunk = 64  # bytes, as pickled
        while True:
            # (A job too short for parcels of more than one chunk need not wait.)
            if job._cost is None and unknown >= 2 * self._processes and self._maxtasks is None \
                    and (chunks is None or chunks - sent >= 16 * self._processes) and not self._wait_for_cost(job):
                return False
            k = self._parcel_size(job, None if chunks is None else chunks - sent)
            k = max(1, min(k, _PARCEL_BYTES // max(1, per_chunk)))
            error = None
            if sliceable:
                items = iterable[sent * cs:(sent + k) * cs]
                n = (len(items) + cs - 1) // cs
            else:
                items = []
                try:
                    for _ in range(k):
                        part = tuple(itertools.islice(it, cs))
                        if not part:
                            break
                        items.extend(part)
                except Exception as e:  # the iterable failed: that chunk fails, and the job ends there
                    error = e
                n = (len(items) + cs - 1) // cs
            if n:
                try:
                    data = pickle.dumps((next(self._parcel_ids), job._job, kind, func, sent, n, items, cs, None),
                                        pickle.HIGHEST_PROTOCOL)
                except Exception as e:  # pickling failed: that job fails
                    error = e
                    n = 0
                else:
                    per_chunk = max(1, len(data) // n)
                    self._largest_parcel = max(self._largest_parcel, n)
                    if not self._put(data):
                        return False
                    sent += n
                    if job._cost is None:
                        unknown += n
            if error is not None:
                job._fail(sent, error)
                if ordered:
                    job._set_length(sent + 1)
                return True
            if n == 0 or (total is not None and sent * cs >= total):
                break
        if ordered:
            job._set_length(sent)
        return True

    def _wait_for_cost(self, job):
        """Until a chunk of the job has come back (or it is over); False if
        the pool was terminated meanwhile."""
        job._cost_known = threading.Event()
        while job._cost is None and job._job in self._jobs:
            if self._state == _TERMINATE:
                return False
            job._cost_known.wait(_POLL)
        job._cost_known = None
        return True

    def _handle(self):
        last = 0.0
        while True:
            try:
                job, first, n, cs, values, errors, lengths, spent = self._results.get(timeout=_POLL)
                target = self._jobs.get(job)
                if target is not None:
                    target._set_parcel(first, n, cs, values, errors, lengths, spent)
                del target, values  # a result is kept by its job alone
            except queue.Empty:
                pass
            now = time.monotonic()
            if now - last >= _POLL or self._requeue:
                last = now
                self._check_workers()
                if self._state == _TERMINATE:
                    return
                if self._state == _CLOSE:
                    # Every chunk of every job has come: the workers may go.
                    if not self._jobs and not self._requeue and not self._feeder.is_alive() \
                            and not self._tasks.closed:
                        self._tasks.close()
                    if not self._pool and self._results.empty():
                        return

    # ---- submitting ----
    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _submit(self, job, kind, func, iterable, chunksize=1, chunks=None):
        self._feed.put((job, kind, func, iterable, chunksize, chunks))
        return job

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
        items = len(iterable)
        chunks = (items + chunksize - 1) // chunksize
        job = MapResult(self, chunks, callback, error_callback, items, chunksize)
        return self._submit(job, kind, func, iterable, chunksize, chunks)

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        self._check_running()
        job = AsyncResult(self, callback, error_callback, 1)
        return self._submit(job, _APPLY, func, (tuple(args), dict(kwds)))

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

    def _imap(self, cls, func, iterable, chunksize, kind=_MAP):
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        job = cls(self)
        return self._submit(job, kind, func, iterable, chunksize)

    def imap(self, func, iterable, chunksize=1):
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    # ---- ending ----
    def close(self):
        """No more tasks: the workers finish every chunk of every job (sent
        again if a worker dies), then exit."""
        if self._state == _RUN:
            self._state = _CLOSE
            self._feed.put(None)
            self._feeder.join()

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
            it = self._pool._imap(IMapIterator, fn, zip(*iterables), chunksize, _STARMAP)

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
