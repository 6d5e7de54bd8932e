"""Where objects made without a name live: the process's arena.

An object made without a name (``libshm.Lock()``, ``libshm.dict()``) is
placed in a segment of the arena of the process that made it: chunks named
``py.<pid>.<token>.<n>`` of ``LIBSHM_ARENA_SIZE`` bytes (8 MiB by default;
``K``, ``M`` and ``G`` suffixes accepted), a new chunk when one is full. A
queue gets a segment of its own (``py.<pid>.<token>.q<n>``), sized for its
items.

A process keeps every segment it has made or opened attached until it
exits, and a segment is removed when the last process attached to it is
gone, however it ended (a libshm segment's lifetime): nothing is left in the
shm directory once every process that used an object has exited. Objects
travel to other processes by name (pickling) or by inheritance (fork).
"""

import atexit
import os
import re
import secrets
import threading
import weakref

from . import _core

__all__ = ["arena_size", "segment", "place", "new_segment", "new_name"]

_lock = threading.Lock()
_segments = {}          # name -> _core.Segment, attached for the process's life
_chunk = None           # the current chunk of this process's arena
_pid = None             # the pid the arena belongs to (a fork child makes its own)
_token = None
_count = 0
_holders = weakref.WeakValueDictionary()  # id -> every object holding a handle (its _h)


def track(obj):
    """Note an object whose handle (obj._h) keeps a segment attached."""
    _holders[id(obj)] = obj
    return obj


def _release_all():
    """At exit, let go of every segment, so that the last process to leave
    removes it at once (objects still referenced are not destroyed by the
    interpreter at exit). A process that dies without this is cleaned up by
    shmd, or by shmctl gc."""
    for obj in list(_holders.values()):
        obj.__dict__.clear()  # the handle, and the methods bound to it
    with _lock:
        segs = list(_segments.values())
        _segments.clear()
    for seg in segs:
        seg.detach()


# At the interpreter's exit, and at the end of a multiprocessing child,
# which leaves with os._exit() and runs no atexit handler (its finalizers
# with an exit priority run instead).
atexit.register(_release_all)
try:
    from multiprocessing import util as _mp_util
    _mp_util.Finalize(None, _release_all, exitpriority=-100)
except ImportError:  # pragma: no cover
    pass


def arena_size():
    """The size of one arena chunk, from LIBSHM_ARENA_SIZE (bytes, or with K, M, G)."""
    text = os.environ.get("LIBSHM_ARENA_SIZE", "8M").strip()
    m = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"LIBSHM_ARENA_SIZE={text!r}: expected a size such as 8M, 512K or 1G")
    n = int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]
    if n < (64 << 10):
        raise ValueError(f"LIBSHM_ARENA_SIZE={text!r}: at least 64K")
    return n


def _mine():
    """Reset the arena after a fork: the child makes its own chunks."""
    global _pid, _token, _chunk, _count
    if _pid != os.getpid():
        _pid = os.getpid()
        _token = secrets.token_hex(4)
        _chunk = None
        _count = 0


def new_name(prefix):
    """A segment name for a new segment of this process's arena."""
    global _count
    with _lock:
        _mine()
        _count += 1
        return f"py.{_pid}.{_token}.{prefix}{_count}"


def segment(name):
    """The segment of that name, opened once per process and kept attached."""
    seg = _segments.get(name)
    if seg is None or not seg.attached:
        with _lock:
            seg = _segments.get(name)
            if seg is None or not seg.attached:
                seg = _core.Segment.open(name)
                _segments[name] = seg
    return seg


def pin(seg):
    """Keep seg attached until this process exits."""
    with _lock:
        _segments.setdefault(seg.name, seg)


def new_segment(name, size):
    """Create a segment (kept attached for the process's life)."""
    seg = _core.Segment.create(name, size)
    with _lock:
        _segments[name] = seg
    return seg


def open_or_create(name, size):
    seg = _segments.get(name)
    if seg is not None and seg.attached:
        return seg
    seg = _core.Segment.open_or_create(name, size)
    with _lock:
        _segments[name] = seg
    return seg


def place(make):
    """Make an object in the arena: make(segment, object_name) -> handle.

    Tries the current chunk, and a new one if it is full."""
    global _chunk
    name = "o." + secrets.token_hex(6)
    with _lock:
        _mine()
        chunk = _chunk
    for attempt in range(2):
        if chunk is None:
            chunk = new_segment(new_name("a"), arena_size())
            with _lock:
                _chunk = chunk
        try:
            return make(chunk, name)
        except _core.OutOfSpace:
            if attempt:
                raise
            chunk = None
