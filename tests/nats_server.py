#!/usr/bin/env python3
"""Real nats-server processes on loopback ports, for the benchmarks, the
Python tests and `./dev demo --remote`.

    with NatsServer() as s:            # one server, JetStream on, a temporary store
        s.url                          # "nats://127.0.0.1:PORT"
    with NatsCluster(3) as c:          # three servers routed to each other
        c.url                          # every member's URL, comma-separated
        c.kill(1); c.start(1)          # SIGKILL one member; start it again on its store

Each server listens on 127.0.0.1 only, on ports the kernel handed out
(clients, routes, monitoring), counts as started once its /healthz says
JetStream is up (in a cluster: in contact with a meta leader), keeps its
JetStream store in a temporary directory removed at the end, and
is stopped by its pid (SIGTERM, then SIGKILL) when the block ends. A server
that does not accept connections within `ready_timeout` seconds is an error
carrying the end of its log.

As a program it runs a command next to a fresh server, the server's URL in
the environment variable SHM_NATS_URL:

    nats_server.py [--cluster 3] -- PROGRAM ARGS...

and exits with the program's status, or 77 (ctest's skip status) when
nats-server is not installed.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77  # ctest's SKIP_RETURN_CODE


def find_binary():
    """The nats-server to run: $NATS_SERVER, or the one on PATH (Debian puts
    it in /usr/bin), or None."""
    env = os.environ.get("NATS_SERVER")
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/bin/nats-server", "/usr/sbin/nats-server") if os.access(p, os.X_OK)), None)


def free_ports(n):
    """n distinct loopback ports free right now (the kernel's choice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(2)
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


class _Member:
    """One nats-server process."""

    def __init__(self, binary, name, root, port, monitor_port, cluster_port=None, routes=()):
        self.binary, self.name, self.port, self.monitor_port = binary, name, port, monitor_port
        self.cluster_port, self.routes = cluster_port, list(routes)
        self.store = os.path.join(root, name)
        self.log = os.path.join(root, name + ".log")
        self.proc = None

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def argv(self):
        a = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name, "-m", str(self.monitor_port),
             "-js", "-sd", self.store, "-l", self.log]
        if self.cluster_port is not None:
            a += ["--cluster_name", "libshm", "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                  "--routes", ",".join(self.routes)]
        return a

    def start(self):
        os.makedirs(self.store, exist_ok=True)
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} on port {self.port} exited with status "
                                   f"{self.proc.returncode}: {self.log_tail()}")
            if _accepts(self.port) and self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} is not ready (port {self.port}, JetStream) "
                           f"after {timeout:g} s: {self.log_tail()}")

    def healthy(self):
        """The server's own health check: JetStream up, and in a cluster
        in contact with its meta leader."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines=8):
        try:
            with open(self.log, errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL, as a crash would; its store stays for a restart."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class NatsCluster:
    """n nats-servers with JetStream, routed to each other (n = 1: a single
    server without a cluster block)."""

    def __init__(self, n=3, binary=None, ready_timeout=20.0):
        if n < 1:
            raise ValueError("a cluster needs at least one server")
        self.binary = binary or find_binary()
        if self.binary is None:
            raise FileNotFoundError("nats-server is not installed (Debian: apt-get install nats-server)")
        self.n, self.ready_timeout = n, ready_timeout
        self.root = None
        self.members = []

    def __enter__(self):
        self.root = tempfile.mkdtemp(prefix="libshm-nats.")
        try:
            for attempt in range(3):  # a port taken between free_ports() and the bind: try others
                ports = free_ports(3 * self.n)
                client, routes, monitor = ports[:self.n], ports[self.n:2 * self.n], ports[2 * self.n:]
                self.members = [
                    _Member(self.binary, f"n{i}", self.root, client[i], monitor[i],
                            routes[i] if self.n > 1 else None,
                            [f"nats://127.0.0.1:{routes[j]}" for j in range(self.n) if j != i])
                    for i in range(self.n)]
                for m in self.members:
                    m.start()
                try:
                    for m in self.members:
                        m.wait_ready(self.ready_timeout)
                    self._wait_formed()
                    break
                except RuntimeError:
                    for m in self.members:
                        m.stop()
                    if attempt == 2:
                        raise
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _wait_formed(self):
        """Each member healthy is not enough in a cluster: the meta leader
        places a stream of n replicas only once it counts every other
        member as a current peer, and refuses with "no suitable peers for
        placement" until then. Wait (bounded) for that."""
        if self.n < 2:
            return
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._formed():
                return
            time.sleep(0.05)
        raise RuntimeError(f"the cluster of {self.n} has no leader with {self.n - 1} current peers "
                           f"after {self.ready_timeout:g} s: {self.members[0].log_tail()}")

    def _formed(self):
        for m in self.members:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{m.monitor_port}/jsz", timeout=2) as r:
                    meta = json.load(r).get("meta_cluster") or {}
            except (OSError, ValueError):
                continue
            peers = meta.get("replicas")
            if peers is not None and meta.get("leader") == m.name:
                return len(peers) == self.n - 1 and all(p.get("current") for p in peers)
        return False

    def __exit__(self, *exc):
        for m in self.members:
            m.stop()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    @property
    def url(self):
        """Every member's URL, comma-separated: a client picks one and fails over."""
        return ",".join(m.url for m in self.members)

    def kill(self, i):
        self.members[i].kill()

    def start(self, i):
        """Start member i again (same ports, same store)."""
        self.members[i].start()
        self.members[i].wait_ready(self.ready_timeout)

    def pids(self):
        return [m.proc.pid for m in self.members if m.alive()]


class NatsServer(NatsCluster):
    """One nats-server with JetStream and a temporary store."""

    def __init__(self, binary=None, ready_timeout=20.0):
        super().__init__(1, binary, ready_timeout)

    def restart(self):
        """SIGKILL the server and start it again on its store."""
        self.kill(0)
        self.start(0)


def main():
    ap = argparse.ArgumentParser(description="Run a command next to a fresh nats-server (SHM_NATS_URL).")
    ap.add_argument("--cluster", type=int, default=1, metavar="N", help="servers to start (default 1)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("no command given")
    if find_binary() is None:
        print("nats_server.py: nats-server is not installed: skipped", file=sys.stderr)
        return SKIP
    with NatsCluster(a.cluster) as c:
        return subprocess.call(cmd, env=dict(os.environ, SHM_NATS_URL=c.url))


if __name__ == "__main__":
    sys.exit(main())
