#!/usr/bin/env python3
"""CPU and wall time of ngram_count through the pool against its one-process count.

Runs `ngram_count FILE --sequential`, `--workers 1` and `--workers 2` (or the
configurations given with --config) one after another, PAIRS rounds, in
alternating order (A B C, then C B A, ...), so that a noisy machine shifts
every configuration alike. Each run's CPU time is its user + system time,
parent and workers together (os.wait4: the workers are waited for inside
the run), at microsecond resolution. Prints medians of CPU and wall time and,
per configuration, the median over rounds of its CPU and wall ratio to the
first configuration of the same round.

    python3 benchmarks/ngram/cpu_ratio.py build/examples/ngram_count/ngram_count \\
        /tmp/coshard-ngram-100mb.tsv --pairs 30

Make the file with `ngram_count --generate FILE --size-mb 100`; it is read
once first so that it is in the page cache.
"""
import argparse
import os
import shlex
import statistics
import subprocess
import time


def run_once(cmd):
    """Wall seconds and CPU seconds (user + system, with children) of one run."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise SystemExit(f"failed ({status}): {shlex.join(cmd)}")
    return wall, usage.ru_utime + usage.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary", help="ngram_count")
    ap.add_argument("file", help="the 1-gram file")
    ap.add_argument("--pairs", type=int, default=30, help="rounds of all configurations")
    ap.add_argument("--config", action="append", metavar="ARGS",
                    help="ngram_count arguments of one configuration (repeat); the first is the baseline. "
                         "Default: --sequential, --workers 1, --workers 2")
    args = ap.parse_args()
    configs = args.config or ["--sequential", "--workers 1", "--workers 2"]

    with open(args.file, "rb") as f:  # into the page cache
        while f.read(1 << 24):
            pass
    runs = {c: [] for c in configs}
    for i in range(args.pairs):
        for c in configs if i % 2 == 0 else reversed(configs):
            runs[c].append(run_once([args.binary, args.file] + shlex.split(c)))

    base = runs[configs[0]]
    med = statistics.median
    for c in configs:
        r = runs[c]
        line = f"{c:16s} cpu {med(x[1] for x in r):.4f} s  wall {med(x[0] for x in r):.4f} s"
        if c != configs[0]:
            cpu = [x[1] / y[1] for x, y in zip(r, base)]
            wall = [x[0] / y[0] for x, y in zip(r, base)]
            line += (f"  | vs {configs[0]}: cpu x{med(cpu):.3f} (rounds {min(cpu):.2f}..{max(cpu):.2f})"
                     f"  wall x{med(wall):.3f}")
        print(line)


if __name__ == "__main__":
    main()
