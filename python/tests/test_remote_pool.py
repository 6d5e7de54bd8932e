"""ctx.Pool across hosts (libshm.remote_pool), on a real nats-server
started here on a loopback port: multiprocessing.Pool's API and results;
workers that join from outside the pool's process (`python3 -m
libshm.remote_pool`, as on another host) and leave by themselves when the
pool is joined or its process dies; a worker SIGKILLed mid-task (the task
runs again, nothing lost); a task that kills every worker that runs it
(it alone fails, with WorkerLostError); a task longer than its lease (its
worker renews it: it runs once). Skipped, saying why, without nats-server
or libshm._remote. Every wait is bounded by a generous cap that fails only
on a true hang; nothing asserts on durations."""
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import libshm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
sys.path.insert(0, HERE)
import nats_server  # noqa: E402  (tests/nats_server.py)
import remote_pool_tasks as tasks  # noqa: E402

CAP = 120  # seconds: a true hang, never a slow machine
SERVER = None


def setUpModule():
    global SERVER
    try:
        import libshm._remote  # noqa: F401
    except ImportError:
        raise unittest.SkipTest("libshm was built without the NATS C client (libnats-dev): no libshm._remote")
    if nats_server.find_binary() is None:
        raise unittest.SkipTest("nats-server is not installed (Debian: apt-get install nats-server)")
    SERVER = nats_server.NatsServer().__enter__()


def tearDownModule():
    if SERVER is not None:
        SERVER.__exit__(None, None, None)


def worker_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def outside_workers(name, n=2):
    """Workers of pool `name` in a process the pool did not start, as on another host."""
    return subprocess.Popen([sys.executable, "-m", "libshm.remote_pool", SERVER.url, name, "--processes", str(n)],
                            env=worker_env(), stderr=subprocess.PIPE, text=True)


def wait_exit(proc, cap=CAP):
    """The workers' exit status, and what they printed on stderr."""
    try:
        _, err = proc.communicate(timeout=cap)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the workers did not leave by themselves")


class RemotePool(unittest.TestCase):
    def setUp(self):
        self.ctx = libshm.get_context(SERVER.url, request_timeout=30.0)

    def test_the_multiprocessing_api(self):
        with self.ctx.Pool(2) as pool:
            self.assertEqual(pool.map(tasks.square, range(20)), [x * x for x in range(20)])
            self.assertEqual(pool.map(tasks.square, range(10), chunksize=3), [x * x for x in range(10)])
            self.assertEqual(pool.starmap(tasks.add, [(1, 2), (3, 4)]), [3, 7])
            self.assertEqual(pool.apply(tasks.add, (5, 6)), 11)
            got = []
            r = pool.apply_async(tasks.square, (7,), callback=got.append)
            self.assertEqual(r.get(CAP), 49)
            self.assertTrue(r.successful())
            self.assertEqual(got, [49])
            self.assertEqual(list(pool.imap(tasks.square, range(8), chunksize=2)), [x * x for x in range(8)])
            self.assertEqual(sorted(pool.imap_unordered(tasks.square, range(8))), [x * x for x in range(8)])
            self.assertEqual(pool.map(tasks.square, []), [])
            # An exception in a task is that job's result, as in multiprocessing.
            with self.assertRaises(ValueError):
                pool.map(tasks.fail_on_three, range(6), chunksize=1)
            errors = []
            r = pool.apply_async(tasks.fail_on_three, (3,), error_callback=errors.append)
            with self.assertRaises(ValueError):
                r.get(CAP)
            self.assertEqual(len(errors), 1)
            # A result that does not pickle fails its task, not the pool.
            with self.assertRaises(Exception) as cm:
                pool.apply(tasks.unpicklable_result, (1,))
            self.assertIn("MaybeEncodingError", type(cm.exception).__name__ + repr(cm.exception))
            # A task that does not pickle is refused before anything is sent.
            with self.assertRaises(Exception):
                pool.map(lambda x: x, range(3))
            self.assertEqual(pool.map(tasks.square, [3]), [9])  # the pool carries on

    def test_close_join_removes_the_pool_and_refuses_more(self):
        pool = self.ctx.Pool(1)
        name = pool.name
        r = pool.map_async(tasks.square, range(5))
        pool.close()
        with self.assertRaises(ValueError):
            pool.apply_async(tasks.square, (1,))
        pool.join()
        self.assertEqual(r.get(0), [0, 1, 4, 9, 16])
        # Its objects left the servers: a worker joining now finds no pool.
        rc, err = wait_exit(outside_workers(name))
        self.assertEqual(rc, 1, err)
        self.assertIn("no pool named", err)

    def test_workers_from_outside_do_the_work_and_leave_when_joined(self):
        pool = self.ctx.Pool(0)  # no workers of its own
        proc = outside_workers(pool.name, 2)
        try:
            pids = set(pool.map(tasks.whoami, range(40), chunksize=1))
            self.assertEqual(pool.map(tasks.square, range(30)), [x * x for x in range(30)])
            self.assertNotIn(os.getpid(), pids)
            pool.close()
            pool.join()
            rc, err = wait_exit(proc)
            self.assertEqual(rc, 0, err)  # they leave by themselves
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            pool.terminate()

    def test_a_worker_killed_mid_task_its_task_runs_again(self):
        with tempfile.TemporaryDirectory() as d:
            marker = os.path.join(d, "killed")
            with self.ctx.Pool(2, lease=1.0) as pool:
                args = [(x, marker if x == 4 else os.path.join(d, "never")) for x in range(8)]
                # Only x == 4 kills its worker (once); the others find their marker
                # absent the first time and would kill too: give them one that exists.
                open(os.path.join(d, "never"), "w").close()
                self.assertEqual(pool.map(tasks.kill_once, args, chunksize=1), list(range(8)))
                self.assertTrue(os.path.exists(marker))  # a worker did die in it
                with open(marker) as f:
                    killed = int(f.read())
                # The dead worker was replaced: the pool still has two.
                pids = set(pool.map(tasks.whoami, range(20), chunksize=1))
                self.assertNotIn(killed, pids)

    def test_a_task_that_kills_every_worker_fails_alone(self):
        with self.ctx.Pool(2, lease=1.0, max_retries=1) as pool:
            r = pool.map_async(tasks.always_kill, range(8), chunksize=1)
            with self.assertRaises(libshm.pool.WorkerLostError) as cm:
                r.get(CAP)
            self.assertIn("ran 2 times", str(cm.exception))
            ok = [pool.apply_async(tasks.always_kill, (x,)) for x in (1, 2, 6)]
            self.assertEqual([o.get(CAP) for o in ok], [1, 2, 6])

    def test_a_task_longer_than_its_lease_runs_once(self):
        with self.ctx.Pool(2, lease=1.0, max_retries=0) as pool:
            # Without the worker's renewals the lease (1 s) would run out
            # during the task (2.5 s): the idle worker would get it again,
            # and with max_retries=0 fail it with WorkerLostError.
            self.assertEqual(pool.apply(tasks.slow, (7,)), 7)

    def test_workers_leave_when_the_pools_process_dies(self):
        name = "pool-dies-" + str(os.getpid())
        owner = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time, libshm\n"
             "ctx = libshm.get_context(sys.argv[1])\n"
             "pool = ctx.Pool(0, name=sys.argv[2], lease=1.0)\n"
             "print('ready', flush=True)\n"
             "time.sleep(600)\n", SERVER.url, name],
            env=worker_env(), stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(owner.stdout.readline().strip(), "ready")
            proc = outside_workers(name, 1)
            owner.send_signal(signal.SIGKILL)
            owner.wait(CAP)
            rc, err = wait_exit(proc)
            self.assertEqual(rc, 0, err)  # its lease (1 s) ran out: the workers leave
        finally:
            if owner.poll() is None:
                owner.kill()
                owner.wait()
            owner.stdout.close()

    def test_one_name_one_running_pool(self):
        with self.ctx.Pool(0) as pool:
            with self.assertRaises(libshm.AlreadyExists):
                self.ctx.Pool(0, name=pool.name)


if __name__ == "__main__":
    unittest.main()
