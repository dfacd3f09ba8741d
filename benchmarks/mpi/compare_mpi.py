#!/usr/bin/env python3
"""The MPI figures of docs/BENCHMARKS.md ("Across MPI ranks"), measured side by
side in one run: coshard's cluster (mpirun -np 3: root + 2 ranks, 1 worker
each) against process_pool with 2 workers, and against mpi4py.futures'
MPIPoolExecutor (root + 2 worker ranks) doing the same work.

Rounds are interleaved (cluster, local, mpi4py, cluster, ...) because this
VM's speed drifts between processes; the ratios are medians of the ratios of
one round. CPU is user + sys of every process of a run (mpirun and what it
waited for: ranks, supervisors, workers), from getrusage(RUSAGE_CHILDREN).

    benchmarks/mpi/compare_mpi.py --build-dir build-release [--rounds 5]
        [--ngram-file /tmp/coshard-ngram-200mb.tsv] [--mpi4py-rounds 3]

Workloads:
  dispatch   map of x*x over 10^7 int64, median of 5 maps per run
             (benchmarks/mpi/mpi_dispatch.cpp; mpi4py: 10^6 items, chunksize 4096)
  ngram      the 200 MB Ngram count (examples/ngram_count; the job's own
             `seconds:`; mpi4py: benchmarks/python/mpi_ngram.py, the articles'
             pipeline with the pool swapped for MPIPoolExecutor)
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
MPIRUN = ["mpirun", "--oversubscribe", "-np", "3"]


def run(cmd):
    """Runs cmd; returns (stdout, CPU seconds of every process it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"compare_mpi.py: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return p.stdout, cpu


def field(text, name):
    m = re.search(rf"\b{name}[=:]\s*([0-9.]+)", text)
    if not m:
        sys.exit(f"compare_mpi.py: no {name} in:\n{text[-2000:]}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--build-dir", default="build-release")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mpi4py-rounds", type=int, default=3, help="rounds that also run mpi4py (slow)")
    ap.add_argument("--ngram-file", default="/tmp/coshard-ngram-200mb.tsv")
    a = ap.parse_args()
    dispatch = os.path.join(a.build_dir, "benchmarks", "mpi_dispatch")
    ngram = os.path.join(a.build_dir, "examples", "ngram_count", "ngram_count")
    py = ["-x", "PYTHONPATH=benchmarks/python", "/usr/bin/python3", "-m", "mpi4py.futures"]
    rows = {k: [] for k in ("d_mpi", "d_local", "d_py", "n_mpi", "n_local", "n_py")}
    cpu = {k: [] for k in rows}
    for r in range(a.rounds):
        out, c = run(MPIRUN + [dispatch, "--mpi", "10000000", "5"])
        rows["d_mpi"].append(field(out, "items_per_s")); cpu["d_mpi"].append(c)
        out, c = run([dispatch, "10000000", "5"])
        rows["d_local"].append(field(out, "items_per_s")); cpu["d_local"].append(c)
        out, c = run(MPIRUN + [ngram, "--mpi", a.ngram_file])
        rows["n_mpi"].append(field(out, "seconds")); cpu["n_mpi"].append(c)
        out, c = run([ngram, "--workers", "2", a.ngram_file])
        rows["n_local"].append(field(out, "seconds")); cpu["n_local"].append(c)
        if r < a.mpi4py_rounds:
            out, c = run(MPIRUN + py + ["benchmarks/python/mpi_dispatch.py", "1000000", "3", "4096"])
            rows["d_py"].append(field(out, "items_per_s")); cpu["d_py"].append(c)
            out, c = run(MPIRUN + py + ["benchmarks/python/mpi_ngram.py", a.ngram_file, "1"])
            rows["n_py"].append(field(out, "median_s")); cpu["n_py"].append(c)
        print(f"round {r + 1}: dispatch {rows['d_mpi'][-1] / 1e6:.0f} / {rows['d_local'][-1] / 1e6:.0f}"
              + (f" / {rows['d_py'][-1] / 1e6:.2f}" if r < a.mpi4py_rounds else "")
              + f" M items/s; ngram {rows['n_mpi'][-1]:.3f} / {rows['n_local'][-1]:.3f}"
              + (f" / {rows['n_py'][-1]:.2f}" if r < a.mpi4py_rounds else "")
              + " s (cluster / local / mpi4py)", flush=True)

    def med(x):
        return statistics.median(x) if x else float("nan")  # nan: mpi4py not run (--mpi4py-rounds 0)

    def paired(a_, b_):
        return med([x / y for x, y in zip(a_, b_)])

    print()
    print("| workload | cluster (3 ranks x 1) | process_pool (2) | mpi4py.futures | cluster / local | cluster / mpi4py |")
    print("|---|---|---|---|---|---|")
    print(f"| trivial dispatch, M items/s | {med(rows['d_mpi']) / 1e6:.0f} ({min(rows['d_mpi']) / 1e6:.0f}-{max(rows['d_mpi']) / 1e6:.0f})"
          f" | {med(rows['d_local']) / 1e6:.0f} ({min(rows['d_local']) / 1e6:.0f}-{max(rows['d_local']) / 1e6:.0f})"
          f" | {med(rows['d_py']) / 1e6:.2f} | {paired(rows['d_mpi'], rows['d_local']):.2f}"
          f" | {paired(rows['d_mpi'], rows['d_py']):.0f}x |")
    print(f"| Ngram count 200 MB, s | {med(rows['n_mpi']):.3f} ({min(rows['n_mpi']):.3f}-{max(rows['n_mpi']):.3f})"
          f" | {med(rows['n_local']):.3f} ({min(rows['n_local']):.3f}-{max(rows['n_local']):.3f})"
          f" | {med(rows['n_py']):.2f} | {paired(rows['n_local'], rows['n_mpi']):.2f}"
          f" | {paired(rows['n_py'], rows['n_mpi']):.0f}x |")
    print()
    print("CPU of every process per whole run (start-up included), median s: "
          + ", ".join(f"{k} {med(v):.2f}" for k, v in cpu.items() if v))


if __name__ == "__main__":
    main()
