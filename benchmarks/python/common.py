"""Shared helpers for the Python reference benchmarks (dispatch.py, sum_to_num.py, ngram.py).

Not a benchmark itself. It provides:

* ``base_parser``  - the options every script takes (--workers, --repetitions, --json);
* ``Measurement``  - one repetition of one benchmark: a wall time plus counters;
* ``Reporter``     - collects repetitions, prints one readable line per benchmark and
  writes a JSON file shaped like Google Benchmark's ``--benchmark_out_format=json``
  output (``context`` + ``benchmarks`` with ``run_type: aggregate`` entries), so that
  ``benchmarks/compare.py`` and ``benchmarks/plot.py`` read the C++ and the Python
  results the same way.

Only the Python 3.11 standard library is used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field


def base_parser(description: str, default_repetitions: int = 3) -> argparse.ArgumentParser:
    """An ArgumentParser with the options shared by all Python benchmark scripts."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="worker processes in the ProcessPoolExecutor (default: os.cpu_count())",
    )
    parser.add_argument(
        "--repetitions", type=int, default=default_repetitions,
        help="how many times each measurement runs; the median is reported",
    )
    parser.add_argument(
        "--json", metavar="FILE", default=None,
        help="also write the results to FILE as Google-Benchmark-style JSON",
    )
    return parser


def _cpu_mhz() -> float | None:
    """The first 'cpu MHz' line of /proc/cpuinfo, if there is one (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("cpu mhz"):
                    return round(float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    return None


def machine_context(script: str, extra: dict | None = None) -> dict:
    """The JSON ``context`` block: the fields Google Benchmark writes that Python can know,
    plus the interpreter's identity."""
    ctx: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_name": socket.gethostname(),
        "executable": script,
        "num_cpus": os.cpu_count(),
    }
    mhz = _cpu_mhz()
    if mhz is not None:
        ctx["mhz_per_cpu"] = mhz
    try:
        ctx["load_avg"] = [round(x, 3) for x in os.getloadavg()]
    except OSError:
        pass
    ctx.update({
        "library_build_type": "release",  # CPython has no debug/release split here
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
    })
    if extra:
        ctx.update(extra)
    return ctx


@dataclass
class Measurement:
    """One repetition: wall seconds, parent-process CPU seconds and rate/other counters.

    ``items`` / ``bytes`` turn into ``items_per_second`` / ``bytes_per_second``;
    ``counters`` are copied as they are (e.g. ``p50_us``, ``words``).
    """

    seconds: float
    cpu_seconds: float = 0.0
    items: float | None = None
    bytes: float | None = None
    counters: dict[str, float] = field(default_factory=dict)

    def fields(self, time_unit: str) -> dict[str, float]:
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[time_unit]
        out = {"real_time": self.seconds * scale, "cpu_time": self.cpu_seconds * scale}
        if self.items is not None:
            out["items_per_second"] = self.items / self.seconds
        if self.bytes is not None:
            out["bytes_per_second"] = self.bytes / self.seconds
        out.update(self.counters)
        return out


class Timer:
    """``with Timer() as t: ...`` -> ``t.seconds`` (perf_counter) and ``t.cpu_seconds``
    (process_time of this, the parent, process only)."""

    def __enter__(self) -> "Timer":
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._cpu0


def _si(value: float) -> str:
    """1234567 -> '1.23M' (Google Benchmark's console style)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


class Reporter:
    """Collects the repetitions of each benchmark; prints and writes the medians."""

    AGGREGATES = ("mean", "median", "stddev", "cv")

    def __init__(self, script: str, args: argparse.Namespace, context_extra: dict | None = None):
        self.script = script
        self.args = args
        self.context = machine_context(script, context_extra)
        self.entries: list[dict] = []

    def add(self, name: str, runs: list[Measurement], time_unit: str = "ms",
            note: str = "") -> dict:
        """Record the repetitions of benchmark ``name``; print its median line; return the
        median fields (real_time, items_per_second, counters...)."""
        if not runs:
            raise ValueError(f"{name}: no runs")
        per_run = [r.fields(time_unit) for r in runs]
        keys = list(per_run[0])
        family = len({e["run_name"] for e in self.entries})
        stats: dict[str, dict[str, float]] = {}
        for agg in self.AGGREGATES:
            if len(runs) < 2 and agg in ("stddev", "cv"):
                continue
            vals = {}
            for k in keys:
                xs = [f[k] for f in per_run]
                if agg == "mean":
                    vals[k] = statistics.fmean(xs)
                elif agg == "median":
                    vals[k] = statistics.median(xs)
                elif agg == "stddev":
                    vals[k] = statistics.stdev(xs)
                else:
                    m = statistics.fmean(xs)
                    vals[k] = statistics.stdev(xs) / m if m else 0.0
            stats[agg] = vals
            entry = {
                "name": f"{name}_{agg}",
                "family_index": family,
                "per_family_instance_index": 0,
                "run_name": name,
                "run_type": "aggregate",
                "repetitions": len(runs),
                "threads": 1,
                "aggregate_name": agg,
                "aggregate_unit": "percentage" if agg == "cv" else "time",
                "iterations": len(runs),
                "time_unit": time_unit,
            }
            entry.update(vals)
            self.entries.append(entry)
        med = stats["median"]
        self._print_line(name, med, stats.get("cv"), len(runs), time_unit, note)
        return med

    @staticmethod
    def _print_line(name, med, cv, reps, unit, note) -> None:
        parts = [f"{name:<52}", f"{med['real_time']:>11.3f} {unit}"]
        if "items_per_second" in med:
            parts.append(f"{_si(med['items_per_second']):>8} items/s")
        if "bytes_per_second" in med:
            parts.append(f"{med['bytes_per_second'] / 1e6:>8.1f} MB/s")
        for k, v in med.items():
            if k in ("real_time", "cpu_time", "items_per_second", "bytes_per_second"):
                continue
            parts.append(f"{k}={v:.4g}")
        spread = f"cv {cv['real_time'] * 100:.1f}%" if cv else ""
        parts.append(f"(median of {reps}{', ' + spread if spread else ''})")
        if note:
            parts.append(note)
        print("  ".join(parts), flush=True)

    def write(self) -> None:
        """Write the JSON file if --json was given."""
        path = getattr(self.args, "json", None)
        if not path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        doc = {"context": self.context, "benchmarks": self.entries}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"wrote {path}", flush=True)


def print_header(title: str, args: argparse.Namespace, **settings) -> None:
    """One line saying what runs, on which interpreter and how many workers."""
    opts = " ".join(f"{k}={v}" for k, v in settings.items())
    print(f"# {title}: python {platform.python_version()} ({sys.executable}), "
          f"{os.cpu_count()} cpus, workers={args.workers}, repetitions={args.repetitions}"
          f"{' ' + opts if opts else ''}", flush=True)
