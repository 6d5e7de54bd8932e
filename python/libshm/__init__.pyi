# Types for the libshm package (see __init__.py and the modules it imports).
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar, overload

from _typeshed import SupportsKeysAndGetItem
from typing_extensions import Self

from . import queues as _queues, synchronize as _synchronize
from .context import get_context as get_context
from .managers import DictProxy as DictProxy, ListProxy as ListProxy, dict as dict, list as list
from .pool import Pool as Pool, ProcessPoolExecutor as ProcessPoolExecutor, WorkerLostError as WorkerLostError
from .queues import JoinableQueue as JoinableQueue, Queue as Queue, SimpleQueue as SimpleQueue
from .sharedctypes import Array as Array, RawArray as RawArray, RawValue as RawValue, Value as Value
from .synchronize import (Barrier as Barrier, BoundedSemaphore as BoundedSemaphore, Condition as Condition,
                          Event as Event, Lock as Lock, RLock as RLock, Semaphore as Semaphore)

__version__: str

__all__ = [
    "Queue", "JoinableQueue", "SimpleQueue",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "Value", "Array", "RawValue", "RawArray",
    "dict", "list", "DictProxy", "ListProxy", "Manager",
    "Pool", "ProcessPoolExecutor", "WorkerLostError",
    "Error", "NotFound", "AlreadyExists", "OutOfSpace", "TypeMismatch", "Corrupted",
    "OwnerDiedWarning", "get_context",
]

_T = TypeVar("_T")
_KT = TypeVar("_KT")
_VT = TypeVar("_VT")

# The exceptions of libshm._core; errno and strerror as for OSError.
class Error(OSError): ...
class NotFound(Error, FileNotFoundError): ...
class AlreadyExists(Error, FileExistsError): ...
class OutOfSpace(Error, MemoryError): ...
class TypeMismatch(Error, TypeError): ...
class Corrupted(Error): ...
class OwnerDiedWarning(RuntimeWarning): ...
# The errors of the objects across hosts (libshm.remote), loaded on first use.
class Unavailable(Error, ConnectionError): ...
class NotEnoughReplicas(Error): ...

class Manager:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def start(self, *args: Any, **kwargs: Any) -> None: ...
    def shutdown(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...
    # The classes themselves, as in the package.
    Queue: ClassVar[type[_queues.Queue[Any]]]
    JoinableQueue: ClassVar[type[_queues.JoinableQueue[Any]]]
    Lock: ClassVar[type[_synchronize.Lock]]
    RLock: ClassVar[type[_synchronize.RLock]]
    Semaphore: ClassVar[type[_synchronize.Semaphore]]
    BoundedSemaphore: ClassVar[type[_synchronize.BoundedSemaphore]]
    Condition: ClassVar[type[_synchronize.Condition]]
    Event: ClassVar[type[_synchronize.Event]]
    Barrier: ClassVar[type[_synchronize.Barrier]]
    @staticmethod
    def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None,
              name: str | None = None) -> Any: ...
    @staticmethod
    def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None,
              name: str | None = None) -> Any: ...
    # libshm.dict and libshm.list.
    @overload
    @staticmethod
    def dict(*, name: str | None = None) -> DictProxy[Any, Any]: ...
    @overload
    @staticmethod
    def dict(*, name: str | None = None, **kwargs: _VT) -> DictProxy[str, _VT]: ...
    @overload
    @staticmethod
    def dict(map: SupportsKeysAndGetItem[_KT, _VT], /, *, name: str | None = None) -> DictProxy[_KT, _VT]: ...
    @overload
    @staticmethod
    def dict(map: SupportsKeysAndGetItem[str, _VT], /, *, name: str | None = None,
             **kwargs: _VT) -> DictProxy[str, _VT]: ...
    @overload
    @staticmethod
    def dict(iterable: Iterable[tuple[_KT, _VT]], /, *, name: str | None = None) -> DictProxy[_KT, _VT]: ...
    @overload
    @staticmethod
    def dict(iterable: Iterable[tuple[str, _VT]], /, *, name: str | None = None,
             **kwargs: _VT) -> DictProxy[str, _VT]: ...
    @overload
    @staticmethod
    def list(*, name: str | None = None) -> ListProxy[Any]: ...
    @overload
    @staticmethod
    def list(iterable: Iterable[_T], *, name: str | None = None) -> ListProxy[_T]: ...
