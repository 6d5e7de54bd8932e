#!/usr/bin/env python3
"""The unit test of bench/report.py (`./dev bench --json`, `--plot`): runs it
on a fixed results.jsonl (bench/testdata/results.jsonl) and checks the JSON
summary (cases, ratios, targets met and missed) and the plot files (one PNG
per family). It measures nothing. Exit 77 (skipped) when no interpreter with
matplotlib is at hand for the plot part, after the JSON part passed."""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, "report.py")
FIXTURE = os.path.join(HERE, "testdata", "results.jsonl")
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print(f"FAILED: {what}", file=sys.stderr)


def run(*args):
    return subprocess.run([sys.executable, REPORT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=300)


def close(a, b):
    return a is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))


def test_json():
    p = run("--results", FIXTURE, "--json")
    check(p.returncode == 0, f"--json exits 0 (got {p.returncode}: {p.stderr.strip()})")
    s = json.loads(p.stdout)
    cases = {c["case"]: c for c in s["cases"]}
    with open(FIXTURE) as f:
        names = {json.loads(line)["bench"] for line in f if line.strip()}
    check(set(cases) == names, "one summary entry per figure name in the results")
    q = cases["queue.1to1.64B"]
    check(q["base"] == "libshm" and q["unit"] == "items/s", "queue.1to1.64B: base libshm, unit items/s")
    check(close(q["values"]["libshm"], 8e6), "queue.1to1.64B: libshm's value kept")
    check(close(q["ratios"]["boost_message_queue"], 0.5), "queue.1to1.64B: Boost's ratio to libshm is 0.5")
    check("libshm" not in q["ratios"], "no ratio of the base to itself")
    check(cases["shmd.reclaim_delay.p50"]["base"] == "shmd", "shmd's cases are taken to shmd")

    def target(title_part, case):
        got = [t for t in s["targets"] if title_part in t["title"] and t["case"] == case]
        check(len(got) == 1, f"one target '{title_part}' for {case} (got {len(got)})")
        return got[0] if got else {}

    t = target("at least 3x Boost", "queue.1to1.64B")
    check(close(t.get("ratio"), 2.0) and t.get("met") is False, "1to1: 2x Boost misses the 3x target")
    t = target("with several producers", "queue.2to2.64B")
    check(close(t.get("ratio"), 3.0) and t.get("met") is True, "2to2: 3x Boost meets the 2x target")
    t = target("with several producers", "queue.4to4.64B")
    check(close(t.get("ratio"), 1.6) and t.get("met") is False, "4to4: 1.6x Boost misses the 2x target")
    t = target("with several producers", "queue.1to4.64B")
    check(t.get("met") is True, "1to4: 3x Boost meets the 2x target")
    t = target("put_many/get_many", "queue.1to1.64B.batch32")
    check(close(t.get("ratio"), 0.95) and t.get("met") is True, "batch32: 0.95 of the floor meets 0.9")
    t = target("shm::Mutex's", "lock.uncontended")
    check(close(t.get("ratio"), 20 / 18) and t.get("met") is True, "lock.uncontended: 1.11x meets 1.2x")
    t = target("shm::Mutex's", "lock.2proc")
    check(close(t.get("ratio"), 1.25) and t.get("met") is False, "lock.2proc: 1.25x misses 1.2x")
    t = target("99th percentile round trip no worse", "queue.pingpong.64B.p99")
    check(t.get("met") is False, "pingpong p99 above the futex floor's misses")
    t = target("within 3x of its own median", "queue.pingpong.64B.p99")
    check(t.get("impl") == "libshm" and t.get("of") == "queue.pingpong.64B.p50" and close(t.get("ratio"), 18.0)
          and t.get("met") is False, "pingpong: a p99 of 18 times the p50 misses the 3x target")
    t = target("within 3x of the floor", "dict.scale.1M.get")
    check(t.get("numerator") == "mutex_unordered_map" and t.get("met") is True, "dict.scale: the floor's target")
    check(not any(t["case"].endswith("bytes_per_key") for t in s["targets"]), "no speed target on bytes per key")
    t = target("SIGKILL to unlink", "shmd.reclaim_delay.p50")
    check(close(t.get("value"), 2.5) and t.get("met") is True, "shmd: 2.5 ms meets under 10 ms")
    t = target("100x Python's multiprocessing.Queue", "queue.1to1.64B")
    check(t.get("ratio") is None and t.get("met") is False, "a target without its figure: no ratio, not met")
    check(not any(t["case"] == "py.lock" for t in s["targets"]), "no target for a case with no figure at all")


def test_rounds():
    """run.py's targets: a ratio per round, their median, and the range shown."""
    sys.path.insert(0, HERE)
    import run as bench_run
    r = bench_run.Rounds()
    for rnd, (mine, floor) in enumerate([(10.0, 20.0), (30.0, 20.0), (12.0, 20.0)]):
        r.add(rnd, {"bench": "q", "impl": "libshm", "value": mine, "unit": "items/s"})
        r.add(rnd, {"bench": "q", "impl": "floor", "value": floor, "unit": "items/s"})
    r.add(3, {"bench": "q", "impl": "libshm", "value": 99.0, "unit": "items/s"})  # a round without the floor
    check(r.ratios("q", "libshm", "floor") == [0.5, 1.5, 0.6], "one ratio per round that has both figures")
    check(close(r.ratio("q", "libshm", "floor"), 0.6), "the ratio is the median of the rounds' ratios")
    check(bench_run.fmt_rounds(r.ratios("q", "libshm", "floor")) == "  rounds 0.5-1.5", "the range of the rounds")
    check(bench_run.fmt_rounds([0.5]) == "", "one round: no range")
    for rnd, (p99, p50) in enumerate([(4.0, 1.0), (2.0, 1.0)]):
        r.add(rnd, {"bench": "q.p99", "impl": "libshm", "value": p99, "unit": "us"})
        r.add(rnd, {"bench": "q.p50", "impl": "libshm", "value": p50, "unit": "us"})
    check(r.spread_ratios("libshm", "q.p99", "q.p50") == [4.0, 2.0] and close(r.spread("libshm", "q.p99", "q.p50"), 3.0),
          "a spread target: one implementation's two figures, per round, and their median")


def test_bad_input():
    with tempfile.TemporaryDirectory() as d:
        bad = os.path.join(d, "results.jsonl")
        with open(bad, "w") as f:
            f.write('{"bench": "queue.1to1.64B", "impl": "libshm", "value": 1, "unit": "items/s"}\n{"bench": 3\n')
        p = run("--results", bad, "--json")
        check(p.returncode == 1 and p.stdout == "" and ":2:" in p.stderr,
              f"a bad line: exit 1, nothing on stdout, the line named (got {p.returncode}, {p.stderr.strip()})")
        p = run("--results", os.path.join(d, "missing.jsonl"), "--json")
        check(p.returncode == 1 and "./dev bench" in p.stderr, "a missing results file: exit 1 and a hint")
        p = run("--results", FIXTURE)
        check(p.returncode == 2, "neither --json nor --plot: a usage error")


def test_plot():
    """Returns False when no interpreter has matplotlib."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "plots")
        p = run("--results", FIXTURE, "--plot", out)
        if p.returncode == 1 and "needs matplotlib" in p.stderr:
            return False
        check(p.returncode == 0, f"--plot exits 0 (got {p.returncode}: {p.stderr.strip()[-500:]})")
        want = {"queue.scale.png", "dict.scale.png", "queue.pingpong.png", "lock.png", "queue.1to1.png",
                "queue.1to4.png", "queue.2to2.png", "queue.4to4.png", "queue.8to8.png", "dict.get.png", "shmd.png"}
        got = set(os.listdir(out)) if os.path.isdir(out) else set()
        # The scale family takes the NtoN cases; the others still get ratio bars.
        check(want <= got, f"the plot files: missing {sorted(want - got)}")
        check(got <= want, f"no unexpected plot files: {sorted(got - want)}")
        for name in sorted(got & want):
            with open(os.path.join(out, name), "rb") as f:
                data = f.read()
            check(data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, f"{name} is a PNG with a picture in it")
    return True


if __name__ == "__main__":
    test_json()
    test_rounds()
    test_bad_input()
    plotted = test_plot()
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    if not plotted:
        print("report_test: JSON checks passed; plots skipped (no matplotlib)", file=sys.stderr)
        sys.exit(77)
    print("report_test: all checks passed")
