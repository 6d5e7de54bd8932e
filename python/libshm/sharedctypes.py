"""Value, Array, RawValue and RawArray as multiprocessing.sharedctypes makes
them, in a libshm segment (shm::SharedScalar and shm::SharedArray, which C++
programs open by name).

The ctypes object is built on the segment's bytes; Value and Array wrap it in
multiprocessing's own Synchronized, SynchronizedArray and SynchronizedString,
so get_lock(), get_obj(), .value, slicing and .raw behave exactly as there.
The default lock is the block's own robust RLock: a process killed holding
it does not block the others. Like multiprocessing's, these objects pass to
child processes by inheritance or as Process arguments.
"""

import ctypes
from multiprocessing import reduction, sharedctypes as _mp

from . import _arena, _core
from .synchronize import RLock

__all__ = ["RawValue", "RawArray", "Value", "Array"]

# The typecodes libshm stores as a typed C++ element; other ctypes types
# (structures, c_wchar) are kept as their bytes.
_TYPECODES = set("cbBhHiIlLqQfd?")
_typecode_to_type = dict(_mp.typecode_to_type)
_typecode_to_type["?"] = ctypes.c_bool


def _element(typecode_or_type):
    """(ctypes type, typecode libshm stores, elements per item)."""
    type_ = _typecode_to_type.get(typecode_or_type, typecode_or_type)
    if not isinstance(type_, type) or not issubclass(type_, (ctypes._SimpleCData, ctypes.Structure,
                                                             ctypes.Union, ctypes.Array)):
        raise TypeError(f"unknown typecode or ctypes type: {typecode_or_type!r}")
    code = getattr(type_, "_type_", None)
    if isinstance(code, str) and code in _TYPECODES and issubclass(type_, ctypes._SimpleCData):
        return type_, code, 1
    return type_, "B", ctypes.sizeof(type_)


class _Block:
    """The shared bytes, as multiprocessing's heap wrapper offers them."""

    def __init__(self, block):
        self._block = block

    def create_memoryview(self):
        return memoryview(self._block)

    def __reduce__(self):
        return (_open_block, (self._block.segment.name, self._block.name))


def _open_block(segment, name):
    return _Block(_core.SharedBlock.open(_arena.segment(segment), name))


class _BlockLock(RLock):
    """The shared block's own RLock (robust: its holder's death is reported)."""

    def __init__(self, block):
        self._block = block
        self._h = block._block.lock()
        self._bind()
        _arena.track(self)

    def __reduce__(self):
        return (_open_block_lock, (self._block,))


def _open_block_lock(block):
    return _BlockLock(block)


def _make(type_, code, count, scalar, with_lock, name):
    def create(seg, n):
        return _core.SharedBlock.create(seg, n, code, count, with_lock, scalar)
    if name is None:
        block = _arena.place(create)
    else:
        seg = _arena.open_or_create(name, max(1 << 16, 4096 + 2 * count * 16))
        try:
            block = _core.SharedBlock.open(seg, name)
        except _core.NotFound:
            block = create(seg, name)
    return _Block(block)


def _view(wrapper, type_):
    reduction.ForkingPickler.register(type_, _mp.reduce_ctype)
    obj = type_.from_buffer(wrapper.create_memoryview())
    obj._wrapper = wrapper
    return obj


def _raw_value(typecode_or_type, args, with_lock, name):
    type_, code, n = _element(typecode_or_type)
    wrapper = _make(type_, code, n, n == 1, with_lock, name)
    obj = _view(wrapper, type_)
    if args:
        obj.__init__(*args)
    return obj


def _raw_array(typecode_or_type, size_or_initializer, with_lock, name):
    type_, code, n = _element(typecode_or_type)
    if isinstance(size_or_initializer, int):
        size, init = size_or_initializer, None
    else:
        init = list(size_or_initializer)
        size = len(init)
    if size < 0:
        raise ValueError("array size must be >= 0")
    wrapper = _make(type_, code, max(size * n, 1), False, with_lock, name)
    obj = _view(wrapper, type_ * size)
    if init is not None:
        obj.__init__(*init)
    return obj


def RawValue(typecode_or_type, *args, name=None):
    """A ctypes object in shared memory, without a lock."""
    return _raw_value(typecode_or_type, args, False, name)


def RawArray(typecode_or_type, size_or_initializer, *, name=None):
    """A ctypes array in shared memory, without a lock."""
    return _raw_array(typecode_or_type, size_or_initializer, False, name)


def _synchronized(obj, lock, ctx):
    if lock is False:
        return obj
    if lock in (True, None):
        lock = _BlockLock(obj._wrapper)
    elif not hasattr(lock, "acquire"):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return _mp.synchronized(obj, lock, ctx=ctx)


def Value(typecode_or_type, *args, lock=True, ctx=None, name=None):
    """multiprocessing.Value: a synchronized ctypes object (lock=False: the raw one)."""
    own_lock = lock in (True, None)
    return _synchronized(_raw_value(typecode_or_type, args, own_lock, name), lock, ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None, name=None):
    """multiprocessing.Array: a synchronized ctypes array (lock=False: the raw one)."""
    own_lock = lock in (True, None)
    return _synchronized(_raw_array(typecode_or_type, size_or_initializer, own_lock, name), lock, ctx)
