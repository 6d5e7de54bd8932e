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
DEFAULT_RING = 4 << 20       # bytes of small items an unbounded queue holds
ITEM_BUDGET = 256            # ring bytes per item of maxsize, by default
MAX_RING = 64 << 20          # ... up to this
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
    """multiprocessing.Queue(maxsize=0), without a feeder thread.

    maxsize is at most 2**24; 0 (unbounded in multiprocessing) means up to
    DEFAULT_CAPACITY items. Besides maxsize, the ring has a byte budget,
    max_bytes: by default ITEM_BUDGET (256) bytes per item of maxsize (at
    least 64 KiB, at most 64 MiB; 4 MiB for an unbounded queue). An item
    takes its length plus a tag byte (none when raw), rounded up to 8 bytes,
    and one larger than max_item_size takes 24 (it waits in the heap), so a
    queue of items up to 248 bytes holds exactly maxsize; with larger items
    it may be full() sooner: give max_bytes to size it. Keyword-only extras: name= (a segment and
    queue of that name, opened if it exists: C++ programs open it with
    shm::Queue::open(seg, name)), raw=True (bytes only, no tag byte: what
    C++ puts and gets), max_item_size= and max_bytes= (the ring),
    heap_bytes= (room for items larger than max_item_size). pipelined= is
    accepted for the remote context's sake (the same program runs on both)
    and changes nothing: a local put() has stored its item when it
    returns, and flush() has nothing to wait for."""

    def __init__(self, maxsize=0, *, name=None, raw=False, max_item_size=DEFAULT_ITEM_SIZE,
                 max_bytes=None, heap_bytes=DEFAULT_HEAP, pipelined=False):
        del pipelined  # see above
        if maxsize < 0:
            maxsize = 0
        if maxsize > (1 << 24):
            raise ValueError("libshm.Queue: maxsize must be at most 2**24")
        # The ring holds 2 items at least; maxsize=1 is exact all the same
        # (the C++ queue's max_items).
        capacity = max(maxsize, 2) if maxsize else DEFAULT_CAPACITY
        if max_bytes is None:
            max_bytes = min(MAX_RING if maxsize else DEFAULT_RING, max(capacity * ITEM_BUDGET, 64 << 10))
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
        # The handle's methods straight on the instance, saving a Python call
        # per item; the methods below document them and stand in when unbound.
        h = self._h
        # The handle's plain builtins, called with nothing in between.
        self.put, self.get, self.put_nowait, self.get_nowait = h._fast()
        self.qsize = h.qsize
        self.empty = h.empty
        self.full = h.full

    def put(self, obj, block=True, timeout=None):
        """As multiprocessing.Queue.put(), except that there is no feeder
        thread: the item is in the queue when put() returns, and an object
        that cannot be pickled raises here rather than in a background
        thread. bytes and str go in as they are, without pickling. An item
        larger than max_item_size waits in the segment's heap (room set by
        heap_bytes). Raises queue.Full when block is false or the timeout
        passes; ValueError after close() (of this object) or shutdown() (by
        any process)."""
        self._h.put(obj, block, timeout)

    def get(self, block=True, timeout=None):
        """As multiprocessing.Queue.get(). The item leaves the queue as
        get() returns it: a process killed after that loses it. Raises
        queue.Empty when block is false or the timeout passes; ValueError
        after close() (of this object), or once the queue was shut down
        (shutdown()) and is empty."""
        return self._h.get(block, timeout)

    def put_nowait(self, obj, /):
        """put(obj, False)."""
        self._h.put_nowait(obj)

    def get_nowait(self):
        """get(False)."""
        return self._h.get_nowait()

    def qsize(self):
        """The number of items in the queue, a snapshot as in
        multiprocessing; unlike it, implemented on every platform."""
        return self._h.qsize()

    def empty(self):
        """True if the queue holds no item (a snapshot, as in multiprocessing)."""
        return self._h.empty()

    def full(self):
        """True if a put() would block now: maxsize items, or its byte budget
        (max_bytes) used up (a snapshot, as in multiprocessing)."""
        return self._h.full()

    def __reduce__(self):
        # Shared now (with a process, or stored in a dict or list): this
        # process keeps its segment attached until it exits, so the name
        # stays good even if this object goes.
        _arena.pin(self._h.segment)
        return (_rebuild, (type(self), self._h.segment.name, self._h.name, self._raw, self._options))

    def flush(self):
        """Nothing to wait for (the remote context's pipelined queues wait
        here): 0 items."""
        return 0

    def close(self):
        """No more put() or get() through this object, as in multiprocessing
        (other processes go on; shutdown() stops them all). Items already
        put stay in the queue: there is no feeder thread to flush."""
        self._h.close()

    def join_thread(self):
        """Nothing to wait for: put() has finished when it returns. As in
        multiprocessing, only after close() (AssertionError before)."""
        if not self._h.is_closed:
            raise AssertionError("join_thread() before close()")

    def cancel_join_thread(self):
        """Nothing to cancel: there is no feeder thread, and a process can
        always exit without waiting for its items to be flushed."""

    def shutdown(self):
        """Not in multiprocessing (like queue.Queue.shutdown() of Python
        3.13): close the queue for every process that uses it. put() raises
        ValueError; get() drains what is left, then raises ValueError, and
        blocked getters wake up to do so."""
        self._h.shutdown()

    @property
    def name(self):
        """Not in multiprocessing: (segment name, queue name), what another
        program opens (C++: shm::Queue::open(shm::Segment::open(segment),
        queue))."""
        return (self._h.segment.name, self._h.name)

    @property
    def maxsize(self):
        """The maxsize given (0: unbounded, which here means up to
        DEFAULT_CAPACITY items)."""
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

    def task_done(self):
        """As multiprocessing.JoinableQueue.task_done(): an item got is
        done. ValueError if called more times than items were got."""
        self._h.task_done()

    def join(self, timeout=None):
        """Wait until every item put has been got and marked done, as in
        multiprocessing; items got by a process that died count as done.
        The timeout is an extension: False if it passed first, else True."""
        return self._h.join(timeout)


class SimpleQueue(Queue):
    """multiprocessing.SimpleQueue: get(), put(), empty(), close().

    A Queue without a maxsize (it holds up to DEFAULT_CAPACITY items; put()
    blocks beyond). The extras of Queue (name=, raw=, the size arguments,
    qsize(), shutdown()) work here too."""

    def __init__(self, *, name=None, **kw):
        super().__init__(0, name=name, **kw)

    def put(self, obj):
        """As multiprocessing.SimpleQueue.put(), which blocks while its pipe
        is full: this one blocks while the queue is (DEFAULT_CAPACITY items,
        or its byte budget)."""
        self._h.put(obj)

    def get(self):
        """As multiprocessing.SimpleQueue.get()."""
        return self._h.get()

    def _bind(self):
        self.empty = self._h.empty
