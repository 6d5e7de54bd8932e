"""libshm.Pool and libshm.ProcessPoolExecutor: behaviour, and workers
SIGKILLed in the middle of their tasks (run by CTest as python.pool, in a
private shm directory that must be empty at the end).

The caps (CAP) only stop a true hang; nothing here depends on speed."""

import concurrent.futures
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import libshm

CAP = 120  # seconds: a true hang, never a slow machine


def square(x):
    return x * x


def add(a, b):
    return a + b


def fail_on_7(x):
    if x == 7:
        raise ValueError("seven")
    return x


def die_on_13(x):
    """Kills its own worker every time it gets 13."""
    if x == 13:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def die_on_1000(x):
    """Kills its own worker every time it gets 1000."""
    if x == 1000:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def fail_or_unpicklable(x):
    if x == 5:
        raise ValueError("five")
    if x == 9:
        return lambda: None  # a result that does not pickle
    return x


def pid_of(_):
    return os.getpid()


def work(x):
    time.sleep(0.0002)  # long enough for kills to land mid-task
    return x


_initialized = None


def init(value):
    global _initialized
    _initialized = value


def initialized(_):
    return _initialized


class Basics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pool = libshm.Pool(3)

    @classmethod
    def tearDownClass(cls):
        cls.pool.terminate()
        cls.pool.join()

    def test_map_apply_starmap_imap(self):
        p = self.pool
        self.assertEqual(p.map(square, range(100)), [x * x for x in range(100)])
        self.assertEqual(p.map(square, range(100), chunksize=7), [x * x for x in range(100)])
        self.assertEqual(p.map(square, []), [])
        self.assertEqual(p.apply(add, (2, 3)), 5)
        self.assertEqual(p.apply(add, (), {"a": 1, "b": 2}), 3)
        self.assertEqual(p.starmap(add, [(1, 2), (3, 4)]), [3, 7])
        self.assertEqual(list(p.imap(square, range(50), chunksize=3)), [x * x for x in range(50)])
        self.assertEqual(sorted(p.imap_unordered(square, range(50))), [x * x for x in range(50)])

    def test_async_results_and_callbacks(self):
        got, errors = [], []
        r = self.pool.apply_async(square, (9,), callback=got.append)
        self.assertEqual(r.get(CAP), 81)
        self.assertTrue(r.ready())
        self.assertTrue(r.successful())
        self.assertEqual(got, [81])
        r = self.pool.apply_async(fail_on_7, (7,), error_callback=errors.append)
        self.assertRaisesRegex(ValueError, "seven", r.get, CAP)
        self.assertFalse(r.successful())
        self.assertIsInstance(errors[0], ValueError)
        m = self.pool.map_async(square, range(10), callback=got.append)
        m.wait(CAP)
        self.assertEqual(m.get(), [x * x for x in range(10)])
        self.assertEqual(got[-1], [x * x for x in range(10)])
        slow = self.pool.apply_async(time.sleep, (0.5,))
        self.assertRaises(ValueError, slow.successful)  # not ready yet
        self.assertRaises(mp.TimeoutError, slow.get, 0.01)
        slow.get(CAP)

    def test_an_exception_fails_its_task_alone(self):
        rs = [self.pool.apply_async(fail_on_7, (i,)) for i in range(10)]
        for i, r in enumerate(rs):
            if i == 7:
                self.assertRaises(ValueError, r.get, CAP)
            else:
                self.assertEqual(r.get(CAP), i)
        # map: the first error is the result, as multiprocessing's.
        self.assertRaises(ValueError, self.pool.map, fail_on_7, range(10))

    def test_many_tiny_tasks_go_in_parcels_and_fail_one_by_one(self):
        """Tiny chunks travel in parcels of many; a chunk that raises, or
        whose result does not pickle, fails alone, wherever it is."""
        inputs = list(range(2000)) + [5, 9, 11]
        for chunksize in (1, 3):
            got, errors = [], []
            it = self.pool.imap(fail_or_unpicklable, inputs, chunksize)
            while True:
                try:
                    got.append(it.next(CAP))
                except StopIteration:
                    break
                except Exception as e:
                    errors.append(type(e).__name__)
            want, want_errors = [], []
            for i in range(0, len(inputs), chunksize):
                chunk = inputs[i:i + chunksize]
                if 5 in chunk:
                    want_errors.append("ValueError")
                elif 9 in chunk:
                    want_errors.append("MaybeEncodingError")
                else:
                    want.extend(chunk)
            self.assertEqual(got, want)
            self.assertEqual(errors, want_errors)
        self.assertGreater(self.pool._largest_parcel, 1)


class Lifecycle(unittest.TestCase):
    def test_close_join_terminate_and_refusals(self):
        p = libshm.Pool(2)
        r = p.map_async(square, range(20))
        p.close()
        self.assertRaises(ValueError, p.apply, square, (1,))
        p.join()
        self.assertEqual(r.get(0), [x * x for x in range(20)])  # done before join returned
        q = libshm.Pool(1)
        self.assertRaises(ValueError, q.join)  # still running
        q.terminate()
        q.join()
        self.assertRaises(ValueError, libshm.Pool, 0)
        self.assertRaises(ValueError, libshm.Pool, 1, maxtasksperchild=0)
        self.assertRaises(ValueError, libshm.Pool, 1, max_retries=-1)

    def test_initializer_and_maxtasksperchild(self):
        with libshm.Pool(2, initializer=init, initargs=("ready",), maxtasksperchild=5) as p:
            self.assertEqual(set(p.map(initialized, range(20), chunksize=1)), {"ready"})
            pids = p.map(pid_of, range(40), chunksize=1)
            # Each worker runs 5 tasks and is replaced: 40 tasks, 8 workers at least.
            self.assertGreaterEqual(len(set(pids)), 8)


class Crashes(unittest.TestCase):
    def test_map_of_10000_with_workers_killed_at_random(self):
        """Every result once and in order while 40 workers are SIGKILLed."""
        with libshm.Pool(4) as p:
            done = threading.Event()
            kills = []

            def killer():
                rng = random.Random(1)
                while len(kills) < 40 and not done.is_set():
                    time.sleep(rng.uniform(0.001, 0.02))
                    alive = [w for w in p._pool if w.exitcode is None]
                    if alive:
                        victim = rng.choice(alive)
                        try:
                            os.kill(victim.pid, signal.SIGKILL)
                            kills.append(victim.pid)
                        except ProcessLookupError:
                            pass

            t = threading.Thread(target=killer)
            t.start()
            r = p.map_async(work, range(10_000), chunksize=1)
            try:
                result = r.get(CAP)
            finally:
                done.set()
                t.join()
            self.assertEqual(result, list(range(10_000)))
            self.assertGreater(len(kills), 0)
            # The pool still works, with all its workers.
            self.assertEqual(p.map(square, range(10)), [x * x for x in range(10)])
            self.assertEqual(len(p._pool), 4)

    def test_a_task_that_kills_its_worker_fails_alone(self):
        with libshm.Pool(3, max_retries=2) as p:
            rs = [p.apply_async(die_on_13, (i,)) for i in range(30)]
            for i, r in enumerate(rs):
                if i == 13:
                    with self.assertRaises(libshm.WorkerLostError) as cm:
                        r.get(CAP)
                    msg = str(cm.exception)
                    self.assertIn("SIGKILL", msg)
                    self.assertIn("3 tries", msg)  # 1 + max_retries
                    self.assertIn("pid", msg)
                else:
                    self.assertEqual(r.get(CAP), i)
            # A map holding it fails with it; the pool goes on.
            self.assertRaises(libshm.WorkerLostError, p.map, die_on_13, range(20))
            self.assertEqual(p.map(square, range(5)), [0, 1, 4, 9, 16])

    def test_a_killer_in_a_parcel_charges_none_of_its_neighbours(self):
        """With max_retries=0, a task fails the first time its worker dies:
        the tasks sent with it in its parcel (before and after it) must not
        be charged for that death."""
        with libshm.Pool(3, max_retries=0) as p:
            it = p.imap(die_on_1000, range(2000), chunksize=1)
            got = []
            for i in range(2000):
                if i == 1000:
                    with self.assertRaises(libshm.WorkerLostError) as cm:
                        it.next(CAP)
                    self.assertIn("on each of 1 tries", str(cm.exception))
                    self.assertIn("SIGKILL", str(cm.exception))
                else:
                    got.append(it.next(CAP))
            self.assertEqual(got, [x for x in range(2000) if x != 1000])
            self.assertGreater(p._largest_parcel, 1)
            self.assertEqual(p.map(square, range(5)), [0, 1, 4, 9, 16])

    def test_executor_survives_a_killed_worker(self):
        with libshm.ProcessPoolExecutor(3, max_retries=1) as ex:
            fs = [ex.submit(die_on_13, i) for i in range(20)]
            for i, f in enumerate(fs):
                if i == 13:
                    self.assertIsInstance(f.exception(CAP), libshm.WorkerLostError)
                else:
                    self.assertEqual(f.result(CAP), i)
            self.assertEqual(list(ex.map(add, range(5), range(5), chunksize=2)), [0, 2, 4, 6, 8])
        self.assertRaises(RuntimeError, ex.submit, square, 2)

    @unittest.skipUnless(os.environ.get("LIBSHM_SHMD"), "needs shmd (LIBSHM_SHMD: the binary)")
    def test_workers_exit_when_the_parent_dies(self):
        """The parent SIGKILLed: its workers exit, and with every process
        gone, shmd (the real one, on a private socket) reclaims the pool's
        segments at once."""
        prog = (
            "import os, sys, time, libshm\n"
            "p = libshm.Pool(3)\n"
            "p.map(abs, range(3))\n"
            "print(' '.join(str(w.pid) for w in p._pool), flush=True)\n"
            "time.sleep(600)\n"
        )
        with tempfile.TemporaryDirectory(dir="/dev/shm") as d, tempfile.TemporaryDirectory() as run:
            sock = os.path.join(run, "shmd.sock")
            shmd = subprocess.Popen([os.environ["LIBSHM_SHMD"], "--socket", sock, "--shm-dir", d, "--no-notify",
                                     "--log-level", "warn"])
            try:
                for _ in range(CAP * 100):
                    if os.path.exists(sock):
                        break
                    time.sleep(0.01)
                env = dict(os.environ, SHM_DIR=d, SHM_DAEMON="required", SHM_DAEMON_SOCKET=sock)
                parent = subprocess.Popen([sys.executable, "-c", prog], env=env, stdout=subprocess.PIPE, text=True)
                pids = [int(x) for x in parent.stdout.readline().split()]
                self.assertEqual(len(pids), 3)
                self.assertNotEqual(os.listdir(d), [])
                os.kill(parent.pid, signal.SIGKILL)
                parent.wait(CAP)
                parent.stdout.close()
                for _ in range(CAP * 100):
                    if not any(_running(pid) for pid in pids) and not os.listdir(d):
                        break
                    time.sleep(0.01)
                self.assertEqual([pid for pid in pids if _running(pid)], [])
                self.assertEqual(os.listdir(d), [])
            finally:
                shmd.terminate()
                shmd.wait(CAP)


def _running(pid):
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # gone (ENOENT), or going between open and read (ESRCH)
        return False


if __name__ == "__main__":
    unittest.main()
