#!/usr/bin/env python3
"""Run libshm's benchmarks side by side with the alternatives (`./dev bench`).

Every benchmark program speaks one small protocol:
  PROGRAM --list                      prints its case names, one a line
  PROGRAM --only CASE [--seconds S] [--warmup S]
                                      runs the cases whose names start with
                                      CASE (the case CASE alone when one is
                                      so named: queue.1to1.64B, not
                                      queue.1to1.64B.d256) and prints one
                                      JSON object a line:
      {"bench": CASE, "impl": IMPL, "value": NUMBER, "unit": UNIT}
  (progress and errors go to stderr; exit status 0 when every case ran).
A line may also carry "note" (how the implementation was used, shown in the
table), and a program may answer a case with
      {"bench": CASE, "impl": IMPL, "skipped": "why there is no figure"}
which the table shows in place of a value. A case may report several
figures under names that extend its own (queue.pingpong.64B gives
queue.pingpong.64B.p50 and .p99); a line belongs to the longest case name
it extends.

This script asks each program in PROGRAMS for its cases, then runs case by
case every program that has it, so the implementations of one case are
measured one right after the other on the same machine state. It does so
--rounds times (3 by default), taking the implementations in turn. On shared
virtual CPUs the speed of the machine itself changes from second to second
(how the host places them), so a figure is the median of its rounds and a
ratio is the median of the ratios within each round, figures measured
seconds apart. It writes the medians to build/bench/results.jsonl (one
object a line, as above), prints a table with each implementation's ratio
to libshm, and checks the targets. Absolute figures swing between runs;
compare ratios within one run.

The remote cases (remote.*: a queue and a dict across hosts) need a NATS
server: for them this script starts a real nats-server with JetStream on a
loopback port and a temporary store (tests/nats_server.py), hands its URL
to the programs in SHM_NATS_URL, and stops it at the end.
"""

import argparse
import json
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_IMPL = "libshm"


def package_python(build_dir):
    """The interpreter the Python package in build_dir is built for (its
    CMake cache's SHM_PYTHON), or None when the package is not built."""
    if not os.path.exists(os.path.join(build_dir, "python", "libshm", "__init__.py")):
        return None
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("SHM_PYTHON:"):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return "/usr/bin/python3"


def programs(build_dir):
    """The benchmark programs: (label, argv, extra environment). Add new ones here."""
    b = os.path.join(build_dir, "bench")
    # Built only when the daemon is (see bench/CMakeLists.txt).
    shmd = os.path.join(b, "bench_shmd_reclaim")
    shmd_progs = [("shmd: SIGKILL to unlink (and shmctl gc)", [shmd])] if os.path.exists(shmd) else []
    # The remote cases (remote.*) on the nats-server main() starts: the bare
    # C client (built when libnats is) and Python's BaseManager over TCP.
    floor, remote = os.path.join(b, "bench_remote_floor"), os.path.join(b, "bench_remote_libshm")
    remote_progs = ([("libshm's remote Queue and Dict", [remote])] if os.path.exists(remote) else []) + (
        [("floor: the bare NATS C client", [floor])] if os.path.exists(floor) else []) + [
        ("Python BaseManager over TCP", [sys.executable, os.path.join(ROOT, "bench", "remote_manager.py")])]
    # The Python package's cases (py.*), with the interpreter it is built for.
    py = package_python(build_dir)
    py_progs = [("Python: libshm, multiprocessing, floors", [py, os.path.join(ROOT, "bench", "python_libshm.py")],
                 {"PYTHONPATH": os.path.join(os.path.abspath(build_dir), "python")})] if py else []
    progs = [
        ("libshm Dict/List", [os.path.join(b, "bench_containers_libshm")]),
        ("floor: Boost map under a robust mutex", [os.path.join(b, "bench_containers_floor")]),
        ("Boost map with shm::allocator", [os.path.join(b, "bench_containers_shm_map")]),
        ("Boost flat_map with shm::allocator", [os.path.join(b, "bench_containers_shm_flat_map")]),
        ("Python Manager", [sys.executable, os.path.join(ROOT, "bench", "python_manager.py")]),
        ("libshm Queue", [os.path.join(b, "bench_queue_libshm")]),
        ("Boost message_queue", [os.path.join(b, "bench_queue_boost")]),
        ("Unix socket", [os.path.join(b, "bench_queue_unix_socket")]),
        ("pipe", [os.path.join(b, "bench_queue_pipe")]),
        ("POSIX message queue", [os.path.join(b, "bench_queue_posix_mq")]),
        ("Python multiprocessing.Queue", [sys.executable, os.path.join(ROOT, "bench", "python_mp_queue.py")]),
        ("floors: futex ping-pong, SPSC ring, memcpy", [os.path.join(b, "bench_queue_floor")]),
        ("libshm Pool, and the WorkQueue round trip", [os.path.join(b, "bench_pool_libshm")]),
        ("locks: shm::Mutex, RecursiveMutex, Boost, robust pthread, std::mutex", [os.path.join(b, "bench_lock")]),
    ] + shmd_progs + remote_progs
    return [p if len(p) == 3 else p + (None,) for p in progs] + py_progs


def base_impl(bench):
    """The implementation a case's ratios are taken to: libshm, or shmd for
    the daemon's cases."""
    return "shmd" if bench.startswith("shmd.") else BASE_IMPL


# Targets: (title, numerator impl, denominator impl, op, bound, cases);
# each case meets it when value(numerator) / value(denominator) OP bound.
def targets(cases):
    return [
        ("libshm at least 100x Python's Manager on get and set", "libshm", "python_manager", ">=", 100.0,
         ["dict.get.1proc", "dict.set.1proc"]),
        ("libshm within 3x of the floor", "mutex_unordered_map", "libshm", "<=", 3.0,
         [c for c in cases if c.startswith("dict.") and not c.startswith("dict.scale.")] +
         [f"{c}.{op}" for c in cases if c.startswith("dict.scale.") and c.count(".") == 2 for op in ("get", "set")]),
        ("libshm's list appends within 2x of the floor's time", "mutex_unordered_map", "libshm", "<=", 2.0,
         [c for c in cases if c.startswith("list.")]),
        ("libshm at least 3x Boost's message_queue", "libshm", "boost_message_queue", ">=", 3.0,
         ["queue.1to1.64B", "queue.1to1.64B.d256"]),
        ("libshm at least 100x Python's multiprocessing.Queue", "libshm", "python_mp_queue", ">=", 100.0,
         ["queue.1to1.64B"]),
        ("libshm at least 0.8 of the SPSC ring floor", "libshm", "spsc_floor", ">=", 0.8,
         ["queue.1to1.64B", "queue.1to1.64B.d256"]),
        ("libshm's put_many/get_many at least 0.9 of the SPSC ring floor", "libshm", "spsc_floor", ">=", 0.9,
         ["queue.1to1.64B.batch32"]),
        ("libshm at least 2x Boost's message_queue with several producers or consumers", "libshm",
         "boost_message_queue", ">=", 2.0,
         [c for c in cases if c.startswith(("queue.2to2.64B", "queue.4to4.64B", "queue.1to4.64B"))]),
        ("libshm's median round trip within 1.5x of the bare futex ping-pong", "libshm", "futex_floor", "<=", 1.5,
         ["queue.pingpong.64B.p50"]),
        ("libshm's 99th percentile round trip no worse than the bare futex ping-pong's", "libshm", "futex_floor",
         "<=", 1.0, ["queue.pingpong.64B.p99"]),
        ("shm::Mutex's lock + unlock within 1.2x of a bare robust pthread mutex's", "libshm", "robust_pthread",
         "<=", 1.2, ["lock.uncontended", "lock.2proc"]),
        ("shm::RecursiveMutex's lock + unlock within 1.2x of a bare robust pthread mutex's", "libshm_recursive",
         "robust_pthread", "<=", 1.2, ["lock.uncontended", "lock.2proc"]),
        ("libshm 1 MiB items within 2x of one memcpy's bandwidth", "memcpy", "libshm", "<=", 2.0,
         ["queue.1to1.1MiB"]),
        ("Python: libshm.Queue at least 20x multiprocessing.Queue on bytes", "libshm", "python_mp_queue", ">=", 20.0,
         ["py.queue.1to1.bytes64"]),
        ("Python: libshm.Queue at least 5x multiprocessing.Queue on pickled objects", "libshm", "python_mp_queue",
         ">=", 5.0, ["py.queue.1to1.pyobj"]),
        ("Python: libshm.Queue of pickled objects within 2x of pickle.loads(pickle.dumps(x)) alone", "pickle_floor",
         "libshm", "<=", 2.0, ["py.queue.1to1.pyobj"]),
        ("Python: libshm.dict() at least 50x Manager().dict()", "libshm", "python_manager", ">=", 50.0,
         ["py.dict.get", "py.dict.set"]),
        ("Python: libshm.Lock's acquire + release within 1.5x of multiprocessing.Lock's", "libshm", "python_mp_lock",
         "<=", 1.5, ["py.lock"]),
        ("shm::Pool's time per task within 2x of the WorkQueue round trip it is built on", "workqueue_round_trip",
         "libshm", "<=", 2.0, ["pool.map.tiny"]),
        ("Python: libshm.Pool's map at least 10x multiprocessing.Pool's at chunksize=1", "libshm", "python_mp_pool",
         ">=", 10.0, ["py.pool.map.tiny.c1"]),
        ("Python: libshm.Pool's map at least 2x multiprocessing.Pool's at its default chunk size", "libshm",
         "python_mp_pool", ">=", 2.0, ["py.pool.map.tiny.default"]),
        ("Across hosts: libshm at least 5x Python's BaseManager on the queue and the dict", "libshm",
         "python_basemanager", ">=", 5.0,
         ["remote.queue.1to1.64B", "remote.queue.1to1.64B.pipelined", "remote.dict.get", "remote.dict.set",
          "remote.dict.set.pipelined"]),
        ("Across hosts: libshm's median round trip at most 1/5 of the BaseManager's", "libshm",
         "python_basemanager", "<=", 1 / 5, ["remote.queue.pingpong.64B.p50"]),
        ("Across hosts: libshm at least 1/2 of the bare NATS client's throughput", "libshm", "nats_floor", ">=",
         1 / 2, ["remote.queue.1to1.64B", "remote.queue.1to1.64B.pipelined", "remote.dict.get", "remote.dict.set",
                 "remote.dict.set.pipelined"]),
        ("Across hosts: libshm's median round trip within 2x of the bare NATS client's", "libshm", "nats_floor",
         "<=", 2.0, ["remote.queue.pingpong.64B.p50"]),
    ]


# Targets on two figures of one implementation: (title, impl, numerator
# figure, denominator figure, op, bound): a tail against its own median.
def spread_targets():
    return [
        ("libshm's 99th percentile round trip within 3x of its own median", "libshm",
         "queue.pingpong.64B.p99", "queue.pingpong.64B.p50", "<=", 3.0),
    ]


# Targets on one figure: (title, impl, op, bound, unit, cases).
def absolute_targets():
    return [
        ("shmd's median delay from SIGKILL to unlink under 10 ms", "shmd", "<", 10.0, "ms",
         ["shmd.reclaim_delay.p50"]),
    ]


# Cases a default run leaves out (sixteen processes; a million keys): run
# with --large, or name them with --only.
LARGE = ("queue.8to8.64B", "dict.scale.1M")


def wanted(case, only, large, cases):
    """Whether a run with these --only prefixes (and --large or not) takes the
    case; an --only value may also name one of its figures (.p99)."""
    if only and not any(case.startswith(o) or owner(o, cases) == case for o in only):
        return False
    big = [p for p in LARGE if case.startswith(p)]
    return large or not big or any(o.startswith(p) for o in only for p in big)


def owner(bench, cases):
    """The case a result line named `bench` answers: the longest case name it
    is or extends (queue.1to1.64B.d256 is a case of its own, not a figure of
    queue.1to1.64B)."""
    mine = [c for c in cases if belongs(bench, c)]
    return max(mine, key=len) if mine else None


def fmt_value(v):
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.3g}"


def fmt_bound(b):
    """1/3 for a third, 1.5 for one and a half."""
    if b < 1 and abs(1 / b - round(1 / b)) < 1e-9:
        return f"1/{round(1 / b)}"
    return f"{b:g}"


def belongs(bench, case):
    """Whether a result line named `bench` answers the case `case`."""
    return bench == case or bench.startswith(case + ".")


def fmt_ratio(r):
    """5.26 for a ratio above 1, 1/168 for one below."""
    if r >= 1:
        return f"{r:,.3g}" if r < 1000 else f"{r:,.0f}"
    inv = 1 / r
    return f"1/{inv:.3g}" if inv < 1000 else f"1/{inv:,.0f}"


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


class Rounds:
    """The figures of every round: a figure is the median of its rounds, a
    ratio the median of the ratios within each round (see the module
    docstring)."""

    def __init__(self):
        self.by_round = {}  # (bench, impl) -> {round: value}
        self.first = {}     # (bench, impl) -> the first result line (unit, note), or its "skipped"
        self.order = []

    def add(self, rnd, r):
        key = (r["bench"], r["impl"])
        if key not in self.first:
            self.first[key] = r
            self.order.append(key)
        if "skipped" not in r:
            self.by_round.setdefault(key, {})[rnd] = r["value"]

    def results(self):
        """One line per (bench, impl), its value the median of its rounds."""
        out = []
        for key in self.order:
            r = dict(self.first[key])
            if key in self.by_round:
                r.pop("skipped", None)
                r["value"] = median(list(self.by_round[key].values()))
            out.append(r)
        return out

    def ratios(self, bench, num, den):
        """value(num) / value(den) in each round that has both."""
        a, b = self.by_round.get((bench, num), {}), self.by_round.get((bench, den), {})
        return [a[k] / b[k] for k in sorted(a) if k in b and b[k]]

    def ratio(self, bench, num, den):
        """Median over rounds of value(num) / value(den), None without a common round."""
        rs = self.ratios(bench, num, den)
        return median(rs) if rs else None

    def spread_ratios(self, impl, num, den):
        """One implementation's figure `num` over its figure `den` (a p99
        over the p50 of the same round), in each round that has both."""
        a, b = self.by_round.get((num, impl), {}), self.by_round.get((den, impl), {})
        return [a[k] / b[k] for k in sorted(a) if k in b and b[k]]

    def spread(self, impl, num, den):
        """Median of spread_ratios(), None without a common round."""
        rs = self.spread_ratios(impl, num, den)
        return median(rs) if rs else None


def fmt_rounds(rs):
    """The lowest and highest of a target's per-round ratios, so that a
    reader tells a miss by the host's noise from a miss by every round."""
    if len(rs) < 2:
        return ""
    return f"  rounds {min(rs):,.3g}-{max(rs):,.3g}"


def run_program(label, argv, env, extra, timeout):
    """Run one program in its own process group; returns (results, ok)."""
    try:
        p = subprocess.Popen(argv + extra, stdout=subprocess.PIPE, text=True, start_new_session=True,
                             env=dict(os.environ, **env) if env else None)
    except OSError as e:
        print(f"bench: {label}: cannot run {argv[0]}: {e} (build it first: ./dev build)", file=sys.stderr)
        return [], False
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Its workers (and Python's manager process) are in its group: give
        # them the chance to remove their files, then make sure.
        print(f"bench: {label}: no answer after {timeout:.0f} s, stopped", file=sys.stderr)
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
        return [], False
    results = []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
            if "skipped" in r:
                results.append({"bench": str(r["bench"]), "impl": str(r["impl"]), "skipped": str(r["skipped"])})
                continue
            results.append({"bench": str(r["bench"]), "impl": str(r["impl"]),
                            "value": float(r["value"]), "unit": str(r["unit"]), "note": str(r.get("note", ""))})
        except (ValueError, KeyError, TypeError):
            print(f"bench: {label}: unexpected output line: {line}", file=sys.stderr)
            return results, False
    return results, p.returncode == 0


def run_cases(a, progs, order, every):
    """Every case, round by round, each program that has it; returns the Rounds."""
    rounds = Rounds()
    ok = True
    for case in order:
        for rnd in range(a.rounds):
            print(f"bench: {case}" + (f" (round {rnd + 1} of {a.rounds})" if a.rounds > 1 else ""),
                  file=sys.stderr, flush=True)
            for label, argv, env, cases in progs:
                if case not in cases:
                    continue
                extra = ["--only", case, "--seconds", str(a.seconds), "--warmup", str(a.warmup)]
                got, fine = run_program(label, argv, env, extra, timeout=60 + 3 * (a.seconds + a.warmup))
                for r in got:
                    if owner(r["bench"], every) == case:
                        rounds.add(rnd, r)
                ok = ok and fine
    rounds.ok = ok
    return rounds


def main():
    ap = argparse.ArgumentParser(description="Run the benchmarks, print a table, write results.jsonl.")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "results.jsonl"))
    ap.add_argument("--seconds", type=float, default=1.0, help="measured time per case and implementation")
    ap.add_argument("--warmup", type=float, default=0.1, help="untimed warm-up before each measurement")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX",
                    help="run only the cases whose names start so (repeatable)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of every implementation of a case, taken in turn (figures and ratios are medians)")
    ap.add_argument("--large", action="store_true",
                    help="also run the large cases a default run leaves out: " + ", ".join(LARGE))
    a = ap.parse_args()
    if not (0 < a.seconds <= 60) or not (0 <= a.warmup <= 10):
        ap.error("--seconds must be in (0, 60] and --warmup in [0, 10]")
    if not 1 <= a.rounds <= 20:
        ap.error("--rounds must be 1 .. 20")

    ok = True
    progs = []  # (label, argv, env, cases)
    order = []  # every case once, in the programs' order
    every = []  # every case of every program, run or not
    for label, argv, env in programs(a.build_dir):
        try:
            p = subprocess.run(argv + ["--list"], stdout=subprocess.PIPE, text=True, timeout=30,
                               env=dict(os.environ, **env) if env else None)
        except (FileNotFoundError, subprocess.TimeoutExpired) as e:
            print(f"bench: {label}: cannot run {argv[-1]}: {e}", file=sys.stderr)
            ok = False
            continue
        listed = p.stdout.split()
        progs.append((label, argv, env, listed))
        every += [c for c in listed if c not in every]
    # Which cases to run is known once every program has listed its own.
    progs = [(label, argv, env, [c for c in listed if wanted(c, a.only, a.large, every)])
             for label, argv, env, listed in progs]
    for _, _, _, cases in progs:
        order += [c for c in cases if c not in order]

    # The remote cases run against a real nats-server on a loopback port
    # with a temporary store, started here and stopped at the end; without
    # nats-server their programs answer "skipped".
    server = None
    if any(c.startswith("remote.") for c in order):
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import nats_server
        if nats_server.find_binary() is None:
            print("bench: nats-server is not installed: the remote cases are skipped (./dev deps)", file=sys.stderr)
        else:
            server = nats_server.NatsServer().__enter__()
            progs = [(label, argv, dict(env or {}, SHM_NATS_URL=server.url), cases)
                     for label, argv, env, cases in progs]
    try:
        rounds = run_cases(a, progs, order, every)
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    ok = ok and rounds.ok
    results = rounds.results()

    # results.jsonl holds the figures only, each with exactly the four keys.
    skipped = [r for r in results if "skipped" in r]
    results = [r for r in results if "skipped" not in r]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        for r in results:
            f.write(json.dumps({k: r[k] for k in ("bench", "impl", "value", "unit")}) + "\n")

    # The table's rows: every figure's name, in the order the cases ran.
    rows_order = []
    for case in order:
        named = [r["bench"] for r in results + skipped if owner(r["bench"], every) == case]
        rows_order += [b for b in dict.fromkeys(named) if b not in rows_order] or [case]
    value = {(r["bench"], r["impl"]): r["value"] for r in results}
    print()
    print(f"{a.seconds:g} s per case after a {a.warmup:g} s warm-up, {a.rounds} round{'s' if a.rounds > 1 else ''} "
          f"taken in turn, {os.cpu_count()} CPUs. value = median of the rounds; ratio = median of "
          "value / libshm's value (shmd's for shmd.*) within each round; compare ratios within one run only. "
          "A target shows the median of its per-round ratios, then the lowest and highest round.")
    print("Rates (ops/s, items/s, GB/s): higher is better. Round trips (us, microseconds), "
          "delays (ms) and times per operation (ns): lower is better.")
    print()
    head = f"{'case':<30} {'impl':<26} {'value':>14}  {'unit':<7} {'ratio to libshm':>15}  how"
    print(head)
    print("-" * (len(head) + 40))
    for bench in rows_order:
        rows = [r for r in results + skipped if r["bench"] == bench]
        rows.sort(key=lambda r: (r["impl"] != base_impl(bench), "skipped" in r, r["impl"]))
        base = value.get((bench, base_impl(bench)))
        first = True
        for r in rows:
            name = bench if first else ""
            first = False
            if "skipped" in r:
                print(f"{name:<30} {r['impl']:<26} {'n/a':>14}  {'':<7} {'':>15}  {r['skipped']}")
                continue
            q = rounds.ratio(bench, r["impl"], base_impl(bench)) if base else None
            ratio = fmt_ratio(q) if q else "n/a"
            print(f"{name:<30} {r['impl']:<26} {fmt_value(r['value']):>14}  {r['unit']:<7} {ratio:>15}  {r['note']}".rstrip())
        if not rows:
            print(f"{bench:<30} {'(no result)':<26}")

    print()
    print("targets")
    for title, num, den, op, bound, cases in targets(order):
        cases = [c for c in cases if owner(c, every) in order]
        if not cases:
            continue
        print(f"  {title}: {num}/{den} {op} {fmt_bound(bound)}")
        for case in cases:
            x, y = value.get((case, num)), value.get((case, den))
            ratio = rounds.ratio(case, num, den)
            if x is None or not y or ratio is None:
                verdict, shown = "MISSED", "no result"
            else:
                met = ratio >= bound if op == ">=" else ratio <= bound
                unit = next((r["unit"] for r in results if r["bench"] == case and r["impl"] == num), "")
                verdict, shown = ("met" if met else "MISSED"), (
                    f"{ratio:,.3g}  ({num} {fmt_value(x)}, {den} {fmt_value(y)} {unit})"
                    f"{fmt_rounds(rounds.ratios(case, num, den))}")
            print(f"    {verdict:<7}{case:<30} {shown}")
    for title, impl, num, den, op, bound in spread_targets():
        if owner(num, every) not in order:
            continue
        print(f"  {title}: {impl} {num.rsplit('.', 1)[1]}/{den.rsplit('.', 1)[1]} {op} {fmt_bound(bound)}")
        x, y = value.get((num, impl)), value.get((den, impl))
        ratio = rounds.spread(impl, num, den)
        if x is None or not y or ratio is None:
            verdict, shown = "MISSED", "no result"
        else:
            met = ratio >= bound if op == ">=" else ratio <= bound
            unit = next((r["unit"] for r in results if r["bench"] == num and r["impl"] == impl), "")
            verdict, shown = ("met" if met else "MISSED"), (
                f"{ratio:,.3g}  ({fmt_value(x)} against {fmt_value(y)} {unit})"
                f"{fmt_rounds(rounds.spread_ratios(impl, num, den))}")
        print(f"    {verdict:<7}{num:<30} {shown}")
    for title, impl, op, bound, unit, cases in absolute_targets():
        cases = [c for c in cases if owner(c, every) in order]
        if not cases:
            continue
        print(f"  {title}: {impl} {op} {fmt_bound(bound)} {unit}")
        for case in cases:
            x = value.get((case, impl))
            if x is None:
                verdict, shown = "MISSED", "no result"
            else:
                met = x < bound if op == "<" else x > bound
                verdict, shown = ("met" if met else "MISSED"), f"{fmt_value(x)} {unit}"
            print(f"    {verdict:<7}{case:<30} {shown}")

    print()
    print(f"results: {os.path.relpath(a.out, ROOT) if a.out.startswith(ROOT) else a.out}")
    if not ok:
        print("bench: some benchmarks failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
