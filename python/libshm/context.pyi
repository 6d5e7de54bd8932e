# Types for libshm.context (see context.py).
from multiprocessing.process import BaseProcess
from typing import Any, ClassVar, Literal, overload

from . import managers as _managers, queues as _queues, sharedctypes as _sharedctypes, synchronize as _synchronize
from .remote import RemoteContext

__all__ = ["get_context", "LocalContext"]

class LocalContext:
    def __init__(self, method: str | None = None) -> None: ...
    Queue: ClassVar[type[_queues.Queue[Any]]]
    JoinableQueue: ClassVar[type[_queues.JoinableQueue[Any]]]
    SimpleQueue: ClassVar[type[_queues.SimpleQueue[Any]]]
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
    @staticmethod
    def RawValue(typecode_or_type: Any, *args: Any, name: str | None = None) -> Any: ...
    @staticmethod
    def RawArray(typecode_or_type: Any, size_or_initializer: Any, *, name: str | None = None) -> Any: ...
    @staticmethod
    def dict(*args: Any, name: str | None = None, **kwargs: Any) -> _managers.DictProxy[Any, Any]: ...
    @staticmethod
    def list(iterable: Any = ..., *, name: str | None = None) -> _managers.ListProxy[Any]: ...
    @property
    def Process(self) -> type[BaseProcess]: ...
    def get_start_method(self, allow_none: bool = False) -> str | None: ...
    def cpu_count(self) -> int: ...

@overload
def get_context(method: Literal["fork", "spawn", "forkserver"] | None = None) -> LocalContext: ...
@overload
def get_context(method: str, **options: Any) -> LocalContext | RemoteContext: ...
