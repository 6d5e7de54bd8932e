"""Queue, JoinableQueue and SimpleQueue with multiprocessing's names and
behaviour, on libshm's lock-free queue.

Differences from multiprocessing.Queue: no feeder thread (put() has
finished when it returns, so join_thread() and cancel_join_thread() have
nothing to do); an unbounded queue (maxsize=0) holds up to
``DEFAULT_CAPACITY`` items, beyond which put() blocks; a consumer killed
after taking an item loses that item (the C++ queue's contract).
"""

from . import _arena, _core

__all__ = ["Queue", "JoinableQueue", "SimpleQueue", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = 1 << 16   # items an unbounded queue holds
DEFAULT_ITEM_SIZE = 16 << 10 # items up to this size go in the ring; larger ones in the heap
DEFAULT_RING = 4 << 20       # bytes of small items queued at most
DEFAULT_HEAP = 16 << 20      # room for large items waiting to be got


def _segment_size(capacity, max_item_size, max_bytes, heap_bytes):
    slots = 1
    while slots < capacity:
        slots *= 2
    return 64 * 1024 + 4096 + 16 * slots + max_bytes + max_item_size + heap_bytes


def _rebuild(cls, segment, name, raw, options):
    q = cls.__new__(cls)
    q._raw = raw
    q._options = options
    q._h = _core.Queue.open(_arena.segment(segment), name, raw)
    q._bind()
    return _arena.track(q)


class Queue:
    """multiprocessing.Queue(maxsize=0).

    Keyword-only extras: name= (a segment and queue of that name, opened if
    it exists: C++ programs open it with shm::Queue::open(seg, name)),
    raw=True (bytes only, no tag byte: what C++ puts and gets),
    max_item_size= and max_bytes= (the ring), heap_bytes= (room for items
    larger than max_item_size)."""

    def __init__(self, maxsize=0, *, name=None, raw=False, max_item_size=DEFAULT_ITEM_SIZE,
                 max_bytes=None, heap_bytes=DEFAULT_HEAP):
        if maxsize < 0:
            maxsize = 0
        if maxsize > (1 << 24):
            raise ValueError("libshm.Queue: maxsize must be at most 2**24")
        # The ring holds 2 items at least; maxsize=1 is exact all the same
        # (the C++ queue's max_items).
        capacity = max(maxsize, 2) if maxsize else DEFAULT_CAPACITY
        if max_bytes is None:
            max_bytes = min(DEFAULT_RING, max(capacity * 64, 64 << 10))
            max_bytes = max(max_bytes, max_item_size)
        self._raw = raw
        self._options = (capacity, maxsize, max_item_size, max_bytes)
        size = _segment_size(capacity, max_item_size, max_bytes, heap_bytes)
        if name is None:
            # Its own segment, held by this object (and the processes it
            # reaches): removed when the last of them lets go.
            seg = _core.Segment.create(_arena.new_name("q"), size)
            self._h = _core.Queue.create(seg, "queue", capacity, maxsize, max_item_size, max_bytes, raw)
        else:
            seg = _core.Segment.open_or_create(name, size)
            try:
                self._h = _core.Queue.open(seg, name, raw)
            except _core.NotFound:
                try:
                    self._h = _core.Queue.create(seg, name, capacity, maxsize, max_item_size, max_bytes, raw)
                except _core.AlreadyExists:
                    self._h = _core.Queue.open(seg, name, raw)
        self._bind()
        _arena.track(self)

    def _bind(self):
        h = self._h
        # The handle's plain builtins, called with nothing in between.
        self.put, self.get, self.put_nowait, self.get_nowait = h._fast()
        self.qsize = h.qsize
        self.empty = h.empty
        self.full = h.full

    def __reduce__(self):
        # Shared now (with a process, or stored in a dict or list): this
        # process keeps its segment attached until it exits, so the name
        # stays good even if this object goes.
        _arena.pin(self._h.segment)
        return (_rebuild, (type(self), self._h.segment.name, self._h.name, self._raw, self._options))

    def close(self):
        """No more put() or get() in this process (others go on)."""
        self._h.close()

    def join_thread(self):
        """Nothing to wait for: put() has finished when it returns."""
        if not self._h.is_closed:
            raise AssertionError("join_thread() before close()")

    def cancel_join_thread(self):
        """Nothing to cancel: there is no feeder thread."""

    def shutdown(self):
        """Close the queue for every process: put() raises ValueError; get()
        drains what is left, then raises ValueError."""
        self._h.shutdown()

    @property
    def name(self):
        return (self._h.segment.name, self._h.name)

    @property
    def maxsize(self):
        return self._options[1]

    def __repr__(self):
        return f"<libshm.{type(self).__name__} {self._h.name!r} in {self._h.segment.name!r} qsize={self._h.qsize()}>"


class JoinableQueue(Queue):
    """multiprocessing.JoinableQueue: Queue with task_done() and join().

    Items taken by a process that dies count as done, so join() does not
    wait for them forever."""

    def _bind(self):
        super()._bind()
        self.task_done = self._h.task_done

    def join(self, timeout=None):
        """Wait until every item put has been got and marked done. With a
        timeout (an extension), False if it passed first."""
        return self._h.join(timeout)


class SimpleQueue(Queue):
    """multiprocessing.SimpleQueue: get(), put(), empty(), close()."""

    def __init__(self, *, name=None, **kw):
        super().__init__(0, name=name, **kw)

    def put(self, obj):
        self._h.put(obj)

    def get(self):
        return self._h.get()

    def _bind(self):
        self.empty = self._h.empty
