"""libshm for Python: behaviour, processes, killed processes, leaks.

Every wait is bounded by a generous cap that fails only on a true hang;
nothing asserts on durations. Each test runs with its own shm directory
(SHM_DIR), so the leak checks see only their own files."""

import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import warnings

import multiprocessing as mp

import libshm

CAP = 60  # seconds: a true hang, never a slow machine


def files():
    return sorted(os.listdir(os.environ["SHM_DIR"]))


class ShmDirTest(unittest.TestCase):
    """The suite runs with SHM_DIR set to a directory of its own (one for
    the whole run: a forkserver started by one test serves the next)."""

    @classmethod
    def setUpClass(cls):
        if not os.environ.get("SHM_DIR", "").startswith("/dev/shm/"):
            raise unittest.SkipTest("set SHM_DIR to a directory of this run's own under /dev/shm")


def _put_range(q, start, n):
    for i in range(start, start + n):
        q.put(("item", i))


def _hold_lock_forever(lock, held):
    lock.acquire()
    held.set()
    time.sleep(CAP)


def _locked_increments(lock, d, n):
    for _ in range(n):
        with lock:
            d["n"] = d.get("n", 0) + 1


def _add_under_lock(v, a, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1
        with a.get_lock():
            a[0] += 1


def _hold_value_lock_forever(v, held):
    v.get_lock().acquire()
    v.value = -1  # half-way through an update
    held.set()
    time.sleep(CAP)


def _blocked_then_interrupted(kind, obj, ready, result):
    """Block in one call; report what SIGINT made of it."""
    calls = {
        "get": lambda: obj.get(),
        "acquire": lambda: obj.acquire(),
        "wait": lambda: obj.wait(),
        "barrier": lambda: obj.wait(),
        "join": lambda: obj.join(),
    }
    try:
        ready.set()
        calls[kind]()
        result.put("returned")
    except KeyboardInterrupt:
        result.put("KeyboardInterrupt")
    except BaseException as e:
        result.put(type(e).__name__)


def _wait_once(cond, sleeping, woken):
    with cond:
        sleeping.release()
        if cond.wait(CAP):
            woken.release()


def _append_range(lst, n, go):
    go.wait(CAP)
    for i in range(n):
        lst.append(i)


def _rewrite_forever(lst, started):
    started.set()
    while True:
        lst.sort(reverse=True)
        lst.reverse()
        lst[:] = lst[::-1]


def _get_forever(q, got):
    while True:
        got.put(q.get())


class Basics(ShmDirTest):
    def test_queue_items_of_every_kind(self):
        q = libshm.Queue()
        items = [b"bytes", "str é", ("tuple", 1), {"a": [1, 2]}, None, 2**100, b"\0pickle:x",
                 b"x" * 200_000]
        for x in items:
            q.put(x)
        self.assertEqual([q.get(timeout=CAP) for _ in items], items)
        self.assertRaises(queue.Empty, q.get_nowait)
        self.assertRaises(queue.Empty, q.get, True, 0.01)

    def test_queue_maxsize_is_exact(self):
        q = libshm.Queue(3)
        for i in range(3):
            q.put_nowait(i)
        self.assertTrue(q.full())
        self.assertRaises(queue.Full, q.put_nowait, 3)
        self.assertRaises(queue.Full, q.put, 3, True, 0.01)
        self.assertEqual(q.qsize(), 3)

    def test_queue_maxsize_counts_items_not_bytes(self):
        # 64-byte bytes and str items, small tuples, and items up to 248
        # bytes (with the tag byte, 249 round up to 256): maxsize of each.
        for maxsize in (1024, 5000):
            for item in (b"x" * 64, "y" * 64, ("tuple", 12345, 6.5), b"z" * 247):
                with self.subTest(maxsize=maxsize, item=type(item).__name__ + str(len(item))):
                    q = libshm.Queue(maxsize)
                    for i in range(maxsize):
                        q.put_nowait(item)
                    self.assertTrue(q.full())
                    self.assertRaises(queue.Full, q.put_nowait, item)
                    self.assertEqual(q.qsize(), maxsize)
                    for i in range(maxsize):
                        self.assertEqual(q.get_nowait(), item)
                    self.assertRaises(queue.Empty, q.get_nowait)

    def test_queue_of_one(self):
        q = libshm.Queue(1)
        q.put("only")
        self.assertTrue(q.full())
        self.assertRaises(queue.Full, q.put_nowait, "another")
        self.assertEqual(q.get_nowait(), "only")
        self.assertEqual(q.maxsize, 1)

    def test_closed_queue(self):
        q = libshm.Queue()
        q.close()
        self.assertRaises(ValueError, q.put, 1)
        q2 = libshm.Queue()
        q2.put(1)
        q2.shutdown()
        self.assertRaises(ValueError, q2.put, 2)
        self.assertEqual(q2.get(), 1)
        self.assertRaises(ValueError, q2.get)

    def test_joinable_queue(self):
        q = libshm.JoinableQueue()
        q.put(1)
        self.assertFalse(q.join(timeout=0.01))
        q.get()
        q.task_done()
        self.assertTrue(q.join(timeout=CAP))
        self.assertRaises(ValueError, q.task_done)

    def test_raw_queue_is_what_cpp_sees(self):
        q = libshm.Queue(name="rawq", raw=True)
        q.put(b"\x01\x02")
        self.assertEqual(q.get(), b"\x01\x02")
        self.assertRaises(TypeError, q.put, "str")

    def test_queue_call_forms(self):
        # put() and get() are plain builtins with an argument parser of
        # their own: multiprocessing's forms, by position and by keyword.
        q = libshm.Queue(2)
        q.put(1, True, None)
        q.put(obj=2, timeout=CAP, block=True)
        self.assertRaises(queue.Full, q.put, 3, block=False)
        self.assertRaises(queue.Full, q.put, 3, True, 0)
        self.assertRaises(queue.Full, q.put_nowait, 3)
        self.assertEqual(q.get(block=True, timeout=CAP), 1)
        self.assertEqual(q.get(False), 2)
        self.assertRaises(queue.Empty, q.get, timeout=0)
        self.assertRaises(queue.Empty, q.get_nowait)
        self.assertRaises(TypeError, q.put)
        self.assertRaises(TypeError, q.put, 1, item=2)
        self.assertRaises(TypeError, q.put, 1, True, None, 4)
        self.assertRaises(TypeError, q.get, True, None, 1)
        self.assertRaises(TypeError, q.get, block="yes")
        self.assertRaises(TypeError, q.get_nowait, 1)
        self.assertRaises(TypeError, q.put_nowait)

    def test_put_from_a_signal_handler_while_a_put_waits(self):
        # A put waiting for room runs signal handlers between its waits; a
        # put in one must leave the waiting put's item as it was.
        q, other = libshm.Queue(2), libshm.Queue()
        q.put("first")
        q.put("next")

        def handler(signum, frame):
            other.put("x" * 100)
            q.get()  # room for the waiting put

        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            q.put("second, which waited", timeout=CAP)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        self.assertEqual(q.get_nowait(), "next")
        self.assertEqual(q.get_nowait(), "second, which waited")
        self.assertEqual(other.get_nowait(), "x" * 100)

    def test_locks(self):
        lock = libshm.Lock()
        self.assertTrue(lock.acquire())
        self.assertFalse(lock.acquire(False))
        self.assertFalse(lock.acquire(True, 0.01))
        self.assertRaises(RuntimeError, lock.acquire)  # would wait for itself forever
        lock.release()
        self.assertRaises(ValueError, lock.release)
        r = libshm.RLock()
        for _ in range(3):
            self.assertTrue(r.acquire())
        for _ in range(3):
            r.release()
        self.assertRaises(RuntimeError, r.release)

    def test_lock_call_forms(self):
        # acquire() and release() are plain builtins with an argument parser
        # of their own: multiprocessing's forms, by position and by keyword.
        for lock in (libshm.Lock(), libshm.RLock()):
            self.assertTrue(lock.acquire(block=True, timeout=None))
            lock.release()
            self.assertTrue(lock.acquire(timeout=CAP, block=1))
            lock.release()
            self.assertTrue(lock.acquire(False))
            lock.release()
            with lock:
                again = lock.acquire(block=False)
                self.assertEqual(again, isinstance(lock, libshm.RLock))
                if again:
                    lock.release()
            self.assertRaises(TypeError, lock.acquire, True, None, 1)
            self.assertRaises(TypeError, lock.acquire, blocking=True)
            self.assertRaises(TypeError, lock.acquire, True, block=True)
            self.assertRaises(TypeError, lock.acquire, "yes")
            self.assertRaises(TypeError, lock.release, 1)
        lock = libshm.Lock()
        lock.acquire()
        self.assertRaises(TypeError, lock.acquire, True, "1")
        self.assertFalse(lock.acquire(timeout=0))
        lock.release()
        self.assertTrue(lock.acquire(block=0))
        lock.release()

    def test_semaphores_event_barrier_condition(self):
        s = libshm.BoundedSemaphore(2)
        self.assertTrue(s.acquire())
        self.assertEqual(s.get_value(), 1)
        s.release()
        self.assertRaises(ValueError, s.release)
        self.assertRaises(ValueError, libshm.Semaphore, -1)
        e = libshm.Event()
        self.assertFalse(e.wait(0.01))
        e.set()
        self.assertTrue(e.wait())
        b = libshm.Barrier(1, action=lambda: None)
        self.assertEqual(b.wait(), 0)
        b2 = libshm.Barrier(2)
        self.assertRaises(threading.BrokenBarrierError, b2.wait, 0.01)
        self.assertTrue(b2.broken)
        b2.reset()
        self.assertFalse(b2.broken)
        c = libshm.Condition(libshm.Lock())
        self.assertRaises(AssertionError, c.wait, 0)
        with c:
            self.assertFalse(c.wait(0.01))
            self.assertEqual(c.wait_for(lambda: 5, 0.01), 5)

    def test_condition_wait_ends_on_a_signal_handler_exception(self):
        # As Ctrl-C does: the main thread's wait ends and the exception
        # comes out, the lock held again until the with block releases it.
        class Interrupted(Exception):
            pass

        def handler(signum, frame):
            raise Interrupted()

        cond = libshm.Condition()

        def interrupt():
            # Only possible once the main thread's wait has let go of the lock.
            if cond.acquire(timeout=CAP):
                cond.release()
                os.kill(os.getpid(), signal.SIGUSR1)

        old = signal.signal(signal.SIGUSR1, handler)
        try:
            t = threading.Thread(target=interrupt)
            with self.assertRaises(Interrupted):
                with cond:
                    t.start()
                    cond.wait(CAP)
            t.join(CAP)
        finally:
            signal.signal(signal.SIGUSR1, old)
        self.assertTrue(cond.acquire(False))
        cond.release()

    def test_objects_outlive_a_detach_of_their_segment(self):
        # libshm detaches every segment at exit, while a daemon thread may
        # still be waiting on an object in it: an object stays usable (its
        # memory mapped) for as long as it lives, and the segment goes with
        # the last of them.
        core = libshm._core
        name = "detached-" + str(os.getpid())
        seg = core.Segment.create(name, 1 << 20)
        lock, rlock = core.Lock.create(seg, "l"), core.RLock.create(seg, "r")
        sem, cond = core.Semaphore.create(seg, "s", 1), core.Condition.create(seg, "c")
        event, barrier = core.Event.create(seg, "e"), core.Barrier.create(seg, "b", 1)
        seg.detach()
        self.assertFalse(seg.attached)
        self.assertTrue(lock.acquire(timeout=CAP))
        lock.release()
        self.assertTrue(rlock.acquire(timeout=CAP))
        self.assertFalse(cond.wait(rlock, 0.01))
        rlock.release()
        self.assertTrue(sem.acquire(timeout=CAP))
        event.set()
        self.assertTrue(event.wait(CAP))
        self.assertEqual(barrier.wait(CAP), 0)
        self.assertIn("libshm." + name, files())
        del lock, rlock, sem, cond, event, barrier
        self.assertNotIn("libshm." + name, files())

    def test_list_rewrites_lose_no_concurrent_append(self):
        # Another process appends while this one sorts, reverses and
        # slice-assigns: every append is there at the end.
        ctx = mp.get_context("fork")
        lst, go = libshm.list(), libshm.Event()
        p = ctx.Process(target=_append_range, args=(lst, 3000, go))
        p.start()
        go.set()
        # Until the appender is done (at least 300 rewrites; the cap only
        # stops a hang). Each third one puts a -1 in front by slice
        # assignment.
        inserted = 0
        for r in range(1_000_000):
            if r % 3 == 2:
                lst[:0] = [-1]
                inserted += 1
            else:
                [lst.sort, lst.reverse][r % 3]()
            if r >= 300 and not p.is_alive():
                break
        p.join(CAP)
        self.assertEqual(p.exitcode, 0)
        self.assertEqual(sorted(lst.copy()), [-1] * inserted + list(range(3000)))

    def test_list_rewrites(self):
        lst = libshm.list([3, 1, 2])
        lst.sort()
        self.assertEqual(lst.copy(), [1, 2, 3])
        lst.sort(key=lambda x: -x)
        self.assertEqual(lst.copy(), [3, 2, 1])
        lst.reverse()
        lst[1:2] = iter(["a", "b"])  # an iterator, read once
        self.assertEqual(lst.copy(), [1, "a", "b", 3])
        del lst[::2]
        self.assertEqual(lst.copy(), ["a", 3])
        lst *= 2
        self.assertEqual(lst.copy(), ["a", 3, "a", 3])
        # A refused rewrite changes nothing.
        self.assertRaises(TypeError, lst.sort)  # str < int
        self.assertRaises(ValueError, lst.__setitem__, slice(None, None, 2), [1, 2, 3])
        self.assertRaises(ZeroDivisionError, lst.sort, key=lambda x: 1 / 0)
        self.assertEqual(lst.copy(), ["a", 3, "a", 3])

    def test_dict_and_list(self):
        d = libshm.dict(a=1)
        d[65] = "A"
        d[b"k"] = 2.5
        d[("t", 1)] = {"nested": [1, None, True]}
        d["\0odd"] = "x"
        self.assertEqual(d.copy(), {"a": 1, 65: "A", b"k": 2.5, ("t", 1): {"nested": [1, None, True]}, "\0odd": "x"})
        self.assertEqual(d.pop("missing", 7), 7)
        self.assertRaises(KeyError, d.pop, "missing")
        self.assertRaises(KeyError, d.__getitem__, "missing")
        self.assertEqual(d.increment("count", 2), 2)
        self.assertRaises(TypeError, d.__setitem__, [1], 1)  # unhashable key
        inner = libshm.dict(x=1)
        outer = libshm.list([inner])
        outer[0]["y"] = 2  # shared by name, as a Manager's proxy
        self.assertEqual(inner["y"], 2)
        lst = libshm.list(range(5))
        self.assertEqual(lst[1:3], [1, 2])
        self.assertEqual(lst[-1], 4)
        self.assertRaises(IndexError, lst.__getitem__, 5)
        lst *= 2
        self.assertEqual(len(lst), 10)
        lst.remove(0)
        self.assertRaises(ValueError, lst.remove, 99)
        lst.sort()
        self.assertEqual(lst[:3], [0, 1, 1])

    def test_value_and_array(self):
        import ctypes
        v = libshm.Value("i", 7)
        self.assertEqual(v.value, 7)
        self.assertEqual(v.get_obj().value, 7)
        a = libshm.Array("d", [1.5, 2.5])
        self.assertEqual(a[:], [1.5, 2.5])
        a[1:] = [9.0]
        self.assertEqual(a[1], 9.0)
        s = libshm.Array("c", b"hello")
        self.assertEqual(s.value, b"hello")
        raw = libshm.RawArray(ctypes.c_uint16, 3)
        self.assertEqual(list(raw), [0, 0, 0])
        self.assertIsInstance(libshm.Value("q", 1, lock=False), ctypes.c_longlong)
        shared_lock = libshm.RLock()
        self.assertIs(libshm.Value("i", lock=shared_lock).get_lock(), shared_lock)
        self.assertRaises(AttributeError, libshm.Value, "i", 0, lock=object())
        self.assertRaises(TypeError, libshm.Value, "not a typecode")

    def test_pickle_by_name(self):
        for obj in (libshm.Queue(), libshm.Lock(), libshm.dict(a=1), libshm.Event()):
            again = pickle.loads(pickle.dumps(obj))
            self.assertEqual(again.name, obj.name)


class Processes(ShmDirTest):
    def _each_start_method(self, fn):
        for method in ("fork", "spawn", "forkserver"):
            with self.subTest(method=method):
                fn(mp.get_context(method))

    def test_objects_pass_under_every_start_method(self):
        def run(ctx):
            q, lock, d = libshm.Queue(), libshm.Lock(), libshm.dict()
            ps = [ctx.Process(target=_locked_increments, args=(lock, d, 200)) for _ in range(2)]
            ps.append(ctx.Process(target=_put_range, args=(q, 0, 100)))
            for p in ps:
                p.start()
            got = sorted(q.get(timeout=CAP)[1] for _ in range(100))
            for p in ps:
                p.join(CAP)
                self.assertEqual(p.exitcode, 0)
            self.assertEqual(got, list(range(100)))
            self.assertEqual(d["n"], 400)
        self._each_start_method(run)

    def test_no_file_left_once_every_process_has_gone(self):
        before = files()
        ctx = mp.get_context("spawn")
        code = ("import libshm, multiprocessing as mp\n"
                "q = libshm.Queue(); d = libshm.dict(a=1); l = libshm.Lock(); q.put(b'x')\n")
        p = ctx.Process(target=exec, args=(code, {}))
        p.start()
        p.join(CAP)
        self.assertEqual(p.exitcode, 0)
        self.assertEqual(files(), before)

    def test_condition_notify_reaches_a_thread_and_a_forked_process(self):
        # The default RLock; a thread waits first, then a process forked
        # meanwhile. Each notify wakes one of them. The process looks for
        # Ctrl-C every 50 ms while it waits; the notifies come a whole
        # number of those periods after it started waiting, where waits made
        # of 50 ms slices lost them.
        ctx = mp.get_context("fork")
        for _ in range(3):
            cond, sleeping, woken = libshm.Condition(), libshm.Semaphore(0), libshm.Semaphore(0)
            t = threading.Thread(target=_wait_once, args=(cond, sleeping, woken), daemon=True)
            t.start()
            self.assertTrue(sleeping.acquire(timeout=CAP))
            p = ctx.Process(target=_wait_once, args=(cond, sleeping, woken), daemon=True)
            p.start()
            self.assertTrue(sleeping.acquire(timeout=CAP))
            for pause in (0.1, 0.3):
                time.sleep(pause)
                with cond:
                    cond.notify()
                self.assertTrue(woken.acquire(timeout=CAP))  # a lost notify wakes nobody
            t.join(CAP)
            p.join(CAP)
            self.assertEqual(p.exitcode, 0)


class SharedValues(ShmDirTest):
    def test_four_processes_add_exactly(self):
        for method in ("fork", "spawn"):
            with self.subTest(method=method):
                ctx = mp.get_context(method)
                v, a = libshm.Value("l", 0), libshm.Array("i", 3)
                ps = [ctx.Process(target=_add_under_lock, args=(v, a, 500)) for _ in range(4)]
                for p in ps:
                    p.start()
                for p in ps:
                    p.join(CAP)
                    self.assertEqual(p.exitcode, 0)
                self.assertEqual(v.value, 2000)
                self.assertEqual(a[:], [2000, 0, 0])

    def test_value_lock_holder_killed(self):
        ctx = mp.get_context("fork")
        v = libshm.Value("i", 0)
        for _ in range(50):
            held = libshm.Event()
            p = ctx.Process(target=_hold_value_lock_forever, args=(v, held))
            p.start()
            self.assertTrue(held.wait(CAP))
            os.kill(p.pid, signal.SIGKILL)
            p.join(CAP)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with v.get_lock():
                    self.assertTrue(v.get_lock().previous_owner_died)
                    self.assertEqual(v.value, -1)  # what the dead holder left: the caller repairs
                    v.value = 0
            self.assertTrue(any(issubclass(w.category, libshm.OwnerDiedWarning) for w in caught))


class Interrupts(ShmDirTest):
    def test_ctrl_c_ends_every_blocking_call(self):
        ctx = mp.get_context("fork")
        held = libshm.Lock()
        held.acquire()
        jq = libshm.JoinableQueue()
        jq.put(1)
        cases = {"get": libshm.Queue(), "acquire": held, "wait": libshm.Event(),
                 "barrier": libshm.Barrier(2), "join": jq}
        for kind, obj in cases.items():
            with self.subTest(kind=kind):
                ready, result = libshm.Event(), libshm.Queue()
                p = ctx.Process(target=_blocked_then_interrupted, args=(kind, obj, ready, result))
                p.start()
                self.assertTrue(ready.wait(CAP))
                if kind == "barrier":
                    # In the barrier before the signal, so that it must break it.
                    for _ in range(CAP * 100):
                        if obj.n_waiting == 1:
                            break
                        time.sleep(0.01)
                    self.assertEqual(obj.n_waiting, 1)
                # SIGINT until the child reports: the first may come before it blocks.
                got = None
                for _ in range(CAP * 10):
                    os.kill(p.pid, signal.SIGINT)
                    try:
                        got = result.get(timeout=0.1)
                        break
                    except queue.Empty:
                        continue
                p.join(CAP)
                self.assertEqual(got, "KeyboardInterrupt")
        self.assertTrue(cases["barrier"].broken)  # as threading.Barrier after an exception


# A process whose daemon threads are still waiting on a Lock, a Semaphore
# and a Condition when it exits. The Lock and Semaphore waits wake every
# 50 ms (to look for Ctrl-C): first while an exit handler sleeps after
# libshm's own has detached every segment, then while an object's __del__
# sleeps with the interpreter finalizing, when taking the GIL back ends
# the thread (pthread_exit).
_EXIT_WHILE_WAITING = """
import atexit, time
atexit.register(time.sleep, 0.3)  # runs after libshm's exit handler, registered later
import os, sys, threading, types
import libshm

class Linger:
    def __del__(self, sleep=time.sleep):
        sleep(0.3)

lock, sem, cond, started = libshm.Lock(), libshm.Semaphore(0), libshm.Condition(), libshm.Semaphore(0)
lock.acquire()

def in_lock():
    started.release()
    lock.acquire()

def in_semaphore():
    started.release()
    sem.acquire()

def in_condition():
    with cond:
        started.release()
        cond.wait()

for f in (in_lock, in_semaphore, in_condition):
    threading.Thread(target=f, daemon=True).start()
for _ in range(3):
    started.acquire()
# Held by a module of its own, which goes once the interpreter finalizes.
holder = types.ModuleType("linger")
holder.linger = Linger()
sys.modules["linger"] = holder
print("exiting", flush=True)
"""


class Exit(unittest.TestCase):
    def test_daemon_threads_waiting_at_exit(self):
        # Its own shm directory: the threads keep their segment, which the
        # process therefore leaves for shmd or shmctl gc.
        with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
            env = dict(os.environ, SHM_DIR=d)
            r = subprocess.run([sys.executable, "-c", _EXIT_WHILE_WAITING], env=env, capture_output=True,
                               text=True, timeout=CAP)
        self.assertEqual(r.stdout, "exiting\n")
        self.assertEqual(r.stderr, "")
        self.assertEqual(r.returncode, 0)


class Crashes(ShmDirTest):
    ROUNDS = 100

    def test_lock_holder_killed_again_and_again(self):
        ctx = mp.get_context("fork")
        lock = libshm.Lock()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(self.ROUNDS):
                held = libshm.Event()
                p = ctx.Process(target=_hold_lock_forever, args=(lock, held))
                p.start()
                self.assertTrue(held.wait(CAP))
                os.kill(p.pid, signal.SIGKILL)
                p.join(CAP)
                self.assertTrue(lock.acquire(timeout=CAP))
                self.assertTrue(lock.previous_owner_died)
                lock.release()
        self.assertEqual(sum(issubclass(w.category, libshm.OwnerDiedWarning) for w in caught), self.ROUNDS)

    def test_killed_consumers_and_producers(self):
        """Consumers killed at varied points while producers put: every item
        got is whole and got once; no process hangs."""
        ctx = mp.get_context("fork")
        q, got = libshm.Queue(), libshm.Queue()
        seen = []
        rounds = 100
        for r in range(rounds):
            prod = ctx.Process(target=_put_range, args=(q, r * 1000, 300))
            cons = ctx.Process(target=_get_forever, args=(q, got))
            prod.start()
            cons.start()
            time.sleep(0.001 * (r % 5))
            os.kill(cons.pid, signal.SIGKILL)
            cons.join(CAP)
            prod.join(CAP)  # never blocked for good: the queue is far from full
            self.assertEqual(prod.exitcode, 0)
            while True:
                try:
                    seen.append(got.get_nowait())
                except queue.Empty:
                    break
        rest = []
        while True:
            try:
                rest.append(q.get_nowait())
            except queue.Empty:
                break
        everything = [i for _, i in seen] + [i for _, i in rest]
        self.assertEqual(len(everything), len(set(everything)))  # nothing twice
        # Lost: at most the one item each killed consumer had taken.
        self.assertGreaterEqual(len(everything), rounds * 300 - rounds)
        self.assertTrue(all(tag == "item" for tag, _ in seen + rest))

    def test_list_rewriters_killed(self):
        """A process sorting, reversing and slice-assigning a list, killed
        at varied points: the list always holds the same items, never a
        part of them (each rewrite is one step)."""
        ctx = mp.get_context("fork")
        lst = libshm.list(["item %04d" % i for i in range(1000)])
        want = sorted(lst.copy())
        for r in range(self.ROUNDS // 2):
            started = libshm.Event()
            p = ctx.Process(target=_rewrite_forever, args=(lst, started))
            p.start()
            self.assertTrue(started.wait(CAP))
            time.sleep(0.0005 * (r % 11))
            os.kill(p.pid, signal.SIGKILL)
            p.join(CAP)
            self.assertEqual(sorted(lst.copy()), want)
        self.assertEqual(lst._h.segment.verify(), [])

    def test_dict_updater_killed(self):
        ctx = mp.get_context("fork")
        d, lock = libshm.dict(), libshm.Lock()
        for r in range(self.ROUNDS // 2):
            p = ctx.Process(target=_locked_increments, args=(lock, d, 10_000))
            p.start()
            time.sleep(0.0005 * (r % 7))
            os.kill(p.pid, signal.SIGKILL)
            p.join(CAP)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", libshm.OwnerDiedWarning)
                with lock:
                    n = d.get("n", 0)
                    self.assertIsInstance(n, int)
                    d["n"] = n  # the dict is usable after every kill
        self.assertEqual(d._h.segment.verify(), [])


if __name__ == "__main__":
    unittest.main()
