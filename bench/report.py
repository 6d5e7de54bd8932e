#!/usr/bin/env python3
"""A machine-readable summary and plots of a benchmark run's results.jsonl
(`./dev bench --json`, `./dev bench --plot [DIR]`).

    report.py [--results FILE] --json          the summary, as JSON, on stdout
    report.py [--results FILE] --plot DIR      one PNG per case family in DIR

It reads the figures bench/run.py (and bench/shmctl_bench.py) wrote, one
{"bench", "impl", "value", "unit"} object a line, and the targets run.py
checks. Ratios here are taken of the medians in the file (run.py's table
shows the median of the ratios within each round: the two agree closely,
not exactly).

The summary: {"results": FILE, "cases": [...], "targets": [...]}, where each
case is {"case", "unit", "base", "values": {impl: value},
"ratios": {impl: value / base's value}} and each target
{"title", "case", "numerator", "denominator", "op", "bound", "ratio", "met"}
("ratio" null and "met" false when a figure is missing; targets on one
figure have "impl" and "value" in place of the ratio's parts).

The plots (matplotlib; Debian's python3-matplotlib):
  queue.scale.png   throughput against processes (N producers and N
                    consumers, 1 to 8), one line per implementation and depth
  dict.scale.png    get and set against keys (1k .. 1M), and bytes per key
  queue.pingpong.png  round-trip p50 and p99 per implementation (log scale)
  FAMILY.png        for every family but dict.scale (the name up to its
                    second dot, or its first for lock, list, pool, shmd,
                    shmctl): bars of each implementation's ratio to libshm
                    (shmd for shmd.*) per case
If this interpreter has no matplotlib, --plot runs itself again under
/usr/bin/python3 when that one has it.
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run  # noqa: E402  (the targets and the base implementation of a case)

SYSTEM_PYTHON = "/usr/bin/python3"
SCALE_RE = re.compile(r"^queue\.(\d+)to\1\.64B(\.d256)?$")
DICT_SCALE_RE = re.compile(r"^dict\.scale\.(\d+)([kM])\.(get|set|bytes_per_key)$")
SINGLE_FAMILIES = ("lock", "list", "pool", "shmd", "shmctl")


def load(path):
    """The result lines of a results.jsonl, in order; ValueError on a bad line."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
                out.append({"bench": str(r["bench"]), "impl": str(r["impl"]), "value": float(r["value"]),
                            "unit": str(r["unit"])})
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a result line ({e})") from None
    return out


def summary(results, path):
    values = {}  # bench -> {impl: value}
    units = {}
    for r in results:
        values.setdefault(r["bench"], {})[r["impl"]] = r["value"]
        units.setdefault(r["bench"], r["unit"])
    cases = []
    for bench, vals in values.items():
        base = run.base_impl(bench)
        b = vals.get(base)
        ratios = {i: v / b for i, v in vals.items() if i != base and b} if b else {}
        cases.append({"case": bench, "unit": units[bench], "base": base, "values": vals, "ratios": ratios})
    targets = []
    # run.targets() picks cases by name: give it every name and its prefixes
    # (dict.scale.1k for dict.scale.1k.get); only figures' names stay below.
    names = list(dict.fromkeys(".".join(b.split(".")[:k]) for b in values for k in range(1, b.count(".") + 2)))
    for title, num, den, op, bound, tcases in run.targets(names):
        for case in tcases:
            x, y = values.get(case, {}).get(num), values.get(case, {}).get(den)
            ratio = x / y if x is not None and y else None
            met = ratio is not None and (ratio >= bound if op == ">=" else ratio <= bound)
            targets.append({"title": title, "case": case, "numerator": num, "denominator": den, "op": op,
                            "bound": bound, "ratio": ratio, "met": met})
    for title, impl, num, den, op, bound in run.spread_targets():
        x, y = values.get(num, {}).get(impl), values.get(den, {}).get(impl)
        ratio = x / y if x is not None and y else None
        met = ratio is not None and (ratio >= bound if op == ">=" else ratio <= bound)
        targets.append({"title": title, "case": num, "impl": impl, "of": den, "op": op, "bound": bound,
                        "ratio": ratio, "met": met})
    for title, impl, op, bound, unit, tcases in run.absolute_targets():
        for case in tcases:
            x = values.get(case, {}).get(impl)
            met = x is not None and (x < bound if op == "<" else x > bound)
            targets.append({"title": title, "case": case, "impl": impl, "op": op, "bound": bound, "unit": unit,
                            "value": x, "met": met})
    # Only the targets whose case has some figure in this run.
    targets = [t for t in targets if t["case"] in values]
    targets = list({(t["title"], t["case"]): t for t in targets}.values())
    return {"results": path, "cases": cases, "targets": targets}


def families(bench):
    """The plots a figure appears in: its family's ratio bars, and the queue's
    scale plot too for queue.NtoN.64B (the dict's scale plot alone for its)."""
    if DICT_SCALE_RE.match(bench):
        return ["dict.scale"]
    parts = bench.split(".")
    fam = parts[0] if parts[0] in SINGLE_FAMILIES or len(parts) < 2 else ".".join(parts[:2])
    return [fam, "queue.scale"] if SCALE_RE.match(bench) else [fam]


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def plot(results, out_dir):
    """Writes the PNGs; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    by_family = {}
    for r in results:
        for fam in families(r["bench"]):
            by_family.setdefault(fam, []).append(r)
    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    for fam, rs in sorted(by_family.items()):
        if fam == "queue.scale":
            fig, ax = plt.subplots(figsize=(9.5, 4.5))
            lines = {}  # (impl, shallow) -> points
            for r in rs:
                m = SCALE_RE.match(r["bench"])
                lines.setdefault((r["impl"], bool(m.group(2))), []).append((2 * int(m.group(1)), r["value"]))
            # One colour per implementation; dashed at 256 items of depth.
            impls = sorted({i for i, _ in lines}, key=lambda i: (i != "libshm", i))
            colour = {i: f"C{k % 10}" for k, i in enumerate(impls)}
            for (impl, shallow), pts in sorted(lines.items(), key=lambda kv: (impls.index(kv[0][0]), kv[0][1])):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour[impl],
                        linestyle="--" if shallow else "-", label=impl + (" (256 items)" if shallow else ""))
            ax.set_yscale("log")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("processes (N producers + N consumers)")
            ax.set_ylabel("items/s (64 B)")
            ax.set_title("queue: throughput against processes")
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
            ax.grid(True, alpha=0.3)
            save(fig, fam)
        elif fam == "dict.scale":
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
            ops, size = {}, {}
            for r in rs:
                m = DICT_SCALE_RE.match(r["bench"])
                keys = int(m.group(1)) * (1000 if m.group(2) == "k" else 1_000_000)
                if m.group(3) == "bytes_per_key":
                    size.setdefault(r["impl"], []).append((keys, r["value"]))
                else:
                    ops.setdefault(f"{r['impl']} {m.group(3)}", []).append((keys, r["value"]))
            for ax, series in ((a1, ops), (a2, size)):
                for label, pts in sorted(series.items()):
                    pts.sort()
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
                ax.set_xscale("log")
                ax.set_xlabel("keys")
                ax.grid(True, alpha=0.3)
                if series:
                    ax.legend(fontsize="small")
            a1.set_yscale("log")
            a1.set_ylabel("ops/s (one process)")
            a1.set_title("dict: get and set against keys")
            a2.set_ylabel("bytes per key")
            a2.set_title("dict: bytes per key")
            save(fig, fam)
        elif fam == "queue.pingpong":
            impls = sorted({r["impl"] for r in rs}, key=lambda i: (i != "libshm", i))
            val = {(r["bench"].rsplit(".", 1)[-1], r["impl"]): r["value"] for r in rs}
            fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(impls)), 4.2))
            w = 0.38
            for k, (pct, off) in enumerate((("p50", -w / 2), ("p99", w / 2))):
                xs = [i + off for i in range(len(impls))]
                ys = [val.get((pct, i)) for i in impls]
                ax.bar([x for x, y in zip(xs, ys) if y], [y for y in ys if y], width=w, label=pct)
                for x, y in zip(xs, ys):
                    if y:
                        ax.annotate(f"{y:.3g}", (x, y), ha="center", va="bottom", fontsize="x-small")
            ax.set_xticks(range(len(impls)))
            ax.set_xticklabels(impls, rotation=30, ha="right", fontsize="small")
            # Round trips span four orders of magnitude (a spinning pair
            # against a Python queue): a log scale keeps every bar visible.
            ax.set_yscale("log")
            ax.set_ylabel("round trip, us, log scale (lower is better)")
            ax.set_title("queue.pingpong.64B: latency percentiles")
            ax.legend()
            ax.grid(True, axis="y", alpha=0.3)
            save(fig, fam)
        else:
            benches = list(dict.fromkeys(r["bench"] for r in rs))
            val = {(r["bench"], r["impl"]): r["value"] for r in rs}
            impls = sorted({r["impl"] for r in rs if r["impl"] != run.base_impl(r["bench"])})
            bars = {}  # impl -> [(x, ratio)]
            for x, b in enumerate(benches):
                base = val.get((b, run.base_impl(b)))
                for i in impls:
                    v = val.get((b, i))
                    if base and v:
                        bars.setdefault(i, []).append((x, v / base))
            fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(benches)), 4.2))
            w = 0.8 / max(1, len(bars))
            for k, (i, pts) in enumerate(sorted(bars.items())):
                ax.bar([p[0] - 0.4 + w * (k + 0.5) for p in pts], [p[1] for p in pts], width=w, label=i)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ratios = [p[1] for pts in bars.values() for p in pts]
            if ratios and min(ratios) > 0 and max(ratios) / min(ratios) > 20:
                ax.set_yscale("log")  # ratios from 1/1000 to 1000 side by side
            ax.set_xticks(range(len(benches)))
            ax.set_xticklabels(benches, rotation=30, ha="right", fontsize="small")
            base_name = run.base_impl(benches[0])
            ax.set_ylabel(f"value / {base_name}'s value")
            ax.set_title(f"{fam}: each implementation against {base_name} (1 = {base_name})")
            if bars:
                # Beside the axes, not over the bars.
                ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
            ax.grid(True, axis="y", alpha=0.3)
            save(fig, fam)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description="Summarise a benchmark run's results.jsonl as JSON, or plot it.")
    ap.add_argument("--results", default=os.path.join(ROOT, "build", "bench", "results.jsonl"),
                    help="the results file (default: build/bench/results.jsonl)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    ap.add_argument("--plot", metavar="DIR", help="write one PNG per case family into DIR")
    a = ap.parse_args(argv)
    if not a.json and not a.plot:
        ap.error("nothing to do: give --json, --plot DIR or both")
    try:
        results = load(a.results)
    except OSError as e:
        print(f"bench report: cannot read {a.results}: {e.strerror} (run ./dev bench first)", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"bench report: {e}", file=sys.stderr)
        return 1
    if a.plot:
        if not have_matplotlib():
            if os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON) and os.access(SYSTEM_PYTHON, os.X_OK):
                # Debian's matplotlib is installed for Debian's interpreter.
                os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + (argv or sys.argv[1:]))
            print("bench report: --plot needs matplotlib (Debian: apt install python3-matplotlib)", file=sys.stderr)
            return 1
        for path in plot(results, a.plot):
            print(f"bench report: wrote {path}", file=sys.stderr)
    if a.json:
        json.dump(summary(results, a.results), sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
