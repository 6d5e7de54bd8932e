"""libshm: multiprocessing's Queue, locks, Barrier, Value/Array and Manager
dict/list in shared memory, safe against killed processes.

Replace the imports and keep the program::

    import libshm as mp                      # instead of: import multiprocessing as mp
    q, lock, d = mp.Queue(), mp.Lock(), mp.dict()

Processes themselves still come from multiprocessing (Process, Pool and the
start methods); the objects above pass to them under fork, spawn and
forkserver. Manager().Namespace is not provided.

get_context() mirrors multiprocessing.get_context(): with a start method,
these objects; with a NATS server's URL, get_context("nats://host:4222"),
the same names across hosts (libshm.remote).
"""

from ._core import (AlreadyExists, Corrupted, Error, NotFound, OutOfSpace, OwnerDiedWarning,
                    TypeMismatch)
from ._core import version as __version__
from .context import get_context
from .managers import DictProxy, ListProxy, dict, list
from .pool import Pool, ProcessPoolExecutor, WorkerLostError
from .queues import JoinableQueue, Queue, SimpleQueue
from .sharedctypes import Array, RawArray, RawValue, Value
from .synchronize import (Barrier, BoundedSemaphore, Condition, Event, Lock, RLock,
                          Semaphore)

__all__ = [
    "Queue", "JoinableQueue", "SimpleQueue",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "Value", "Array", "RawValue", "RawArray",
    "dict", "list", "DictProxy", "ListProxy", "Manager",
    "Pool", "ProcessPoolExecutor", "WorkerLostError",
    "Error", "NotFound", "AlreadyExists", "OutOfSpace", "TypeMismatch", "Corrupted",
    "OwnerDiedWarning", "get_context",
]


def __getattr__(name):
    # The exceptions of the objects across hosts, without importing them
    # (nor the NATS client) until asked for.
    if name in ("Unavailable", "NotEnoughReplicas"):
        from . import remote
        return getattr(remote, name)
    raise AttributeError(f"module 'libshm' has no attribute {name!r}")


class Manager:
    """multiprocessing.Manager() without a server process.

    dict(), list(), Queue(), JoinableQueue(), Lock(), RLock(), Semaphore(),
    BoundedSemaphore(), Condition(), Event(), Barrier(), Value() and Array()
    make libshm's objects (in shared memory, by this process) instead of
    proxies to a server's; Namespace() and Pool() are not provided.
    Usable as a context manager. Leaving it does not destroy what it made:
    each object lives as long as some process uses it."""

    def __init__(self, *args, **kwargs):
        """Takes and ignores multiprocessing.Manager()'s arguments."""

    def start(self, *args, **kwargs):
        """Nothing to start: there is no server."""

    def shutdown(self):
        """Nothing to stop: there is no server, and the objects made stay
        usable (a Manager's proxies stop working)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    dict = staticmethod(dict)
    list = staticmethod(list)
    Queue = staticmethod(Queue)
    JoinableQueue = staticmethod(JoinableQueue)
    Lock = staticmethod(Lock)
    RLock = staticmethod(RLock)
    Semaphore = staticmethod(Semaphore)
    BoundedSemaphore = staticmethod(BoundedSemaphore)
    Condition = staticmethod(Condition)
    Event = staticmethod(Event)
    Barrier = staticmethod(Barrier)
    Value = staticmethod(Value)
    Array = staticmethod(Array)
