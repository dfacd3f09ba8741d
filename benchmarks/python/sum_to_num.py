#!/usr/bin/env python3
"""The articles' CPU-bound task, sum_to_num(n), on asyncio + ProcessPoolExecutor
(reference for bench_sum_to_num).

``sum_to_num(n)`` is the articles' plain Python loop ``s = 0; for i in range(n): s += i``.
One pass runs K items (--tasks) of the same n (--n):

  python/sum_to_num/sequential   the K calls one after the other in this process
  python/sum_to_num/workers:W    for W = 1 .. --workers: a ProcessPoolExecutor(W), one
                                 loop.run_in_executor(executor, sum_to_num, n) per item,
                                 asyncio.gather

real_time is one whole pass (ms), items_per_second is K / pass time; the speedup over
sequential is printed. Each executor is created and warmed up before timing (the pool
start is not measured). Every result is checked against n*(n-1)//2.

Usage:
  python3 benchmarks/python/sum_to_num.py [--workers N] [--repetitions R] [--json FILE]
                                          [--tasks K] [--n N]
  e.g. python3 benchmarks/python/sum_to_num.py --json /tmp/python_sum_to_num.json
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from common import Measurement, Reporter, Timer, base_parser, print_header  # noqa: E402


def sum_to_num(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def check(results: list[int], n: int, k: int, name: str) -> None:
    expected = n * (n - 1) // 2
    if len(results) != k or any(r != expected for r in results):
        sys.exit(f"{name}: wrong results (expected {k} x {expected})")


def bench_sequential(n: int, k: int) -> Measurement:
    with Timer() as t:
        results = [sum_to_num(n) for _ in range(k)]
    check(results, n, k, "sequential")
    return Measurement(t.seconds, t.cpu_seconds, items=k)


async def bench_pool(ex: ProcessPoolExecutor, n: int, k: int) -> Measurement:
    loop = asyncio.get_running_loop()
    with Timer() as t:
        results = await asyncio.gather(*(loop.run_in_executor(ex, sum_to_num, n) for _ in range(k)))
    check(results, n, k, "pool")
    return Measurement(t.seconds, t.cpu_seconds, items=k)


async def main() -> None:
    parser = base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=16, help="items per pass (K)")
    parser.add_argument("--n", type=int, default=2_000_000, help="sum_to_num argument per item")
    args = parser.parse_args()
    print_header("python sum_to_num", args, tasks=args.tasks, n=args.n)
    rep = Reporter(__file__, args, {"tasks": args.tasks, "n": args.n})
    reps = range(args.repetitions)
    counters = {"n": float(args.n)}

    sum_to_num(1000)  # warm-up
    seq = rep.add("python/sum_to_num/sequential",
                  [bench_sequential(args.n, args.tasks) for _ in reps])

    for w in range(1, args.workers + 1):
        with ProcessPoolExecutor(max_workers=w) as ex:
            loop = asyncio.get_running_loop()
            # Warm-up: every worker process started and has run the function once.
            await asyncio.gather(*(loop.run_in_executor(ex, sum_to_num, 1000) for _ in range(4 * w)))
            runs = [await bench_pool(ex, args.n, args.tasks) for _ in reps]
        for r in runs:
            r.counters = dict(counters, workers=float(w))
        speedup = seq["real_time"] / statistics.median(r.seconds * 1e3 for r in runs)
        rep.add(f"python/sum_to_num/workers:{w}", runs, note=f"speedup {speedup:.2f}x")
    rep.write()


if __name__ == "__main__":
    asyncio.run(main())
