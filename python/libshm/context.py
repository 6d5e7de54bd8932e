"""get_context(): multiprocessing.get_context() with libshm's objects, on
this host (a start method, or None) or across hosts (a NATS server URL).

    ctx = libshm.get_context()                       # or "fork", "spawn", "forkserver"
    ctx = libshm.get_context("nats://host:4222")     # a NATS JetStream server or cluster
    q, lock, d = ctx.Queue(), ctx.Lock(), ctx.dict()
    ctx.Process(target=work, args=(q, lock, d)).start()

Code written against the names both contexts share (Queue, JoinableQueue,
Lock, Event, dict(), list(), Process) runs on either.
"""

import multiprocessing

from . import managers, queues, sharedctypes, synchronize

__all__ = ["get_context", "LocalContext"]


class LocalContext:
    """libshm's objects in shared memory on this host, and multiprocessing's
    processes with the start method given (its default for None)."""

    def __init__(self, method=None):
        self._mp = multiprocessing.get_context(method)

    Queue = staticmethod(queues.Queue)
    JoinableQueue = staticmethod(queues.JoinableQueue)
    SimpleQueue = staticmethod(queues.SimpleQueue)
    Lock = staticmethod(synchronize.Lock)
    RLock = staticmethod(synchronize.RLock)
    Semaphore = staticmethod(synchronize.Semaphore)
    BoundedSemaphore = staticmethod(synchronize.BoundedSemaphore)
    Condition = staticmethod(synchronize.Condition)
    Event = staticmethod(synchronize.Event)
    Barrier = staticmethod(synchronize.Barrier)
    Value = staticmethod(sharedctypes.Value)
    Array = staticmethod(sharedctypes.Array)
    RawValue = staticmethod(sharedctypes.RawValue)
    RawArray = staticmethod(sharedctypes.RawArray)
    dict = staticmethod(managers.dict)
    list = staticmethod(managers.list)

    @property
    def Process(self):
        return self._mp.Process

    def get_start_method(self, allow_none=False):
        return self._mp.get_start_method(allow_none)

    def cpu_count(self):
        return self._mp.cpu_count()

    def __repr__(self):
        return f"<libshm local context, start method {self._mp.get_start_method()!r}>"


def get_context(method=None, **options):
    """A start method ("fork", "spawn", "forkserver") or None: the local
    objects (LocalContext). A NATS URL, "nats://host:port" or several
    separated by commas: the objects across hosts on those servers
    (libshm.remote.RemoteContext, whose keyword options it takes)."""
    if isinstance(method, str) and "://" in method:
        from .remote import RemoteContext
        return RemoteContext(method, **options)
    if options:
        raise TypeError("options are for a NATS URL's context only")
    return LocalContext(method)
