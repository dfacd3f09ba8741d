#!/usr/bin/env python3
"""Run coshard's C++ benchmarks and the Python reference scripts, then compare them.

Runs, each writing JSON into --out:
  * the Google Benchmark binaries <build-dir>/benchmarks/bench_{dispatch,sum_to_num,ngram,
    io_fanout,serialization} with --benchmark_out=<out>/<binary>.json
    --benchmark_out_format=json --benchmark_repetitions=R --benchmark_report_aggregates_only=true
  * benchmarks/python/{dispatch,sum_to_num,ngram}.py with --json <out>/python_<name>.json
then reads every *.json in --out (median aggregates; a plain run where there is no
aggregate) and prints one line per target of the issue: the coshard value, the
reference value, their ratio, the target and whether it is met; then informative
ratios and the other benchmarks (io_fanout/*, encode/*, decode/*). The same tables
are written to <out>/summary.md (Markdown, to paste into docs).

A missing binary, script, input file or benchmark is named and skipped; the targets
that need it are shown as "missing".

Usage:
  python3 benchmarks/compare.py [--build-dir build] [--out results] [--only cpp|python]
                                [--skip-run] [--workers N] [--ngram-file PATH]
                                [--repetitions R] [--target-workers 2] [--python EXE]
                                [--cpp-arg ARG]... [--env KEY=VALUE]... [--quick]
  e.g.
  python3 benchmarks/compare.py --build-dir build --out results/
  python3 benchmarks/compare.py --out results/ --skip-run        # just print the tables again

Passed to the C++ binaries through the environment (as bench_dispatch reads them):
  COSHARD_BENCH_WORKERS=N      with --workers N
  COSHARD_NGRAM_FILE=P   with --ngram-file P
Python: --workers N, --input P (ngram), --repetitions R when --repetitions is given
(otherwise each script keeps its own default: 3, and 1 for ngram).

Targets are checked at --target-workers (2, the issue's 2-core machine). The sum_to_num
comparison with Python is in loop iterations/s (items/s * n), as the two sides use
different n; when bench_sum_to_num's JSON has no `n` counter, n is taken from
--env COSHARD_SUM_N=... (or the environment), else the binary's default 5*10^7.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
CPP_BINARIES = ["bench_dispatch", "bench_sum_to_num", "bench_ngram", "bench_io_fanout",
                "bench_serialization"]
PYTHON_SCRIPTS = ["dispatch", "sum_to_num", "ngram"]
DEFAULT_NGRAM_FILE = "/tmp/coshard-ngram-200mb.tsv"
BATCHES = [1, 16, 256, 4096, 131072]
# --quick: sizes for a smoke test of the whole chain (the numbers mean nothing).
QUICK_ENV = {"COSHARD_BENCH_ITEMS": "100000", "COSHARD_BENCH_LAZY_ITEMS": "10000000"}
QUICK_PYTHON_ARGS = {"dispatch": ["--items", "200000", "--small-items", "2000",
                                  "--latency-samples", "200"],
                     "sum_to_num": ["--n", "200000"]}
# n of bench_sum_to_num's items when its JSON has no `n` counter: COSHARD_SUM_N, else this.
CPP_SUM_N_DEFAULT = 5e7
TIME_SCALE_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------

def run_cpp(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """Run each C++ benchmark binary; return the list of problems."""
    problems = []
    bench_dir = os.path.join(args.build_dir, "benchmarks")
    reps = args.repetitions or 3
    for binary in CPP_BINARIES:
        exe = os.path.join(bench_dir, binary)
        out_json = os.path.join(args.out, f"{binary}.json")
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            problems.append(f"C++ binary {exe} is missing (build it: "
                            f"cmake --build {args.build_dir} --target {binary})")
            print(f"!! skipping {binary}: {exe} not found", flush=True)
            continue
        cmd = [exe, "--benchmark_format=console", f"--benchmark_out={out_json}",
               "--benchmark_out_format=json", f"--benchmark_repetitions={reps}",
               "--benchmark_report_aggregates_only=true", *args.cpp_arg]
        if os.path.exists(out_json):
            os.remove(out_json)  # never read a stale file after a failed run
        rc = _run(cmd, env)
        if rc != 0:
            problems.append(f"{binary} exited with status {rc}")
    return problems


def run_python(args: argparse.Namespace) -> list[str]:
    """Run each Python reference script; return the list of problems."""
    problems = []
    ngram_file = args.ngram_file or DEFAULT_NGRAM_FILE
    for name in PYTHON_SCRIPTS:
        script = os.path.join(HERE, "python", f"{name}.py")
        out_json = os.path.join(args.out, f"python_{name}.json")
        cmd = [args.python, script, "--json", out_json]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        if args.repetitions:
            cmd += ["--repetitions", str(args.repetitions)]
        if args.quick:
            cmd += QUICK_PYTHON_ARGS.get(name, [])
        if name == "ngram":
            if not os.path.isfile(ngram_file):
                msg = (f"ngram input {ngram_file} is missing: generate it with "
                       f"{os.path.join(args.build_dir, 'examples/ngram_count/ngram_count')} "
                       f"--generate {ngram_file} --size-mb 200 (or pass --ngram-file)")
                problems.append(msg)
                print(f"!! skipping python/ngram: {msg}", flush=True)
                continue
            cmd += ["--input", ngram_file]
            if not args.workers:  # else it would run at os.cpu_count() only
                cmd += ["--workers", str(args.target_workers)]
        if os.path.exists(out_json):
            os.remove(out_json)
        rc = _run(cmd, None)
        if rc != 0:
            problems.append(f"python {name}.py exited with status {rc}")
    return problems


def _run(cmd: list[str], env: dict[str, str] | None) -> int:
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    try:
        return subprocess.run(cmd, env=env).returncode
    except OSError as e:
        print(f"!! cannot run {cmd[0]}: {e}", flush=True)
        return 127


# ---------------------------------------------------------------------------
# Loading Google-Benchmark-style JSON
# ---------------------------------------------------------------------------

# The issue asks for Debian's python3; a pyenv or venv python3 may come first
# on PATH.
DEFAULT_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

_DROP_SEGMENT = re.compile(r"^(min_time|min_warmup_time|iterations|repeats):")
_DROP_LAST = {"real_time", "manual_time", "process_time"}
_AGG_SUFFIX = re.compile(r"_(mean|median|stddev|cv|min|max|BigO|RMS)$")


def base_name(entry: dict) -> str:
    """'map/x*x/batch:16/min_time:0.500/real_time_median' -> 'map/x*x/batch:16'."""
    name = entry.get("run_name") or entry.get("name", "")
    if not entry.get("run_name") and entry.get("run_type") == "aggregate":
        name = _AGG_SUFFIX.sub("", name)
    segments = [s for s in name.split("/") if not _DROP_SEGMENT.match(s)]
    while len(segments) > 1 and segments[-1] in _DROP_LAST:
        segments.pop()
    return _dispatch_alias("/".join(segments))


_DISPATCH_POOL = re.compile(r"^map/x\*x/workers:\d+/batch:(\w+)/concurrency:\d+$")


def _dispatch_alias(name: str) -> str:
    """bench_dispatch's cases come from coshard::bench::register_map, named
    'map/x*x/workers:W/batch:B/concurrency:C' and 'map/x*x/sequential'; the
    tables use the short forms 'map/x*x/batch:B', 'map/x*x/adaptive' and
    'sequential/x*x'."""
    if name == "map/x*x/sequential":
        return "sequential/x*x"
    if m := _DISPATCH_POOL.match(name):
        return "map/x*x/adaptive" if m.group(1) == "adaptive" else f"map/x*x/batch:{m.group(1)}"
    return name


@dataclass
class Result:
    name: str
    source: str  # file stem, e.g. bench_dispatch or python_dispatch
    entry: dict

    @property
    def real_ms(self) -> float:
        return self.entry["real_time"] * TIME_SCALE_TO_MS.get(self.entry.get("time_unit", "ns"), 1e-6)

    def field(self, key: str) -> float | None:
        """A counter, or "real_ms" for the wall time in milliseconds."""
        return self.real_ms if key == "real_ms" else self.get(key)

    def get(self, key: str) -> float | None:
        v = self.entry.get(key)
        if v is None and isinstance(self.entry.get("counters"), dict):
            v = self.entry["counters"].get(key)
        return float(v) if isinstance(v, (int, float)) else None


def load_results(out_dir: str) -> tuple[dict[str, Result], dict[str, dict], list[str]]:
    """All *.json in out_dir -> (name -> Result, source -> context, problems)."""
    results: dict[str, Result] = {}
    contexts: dict[str, dict] = {}
    problems: list[str] = []
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        source = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            entries = doc["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"cannot read {path}: {e}")
            continue
        contexts[source] = doc.get("context", {})
        medians: dict[str, dict] = {}
        plain: dict[str, list[dict]] = {}
        for e in entries:
            if e.get("error_occurred"):
                problems.append(f"{source}: {e.get('name')} reported an error: "
                                f"{e.get('error_message', '')}")
                continue
            n = base_name(e)
            if e.get("run_type") == "aggregate":
                if e.get("aggregate_name") == "median":
                    medians[n] = e
            else:
                plain.setdefault(n, []).append(e)
        for n, runs in plain.items():
            if n not in medians:  # no aggregate: the plain run (the median one if several)
                med = statistics.median_low([r["real_time"] for r in runs])
                medians[n] = next(r for r in runs if r["real_time"] == med)
        for n, e in medians.items():
            results[n] = Result(n, source, e)
    return results, contexts, problems


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------

def si(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    for p, s in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= s:
            return f"{v / s:.3g}{p}{unit}"
    return f"{v:.3g}{unit}"


def fmt_ips(v): return si(v, " items/s")
def fmt_mbs(v): return "-" if v is None else f"{v / 1e6:.1f} MB/s"
def fmt_ms(v):
    if v is None:
        return "-"
    for unit, scale in (("s", 1e3), ("ms", 1.0), ("us", 1e-3)):
        if abs(v) >= scale:
            return f"{v / scale:.4g} {unit}"
    return f"{v * 1e6:.4g} ns"


def fmt_us(v): return fmt_ms(None if v is None else v / 1e3)
def fmt_x(v): return "-" if v is None else f"{v:.3g}x"
def fmt_mb(v): return "-" if v is None else f"{v:.3g} MB"


@dataclass
class Row:
    label: str
    coshard: str
    reference: str
    ratio: str
    target: str
    met: str  # "yes" / "NO" / "missing" / "" (informative)


SOURCE_OF_PREFIX = [
    ("python/dispatch/", "benchmarks/python/dispatch.py"),
    ("python/latency/", "benchmarks/python/dispatch.py"),
    ("python/submit/", "benchmarks/python/dispatch.py"),
    ("python/sum_to_num/", "benchmarks/python/sum_to_num.py"),
    ("python/ngram/", "benchmarks/python/ngram.py"),
    ("sum_to_num/", "bench_sum_to_num"),
    ("ngram/", "bench_ngram"),
    ("io_fanout/", "bench_io_fanout"),
    ("encode/", "bench_serialization"),
    ("decode/", "bench_serialization"),
    ("", "bench_dispatch"),
]


def where(name: str) -> str:
    return next(src for prefix, src in SOURCE_OF_PREFIX if name.startswith(prefix))


class Table:
    """Builds the target / informative rows from the loaded results."""

    def __init__(self, results: dict[str, Result], target_workers: int,
                 cpp_sum_n: tuple[float, str] = (CPP_SUM_N_DEFAULT, "bench_sum_to_num's default")):
        self.r = results
        self.w = target_workers
        self.cpp_sum_n = cpp_sum_n  # (n, where it comes from) when the JSON has no n counter
        self.targets: list[Row] = []
        self.info: list[Row] = []
        self.missing: set[str] = set()

    # -- lookups ---------------------------------------------------------------
    def find(self, name: str, prefix: str | None = None) -> Result | None:
        """The exact name, else (with prefix) the first name that is prefix or starts with
        prefix + '/' (e.g. another batch/concurrency setting); records name as missing."""
        if name in self.r:
            return self.r[name]
        if prefix:
            hits = sorted(n for n in self.r if n == prefix or n.startswith(prefix + "/"))
            if hits:
                return self.r[hits[0]]
        self.missing.add(name)
        return None

    def value(self, name: str, field: str, prefix: str | None = None) -> float | None:
        res = self.find(name, prefix)
        if res is None:
            return None
        v = res.field(field)
        if v is None:
            self.missing.add(f"{name} (field {field})")
        return v

    def add(self, target: bool, label: str, c, ref, ratio, fmt_c, fmt_r, goal: str = "",
            ok=None, needed: list[str] | None = None) -> None:
        if ratio is None and (c is None or ref is None) and needed:
            met = "missing" if target else ""
            miss = [n for n in needed if any(self._covers(n, m) for m in self.missing)]
            label = label + (f" [missing: {', '.join(miss)}]" if miss else "")
        else:
            met = "" if ok is None else ("yes" if ok else "NO")
        row = Row(label, fmt_c(c), fmt_r(ref), fmt_x(ratio), goal, met)
        (self.targets if target else self.info).append(row)

    @staticmethod
    def _covers(needed: str, missing: str) -> bool:
        """Does the missing name belong to the needed one ('x' covers 'x' and 'x/...';
        'x*' covers every name starting with 'x')?"""
        if needed.endswith("*"):
            return missing.startswith(needed[:-1])
        return missing == needed or missing.startswith(needed + "/")

    @staticmethod
    def div(a, b):
        return a / b if a is not None and b else None

    # -- the targets ---------------------------------------------------
    def build(self) -> None:
        self.dispatch()
        self.latency()
        self.submit()
        self.sum_to_num()
        self.ngram()
        self.lazy()

    def dispatch(self) -> None:
        adaptive = self.value("map/x*x/adaptive", "items_per_second")
        raws = {b: self.value(f"raw/socketpair/batch:{b}", "items_per_second") for b in BATCHES}
        maps = {b: self.value(f"map/x*x/batch:{b}", "items_per_second") for b in BATCHES}
        best_b, best_raw = max(((b, v) for b, v in raws.items() if v is not None),
                               key=lambda bv: bv[1], default=(None, None))
        ratio = self.div(adaptive, best_raw)
        self.add(True, f"1. adaptive map vs best raw socketpair"
                       f"{f' (batch:{best_b})' if best_b else ''}, items/s",
                 adaptive, best_raw, ratio, fmt_ips, fmt_ips, ">= 0.25x",
                 ratio is not None and ratio >= 0.25,
                 ["map/x*x/adaptive", "raw/socketpair/batch:*"])
        ratio = self.div(maps[4096], raws[4096])
        self.add(True, "1. map batch:4096 vs raw socketpair batch:4096, items/s",
                 maps[4096], raws[4096], ratio, fmt_ips, fmt_ips, ">= 0.25x",
                 ratio is not None and ratio >= 0.25,
                 ["map/x*x/batch:4096", "raw/socketpair/batch:4096"])
        py_map = self.value("python/dispatch/executor.map/chunksize:4096", "items_per_second")
        ratio = self.div(adaptive, py_map)
        self.add(True, "2. adaptive map vs Python executor.map chunksize 4096, items/s",
                 adaptive, py_map, ratio, fmt_ips, fmt_ips, ">= 20x",
                 ratio is not None and ratio >= 20,
                 ["map/x*x/adaptive", "python/dispatch/executor.map/chunksize:4096"])
        # informative
        for b in BATCHES:
            self.add(False, f"map batch:{b} vs raw socketpair batch:{b}, items/s", maps[b],
                     raws[b], self.div(maps[b], raws[b]), fmt_ips, fmt_ips,
                     needed=[f"map/x*x/batch:{b}", f"raw/socketpair/batch:{b}"])
        py_batch = self.value("python/dispatch/run_in_executor+gather/batch:4096",
                              "items_per_second")
        self.add(False, "adaptive map vs Python run_in_executor+gather batch:4096, items/s",
                 adaptive, py_batch, self.div(adaptive, py_batch), fmt_ips, fmt_ips,
                 needed=["map/x*x/adaptive", "python/dispatch/run_in_executor+gather/batch:4096"])
        for py_name, label in (("python/dispatch/run_in_executor+gather/one_item",
                                "run_in_executor+gather one_item"),
                               ("python/dispatch/executor.map/chunksize:1",
                                "executor.map chunksize 1")):
            py = self.value(py_name, "items_per_second")
            self.add(False, f"map batch:1 vs Python {label}, items/s", maps[1], py,
                     self.div(maps[1], py), fmt_ips, fmt_ips,
                     needed=["map/x*x/batch:1", py_name])

    def latency(self) -> None:
        for q, goal in (("p50", 20.0), ("p99", None)):
            c = self.value("latency/one_item", f"{q}_us")
            py = self.value("python/latency/one_item", f"{q}_us")
            ratio = self.div(py, c)  # how many times faster coshard's round trip is
            if goal is not None:
                self.add(True, f"3. one-item round trip {q} (ratio: Python / coshard)", c, py,
                         ratio, fmt_us, fmt_us, f"< {goal:g} us", c is not None and c < goal,
                         ["latency/one_item"])
                if c is not None and py is None:  # the target itself needs only coshard
                    self.targets[-1].met = "yes" if c < goal else "NO"
            else:
                self.add(False, f"one-item round trip {q} (ratio: Python / coshard)", c, py,
                         ratio, fmt_us, fmt_us,
                         needed=["latency/one_item", "python/latency/one_item"])

    def submit(self) -> None:
        """async_submit from 1000 coroutines (issue 10): >= 1M tasks/s, >= 50x Python's
        ProcessPoolExecutor.submit awaited through asyncio.wrap_future (and loky, for
        information); one task alone within 1.3x of the bare socketpair round trip."""
        c = self.value("submit/coroutines:1000/each:1000", "items_per_second", prefix="submit/coroutines:1000")
        self.add(True, "submit: 1000 coroutines awaiting async_submit, tasks/s", c, None, None,
                 fmt_ips, fmt_ips, ">= 1M/s", c is not None and c >= 1e6, ["submit/coroutines:1000/each:1000"])
        if c is not None:
            self.targets[-1].met = "yes" if c >= 1e6 else "NO"
        py_names = sorted(n for n in self.r if n.startswith("python/submit/coroutines:"))
        py = self.value(py_names[0], "items_per_second") if py_names else None
        ratio = self.div(c, py)
        self.add(True, "submit vs Python ProcessPoolExecutor.submit + wrap_future, tasks/s", c, py, ratio,
                 fmt_ips, fmt_ips, ">= 50x", ratio is not None and ratio >= 50,
                 ["submit/coroutines:1000/each:1000", "python/submit/coroutines:*"])
        loky_names = sorted(n for n in self.r if n.startswith("python/submit/loky/"))
        loky = self.value(loky_names[0], "items_per_second") if loky_names else None
        self.add(False, "submit vs Python loky executor.submit + wrap_future, tasks/s", c, loky,
                 self.div(c, loky), fmt_ips, fmt_ips, needed=["python/submit/loky/*"])
        one = self.value("submit/latency/one_task", "p50_us")
        raw = self.value("raw/socketpair/latency", "p50_us")
        ratio = self.div(one, raw)
        self.add(True, "one async_submit alone, p50 round trip vs bare socketpair", one, raw, ratio,
                 fmt_us, fmt_us, "<= 1.3x", ratio is not None and ratio <= 1.3,
                 ["submit/latency/one_task", "raw/socketpair/latency"])

    def sum_to_num(self) -> None:
        w = self.w
        seq = self.value("sum_to_num/sequential", "real_ms")
        pool_name = f"sum_to_num/workers:{w}/batch:1/concurrency:1"
        pool = self.value(pool_name, "real_ms", prefix=f"sum_to_num/workers:{w}")
        speedup = self.div(seq, pool)
        self.add(True, f"4. sum_to_num speedup, {w} workers vs sequential (pass time)", pool,
                 seq, speedup, fmt_ms, fmt_ms, f">= 1.9x", speedup is not None and speedup >= 1.9,
                 ["sum_to_num/sequential", f"sum_to_num/workers:{w}"])
        # process pool vs thread pool at every worker count where both exist
        counts = sorted({int(m.group(1)) for n in self.r
                         if (m := re.match(r"sum_to_num/threads:(\d+)$", n))} | {w})
        for k in counts:
            p = self.find(f"sum_to_num/workers:{k}/batch:1/concurrency:1",
                          prefix=f"sum_to_num/workers:{k}")
            t = self.find(f"sum_to_num/threads:{k}")
            pt, tt = (p.real_ms if p else None), (t.real_ms if t else None)
            ratio = self.div(tt, pt)
            label = f"process pool vs thread pool, {k} workers (threads/pool time)"
            self.add(k == w, f"4. {label}" if k == w else label,
                     pt, tt, ratio, fmt_ms, fmt_ms, ">= 0.95x", ratio is not None and ratio >= 0.95,
                     [f"sum_to_num/workers:{k}", f"sum_to_num/threads:{k}"])
        # coshard vs Python, same worker count (items/s, so a different K does not matter)
        c_ips = self.value(pool_name, "items_per_second", prefix=f"sum_to_num/workers:{w}")
        py_ips = self.value(f"python/sum_to_num/workers:{w}", "items_per_second")
        # items/s compare only for the same n; with n known on both sides compare loop
        # iterations per second (items/s * n) instead, which holds for any n.
        # bench_sum_to_num may not report n: then it is COSHARD_SUM_N, or its default.
        cn = self._counter(f"sum_to_num/workers:{w}", "n")
        n_note = ""
        if not cn:
            cn, n_note = self.cpp_sum_n
        pn = self._counter(f"python/sum_to_num/workers:{w}", "n")
        if cn and pn and c_ips is not None and py_ips is not None:
            c_ips, py_ips = c_ips * cn, py_ips * pn
            label = f"sum_to_num {w} workers: coshard vs Python, loop iterations/s"
            if n_note:
                label += f" (C++ n = {cn:.3g}, {n_note})"
            fmt = lambda v: si(v, " it/s")
        else:
            label = f"sum_to_num {w} workers: coshard vs Python, items/s"
            fmt = fmt_ips
        self.add(False, label, c_ips, py_ips, self.div(c_ips, py_ips), fmt, fmt,
                 needed=[f"sum_to_num/workers:{w}", f"python/sum_to_num/workers:{w}"])
        py_seq = self.value("python/sum_to_num/sequential", "real_ms")
        py_pool = self.value(f"python/sum_to_num/workers:{w}", "real_ms")
        self.add(False, f"Python sum_to_num speedup, {w} workers vs sequential", py_pool, py_seq,
                 self.div(py_seq, py_pool), fmt_ms, fmt_ms,
                 needed=["python/sum_to_num/sequential", f"python/sum_to_num/workers:{w}"])

    def _counter(self, name: str, key: str) -> float | None:
        res = self.r.get(name) or next((self.r[n] for n in sorted(self.r)
                                        if n.startswith(name + "/")), None)
        return res.get(key) if res else None

    def ngram(self) -> None:
        w = self.w
        seq = self.value("ngram/sequential", "bytes_per_second")
        exact = f"ngram/workers:{w}/batch:1/concurrency:64"
        pool = self.value(exact, "bytes_per_second", prefix=f"ngram/workers:{w}")
        py = self.value(f"python/ngram/workers:{w}", "bytes_per_second")
        ratio = self.div(pool, seq)
        self.add(True, f"5. ngram {w} workers vs C++ ngram/sequential, bytes/s", pool, seq, ratio,
                 fmt_mbs, fmt_mbs, ">= 1.8x", ratio is not None and ratio >= 1.8,
                 ["ngram/sequential", f"ngram/workers:{w}"])
        ratio = self.div(pool, py)
        self.add(True, f"5. ngram {w} workers vs Python ngram {w} workers, bytes/s", pool, py,
                 ratio, fmt_mbs, fmt_mbs, ">= 15x", ratio is not None and ratio >= 15,
                 [f"ngram/workers:{w}", f"python/ngram/workers:{w}"])
        py_seq = self.value("python/ngram/sequential", "bytes_per_second")
        self.add(False, "ngram sequential: C++ vs Python, bytes/s", seq, py_seq,
                 self.div(seq, py_seq), fmt_mbs, fmt_mbs,
                 needed=["ngram/sequential", "python/ngram/sequential"])
        self.add(False, f"Python ngram {w} workers vs Python sequential, bytes/s", py, py_seq,
                 self.div(py, py_seq), fmt_mbs, fmt_mbs,
                 needed=[f"python/ngram/workers:{w}", "python/ngram/sequential"])

    def lazy(self) -> None:
        growth = self.value("map_reduce/lazy_iota", "parent_peak_growth_MB")
        items = self.r["map_reduce/lazy_iota"].get("items") if "map_reduce/lazy_iota" in self.r \
            else None
        label = "6. lazy map_reduce, parent peak RSS growth"
        if items is not None and items < 1e9:
            label += f" (ran {items:.3g} items; the target is for 1e9)"
        self.add(True, label, growth, None, None, fmt_mb, lambda _: "-", "< 100 MB",
                 growth is not None and growth < 100, ["map_reduce/lazy_iota"])
        self.targets[-1].met = ("missing" if growth is None else
                                "yes" if growth < 100 else "NO")

    # -- other benchmarks ------------------------------------------------------
    def others(self) -> list[tuple[str, str, str]]:
        rows = []
        for n in sorted(self.r):
            res = self.r[n]
            if n.startswith("io_fanout/"):
                rows.append((n, fmt_ips(res.get("items_per_second")), fmt_ms(res.real_ms)))
            elif n.startswith(("encode/", "decode/")):
                rows.append((n, fmt_mbs(res.get("bytes_per_second")), fmt_ms(res.real_ms)))
        return rows


# ---------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------

HEAD = ("target line", "coshard", "reference", "ratio", "target", "met")


def console_table(rows: list[Row], with_target: bool) -> str:
    if with_target:
        return plain_table(HEAD, [(r.label, r.coshard, r.reference, r.ratio, r.target, r.met)
                                  for r in rows])
    return plain_table(("informative", "coshard", "reference", "ratio"),
                       [(r.label, r.coshard, r.reference, r.ratio) for r in rows])


def plain_table(head: tuple[str, ...], cols: list[tuple[str, ...]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *cols)]
    line = lambda c: "  ".join(x.ljust(wd) if i == 0 else x.rjust(wd)
                               for i, (x, wd) in enumerate(zip(c, widths))).rstrip()
    return "\n".join([line(head), "  ".join("-" * wd for wd in widths)] + [line(c) for c in cols])


def md_table(head: tuple[str, ...], cols: list[tuple[str, ...]]) -> str:
    esc = lambda s: (s.replace("|", "\\|").replace("*", "\\*")
                     .replace("<", "&lt;").replace(">", "&gt;"))
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(esc(x) for x in c) + " |" for c in cols]
    return "\n".join(out)


def machine_line(contexts: dict[str, dict]) -> str:
    parts = []
    machines: dict[str, list[str]] = {}
    for source, ctx in sorted(contexts.items()):
        machine = f"host {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} cpus"
        label = source + (f" (python {ctx['python_version']})" if ctx.get("python_version") else "")
        machines.setdefault(machine, []).append(label)
    for machine, sources in machines.items():
        parts.append(f"{machine}: {', '.join(sources)}")
    if len(machines) > 1:
        parts.append("WARNING: the results come from different machines")
    return "; ".join(parts)


def worker_mismatch(results: dict[str, Result], contexts: dict[str, dict]) -> list[str]:
    """Warn when the C++ and the Python dispatch ran with different worker counts."""
    cpp = results.get("map/x*x/adaptive")
    cpp_w = cpp.get("workers") if cpp else None
    py_w = contexts.get("python_dispatch", {}).get("workers")
    if cpp_w and py_w and int(cpp_w) != int(py_w):
        return [f"dispatch: C++ ran with {int(cpp_w)} workers, Python with {int(py_w)}"]
    return []


def report(args: argparse.Namespace, problems: list[str]) -> int:
    results, contexts, load_problems = load_results(args.out)
    problems = problems + load_problems
    if not results:
        problems.append(f"no benchmark results in {args.out}")
    env_n = dict(kv.partition("=")[::2] for kv in args.env).get("COSHARD_SUM_N") or \
        os.environ.get("COSHARD_SUM_N")
    cpp_sum_n = ((float(env_n), "COSHARD_SUM_N") if env_n else
                 (CPP_SUM_N_DEFAULT, "bench_sum_to_num's default COSHARD_SUM_N"))
    table = Table(results, args.target_workers, cpp_sum_n)
    table.build()
    present = {os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(args.out, "*.json"))}
    expected = ([] if args.only == "python" else CPP_BINARIES) + \
               ([] if args.only == "cpp" else [f"python_{s}" for s in PYTHON_SCRIPTS])
    for src in expected:
        if src not in present:
            problems.append(f"no results file {os.path.join(args.out, src + '.json')}")
    missing = sorted(table.missing)
    problems += worker_mismatch(results, contexts)

    print("\n" + "=" * 100)
    print(f"Results in {args.out}  ({machine_line(contexts)})\n")
    print(console_table(table.targets, True))
    print()
    print(console_table(table.info, False))
    others = table.others()
    if others:
        print()
        print(plain_table(("other benchmarks", "throughput", "time"), others))
    if missing:
        print("\nmissing benchmarks (skipped):")
        for m in missing:
            print(f"  - {m}  (from {where(m)})")
    if problems:
        print("\nproblems:")
        for p in problems:
            print(f"  - {p}")

    met = sum(r.met == "yes" for r in table.targets)
    failed = sum(r.met == "NO" for r in table.targets)
    absent = sum(r.met == "missing" for r in table.targets)
    print(f"\ntargets: {met} met, {failed} not met, {absent} missing")

    md = [f"# coshard benchmark summary\n", f"Machine: {machine_line(contexts)}\n",
          "## Targets\n",
          md_table(HEAD, [(r.label, r.coshard, r.reference, r.ratio, r.target, r.met)
                          for r in table.targets]),
          f"\nTargets: {met} met, {failed} not met, {absent} missing.\n",
          "## Informative ratios\n",
          md_table(("comparison", "coshard", "reference", "ratio"),
                   [(r.label, r.coshard, r.reference, r.ratio) for r in table.info])]
    if others:
        md += ["\n## Other benchmarks\n", md_table(("benchmark", "throughput", "time"), others)]
    if missing:
        md += ["\n## Missing\n"] + [f"- `{m}` (from {where(m)})" for m in missing]
    md_path = os.path.join(args.out, "summary.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {md_path}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--build-dir", default="build", help="CMake build directory")
    p.add_argument("--out", default="results", help="directory for the JSON and summary.md")
    p.add_argument("--only", choices=["cpp", "python"], help="run only one side")
    p.add_argument("--skip-run", action="store_true",
                   help="run nothing; read the JSON already in --out and print")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for both sides (default: each side's own default)")
    p.add_argument("--target-workers", type=int, default=2,
                   help="worker count the targets are checked at (the issue's 2-core machine)")
    p.add_argument("--ngram-file", default=None,
                   help=f"1-gram TSV input for the ngram benchmarks (default {DEFAULT_NGRAM_FILE})")
    p.add_argument("--repetitions", type=int, default=None,
                   help="repetitions (C++ default 3; Python scripts keep their own default)")
    p.add_argument("--python", default=DEFAULT_PYTHON, help="interpreter for the Python scripts")
    p.add_argument("--cpp-arg", action="append", default=[],
                   help="extra argument for every C++ binary, e.g. --cpp-arg=--benchmark_filter=map")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable for the C++ binaries")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: small sizes on both sides (numbers not meaningful)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    problems: list[str] = []
    if not args.skip_run:
        env = dict(os.environ)
        if args.workers:
            env["COSHARD_BENCH_WORKERS"] = str(args.workers)
        if args.ngram_file:
            env["COSHARD_NGRAM_FILE"] = args.ngram_file
        if args.quick:
            env.update(QUICK_ENV)
        for kv in args.env:
            k, sep, v = kv.partition("=")
            if not sep:
                p.error(f"--env {kv}: expected KEY=VALUE")
            env[k] = v
        if args.only != "python":
            problems += run_cpp(args, env)
        if args.only != "cpp":
            problems += run_python(args)
    return report(args, problems)


if __name__ == "__main__":
    sys.exit(main())
