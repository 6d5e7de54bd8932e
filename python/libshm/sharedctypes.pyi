# Types for libshm.sharedctypes (see sharedctypes.py): the objects are
# multiprocessing.sharedctypes' own wrappers over ctypes objects.
from ctypes import _CData, _SimpleCData
from multiprocessing.sharedctypes import SynchronizedArray, SynchronizedBase, Synchronized
from typing import Any, Iterable, Literal, TypeVar, overload

__all__ = ["RawValue", "RawArray", "Value", "Array"]

_CT = TypeVar("_CT", bound=_CData)

@overload
def RawValue(typecode_or_type: type[_CT], *args: Any, name: str | None = None) -> _CT: ...
@overload
def RawValue(typecode_or_type: str, *args: Any, name: str | None = None) -> Any: ...
def RawArray(typecode_or_type: type[_CData] | str, size_or_initializer: int | Iterable[Any], *,
             name: str | None = None) -> Any: ...
@overload
def Value(typecode_or_type: type[_CT], *args: Any, lock: Literal[False], ctx: Any = None,
          name: str | None = None) -> _CT: ...
@overload
def Value(typecode_or_type: str | type[_CData], *args: Any, lock: bool | Any = True, ctx: Any = None,
          name: str | None = None) -> Any: ...
def Array(typecode_or_type: type[_CData] | str, size_or_initializer: int | Iterable[Any], *,
          lock: bool | Any = True, ctx: Any = None, name: str | None = None) -> Any: ...
