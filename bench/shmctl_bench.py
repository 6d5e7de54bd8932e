#!/usr/bin/env python3
"""How fast shmctl sees a crowded shm directory, next to `lsof +D` (`./dev bench`).

It makes a private directory under /dev/shm holding 10,000 files, the way a
busy machine's /dev/shm looks: PyTorch's torch_*, Python multiprocessing's
psm_* and sem.mp-*, and files of other programs, each a page in memory (no
libshm segments: those take a libshm program to make). 200 live processes
(forked from this script) hold some of them: each maps one file and keeps it
open, maps another with the descriptor closed or keeps another only open,
and maps a file it shares with nine other processes. Every other file looks
leaked. Then it times, median of a few runs,

  shmctl --dir DIR ls --all                               (case shmctl.ls.10k)
  shmctl --dir DIR gc --dry-run --foreign --min-age 0     (case shmctl.gc_dry_run.10k)
  lsof +D DIR                                             (the comparison for both)

each with its output to /dev/null, the three in turn, after checking once
(untimed) that shmctl and lsof find exactly the files in use. It prints a
table and the targets (under 1 s, and faster than lsof, for both shmctl
commands), and appends the figures to the results file, one JSON object a
line:
  {"bench": CASE, "impl": "shmctl" | "lsof", "value": SECONDS, "unit": "s"}

Every process it starts is killed and reaped, and the directory removed, on
the way out, also on SIGINT, SIGTERM and SIGHUP; a live process that is left
anyway exits by itself when this script dies, or after --max-life seconds.
Exit status: 0 when every command ran and found what it should (a missed
target is reported, not a failure), 1 otherwise.
"""

import argparse
import ctypes
import json
import mmap
import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("shmctl.ls.10k", "shmctl.gc_dry_run.10k")
TARGET_SECONDS = 1.0
PAGE = 4096
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def file_names(n, rng):
    """n distinct names in the proportions of a machine that runs PyTorch
    DataLoaders and Python multiprocessing: 45% torch_*, 30% psm_*,
    10% sem.mp-*, 15% other programs'."""
    names = []
    for i in range(n):
        r = i % 20
        pid = rng.randrange(1000, 4000000)
        if r < 9:
            names.append(f"torch_{pid}_{rng.randrange(1 << 32)}_{i}")
        elif r < 15:
            names.append(f"psm_{rng.randrange(1 << 32):08x}{i:05x}")
        elif r < 17:
            names.append(f"sem.mp-{rng.randrange(1 << 32):08x}{i:05x}")
        else:
            names.append(rng.choice(["pulse-shm-", "myapp.cache.", "ray_plasma_", "mono.", "qipc_sharedmemory_"])
                         + f"{pid}.{i}")
    rng.shuffle(names)
    return names


def make_files(d, names, rng):
    """Each file gets a length between 4 KiB and 8 MiB and one page written
    (so it occupies memory), and an age between a minute and two days."""
    now = time.time()
    for name in names:
        path = os.path.join(d, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, rng.choice((PAGE, 16 * PAGE, 256 * PAGE, 2048 * PAGE)))
            os.pwrite(fd, b"\x5a" * PAGE, 0)
        finally:
            os.close(fd)
        age = rng.uniform(60, 2 * 86400)
        os.utime(path, (now - age, now - age))


def holdings(names, procs):
    """What each live process holds: [(file name, how)], how in
    "map+open", "map", "open". Returns (holdings, set of names in use)."""
    plan = []
    for i in range(procs):
        own = [(names[i], "map+open"), (names[procs + i], "map" if i % 2 == 0 else "open")]
        shared = names[2 * procs + i // 10]  # mapped by a group of ten processes
        plan.append(own + [(shared, "map")])
    used = {name for held in plan for name, _ in held}
    return plan, used


def live_process(d, held, ready_w, lifeline, max_life):
    """Runs in a forked child: takes hold of its files, says so, then waits
    until the parent is gone (the lifeline pipe, whose only write end the
    parent holds, reads as closed) or max_life seconds have passed."""
    try:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        keep = []
        for name, how in held:
            fd = os.open(os.path.join(d, name), os.O_RDWR)
            if "map" in how:
                keep.append(mmap.mmap(fd, PAGE))
            if "open" in how:
                keep.append(fd)
            else:
                os.close(fd)
        os.write(ready_w, b"r")
        os.close(ready_w)
        select.select([lifeline], [], [], max_life)
    except BaseException:
        pass
    finally:
        os._exit(0)


def start_live_processes(d, plan, max_life, lifeline, children):
    """Forks one child per entry of plan, appending each pid to children at
    once; returns when all are ready (or raises). lifeline is the pipe
    (read end, write end) the children watch."""
    ready_r, ready_w = os.pipe()
    try:
        for held in plan:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                pid = os.fork()
                if pid == 0:
                    os.close(ready_r)
                    os.close(lifeline[1])
                    live_process(d, held, ready_w, lifeline[0], max_life)
                children.append(pid)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(ready_w)
        ready_w = -1
        got, deadline = 0, time.monotonic() + 30
        while got < len(plan):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ready_r], [], [], left)[0]:
                raise RuntimeError(f"only {got} of {len(plan)} live processes became ready within 30 s")
            chunk = os.read(ready_r, 4096)
            if not chunk:
                raise RuntimeError(f"only {got} of {len(plan)} live processes became ready (the others died)")
            got += len(chunk)
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)


def stop_live_processes(children):
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    children.clear()


def reap_orphans():
    """Reaps what the commands run here left when they were killed (lsof's
    helper process, say), which comes to this script as their subreaper."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def run(argv, timeout, capture=False):
    """Runs argv in a process group of its own; returns (seconds, returncode,
    stdout or None, stderr). On a time-out or a signal, kills the group."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    return time.monotonic() - t0, p.returncode, out, err


def timed(commands, repeat, budget):
    """Runs the commands round-robin, up to `repeat` times each (fewer once
    one has spent `budget` seconds), so that each is measured on the same
    machine state as the others. Returns {label: (median seconds, runs)};
    raises when a command fails."""
    times = {label: [] for _, label, _, _ in commands}
    for _ in range(repeat):
        for _, label, argv, ok_codes in commands:
            if times[label] and sum(times[label]) >= budget:
                continue
            secs, rc, _, err = run(argv, timeout=60)
            if rc not in ok_codes:
                raise RuntimeError(f"{label} exited with status {rc}: {err.strip()[-500:]}")
            times[label].append(secs)
    return {label: (statistics.median(t), len(t)) for label, t in times.items()}


def check_shmctl(shmctl, d, names, used):
    """Untimed: shmctl must see every file, exactly `used` in use, and
    gc --dry-run must find exactly the others reclaimable. (Processes whose
    /proc entries it may not read, if any, are told apart by the kernel's
    lease, so they change nothing here.) Returns problems."""
    problems = []
    _, rc, out, err = run([shmctl, "--dir", d, "ls", "--all", "--json"], timeout=60, capture=True)
    if rc != 0:
        return [f"shmctl ls --json exited with status {rc}: {err.strip()[-500:]}"]
    listing = json.loads(out)
    files = {f["name"]: f for f in listing["files"]}
    if set(files) != set(names):
        problems.append(f"shmctl ls listed {len(files)} files, expected {len(names)}")
    in_use = {n for n, f in files.items() if f["state"] == "in_use"}
    if in_use != used:
        problems.append(f"shmctl ls: {len(in_use)} files in use, expected {len(used)} "
                        f"({len(used - in_use)} missed, {len(in_use - used)} extra)")
    _, rc, out, err = run([shmctl, "--dir", d, "gc", "--dry-run", "--foreign", "--min-age", "0", "--json"],
                          timeout=60, capture=True)
    if rc != 0:
        return problems + [f"shmctl gc --dry-run --json exited with status {rc}: {err.strip()[-500:]}"]
    gc = json.loads(out)
    reclaimed = {a["name"] for a in gc["actions"] if a["outcome"] == "reclaimed"}
    if reclaimed != set(names) - used:
        problems.append(f"shmctl gc --dry-run: {len(reclaimed)} files reclaimable, expected "
                        f"{len(names) - len(used)} ({len(reclaimed & used)} of them in use)")
    if sorted(os.listdir(d)) != sorted(names):
        problems.append("shmctl gc --dry-run changed the directory")
    return problems


def check_lsof(d, used):
    """Untimed: lsof +D must name exactly the files in use."""
    _, rc, out, err = run(["lsof", "+D", d], timeout=60, capture=True)
    if rc not in (0, 1):
        return [f"lsof +D exited with status {rc}: {err.strip()[-500:]}"]
    prefix = d.rstrip("/") + "/"
    seen = {line.split()[-1][len(prefix):] for line in out.splitlines() if line.split()[-1].startswith(prefix)}
    if seen != used:
        return [f"lsof +D named {len(seen)} files, expected the {len(used)} in use"]
    return []


def ratio(x, y):
    return f"{x / y:.3g}" if y else "n/a"


def main():
    ap = argparse.ArgumentParser(description="Time shmctl ls and gc --dry-run over a crowded shm directory, "
                                             "next to lsof +D; append the figures to the results file.")
    ap.add_argument("--shmctl", default=os.path.join(ROOT, "build", "release", "tools", "shmctl"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "results.jsonl"),
                    help="results file, appended to")
    ap.add_argument("--files", type=int, default=10000, help="files in the directory")
    ap.add_argument("--procs", type=int, default=200, help="live processes holding some of them")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per command (the median is reported)")
    ap.add_argument("--max-life", type=float, default=120, help="a live process exits by itself after this")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX",
                    help="run only if a case name starts so (as bench/run.py; other options of it are ignored)")
    a, _ = ap.parse_known_args()
    if a.only and not any(c.startswith(o) or o.startswith(c + ".") for c in CASES for o in a.only):
        return 0
    if a.procs < 1 or a.files < 2 * a.procs + (a.procs + 9) // 10 or not 1 <= a.repeat <= 50:
        ap.error("need --procs >= 1, --files >= 2.1 x --procs and --repeat in [1, 50]")
    if not os.access(a.shmctl, os.X_OK):
        print(f"shmctl bench: no shmctl at {a.shmctl} (run ./dev build)", file=sys.stderr)
        return 1
    need = a.files * (PAGE + 1024) * 2
    st = os.statvfs("/dev/shm")
    if st.f_bavail * st.f_frsize < need:
        print(f"shmctl bench: needs about {need >> 20} MiB free in /dev/shm", file=sys.stderr)
        return 1
    have_lsof = shutil.which("lsof") is not None
    if not have_lsof:
        print("shmctl bench: lsof not available; measuring shmctl only", file=sys.stderr)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for s in STOP_SIGNALS:
        signal.signal(s, stop)
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    children = []
    lifeline = os.pipe()  # the children exit when its write end closes: when this script is gone
    d = None
    problems = []
    try:
        d = tempfile.mkdtemp(dir="/dev/shm", prefix="libshm-bench.")
        rng = random.Random(6)
        names = file_names(a.files, rng)
        plan, used = holdings(names, a.procs)
        print(f"shmctl bench: {a.files:,} files, {a.procs} live processes ...", file=sys.stderr, flush=True)
        make_files(d, names, rng)
        start_live_processes(d, plan, a.max_life, lifeline, children)

        shmctl = [a.shmctl, "--dir", d]
        commands = [  # (case, label, argv, exit codes that mean it ran)
            (CASES[0], "shmctl ls --all", shmctl + ["ls", "--all"], (0,)),
            (CASES[1], "shmctl gc --dry-run --foreign --min-age 0",
             shmctl + ["gc", "--dry-run", "--foreign", "--min-age", "0"], (0,)),
        ]
        if have_lsof:
            commands.append((None, "lsof +D", ["lsof", "+D", d], (0, 1)))  # 1: nothing open
        # The checks run first, untimed, and warm every cache for all three.
        problems += check_shmctl(a.shmctl, d, names, used)
        if have_lsof:
            problems += check_lsof(d, used)
        measured = timed(commands, a.repeat, budget=10)
        seconds = {label: m[0] for label, m in measured.items()}
        runs = {label: m[1] for label, m in measured.items()}
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        print(f"shmctl bench: {e}", file=sys.stderr)
        return 1
    finally:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        stop_live_processes(children)
        reap_orphans()
        os.close(lifeline[0])
        os.close(lifeline[1])
        if d:
            shutil.rmtree(d, ignore_errors=True)

    lsof_s = seconds.get("lsof +D")
    print()
    print(f"shmctl over {a.files:,} files in a private directory under /dev/shm, {len(used)} of them in use "
          f"by {a.procs} live processes; {os.cpu_count()} CPUs.")
    print("seconds: median of the runs shown, output to /dev/null; lower is better. "
          "ratio = seconds / lsof's seconds.")
    print()
    head = f"{'case':<24} {'command':<44} {'seconds':>8}  {'runs':>4}  {'ratio to lsof':>13}"
    print(head)
    print("-" * len(head))
    for case, label, _, _ in commands:
        shown = ratio(seconds[label], lsof_s) if lsof_s else "n/a"
        print(f"{case or '(comparison)':<24} {label:<44} {seconds[label]:>8.3f}  {runs[label]:>4}  {shown:>13}")
    if not have_lsof:
        print(f"{'(comparison)':<24} {'lsof +D':<44} {'n/a':>8}  {'':>4}  {'':>13}  lsof not available")

    print()
    if problems:
        print("check FAILED (untimed runs):")
        for p in problems:
            print(f"    {p}")
    else:
        print(f"check (untimed runs): shmctl ls found the {len(used)} files in use and the {a.files - len(used):,} "
              f"others leaked, gc --dry-run would reclaim exactly those {a.files - len(used):,}"
              + (f", lsof +D named the {len(used)} in use." if have_lsof else "."))
    print()
    print("targets")
    for case, label, _, _ in commands[:2]:
        s = seconds[label]
        print(f"    {'met' if s < TARGET_SECONDS else 'MISSED':<7}{case:<24} under {TARGET_SECONDS:g} s: {s:.3f} s")
        if lsof_s:
            print(f"    {'met' if s < lsof_s else 'MISSED':<7}{case:<24} faster than lsof +D: "
                  f"{s:.3f} s vs {lsof_s:.3f} s")
        else:
            print(f"    {'MISSED':<7}{case:<24} faster than lsof +D: no lsof figure (lsof not available)")

    results = []
    for case, label, _, _ in commands[:2]:
        results.append({"bench": case, "impl": "shmctl", "value": round(seconds[label], 6), "unit": "s"})
        if lsof_s:
            results.append({"bench": case, "impl": "lsof", "value": round(lsof_s, 6), "unit": "s"})
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print()
    print(f"results appended to: {os.path.relpath(a.out, ROOT) if a.out.startswith(ROOT) else a.out}")

    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
