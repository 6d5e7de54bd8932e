"""get_context("nats://host:4222"): Queue, JoinableQueue, Lock, Event, dict()
and list() across hosts, on a NATS JetStream server or cluster.

    import libshm
    ctx = libshm.get_context("nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222")
    q = ctx.JoinableQueue(name="jobs")      # the same on every host that names it
    d = ctx.dict(name="results")
    p = ctx.Process(target=work, args=(q, d))

The objects have the names and behaviour of the local ones (and of
multiprocessing's), pickle to any process on any host (they carry the
servers' URL and their name; each process connects on first use), and hold
values pickled as the local ones do. What differs, because they live on
the servers (see the README's "Across hosts"):

* delivery is at least once: an item got from a JoinableQueue and not
  marked task_done() within its lease (30 s by default) is delivered again,
  to a consumer that died or one that is only slow; Queue.get() marks its
  item done at once (a consumer killed right after loses it, as locally);
* a Lock is held on a lease (10 s by default) that this process renews; if
  the holder dies or is cut off, the lock is free again once the lease has
  run out. Every acquisition has a fencing token (Lock.token), an
  increasing number a resource can check;
* dict.update_key(key, fn) and increment() are compare-and-set loops: fn
  may run more than once;
* every call waits at most the request time-out (5 s) for the servers and
  then raises libshm.Unavailable naming them.

Objects made without a name get a unique one and stay on the servers until
removed (ctx.remove(obj)): there is no reference counting across hosts.
Processes: ctx.Process is multiprocessing's with the spawn start method
(a connection to the servers does not survive fork()).
"""

import atexit
import multiprocessing
import os
import pickle
import queue as _queue
import sys
import threading
import uuid
import weakref
from collections.abc import MutableMapping

from . import _core

try:
    from . import _remote
except ImportError:  # built without the NATS C client
    _remote = None

__all__ = ["RemoteContext", "Unavailable", "NotEnoughReplicas", "DEFAULT_MAXSIZE"]

DEFAULT_MAXSIZE = 1 << 16  # items an unbounded queue (maxsize=0) holds

if _remote is not None:
    Unavailable = _remote.Unavailable
    NotEnoughReplicas = _remote.NotEnoughReplicas
else:
    class Unavailable(_core.Error, ConnectionError):
        """No NATS server answered in time."""

    class NotEnoughReplicas(_core.Error):
        """The object asks for more replicas than the servers can give."""


# ---- connections: one per process and set of options -------------------------

_stores = {}
_stores_lock = threading.Lock()
_inherited = []  # handles a forked child inherited: never used there, never destroyed


def _store(spec):
    pid = os.getpid()
    with _stores_lock:
        got = _stores.get(spec)
        if got is not None and got[0] == pid:
            return got[1]
        if got is not None:
            _inherited.append(got[1])
        servers, options = spec
        s = _remote.Store.connect(servers, **dict(options))
        _stores[spec] = (pid, s)
        return s


def _rebuild(cls, spec, name, options):
    obj = cls.__new__(cls)
    obj._setup(spec, name, options)
    return obj


class _Remote:
    """What every remote object has: the servers, its name, its options and
    this process's handle (opened on first use, again after a fork)."""

    def _setup(self, spec, name, options):
        self._spec, self._name, self._options = spec, name, options
        self._pid, self._handle = None, None

    def _open(self, store):
        raise NotImplementedError

    @property
    def _h(self):
        if self._pid != os.getpid():
            if self._handle is not None:
                _inherited.append(self._handle)
            self._handle = self._open(_store(self._spec))
            self._pid = os.getpid()
        return self._handle

    def __reduce__(self):
        return (_rebuild, (type(self), self._spec, self._name, self._options))

    @property
    def name(self):
        """Not in multiprocessing: the object's name on the servers, what
        another program opens (C++: shm::remote::...::open(store, name))."""
        return self._name

    def __repr__(self):
        return f"<libshm remote {type(self).__name__} {self._name!r} on {self._spec[0]}>"


# Pipelined queues and dicts used in this process: flushed when it ends.
# (By id: a DictProxy, a mapping, is not hashable.)
_pipelined = weakref.WeakValueDictionary()


@atexit.register
def _flush_pipelined():
    for q in list(_pipelined.values()):
        try:
            q.flush()
        except Exception as e:  # the servers gone: say what may be lost
            print(f"libshm: what was sent to {q!r} may not be stored: {e}", file=sys.stderr)


def _name(name):
    return name if name is not None else "py-" + uuid.uuid4().hex


# ---- queues ---------------------------------------------------------------------------

class Queue(_Remote):
    """multiprocessing.Queue across hosts: a JetStream work-queue stream.
    put() returns once the servers have stored the item; get() marks it
    done at once. maxsize=0 holds up to DEFAULT_MAXSIZE items. Keyword-only
    extras: name=, lease= (seconds an item got from a JoinableQueue may go
    unfinished before it is delivered again), max_deliveries=, replicas=,
    and pipelined=True: put() then returns once the item is sent, without
    waiting for the servers' answer (as multiprocessing's put() hands its
    item to a feeder thread), several times as many puts a second; close(),
    join_thread(), join() and the end of the process wait until the
    servers have stored every item this process sent (flush()). Until then
    an item may be lost with the process, as multiprocessing's may."""

    _ack_on_get = True

    def __init__(self, maxsize=0, *, ctx, name=None, lease=None, max_deliveries=None, replicas=None,
                 pipelined=False):
        maxsize = maxsize if maxsize and maxsize > 0 else 0
        options = (maxsize or DEFAULT_MAXSIZE, float(lease or 0.0), int(max_deliveries or 0), int(replicas or 0),
                   bool(pipelined))
        self._setup(ctx._spec, _name(name), options)
        self._h  # create it now: errors show here

    def _setup(self, spec, name, options):
        super()._setup(spec, name, options)
        # A handle is one thread's at a time: the put side (puts, flush)
        # and the get side (gets, task_done) each take their lock.
        self._put_lock, self._get_lock = threading.Lock(), threading.Lock()

    def _open(self, store):
        max_items, lease, max_deliveries, replicas = self._options[:4]
        h = _remote.Queue.open_or_create(store, self._name, max_items=max_items, lease=lease,
                                         max_deliveries=max_deliveries, replicas=replicas)
        if self.pipelined:
            _pipelined[id(self)] = self
        return h

    @property
    def pipelined(self):
        """Not in multiprocessing: whether put() waits for the servers."""
        return len(self._options) > 4 and self._options[4]

    def put(self, obj, block=True, timeout=None):
        data = pickle.dumps(obj, -1)
        with self._put_lock:
            h = self._h
            ok = (h.put_async if self.pipelined else h.put)(data, timeout if block else 0)
        if not ok:
            raise _queue.Full

    def put_nowait(self, obj):
        self.put(obj, False)

    def flush(self):
        """Not in multiprocessing: wait until the servers have stored every
        item put through this object in this process; how many it waited
        for (0 unless pipelined)."""
        if self._pid != os.getpid() or self._handle is None:
            return 0
        with self._put_lock:
            return self._handle.flush()

    def get(self, block=True, timeout=None):
        with self._get_lock:
            lease = self._h.get(timeout if block else 0)
        if lease is None:
            raise _queue.Empty
        item = pickle.loads(lease.item)
        if self._ack_on_get:
            lease.ack()
        return item

    def get_nowait(self):
        return self.get(False)

    @property
    def maxsize(self):
        return self._options[0]

    def shutdown(self):
        """Nothing to shut down here (ctx.remove(q) deletes the queue)."""

    def qsize(self):
        """Items waiting to be delivered (a snapshot from the servers)."""
        return self._h.qsize()

    def leased(self):
        """Not in multiprocessing: items delivered and not yet marked done
        (got from a JoinableQueue and awaiting task_done(), or fetched
        ahead by a get for the next ones), a snapshot from the servers. An
        item whose lease runs out is delivered again. With qsize() == 0,
        leased() == 0 says that nothing is left to get, and that no get
        could still return an item."""
        return self._h.leased()

    def empty(self):
        return self.qsize() == 0

    def full(self):
        return self._h.full()

    def close(self):
        """Pipelined: wait until the servers have stored what this process
        put (flush()). Otherwise nothing to do: put() has finished when it
        returns."""
        self.flush()

    def join_thread(self):
        """As close(): there is no feeder thread to join."""
        self.flush()

    def cancel_join_thread(self):
        """Nothing to cancel: there is no feeder thread (pipelined items are
        still flushed at the end of the process)."""


class JoinableQueue(Queue):
    """multiprocessing.JoinableQueue across hosts. An item got is leased
    until task_done() (in the process that got it) marks it done; if the
    lease runs out first (the consumer died, or is slow) the item is
    delivered again. join() waits until every item put is done."""

    _ack_on_get = False

    def task_done(self):
        try:
            with self._get_lock:
                self._h.task_done()
        except _core.Error as e:
            raise ValueError("task_done() called too many times") from e

    def join(self, timeout=None):
        """Wait until every item put is done; with a timeout (an extension),
        False if some are still unfinished when it passes."""
        self.flush()
        return self._h.join(timeout)


# ---- synchronisation ----------------------------------------------------------------------

class Lock(_Remote):
    """multiprocessing.Lock across hosts, held on a lease this process
    renews (lease= seconds, 10 by default); free again a lease after its
    holder died or was cut off. token: the fencing token of this process's
    current hold (an increasing number), 0 when not held. Threads of one
    process take turns on it as on a local lock."""

    def __init__(self, *, ctx, name=None, lease=None, replicas=None):
        self._setup(ctx._spec, _name(name), (float(lease or 0.0), int(replicas or 0)))
        self._h

    def _setup(self, spec, name, options):
        super()._setup(spec, name, options)
        self._local = threading.Lock()

    def _open(self, store):
        lease, replicas = self._options
        return _remote.Lock.open_or_create(store, self._name, lease=lease, replicas=replicas)

    def acquire(self, block=True, timeout=None):
        if not block:
            timeout = 0
        if timeout is not None and timeout < 0:
            timeout = 0
        if not self._local.acquire(True, -1 if timeout is None else timeout):
            return False
        try:
            # What is left of the timeout (the local wait took some of it)
            # is the remote lock's: the local lock was free, so little.
            if self._h.acquire(timeout):
                return True
        except BaseException:
            self._local.release()
            raise
        self._local.release()
        return False

    def release(self):
        if not self._local.locked():
            raise ValueError("release of an unlocked lock")
        try:
            self._h.release()
        finally:
            self._local.release()

    @property
    def token(self):
        return self._h.token

    @property
    def lease(self):
        return self._h.lease

    def __enter__(self):
        self.acquire()
        return True

    def __exit__(self, *exc):
        self.release()


class Event(_Remote):
    """multiprocessing.Event across hosts."""

    def __init__(self, *, ctx, name=None, replicas=None):
        self._setup(ctx._spec, _name(name), (int(replicas or 0),))
        self._h

    def _open(self, store):
        return _remote.Event.open_or_create(store, self._name, replicas=self._options[0])

    def is_set(self):
        return self._h.is_set()

    def set(self):
        self._h.set()

    def clear(self):
        self._h.clear()

    def wait(self, timeout=None):
        return self._h.wait(timeout)


# ---- containers ------------------------------------------------------------------------

class DictProxy(_Remote, MutableMapping):
    """Manager().dict() across hosts: a key-value bucket, each operation
    atomic on the servers. Keys: str as such, others pickled; values: None,
    bool, int, float and str as such, others pickled. keys(), values() and
    items() are lists from one scan of the bucket (not one instant).
    update_key() and increment() are compare-and-set loops: the function
    may run more than once.

    local_copy=True (an extension): this process keeps a copy of the whole
    dict, kept up to date by a watch on the servers, and reads answer from
    it with no round trip. Its own writes are read back at once; another
    process's arrive about one network delay after they return, and sync()
    waits for every write the servers had stored when it was called; a
    read never sees an older value than one read before; keys(), values()
    and items() are of one instant of the copy. Writes still wait for the
    servers, unless pipelined.

    pipelined=True (an extension): d[key] = value returns once the value is
    sent, without waiting for the servers' answer (several times as many
    sets a second). This process's operations keep their order: every
    other operation but reads of a key waits until its sets are stored,
    and a read answers with the value it set last. flush() and the end of
    the process wait until the servers have stored every value this
    process sent. Until then a value may be lost with the process."""

    def __init__(self, *args, ctx, name=None, replicas=None, local_copy=False, pipelined=False, **kwargs):
        self._setup(ctx._spec, _name(name), (int(replicas or 0), bool(local_copy), bool(pipelined)))
        if args or kwargs:
            self.update(*args, **kwargs)
        else:
            self._h

    def _open(self, store):
        h = _remote.Dict.open_or_create(store, self._name, replicas=self._options[0],
                                        local_copy=self._options[1])
        if self.pipelined:
            _pipelined[id(self)] = self
        return h

    @property
    def pipelined(self):
        """Not in multiprocessing: whether d[key] = value waits for the servers."""
        return len(self._options) > 2 and self._options[2]

    def flush(self):
        """Not in multiprocessing: wait until the servers have stored every
        value this process set; returns how many were waited for (0 unless
        pipelined)."""
        return self._h.flush()

    def sync(self):
        """With local_copy: wait until the copy holds every write the servers
        had stored when sync() was called. Without: nothing to wait for."""
        self._h.sync()

    def __getitem__(self, key):
        return self._h[key]

    def __setitem__(self, key, value):
        if self.pipelined:
            self._h.set_async(key, value)
        else:
            self._h[key] = value

    def __delitem__(self, key):
        del self._h[key]

    def __contains__(self, key):
        return key in self._h

    def __len__(self):
        return len(self._h)

    def __iter__(self):
        return iter(self._h.keys())

    def keys(self):
        return self._h.keys()

    def values(self):
        return [v for _, v in self._h.items()]

    def items(self):
        return self._h.items()

    def get(self, key, default=None):
        return self._h.get(key, default)

    def setdefault(self, key, default=None):
        return self._h.setdefault(key, default)

    def clear(self):
        self._h.clear()

    def copy(self):
        """A plain dict of the items, as a Manager's dict gives."""
        return dict(self._h.items())

    def update_key(self, key, fn):
        """Store fn(current value, None if missing) atomically and return it;
        fn may run more than once (compare-and-set), so it must have no side
        effects."""
        return self._h.update_key(key, fn)

    def increment(self, key, n=1):
        """d[key] += n atomically (a missing key counts from 0); returns the new value."""
        return self._h.update_key(key, lambda v: (v or 0) + n)


class ListProxy(_Remote):
    """Manager().list() across hosts: the whole list is one value replaced
    by compare-and-set at every change (each operation atomic; meant for
    lists of up to some thousands of small items). local_copy=True: reads
    answer from a watched copy in this process, as DictProxy's."""

    def __init__(self, iterable=(), *, ctx, name=None, replicas=None, local_copy=False):
        self._setup(ctx._spec, _name(name), (int(replicas or 0), bool(local_copy)))
        items = list(iterable)
        if items:
            self._h.extend(items)
        else:
            self._h

    def _open(self, store):
        return _remote.List.open_or_create(store, self._name, replicas=self._options[0],
                                           local_copy=self._options[1])

    def sync(self):
        """As DictProxy.sync()."""
        self._h.sync()

    def append(self, value):
        self._h.append(value)

    def extend(self, values):
        self._h.extend(list(values))

    def insert(self, index, value):
        self._h.insert(index, value)

    def pop(self, index=-1):
        return self._h.pop(index)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._h.snapshot()[index]
        return self._h[index]

    def __setitem__(self, index, value):
        self._h[index] = value

    def __len__(self):
        return len(self._h)

    def __iter__(self):
        return iter(self._h.snapshot())

    def __contains__(self, value):
        return value in self._h.snapshot()

    def index(self, value):
        return self._h.snapshot().index(value)

    def count(self, value):
        return self._h.snapshot().count(value)

    def clear(self):
        self._h.clear()

    def copy(self):
        return self._h.snapshot()

    def __eq__(self, other):
        return self._h.snapshot() == (other.copy() if isinstance(other, ListProxy) else other)

    __hash__ = None


def _context(spec):
    return RemoteContext(spec[0], **dict(spec[1]))


# ---- the context ------------------------------------------------------------------------

class RemoteContext:
    """What libshm.get_context("nats://...") returns: the objects across hosts
    on those servers, with multiprocessing's names. Options (keyword-only):
    request_timeout (seconds any one request may wait, 5), replicas (of the
    objects made: 1 or 3; 0 = 3 on a cluster of 3 or more, else 1),
    lock_lease (10 s), ack_wait (a JoinableQueue's lease, 30 s),
    max_deliveries (4)."""

    def __init__(self, servers, *, request_timeout=5.0, replicas=0, lock_lease=10.0, ack_wait=30.0,
                 max_deliveries=4):
        if _remote is None:
            raise _core.Error(95, "libshm was built without the NATS C client (libnats-dev): "
                                  "no objects across hosts")
        options = (("request_timeout", float(request_timeout)), ("replicas", int(replicas)),
                   ("lock_lease", float(lock_lease)), ("ack_wait", float(ack_wait)),
                   ("max_deliveries", int(max_deliveries)))
        self._spec = (servers, options)
        self._mp = multiprocessing.get_context("spawn")
        _store(self._spec)  # connect now: a wrong URL fails here

    def __reduce__(self):
        return (_context, (self._spec,))

    @property
    def servers(self):
        return self._spec[0]

    def Queue(self, maxsize=0, **kwargs):
        return Queue(maxsize, ctx=self, **kwargs)

    def JoinableQueue(self, maxsize=0, **kwargs):
        return JoinableQueue(maxsize, ctx=self, **kwargs)

    def Lock(self, **kwargs):
        return Lock(ctx=self, **kwargs)

    def Event(self, **kwargs):
        return Event(ctx=self, **kwargs)

    def dict(self, *args, **kwargs):
        return DictProxy(*args, ctx=self, **kwargs)

    def list(self, iterable=(), **kwargs):
        return ListProxy(iterable, ctx=self, **kwargs)

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, *, name=None, lease=10.0,
             max_retries=3):
        """multiprocessing.Pool across hosts (libshm.remote_pool): this
        process starts `processes` workers; others can join by the pool's
        name from any host (python3 -m libshm.remote_pool URL NAME).
        Keyword-only: name=, lease= (10 s), max_retries= (3)."""
        from .remote_pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild, ctx=self, name=name, lease=lease,
                    max_retries=max_retries)

    def remove(self, obj):
        """Delete an object (or the object of that name) from the servers;
        False if there was none."""
        return _store(self._spec).remove(obj.name if isinstance(obj, _Remote) else obj)

    # Processes: multiprocessing's, started by spawn.
    @property
    def Process(self):
        return self._mp.Process

    def get_start_method(self, allow_none=False):
        return "spawn"

    def cpu_count(self):
        return os.cpu_count()

    def __repr__(self):
        return f"<libshm remote context {self._spec[0]}>"
