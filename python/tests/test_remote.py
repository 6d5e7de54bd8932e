"""get_context(): one behavioural test body, run against the local context
(shared memory) and the remote one (a real nats-server with JetStream on a
loopback port and a temporary store, started here and stopped after); then
what only the remote one has: a consumer SIGKILLed while holding an item
(delivered again after its lease), a lock holder SIGKILLed (the lock free
after its lease, with a larger fencing token), an unreachable server; a
server SIGKILLed out of a 3-server cluster while a consumer waits in get()
and a producer puts, and a single server stopped and started again while a
get waits (the queue carries on, nothing lost).

The remote tests are skipped, saying why, when nats-server is not
installed or the package was built without the NATS client. Every wait is
bounded by a generous cap that fails only on a true hang; nothing asserts
on durations."""

import os
import pickle
import queue
import signal
import sys
import threading
import time
import unittest

import libshm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import nats_server  # noqa: E402  (tests/nats_server.py)

CAP = 60  # seconds: a true hang, never a slow machine
SERVER = None


def setUpModule():
    global SERVER
    try:
        import libshm._remote  # noqa: F401
    except ImportError:
        return  # RemoteBehaviour skips, saying so
    if nats_server.find_binary() is None:
        return
    SERVER = nats_server.NatsServer().__enter__()


def tearDownModule():
    if SERVER is not None:
        SERVER.__exit__(None, None, None)


def remote_skip_reason():
    try:
        import libshm._remote  # noqa: F401
    except ImportError:
        return "libshm was built without the NATS C client (libnats-dev): no libshm._remote"
    if nats_server.find_binary() is None:
        return "nats-server is not installed (Debian: apt-get install nats-server)"
    return None


# ---- what the child processes run (module level: they are spawned) --------------------------

def _produce(q, start, n):
    for i in range(start, start + n):
        q.put(("item", i))


def _locked_increments(lock, d, n):
    for _ in range(n):
        with lock:
            d["n"] = d.get("n", 0) + 1  # a read and a write: only the lock makes it exact


def _hold_until(lock, held, go, out):
    with lock:
        out.put(getattr(lock, "token", 0))
        held.set()
        go.wait(CAP)


def _wait_event(e, out):
    out.put(e.wait(CAP))


def _take_and_hang(q, got):
    item = q.get(timeout=CAP)
    got.put(item)
    threading.Event().wait(CAP)  # never task_done(): killed here


def _set_pipelined_and_exit(d, n):
    assert d.pipelined
    for i in range(n):
        d["from_child"] = i


def _put_pipelined_and_exit(q, n):
    for i in range(n):
        q.put(i)  # no close(): the end of the process flushes


def _put_pipelined_flush_and_hang(q, n, out):
    for i in range(n):
        q.put(i)
    q.flush()
    out.put(n)
    for i in range(n, 10 * n):  # sent, perhaps stored, when it is killed
        q.put(i)
    threading.Event().wait(CAP)


def _lock_and_hang(lock, out):
    lock.acquire()
    out.put(lock.token)
    threading.Event().wait(CAP)


class Behaviour:
    """The behaviour both contexts share; self.ctx is the context."""

    def spawn(self, target, *args):
        p = self.ctx.Process(target=target, args=args)
        p.start()
        self.addCleanup(self.reap, p)
        return p

    def reap(self, p):
        p.join(CAP)
        if p.is_alive():
            p.kill()
            p.join()

    def join_ok(self, p):
        p.join(CAP)
        self.assertFalse(p.is_alive(), "child still running after the cap")
        self.assertEqual(p.exitcode, 0)

    # ---- Queue ----
    def test_queue_put_get_in_order_pickled(self):
        items = [None, 1, "two", b"three", (4, 4.5), {"five": [5]}, list(range(100))]
        for pipelined in (False, True):  # the same program on both contexts
            q = self.ctx.Queue(pipelined=pipelined)
            for x in items:
                q.put(x)
            self.assertLessEqual(q.flush(), len(items))
            self.assertEqual([q.get(timeout=CAP) for _ in items], items)

    def test_queue_empty_and_timeouts(self):
        q = self.ctx.Queue()
        self.assertTrue(q.empty())
        q.put("w")
        self.assertEqual(q.qsize(), 1)
        self.assertFalse(q.empty())
        self.assertEqual(q.get(timeout=CAP), "w")
        with self.assertRaises(queue.Empty):
            q.get_nowait()
        with self.assertRaises(queue.Empty):
            q.get(False)
        with self.assertRaises(queue.Empty):
            q.get(timeout=0.2)
        q.put("x")
        self.assertEqual(q.get(timeout=CAP), "x")

    def test_queue_full(self):
        q = self.ctx.Queue(2)
        q.put(1)
        q.put(2)
        self.assertTrue(q.full())
        with self.assertRaises(queue.Full):
            q.put_nowait(3)
        with self.assertRaises(queue.Full):
            q.put(3, timeout=0.2)
        self.assertEqual(q.get(timeout=CAP), 1)
        q.put(3, timeout=CAP)
        self.assertEqual([q.get(timeout=CAP), q.get(timeout=CAP)], [2, 3])

    def test_queue_across_processes(self):
        q = self.ctx.Queue()
        ps = [self.spawn(_produce, q, k * 1000, 20) for k in range(2)]
        got = sorted(q.get(timeout=CAP)[1] for _ in range(40))
        for p in ps:
            self.join_ok(p)
        self.assertEqual(got, list(range(20)) + list(range(1000, 1020)))

    def test_queue_pickles(self):
        q = self.ctx.Queue()
        q2 = pickle.loads(pickle.dumps(q))
        q2.put("via the copy")
        self.assertEqual(q.get(timeout=CAP), "via the copy")

    # ---- JoinableQueue ----
    def test_joinable_task_done_and_join(self):
        q = self.ctx.JoinableQueue()
        for i in range(3):
            q.put(i)
        self.assertFalse(q.join(timeout=0.2))
        for _ in range(3):
            q.get(timeout=CAP)
        self.assertFalse(q.join(timeout=0.2))  # got, not done
        for _ in range(3):
            q.task_done()
        self.assertTrue(q.join(timeout=CAP))
        with self.assertRaises(ValueError):
            q.task_done()

    # ---- dict and list ----
    def test_dict(self):
        d = self.ctx.dict({"a": 1}, b=2)
        d["c"] = [1, 2, {"x": None}]
        d[(1, "t")] = "tuple key"
        d[7] = 7.5
        d.update({"a": 10}, e=b"bytes")
        self.assertEqual(d["a"], 10)
        self.assertEqual(d["c"], [1, 2, {"x": None}])
        self.assertEqual(d[(1, "t")], "tuple key")
        self.assertEqual(d[7], 7.5)
        self.assertEqual(d.get("missing", "dflt"), "dflt")
        self.assertIsNone(d.get("missing"))
        self.assertIn("e", d)
        self.assertNotIn("missing", d)
        self.assertEqual(len(d), 6)
        self.assertEqual(sorted(map(repr, d.keys())), sorted(map(repr, ["a", "b", "c", (1, "t"), 7, "e"])))
        with self.assertRaises(KeyError):
            d["missing"]
        del d["b"]
        with self.assertRaises(KeyError):
            del d["b"]
        self.assertEqual(d.pop("e"), b"bytes")
        self.assertEqual(d.setdefault("s", 5), 5)
        self.assertEqual(d.setdefault("s", 6), 5)
        d2 = pickle.loads(pickle.dumps(d))
        d2["via"] = "copy"
        self.assertEqual(d["via"], "copy")

    def test_list(self):
        lst = self.ctx.list([1, "two"])
        lst.append((3,))
        lst.extend([4, 5])
        self.assertEqual(len(lst), 5)
        self.assertEqual(lst[2], (3,))
        self.assertEqual(lst[-1], 5)
        self.assertEqual(lst.pop(), 5)
        self.assertEqual(list(lst), [1, "two", (3,), 4])
        self.assertEqual(lst.index("two"), 1)
        lst[0] = "one"
        self.assertEqual(lst[0], "one")
        with self.assertRaises(IndexError):
            lst[10]

    # ---- Lock ----
    def test_lock_excludes_across_processes(self):
        lock, d = self.ctx.Lock(), self.ctx.dict()
        ps = [self.spawn(_locked_increments, lock, d, 10) for _ in range(3)]
        for p in ps:
            self.join_ok(p)
        self.assertEqual(d["n"], 30)

    def test_lock_held_elsewhere(self):
        lock, held, go, out = self.ctx.Lock(), self.ctx.Event(), self.ctx.Event(), self.ctx.Queue()
        p = self.spawn(_hold_until, lock, held, go, out)
        self.assertTrue(held.wait(CAP))
        self.assertFalse(lock.acquire(False))
        self.assertFalse(lock.acquire(timeout=0.2))
        go.set()
        self.assertTrue(lock.acquire(timeout=CAP))
        lock.release()
        self.join_ok(p)
        with self.assertRaises(ValueError):
            lock.release()

    # ---- Event ----
    def test_event(self):
        e, out = self.ctx.Event(), self.ctx.Queue()
        self.assertFalse(e.is_set())
        self.assertFalse(e.wait(0.2))
        p = self.spawn(_wait_event, e, out)
        e.set()
        self.assertTrue(e.is_set())
        self.assertTrue(out.get(timeout=CAP))
        self.join_ok(p)
        e.clear()
        self.assertFalse(e.is_set())


class LocalBehaviour(Behaviour, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.environ.get("SHM_DIR", "").startswith("/dev/shm/"):
            raise unittest.SkipTest("set SHM_DIR to a directory of this run's own under /dev/shm")
        cls.ctx = libshm.get_context("spawn")


class RemoteBehaviour(Behaviour, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        why = remote_skip_reason()
        if why:
            raise unittest.SkipTest(why)
        cls.ctx = libshm.get_context(SERVER.url, lock_lease=2.0, ack_wait=2.0)

    # ---- what only the remote context has ----
    def test_dict_and_list_with_a_local_copy(self):
        d = self.ctx.dict({"a": 1}, local_copy=True)
        other = pickle.loads(pickle.dumps(d))  # another handle: its own copy, as in a child
        plain = self.ctx.dict(name=d.name)  # and one that reads from the servers
        for i in range(50):  # its own writes, read back at once
            d["n"] = i
            self.assertEqual(d["n"], i)
        plain["b"] = "from elsewhere"
        del plain["a"]
        d.sync()
        self.assertEqual(sorted(d.keys()), ["b", "n"])
        self.assertEqual(d["b"], "from elsewhere")
        other.sync()
        self.assertEqual(dict(other.items()), {"b": "from elsewhere", "n": 49})
        self.assertEqual(d.increment("n"), 50)
        plain.clear()
        d.sync()
        self.assertEqual(len(d), 0)
        lst = self.ctx.list([1, 2], local_copy=True)
        lst.append(3)
        self.assertEqual(list(lst), [1, 2, 3])
        self.ctx.list(name=lst.name).append(4)
        lst.sync()
        self.assertEqual(lst[-1], 4)

    def test_pipelined_dict(self):
        for local_copy in (False, True):
            d = self.ctx.dict(pipelined=True, local_copy=local_copy)
            self.assertTrue(d.pipelined)
            plain = self.ctx.dict(name=d.name)  # waits for the servers
            for i in range(300):
                d[f"k{i % 10}"] = i
                self.assertEqual(d[f"k{i % 10}"], i)  # its own writes, read back at once
            self.assertLessEqual(d.flush(), 300)
            self.assertEqual(d.flush(), 0)
            self.assertEqual(dict(plain.items()), {f"k{k}": 290 + k for k in range(10)})
            # Its other operations come after its sets.
            d["x"] = 1
            del d["x"]
            self.assertNotIn("x", plain)
            d["x"] = 2
            self.assertEqual(d.increment("x", 5), 7)
            d.update({"y": [1, 2], "z": {"nested": True}})
            self.assertEqual(len(d), 13)
            self.assertEqual(plain["z"], {"nested": True})
            # A handle in another process is pipelined too, and flushes as it ends.
            self.join_ok(self.spawn(_set_pipelined_and_exit, d, 200))
            self.assertEqual(plain["from_child"], 199)
            self.assertEqual(self.ctx.dict(name=d.name)["from_child"], 199)
        self.assertEqual(self.ctx.dict().flush(), 0)  # not pipelined: nothing to wait for

    def test_killed_consumer_item_delivered_again(self):
        # The lease is what this test waits out once, and the margin this
        # process has to mark the item done before it is delivered again
        # (an item held half its lease is given back): at 1 s, a loaded
        # host once took longer and the item came a third time.
        q, got = self.ctx.JoinableQueue(lease=4.0), self.ctx.Queue()
        q.put("precious")
        p = self.spawn(_take_and_hang, q, got)
        self.assertEqual(got.get(timeout=CAP), "precious")  # leased to the child
        os.kill(p.pid, signal.SIGKILL)
        p.join(CAP)
        self.assertEqual(q.get(timeout=CAP), "precious")  # delivered again once its lease ran out
        q.task_done()
        self.assertTrue(q.join(timeout=CAP))
        with self.assertRaises(queue.Empty):
            q.get(timeout=0.5)

    def test_leased_counts_items_got_and_not_done(self):
        # What a reader needs to tell an empty queue from one whose items
        # are out with consumers (a get's time-out cannot: it also runs out
        # while the servers elect a leader). A lease far past the test's
        # length: none runs out, whatever the machine's load (the context's
        # is 2 s, and an item held half its lease is given back).
        q = self.ctx.JoinableQueue(lease=10 * CAP)
        self.assertEqual((q.qsize(), q.leased()), (0, 0))
        for i in range(3):
            q.put(i)
        self.assertEqual((q.qsize(), q.leased()), (3, 0))
        self.assertEqual(q.get(timeout=CAP), 0)
        # A get may fetch the next items ahead: leased, no longer waiting.
        self.assertGreaterEqual(q.leased(), 1)
        self.assertEqual(q.qsize() + q.leased(), 3)
        self.assertEqual([q.get(timeout=CAP) for _ in range(2)], [1, 2])
        self.assertEqual((q.qsize(), q.leased()), (0, 3))
        q.task_done()
        self.assertEqual(q.leased(), 2)
        q.task_done()
        q.task_done()
        self.assertEqual((q.qsize(), q.leased()), (0, 0))
        self.assertTrue(q.join(timeout=CAP))

    def test_killed_holder_lock_free_after_lease_with_larger_token(self):
        lock, out = self.ctx.Lock(lease=1.0), self.ctx.Queue()
        p = self.spawn(_lock_and_hang, lock, out)
        first = out.get(timeout=CAP)
        self.assertGreater(first, 0)
        os.kill(p.pid, signal.SIGKILL)
        p.join(CAP)
        self.assertTrue(lock.acquire(timeout=CAP))
        try:
            self.assertGreater(lock.token, first)
        finally:
            lock.release()

    def test_pipelined_queue(self):
        q = self.ctx.JoinableQueue(8, pipelined=True)
        self.assertTrue(q.pipelined)
        for i in range(8):
            q.put(i)
        with self.assertRaises(queue.Full):  # full: nothing sent
            q.put_nowait("refused")
        self.assertEqual(q.flush(), 0)  # settled while it looked for room
        self.assertEqual(q.qsize(), 8)
        other = pickle.loads(pickle.dumps(q))  # another handle, as in a child
        self.assertTrue(other.pipelined)
        self.assertEqual([other.get(timeout=CAP) for _ in range(8)], list(range(8)))
        for _ in range(8):
            other.task_done()
        q.put("last")
        self.assertFalse(q.join(timeout=0.2))  # join() counts what this process sent
        self.assertEqual(other.get(timeout=CAP), "last")
        other.task_done()
        self.assertTrue(q.join(timeout=CAP))
        # Threads of one process share the object: every item once.
        big = self.ctx.Queue(pipelined=True)
        threads = [threading.Thread(target=lambda t=t: [big.put((t, i)) for i in range(300)]) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        big.close()
        got = [big.get(timeout=CAP) for _ in range(900)]
        self.assertEqual(sorted(got), sorted((t, i) for t in range(3) for i in range(300)))
        for t in range(3):  # each thread's items in its order
            self.assertEqual([i for (u, i) in got if u == t], list(range(300)))
        self.assertTrue(big.empty())

    def test_pipelined_join_while_another_thread_puts(self):
        q = self.ctx.JoinableQueue(pipelined=True)
        consumer_side = pickle.loads(pickle.dumps(q))  # a handle of its own
        got = []

        def produce():
            for i in range(300):
                q.put(i)

        def consume():
            while len(got) < 300:
                got.append(consumer_side.get(timeout=CAP))
                consumer_side.task_done()

        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for t in threads:
            t.start()
        for _ in range(5):
            q.join(timeout=0.05)  # joins (and flushes) while the producer sends
        threads[0].join(CAP)
        self.assertTrue(q.join(timeout=CAP))
        threads[1].join(CAP)
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(sorted(got), list(range(300)))

    def test_pipelined_items_of_a_process_that_ends_are_stored(self):
        q = self.ctx.Queue(pipelined=True)
        self.join_ok(self.spawn(_put_pipelined_and_exit, q, 500))
        self.assertEqual([q.get(timeout=CAP) for _ in range(500)], list(range(500)))

    def test_pipelined_producer_killed_keeps_what_it_flushed_in_order(self):
        q, out = self.ctx.Queue(pipelined=True), self.ctx.Queue()
        p = self.spawn(_put_pipelined_flush_and_hang, q, 300, out)
        self.assertEqual(out.get(timeout=CAP), 300)
        os.kill(p.pid, signal.SIGKILL)
        p.join(CAP)
        got = []
        while q._h.unfinished() > 0:  # the producer is dead: nothing more comes
            got.append(q.get(timeout=CAP))
        self.assertGreaterEqual(len(got), 300)
        self.assertEqual(got, list(range(len(got))))  # in order, none twice, none torn

    def test_update_key_and_increment(self):
        d = self.ctx.dict()
        self.assertEqual(d.increment("n"), 1)
        self.assertEqual(d.increment("n", 5), 6)
        self.assertEqual(d.update_key("s", lambda v: (v or "") + "x"), "x")
        self.assertEqual(d.update_key("s", lambda v: v + "y"), "xy")

    def test_unreachable_server(self):
        port = nats_server.free_ports(1)[0]  # nobody listens there
        with self.assertRaises(libshm.Unavailable) as cm:
            libshm.get_context(f"nats://127.0.0.1:{port}", request_timeout=1.0)
        self.assertIn(str(port), str(cm.exception))


class RemoteServerKilled(unittest.TestCase):
    """A 3-server cluster loses one server (SIGKILL) while a consumer waits
    in get() and a producer puts: the queue carries on, nothing is lost."""

    def test_queue_carries_on_when_a_server_is_killed(self):
        why = remote_skip_reason()
        if why:
            self.skipTest(why)
        n = 300
        with nats_server.NatsCluster(3) as cluster:
            # Elections take seconds on a loaded machine: a generous bound per request.
            ctx = libshm.get_context(cluster.url, request_timeout=30.0, replicas=3)
            q = ctx.JoinableQueue(1000)
            got, errors, halfway, all_got, stop = set(), [], threading.Event(), threading.Event(), threading.Event()

            def consume():
                # Like a worker, it goes on taking items after it has seen
                # every one: delivery is at least once, and join() waits for
                # a copy delivered again (its first ack lost with the server)
                # to be marked done too.
                try:
                    while not stop.is_set():
                        try:
                            item = q.get(timeout=1.0)
                        except queue.Empty:
                            continue
                        got.add(item)
                        q.task_done()
                        if len(got) >= n // 3:
                            halfway.set()
                        if len(got) == n:
                            all_got.set()
                except Exception as e:  # noqa: BLE001  (reported below)
                    errors.append(repr(e))
                    halfway.set()
                    all_got.set()

            consumer = threading.Thread(target=consume)
            consumer.start()
            for i in range(n // 2):
                q.put(i)
            self.assertTrue(halfway.wait(CAP * 5))
            cluster.kill(0)
            for i in range(n // 2, n):
                q.put(i)
            try:
                # A true hang (an item lost) fails here.
                self.assertTrue(all_got.wait(CAP * 5))
                self.assertEqual(errors, [])
                self.assertTrue(q.join(timeout=CAP * 5))
            finally:
                stop.set()
                consumer.join(CAP)
            self.assertFalse(consumer.is_alive())
            self.assertEqual(errors, [])
            self.assertEqual(got, set(range(n)))  # each at least once; a set: redeliveries count once

    def test_get_carries_on_while_its_server_restarts(self):
        """One server, stopped (it tells the gets waiting on it that it
        shuts down) and started again on its store while a get waits."""
        why = remote_skip_reason()
        if why:
            self.skipTest(why)
        with nats_server.NatsCluster(1) as server:
            ctx = libshm.get_context(server.url, request_timeout=30.0, replicas=1)
            q = ctx.Queue()
            for round_ in range(3):
                out, waiting = [], threading.Event()

                def consume():
                    try:
                        waiting.set()
                        out.append(q.get(timeout=CAP * 5))
                    except Exception as e:  # noqa: BLE001  (reported below)
                        out.append(repr(e))

                consumer = threading.Thread(target=consume)
                consumer.start()
                self.assertTrue(waiting.wait(CAP))
                time.sleep(0.3)  # most likely in its request by now (not required)
                server.members[0].stop()
                server.start(0)
                q.put(("after", round_))
                consumer.join(CAP * 10)
                self.assertFalse(consumer.is_alive())
                self.assertEqual(out, [("after", round_)])


if __name__ == "__main__":
    unittest.main()
