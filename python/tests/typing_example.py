"""libshm used as a typed program uses it: check_typing.py runs mypy
--strict over this file (it must pass) and then runs it."""

import queue
import threading
from typing import Any

import libshm
import libshm.remote


def queues() -> None:
    q: libshm.Queue[int] = libshm.Queue(maxsize=8)
    q.put(1)
    q.put(2, block=True, timeout=10.0)
    q.put_nowait(3)
    total: int = q.get() + q.get(timeout=10) + q.get_nowait()
    assert total == 6
    assert q.qsize() == 0 and q.empty() and not q.full() and q.maxsize == 8
    try:
        q.get(block=False)
    except queue.Empty:
        pass
    segment, name = q.name
    assert isinstance(segment, str) and isinstance(name, str)
    q.close()
    q.join_thread()
    q.cancel_join_thread()

    anything = libshm.Queue()  # a Queue[Any], as multiprocessing.Queue() is
    anything.put({"any": ["picklable", 1]})
    assert anything.get() == {"any": ["picklable", 1]}
    anything.shutdown()

    jobs: libshm.JoinableQueue[str] = libshm.JoinableQueue()
    jobs.put("job")
    job: str = jobs.get()
    assert job == "job"
    jobs.task_done()
    assert jobs.join(timeout=10)

    simple: libshm.SimpleQueue[bytes] = libshm.SimpleQueue()
    simple.put(b"raw")
    data: bytes = simple.get()
    assert data == b"raw" and simple.empty()


def synchronization() -> None:
    lock = libshm.Lock()
    with lock:
        assert not lock.previous_owner_died
    if lock.acquire(block=True, timeout=10):
        lock.release()
    rlock = libshm.RLock()
    with rlock, rlock:
        pass

    sem = libshm.BoundedSemaphore(2)
    with sem:
        left: int = sem.get_value()
        assert left == 1
    assert libshm.Semaphore(0).acquire(False) is False

    cond = libshm.Condition(libshm.Lock())
    with cond:
        cond.notify()
        cond.notify_all()
        cond.wait(timeout=0.01)
        answer: int = cond.wait_for(lambda: 42, timeout=10)
        assert answer == 42

    event = libshm.Event()
    event.set()
    assert event.is_set() and event.wait(10)
    event.clear()

    ran: list[bool] = []
    barrier = libshm.Barrier(1, action=lambda: ran.append(True), timeout=10.0)
    index: int = barrier.wait()
    assert index == 0 and ran == [True]
    assert barrier.parties == 1 and barrier.n_waiting == 0 and not barrier.broken
    barrier.reset()
    barrier.abort()
    assert barrier.broken
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass


def containers() -> None:
    counts = libshm.dict(a=1)  # a DictProxy[str, int]
    counts["b"] = 2
    now: int = counts.increment("a", 5)
    assert now == 6
    keys: list[str] = sorted(counts.keys())
    assert keys == ["a", "b"]
    assert counts.get("c") is None and counts.get("c", 0) == 0
    assert counts.setdefault("c", 3) == 3 and counts.pop("c") == 3
    plain: dict[str, int] = counts.copy()
    assert plain == {"a": 6, "b": 2} and counts == plain
    counts.update({"d": 4}, e=5)
    for key, value in counts.items():
        assert isinstance(key, str) and isinstance(value, int)

    untyped = libshm.dict()  # a DictProxy[Any, Any]
    untyped[("any", "key")] = object.__name__

    items: libshm.ListProxy[int] = libshm.list([3, 1, 2])
    items.append(4)
    items.sort()
    first: int = items[0]
    head: list[int] = items[:2]
    assert first == 1 and head == [1, 2] and items.index(4) == 3
    items += [5]
    assert items.copy() == [1, 2, 3, 4, 5] and items.pop() == 5 and len(items) == 4

    with libshm.Manager() as manager:
        shared = manager.dict()
        shared["x"] = manager.list([1])
        guarded: Any = manager.Lock()
        with guarded:
            pass
        q: libshm.Queue[int] = manager.Queue(4)
        q.put(1)
        assert q.get() == 1


def errors() -> None:
    try:
        libshm.Lock(name="typing-example")
    except libshm.Error as e:
        raise AssertionError(f"unexpected: {e.errno} {e.strerror}") from e
    assert issubclass(libshm.NotFound, FileNotFoundError)
    assert issubclass(libshm.OwnerDiedWarning, RuntimeWarning)
    assert isinstance(libshm.__version__, str)


def contexts(url: str | None) -> None:
    """The same code on either context (remote only given a server's URL:
    checked by mypy, run by test_remote.py's suite instead)."""
    local = libshm.get_context("spawn")
    lq = local.JoinableQueue()
    lq.put(1)
    assert lq.get(timeout=10) == 1
    lq.task_done()
    assert local.get_start_method() == "spawn"
    if url is None:
        return
    ctx = libshm.get_context(url, request_timeout=2.0)
    assert isinstance(ctx, libshm.remote.RemoteContext)
    rq = ctx.JoinableQueue(8, lease=5.0)
    rq.put("job")
    job: str = rq.get(timeout=10)
    rq.task_done()
    lock = ctx.Lock(lease=2.0)
    with lock:
        token: int = lock.token
    d = ctx.dict()
    d["jobs"] = d.get("jobs", 0) + 1
    total = d.update_key("total", lambda v: (v or 0) + 1)
    ctx.remove(rq)
    assert job and token and total


if __name__ == "__main__":
    contexts(None)
    queues()
    synchronization()
    containers()
    errors()
    print("typing example: ran")
