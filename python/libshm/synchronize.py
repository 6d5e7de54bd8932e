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

    def _create(self, seg, name, *args):
        return self._core_type.create(seg, name, *args)

    def _open(self, seg, name, *args):
        self._h = self._core_type.open(seg, name)
        _arena.track(self)

    def _state(self):
        return ()

    def __reduce__(self):
        return (_rebuild, (type(self), self._h.segment.name, self._h.name) + self._state())

    @property
    def name(self):
        """(segment, object) names: what another process opens."""
        return (self._h.segment.name, self._h.name)

    def __repr__(self):
        return f"<{type(self).__name__} {self._h.name!r} in {self._h.segment.name!r}>"


class Lock(_Named):
    """multiprocessing.Lock: acquire(block=True, timeout=None), release()."""
    _core_type = _core.Lock

    def __init__(self, *, name=None):
        self._make(name, ())
        self._bind()

    def _open(self, seg, name, *args):
        super()._open(seg, name)
        self._bind()

    def _bind(self):
        # The handle's plain builtins, called with nothing in between.
        self.acquire, self.release, self._enter, self._exit = self._h._fast()

    def __enter__(self):
        return self._enter()

    def __exit__(self, *exc):
        self._exit()

    @property
    def previous_owner_died(self):
        """True while held by a caller whose acquire found the previous holder dead."""
        return self._h.previous_owner_died

    def __repr__(self):
        state = "locked" if self._h.owner_pid else "unlocked"
        return f"<{type(self).__name__}({state}) {self._h.name!r}>"


class RLock(Lock):
    """multiprocessing.RLock: re-entrant; only the holder may release it."""
    _core_type = _core.RLock


class Semaphore(_Named):
    """multiprocessing.Semaphore(value=1): acquire(block, timeout), release(), get_value()."""
    _core_type = _core.Semaphore

    def __init__(self, value=1, *, name=None):
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._make(name, (value,))
        self._bind()

    def _open(self, seg, name, *args):
        super()._open(seg, name)
        self._bind()

    def _bind(self):
        h = self._h
        self.acquire = h.acquire
        self.release = h.release
        self.get_value = h.get_value

    def __enter__(self):
        return self._h.acquire()

    def __exit__(self, *exc):
        self._h.release()

    def __repr__(self):
        return f"<{type(self).__name__}(value={self._h.get_value()}) {self._h.name!r}>"


class BoundedSemaphore(Semaphore):
    """multiprocessing.BoundedSemaphore: release() above the initial value raises ValueError."""
    _core_type = _core.BoundedSemaphore


class Condition(_Named):
    """multiprocessing.Condition(lock=None): an RLock unless a Lock or RLock is given."""
    _core_type = _core.Condition

    def __init__(self, lock=None, *, name=None):
        self._lock = lock if lock is not None else RLock()
        if not isinstance(self._lock, Lock):
            raise TypeError("libshm.Condition needs a libshm.Lock or libshm.RLock")
        self._make(name, ())
        self._bind()

    def _state(self):
        return (self._lock,)

    def _open(self, seg, name, lock=None):
        super()._open(seg, name)
        self._lock = lock
        self._bind()

    def _bind(self):
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def _check_owned(self, what):
        if not self._lock._h._is_mine():
            raise AssertionError(f"must acquire() condition before using {what}()")

    def wait(self, timeout=None):
        """Release the lock, wait for a notify (or the timeout), take it back.
        Returns False if the timeout passed."""
        self._check_owned("wait")
        return self._h.wait(self._lock._h, timeout)

    def wait_for(self, predicate, timeout=None):
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
        self._check_owned("notify")
        self._h.notify(n)

    def notify_all(self):
        self._check_owned("notify_all")
        self._h.notify_all()

    def __repr__(self):
        return f"<Condition({self._lock!r}) {self._h.name!r}>"


class Event(_Named):
    """multiprocessing.Event: is_set(), set(), clear(), wait(timeout=None)."""
    _core_type = _core.Event

    def __init__(self, *, name=None):
        self._make(name, ())
        self._bind()

    def _open(self, seg, name, *args):
        super()._open(seg, name)
        self._bind()

    def _bind(self):
        h = self._h
        self.is_set = h.is_set
        self.set = h.set
        self.clear = h.clear
        self.wait = h.wait

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
        self._h.reset()
        if self._gate is not None:
            self._gate.reset()

    def abort(self):
        self._h.abort()
        if self._gate is not None:
            self._gate.abort()

    @property
    def parties(self):
        return self._h.parties

    @property
    def n_waiting(self):
        return self._h.n_waiting

    @property
    def broken(self):
        return self._h.broken or (self._gate is not None and self._gate.broken)

    def __repr__(self):
        return (f"<libshm.Barrier {self._h.name!r}: parties={self.parties} "
                f"waiting={self.n_waiting} broken={self.broken}>")
