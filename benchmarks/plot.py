#!/usr/bin/env python3
"""PNG plots of coshard's benchmark results against the Python pattern.

Reads the Google-Benchmark-style JSON that benchmarks/compare.py leaves in a results
directory (bench_*.json from the C++ binaries, python_*.json from the Python scripts)
and draws, with matplotlib's Agg backend:

  dispatch_batch_size.png   items/s against batch size (log-log): coshard map and the raw
                            socketpair baseline at batch 1, 16, 256, 4096, coshard's
                            adaptive batching as a dashed line, Python executor.map
                            chunksize 4096 and chunksize 1 as reference lines
  sum_to_num_speedup.png    speedup over sequential against workers: coshard process pool,
                            thread pool, Python; the ideal line; with --device-results,
                            the same curves from another machine (e.g. a 16-core one)
  ngram_throughput.png      MB/s bars: C++ sequential, coshard with W workers, Python
                            sequential and Python pool

A plot whose data is missing is skipped with a message naming what is missing. Each
plot is titled with the machine (host name, CPU count) from the JSON context.

Usage:
  python3 benchmarks/plot.py RESULTS_DIR [--out docs/img]
                             [--device-results DIR [--device-label LABEL]]...
  e.g. python3 benchmarks/plot.py results/ --out docs/img
       python3 benchmarks/plot.py results/ --out docs/img --device-results results-h100 \\
               --device-label 16-core

Needs matplotlib (Debian: apt-get install python3-matplotlib, then run it with the
interpreter that has it, e.g. /usr/bin/python3).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from compare import BATCHES, Result, load_results  # noqa: E402  (shared JSON loading and names)

COLORS = {"coshard": "tab:blue", "raw": "tab:gray", "threads": "tab:green",
          "python": "tab:orange", "cpp_seq": "tab:purple"}


def import_matplotlib():
    try:
        import matplotlib
    except ImportError:
        # Debian's matplotlib lives with /usr/bin/python3; another python3 may come first
        # on PATH (pyenv, venv). Re-run with Debian's interpreter when it has matplotlib.
        system = "/usr/bin/python3"
        if (os.path.realpath(sys.executable) != os.path.realpath(system)
                and os.access(system, os.X_OK)
                and subprocess.run([system, "-c", "import matplotlib"],
                                   capture_output=True).returncode == 0):
            print(f"plot.py: no matplotlib in {sys.executable}; re-running with {system}",
                  flush=True)
            os.execv(system, [system, os.path.abspath(__file__), *sys.argv[1:]])
        sys.exit(f"plot.py: matplotlib is not installed for {sys.executable}.\n"
                 f"Install it (Debian: apt-get install -y python3-matplotlib) and run this "
                 f"script with that interpreter, e.g. /usr/bin/python3 benchmarks/plot.py ...")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


class Data:
    """The results of one directory, with the lookups the plots need."""

    def __init__(self, directory: str, label: str | None = None):
        self.dir = directory
        self.results, self.contexts, problems = load_results(directory)
        for p in problems:
            print(f"plot.py: {p}")
        self.label = label or self.machine_label()

    def machine(self) -> dict:
        """The context of a C++ results file if there is one, else any."""
        for src, ctx in sorted(self.contexts.items()):
            if src.startswith("bench_"):
                return ctx
        return next(iter(self.contexts.values()), {})

    def machine_label(self) -> str:
        ctx = self.machine()
        return f"{ctx.get('num_cpus', '?')}-core" if ctx else os.path.basename(self.dir)

    def title_suffix(self) -> str:
        ctx = self.machine()
        return f"{ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} CPUs" if ctx else ""

    def get(self, name: str, field: str) -> float | None:
        res: Result | None = self.results.get(name)
        return None if res is None else res.field(field)

    def series(self, pattern: str, field: str) -> dict[int, float]:
        """{W: value} over names matching pattern (a regex whose group 1 is W)."""
        out: dict[int, float] = {}
        for n in sorted(self.results):
            m = re.fullmatch(pattern, n)
            if m:
                v = self.results[n].field(field)
                if v is not None:
                    out.setdefault(int(m.group(1)), v)
        return out


def skip(what: str, missing: list[str]) -> None:
    print(f"plot.py: skipping {what}: missing {', '.join(missing)}")


def save(plt, fig, out_dir: str, name: str) -> None:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------
# (a) dispatch: items/s against batch size
# ---------------------------------------------------------------------------

def plot_dispatch(plt, d: Data, out_dir: str) -> None:
    cmap = {b: d.get(f"map/x*x/batch:{b}", "items_per_second") for b in BATCHES}
    raw = {b: d.get(f"raw/socketpair/batch:{b}", "items_per_second") for b in BATCHES}
    cmap = {b: v for b, v in cmap.items() if v is not None}
    raw = {b: v for b, v in raw.items() if v is not None}
    if not cmap:
        return skip("dispatch_batch_size.png", ["map/x*x/batch:* (bench_dispatch.json)"])
    adaptive = d.get("map/x*x/adaptive", "items_per_second")
    py4096 = d.get("python/dispatch/executor.map/chunksize:4096", "items_per_second")
    py1 = d.get("python/dispatch/executor.map/chunksize:1", "items_per_second")
    py_gather_batch = d.get("python/dispatch/run_in_executor+gather/batch:4096", "items_per_second")
    py_gather_one = d.get("python/dispatch/run_in_executor+gather/one_item", "items_per_second")
    missing = [n for n, v in (("raw/socketpair/batch:*", raw), ("map/x*x/adaptive", adaptive),
                              ("python_dispatch.json", py4096)) if not v]
    if missing:
        print(f"plot.py: dispatch_batch_size.png drawn without: {', '.join(missing)}")

    fig, ax = plt.subplots(figsize=(8, 6))
    ax.plot(list(cmap), list(cmap.values()), "o-", color=COLORS["coshard"], label="coshard map")
    if raw:
        ax.plot(list(raw), list(raw.values()), "s-", color=COLORS["raw"],
                label="raw socketpair baseline (bare fork + socketpair)")
    if adaptive:
        ax.axhline(adaptive, color=COLORS["coshard"], ls="--", label="coshard map, adaptive batch")
    if py4096:
        ax.axhline(py4096, color=COLORS["python"], ls=":", lw=2,
                   label="Python executor.map, chunksize 4096")
    if py1:
        ax.axhline(py1, color=COLORS["python"], ls="-.", label="Python executor.map, chunksize 1")
    gather = {b: v for b, v in ((1, py_gather_one), (4096, py_gather_batch)) if v}
    if gather:
        ax.plot(list(gather), list(gather.values()), "x", ms=9, mew=2, color=COLORS["python"],
                ls="none", label="Python run_in_executor + gather (1 item / batch 4096)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
    ax.set_xlabel("items per batch")
    ax.set_ylabel("items/s (x*x, round trip to a worker)")
    ax.set_title(f"Dispatch throughput vs batch size\n{d.title_suffix()}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    save(plt, fig, out_dir, "dispatch_batch_size.png")


# ---------------------------------------------------------------------------
# (b) sum_to_num: speedup against workers
# ---------------------------------------------------------------------------

def speedups(d: Data) -> dict[str, dict[int, float]]:
    """Curves label -> {W: speedup over the same side's sequential run}."""
    curves: dict[str, dict[int, float]] = {}
    seq = d.get("sum_to_num/sequential", "real_ms")
    if seq:
        pool = d.series(r"sum_to_num/workers:(\d+)/batch:1/concurrency:1", "real_ms") or \
            d.series(r"sum_to_num/workers:(\d+)(?:/.*)?", "real_ms")
        threads = d.series(r"sum_to_num/threads:(\d+)", "real_ms")
        if pool:
            curves["coshard process pool"] = {w: seq / t for w, t in sorted(pool.items())}
        if threads:
            curves["thread pool (io_contexts)"] = {w: seq / t for w, t in sorted(threads.items())}
    py_seq = d.get("python/sum_to_num/sequential", "real_ms")
    py = d.series(r"python/sum_to_num/workers:(\d+)", "real_ms")
    if py_seq and py:
        curves["Python ProcessPoolExecutor"] = {w: py_seq / t for w, t in sorted(py.items())}
    return curves


def plot_sum_to_num(plt, d: Data, extra: list[Data], out_dir: str) -> None:
    curves = speedups(d)
    extra_curves = [(e, speedups(e)) for e in extra]
    if not curves and not any(c for _, c in extra_curves):
        return skip("sum_to_num_speedup.png",
                    ["sum_to_num/sequential + sum_to_num/workers:* (bench_sum_to_num.json) or "
                     "python/sum_to_num/* (python_sum_to_num.json)"])
    styles = {"coshard process pool": ("o", COLORS["coshard"]),
              "thread pool (io_contexts)": ("^", COLORS["threads"]),
              "Python ProcessPoolExecutor": ("s", COLORS["python"])}
    fig, ax = plt.subplots(figsize=(7, 5))
    max_w = 1
    for data, cs, ls in [(d, curves, "-")] + [(e, c, "--") for e, c in extra_curves]:
        for label, pts in cs.items():
            marker, color = styles[label]
            ax.plot(list(pts), list(pts.values()), marker=marker, color=color, ls=ls,
                    label=f"{label} ({data.label})")
            max_w = max(max_w, *pts)
    ax.plot([1, max_w], [1, max_w], color="black", lw=1, alpha=0.5, label="ideal (linear)")
    ax.set_xlabel("workers")
    ax.set_ylabel("speedup over sequential (same language)")
    ax.set_xlim(0.8, max_w + 0.2)
    ax.set_ylim(0, max_w * 1.1)
    if max_w <= 16:
        ax.set_xticks(range(1, max_w + 1))
    titles = [d.title_suffix()] + [e.title_suffix() for e in extra]
    ax.set_title("sum_to_num: speedup vs workers\n" + " | ".join(t for t in titles if t))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    save(plt, fig, out_dir, "sum_to_num_speedup.png")


# ---------------------------------------------------------------------------
# (c) ngram: MB/s bars
# ---------------------------------------------------------------------------

def plot_ngram(plt, d: Data, out_dir: str) -> None:
    bars: list[tuple[str, float, str]] = []
    seq = d.get("ngram/sequential", "bytes_per_second")
    if seq:
        bars.append(("C++\nsequential", seq, COLORS["cpp_seq"]))
    for w, v in sorted(d.series(r"ngram/workers:(\d+)(?:/.*)?", "bytes_per_second").items()):
        bars.append((f"coshard\n{w} worker{'s' if w > 1 else ''}", v, COLORS["coshard"]))
    py_seq = d.get("python/ngram/sequential", "bytes_per_second")
    if py_seq:
        bars.append(("Python\nsequential", py_seq, COLORS["python"]))
    for w, v in sorted(d.series(r"python/ngram/workers:(\d+)", "bytes_per_second").items()):
        bars.append((f"Python pool\n{w} worker{'s' if w > 1 else ''}", v, COLORS["python"]))
    if not bars:
        return skip("ngram_throughput.png",
                    ["ngram/* (bench_ngram.json) and python/ngram/* (python_ngram.json)"])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(bars) + 2), 5))
    labels = [b[0] for b in bars]
    mbs = [b[1] / 1e6 for b in bars]
    rects = ax.bar(range(len(bars)), mbs, color=[b[2] for b in bars])
    ax.set_xticks(range(len(bars)), labels, fontsize=8)
    for r, v in zip(rects, mbs):
        ax.annotate(f"{v:.0f}" if v >= 10 else f"{v:.1f}", (r.get_x() + r.get_width() / 2,
                    r.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("MB/s (input file size / wall time)")
    ax.set_title(f"Ngram map-reduce throughput\n{d.title_suffix()}")
    ax.grid(True, axis="y", alpha=0.3)
    save(plt, fig, out_dir, "ngram_throughput.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results directory (bench_*.json, python_*.json)")
    p.add_argument("--out", default="docs/img", help="directory for the PNG files")
    p.add_argument("--device-results", action="append", default=[], metavar="DIR",
                   help="results from another machine: its sum_to_num curves are added")
    p.add_argument("--device-label", action="append", default=[], metavar="LABEL",
                   help="label of the matching --device-results (default: '<num_cpus>-core')")
    args = p.parse_args()
    if not os.path.isdir(args.results):
        sys.exit(f"plot.py: {args.results} is not a directory")
    plt = import_matplotlib()
    os.makedirs(args.out, exist_ok=True)

    data = Data(args.results)
    extra = []
    for i, directory in enumerate(args.device_results):
        if not os.path.isdir(directory):
            print(f"plot.py: --device-results {directory} is not a directory; ignored")
            continue
        label = args.device_label[i] if i < len(args.device_label) else None
        extra.append(Data(directory, label))

    plot_dispatch(plt, data, args.out)
    plot_sum_to_num(plt, data, extra, args.out)
    plot_ngram(plt, data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
