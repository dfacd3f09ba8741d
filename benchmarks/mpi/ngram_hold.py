#!/usr/bin/env python3
"""The Ngram count on a cluster with reduce partials held in the workers or
not (ngram_count --hold-partials auto|on|off, job_options::hold_partials),
against the local pool, interleaved rounds; docs/BENCHMARKS.md, "Across MPI
ranks". Ratios are medians of one round's local time / cluster time.

    benchmarks/mpi/ngram_hold.py --build-dir build-release [--rounds 10]
        [--ngram-file /tmp/coshard-ngram-200mb.tsv]

(scripts/compare-mpi.sh builds build-release/ and the file.)
"""
import argparse
import os
import statistics

from compare_mpi import MPIRUN, field, run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--build-dir", default="build-release")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--ngram-file", default="/tmp/coshard-ngram-200mb.tsv")
    a = ap.parse_args()
    ngram = os.path.join(a.build_dir, "examples", "ngram_count", "ngram_count")
    runs = {hold: MPIRUN + [ngram, "--mpi", "--hold-partials", hold, a.ngram_file] for hold in ("auto", "on", "off")}
    runs["local"] = [ngram, "--workers", "2", a.ngram_file]
    seconds = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, cmd in runs.items():
            out, c = run(cmd)
            seconds[k].append(field(out, "seconds"))
            cpu[k].append(c)
    print("| run | seconds (median, range) | CPU of every process, s | local / this (median of paired ratios) |")
    print("|---|---|---|---|")
    for k in runs:
        ratio = statistics.median(l / x for x, l in zip(seconds[k], seconds["local"]))
        name = "process_pool, 2 workers" if k == "local" else f"cluster 3 x 1, --hold-partials {k}"
        print(f"| {name} | {statistics.median(seconds[k]):.3f} ({min(seconds[k]):.3f}-{max(seconds[k]):.3f})"
              f" | {statistics.median(cpu[k]):.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
