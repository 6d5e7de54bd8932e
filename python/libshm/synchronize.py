"""Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and Barrier
with multiprocessing's names and behaviour, safe against killed processes.

A process killed while holding a Lock or RLock does not block the others:
the next acquire() succeeds, warns with libshm.OwnerDiedWarning, and
``lock.previous_owner_died`` is True while that caller holds it.
"""

import time

from . import _arena, _core

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier"]


def _rebuild(cls, segment, name, *args):
    obj = cls.__new__(cls)
    obj._open(_arena.segment(segment), name, *args)
    return obj


class _Named:
    """An object in a segment, pickled as (segment, object name)."""
    _core_type = None
    # The handle's methods put straight on the instance (one Python call
    # less on the hot path); the class's methods of the same names document them.
    _hot = ()

    def _make(self, name, create_args, segment_name=None):
        if name is None:
            self._h = _arena.place(lambda seg, n: self._create(seg, n, *create_args))
        else:
            seg = _arena.open_or_create(segment_name or name, 1 << 20)
            try:
                self._h = self._core_type.open(seg, name)
            except _core.NotFound:
                self._h = self._create(seg, name, *create_args)
        _arena.track(self)
        self._bind()

    def _create(self, seg, name, *args):
        return self._core_type.create(seg, name, *args)

    def _open(self, seg, name, *args):
        self._h = self._core_type.open(seg, name)
        _arena.track(self)
        self._bind()

    def _bind(self):
        h = self._h
        for method in self._hot:
            setattr(self, method, getattr(h, method))

    def _state(self):
        return ()

    def __reduce__(self):
        return (_rebuild, (type(self), self._h.segment.name, self._h.name) + self._state())

    @property
    def name(self):
        """Not in multiprocessing: (segment name, object name), what another
        process opens."""
        return (self._h.segment.name, self._h.name)

    def __repr__(self):
        return f"<{type(self).__name__} {self._h.name!r} in {self._h.segment.name!r}>"


class Lock(_Named):
    """multiprocessing.Lock: acquire(block=True, timeout=None), release().

    A robust lock: a holder that dies does not block the others (see
    acquire()). Only the thread that holds it may release it, where
    multiprocessing's, a semaphore, can be released by anyone."""
    _core_type = _core.Lock

    def __init__(self, *, name=None):
        self._make(name, ())

    def acquire(self, block=True, timeout=None):
        """As multiprocessing's acquire(): True once taken, False if block
        is false or the timeout passed. If the holder died holding it, the
        acquire succeeds, warns with libshm.OwnerDiedWarning (which a
        program may turn into an error with the warnings module: the lock is
        then released again), and previous_owner_died is True until this
        caller releases it. A thread acquiring a Lock it already holds gets
        RuntimeError where multiprocessing's would wait forever; with a
        timeout it waits that long and returns False, as there."""
        return self._h.acquire(block, timeout)

    def release(self):
        """Release the lock: only by the thread holding it, ValueError
        otherwise (multiprocessing's Lock lets any thread or process release
        it, and raises ValueError only when it is not locked)."""
        self._h.release()

    def _bind(self):
        # The handle's plain builtins, called with nothing in between.
        self.acquire, self.release, self._enter, self._exit = self._h._fast()

    def __enter__(self):
        return self._enter()

    def __exit__(self, *exc):
        self._exit()

    @property
    def previous_owner_died(self):
        """Not in multiprocessing: True while held by a caller whose
        acquire found the previous holder dead. The data the lock guards may
        be half-updated: check or repair it before releasing."""
        return self._h.previous_owner_died

    def __repr__(self):
        state = "locked" if self._h.owner_pid else "unlocked"
        return f"<{type(self).__name__}({state}) {self._h.name!r}>"


class RLock(Lock):
    """multiprocessing.RLock: re-entrant; only the holder may release it.

    Robust like Lock: after its holder died, the next acquire() takes it
    (at depth 1) and warns with libshm.OwnerDiedWarning."""
    _core_type = _core.RLock

    def acquire(self, block=True, timeout=None):
        """As multiprocessing's RLock.acquire(), with a dead holder handled
        as by Lock.acquire()."""
        return self._h.acquire(block, timeout)

    def release(self):
        """Release one level. RuntimeError if this thread does not hold it,
        where multiprocessing raises AssertionError."""
        self._h.release()


class Semaphore(_Named):
    """multiprocessing.Semaphore(value=1): acquire(block, timeout), release(), get_value().

    As in multiprocessing (a POSIX semaphore), the units held by a process
    that dies are not given back: a semaphore has no owner."""
    _core_type = _core.Semaphore
    _hot = ("acquire", "release", "get_value")

    def __init__(self, value=1, *, name=None):
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._make(name, (value,))

    def acquire(self, block=True, timeout=None):
        """As multiprocessing's: take a unit; False if block is false or the
        timeout passed."""
        return self._h.acquire(block, timeout)

    def release(self):
        """As multiprocessing's: give a unit back (any process may)."""
        self._h.release()

    def get_value(self):
        """The number of units free now, a snapshot; unlike
        multiprocessing's, implemented on every platform."""
        return self._h.get_value()

    def __enter__(self):
        return self._h.acquire()

    def __exit__(self, *exc):
        self._h.release()

    def __repr__(self):
        return f"<{type(self).__name__}(value={self._h.get_value()}) {self._h.name!r}>"


class BoundedSemaphore(Semaphore):
    """multiprocessing.BoundedSemaphore: release() above the initial value raises ValueError."""
    _core_type = _core.BoundedSemaphore

    def release(self):
        """As multiprocessing's: ValueError if that would go above the
        initial value."""
        self._h.release()


class Condition(_Named):
    """multiprocessing.Condition(lock=None): an RLock unless a Lock or RLock is given.

    The lock must be a libshm.Lock or libshm.RLock (TypeError otherwise).
    acquire(), release() and the with statement are the lock's."""
    _core_type = _core.Condition

    def __init__(self, lock=None, *, name=None):
        self._lock = lock if lock is not None else RLock()
        if not isinstance(self._lock, Lock):
            raise TypeError("libshm.Condition needs a libshm.Lock or libshm.RLock")
        self._make(name, ())

    def _state(self):
        return (self._lock,)

    def _open(self, seg, name, lock=None):
        self._lock = lock
        super()._open(seg, name)

    def _bind(self):
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def acquire(self, block=True, timeout=None):
        """The lock's acquire() (see Lock.acquire())."""
        return self._lock.acquire(block, timeout)

    def release(self):
        """The lock's release()."""
        self._lock.release()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def _check_owned(self, what):
        if not self._lock._h._is_mine():
            raise AssertionError(f"must acquire() condition before using {what}()")

    def wait(self, timeout=None):
        """As multiprocessing's: release the lock, wait for a notify (or the
        timeout), take it back; False if the timeout passed.
        AssertionError without holding the lock. Taking the lock back warns
        with libshm.OwnerDiedWarning if its holder meanwhile died."""
        self._check_owned("wait")
        return self._h.wait(self._lock._h, timeout)

    def wait_for(self, predicate, timeout=None):
        """As multiprocessing's: wait() until predicate() is true, or the
        timeout passed; returns the predicate's last value."""
        result = predicate()
        if result:
            return result
        if timeout is not None:
            end = time.monotonic() + timeout
        while not result:
            if timeout is not None:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.wait(left)
            else:
                self.wait()
            result = predicate()
        return result

    def notify(self, n=1):
        """As multiprocessing's: wake up to n waiters, holding the lock
        (AssertionError otherwise)."""
        self._check_owned("notify")
        self._h.notify(n)

    def notify_all(self):
        """As multiprocessing's: wake every waiter, holding the lock."""
        self._check_owned("notify_all")
        self._h.notify_all()

    def __repr__(self):
        return f"<Condition({self._lock!r}) {self._h.name!r}>"


class Event(_Named):
    """multiprocessing.Event: is_set(), set(), clear(), wait(timeout=None).

    The same behaviour; set() and clear() take no lock, so a process killed
    in either leaves the event usable."""
    _core_type = _core.Event
    _hot = ("is_set", "set", "clear", "wait")

    def __init__(self, *, name=None):
        self._make(name, ())

    def is_set(self):
        """As multiprocessing's."""
        return self._h.is_set()

    def set(self):
        """As multiprocessing's: set the flag, wake every waiter."""
        self._h.set()

    def clear(self):
        """As multiprocessing's."""
        self._h.clear()

    def wait(self, timeout=None):
        """As multiprocessing's: wait until the flag is set, or the timeout
        passed; returns the flag."""
        return self._h.wait(timeout)

    def __repr__(self):
        state = "set" if self._h.is_set() else "unset"
        return f"<{type(self).__qualname__} at {id(self):#x} {state}>"


class Barrier(_Named):
    """multiprocessing.Barrier(parties, action=None, timeout=None).

    A party killed while waiting breaks the barrier for the others
    (threading.BrokenBarrierError) instead of leaving them waiting. With an
    action, the last party to arrive runs it before any party goes on (a
    second barrier holds them meanwhile)."""
    _core_type = _core.Barrier

    def __init__(self, parties, action=None, timeout=None, *, name=None):
        if parties < 1:
            raise ValueError("parties must be >= 1")
        self._action = action
        self._timeout = timeout
        self._make(name, (parties,))
        self._gate = None
        if action is not None:
            seg = self._h.segment
            self._gate = self._core_type.create(seg, self._h.name + ".gate", parties)

    def _state(self):
        return (self._action, self._timeout)

    def _open(self, seg, name, action=None, timeout=None):
        super()._open(seg, name)
        self._action = action
        self._timeout = timeout
        self._gate = self._core_type.open(seg, name + ".gate") if action is not None else None

    def wait(self, timeout=None):
        """As multiprocessing's: wait for every party; returns this party's
        arrival index (0 to parties - 1). threading.BrokenBarrierError if the
        barrier is or becomes broken: by abort(), a timeout, a failing
        action, Ctrl-C in a waiter, or (unlike multiprocessing, where the
        others would wait forever) a party killed while waiting."""
        if timeout is None:
            timeout = self._timeout
        index = self._h.wait(timeout)
        if self._gate is None:
            return index
        if index == self.parties - 1:
            try:
                self._action()
            except BaseException:
                self._h.abort()
                self._gate.abort()
                raise
        self._gate.wait(timeout)
        return index

    def reset(self):
        """As multiprocessing's: back to the empty state; parties waiting
        get BrokenBarrierError."""
        self._h.reset()
        if self._gate is not None:
            self._gate.reset()

    def abort(self):
        """As multiprocessing's: break the barrier."""
        self._h.abort()
        if self._gate is not None:
            self._gate.abort()

    @property
    def parties(self):
        """As multiprocessing's."""
        return self._h.parties

    @property
    def n_waiting(self):
        """As multiprocessing's: parties waiting now (a snapshot)."""
        return self._h.n_waiting

    @property
    def broken(self):
        """As multiprocessing's."""
        return self._h.broken or (self._gate is not None and self._gate.broken)

    def __repr__(self):
        return (f"<libshm.Barrier {self._h.name!r}: parties={self.parties} "
                f"waiting={self.n_waiting} broken={self.broken}>")
