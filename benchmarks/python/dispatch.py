#!/usr/bin/env python3
"""Dispatch cost of Python's asyncio + ProcessPoolExecutor pattern (reference for bench_dispatch).

The work per item is trivial (``x * x``), so what is measured is the cost of shipping
items to worker processes and results back: the Python side of coshard's
``map/x*x/...`` and ``latency/one_item`` benchmarks.

Benchmarks (names as in the JSON; items_per_second on each):

  python/dispatch/executor.map/chunksize:4096
      list(executor.map(square, range(N), chunksize=4096))            N = --items
  python/dispatch/executor.map/chunksize:1
      list(executor.map(square, range(M)))  (chunksize=1, the default)  M = --small-items
  python/dispatch/run_in_executor+gather/one_item
      one loop.run_in_executor(executor, square, i) per item, asyncio.gather   M items
  python/dispatch/run_in_executor+gather/batch:4096
      the articles' batching: the items cut into lists of --batch items, one
      run_in_executor(executor, square_batch, batch) per list, asyncio.gather,
      the per-batch result lists flattened in the parent                       N items
  python/latency/one_item
      await loop.run_in_executor(executor, square, i), one at a time, --latency-samples
      times; counters p50_us, p99_us; real_time is the mean round trip (us)
  python/submit/coroutines:C/each:E
      C asyncio coroutines, each awaiting E tasks in turn:
      await asyncio.wrap_future(executor.submit(square, x)) (coshard's
      submit/coroutines case; C = --submit-coroutines, E = --submit-each)
  python/submit/loky/coroutines:C/each:E
      the same through joblib's loky executor (get_reusable_executor), if joblib
      is installed (Debian's python3-joblib)

The executor is created once and warmed up (one small map, so every worker process
exists) before anything is timed: the pool start is not measured. Each measurement
runs --repetitions times and the median is reported. Every result is checked.

Usage:
  python3 benchmarks/python/dispatch.py [--workers N] [--repetitions R] [--json FILE]
                                        [--items N] [--small-items M] [--batch B]
                                        [--latency-samples S]
  e.g. python3 benchmarks/python/dispatch.py --json /tmp/python_dispatch.json
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from common import Measurement, Reporter, Timer, base_parser, print_header  # noqa: E402


def square(x: int) -> int:
    return x * x


def square_batch(batch: list[int]) -> list[int]:
    """The worker side of the articles' batching: one call per batch of items."""
    return [x * x for x in batch]


def check(results: list[int], n: int, name: str) -> None:
    if len(results) != n or any(r != i * i for i, r in enumerate(results)):
        sys.exit(f"{name}: wrong results")


def bench_executor_map(ex: ProcessPoolExecutor, n: int, chunksize: int) -> Measurement:
    with Timer() as t:
        results = list(ex.map(square, range(n), chunksize=chunksize))
    check(results, n, f"executor.map chunksize={chunksize}")
    return Measurement(t.seconds, t.cpu_seconds, items=n)


async def bench_gather_one_item(ex: ProcessPoolExecutor, n: int) -> Measurement:
    loop = asyncio.get_running_loop()
    with Timer() as t:
        results = await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(n)))
    check(results, n, "run_in_executor+gather one_item")
    return Measurement(t.seconds, t.cpu_seconds, items=n)


async def bench_gather_batches(ex: ProcessPoolExecutor, n: int, batch: int) -> Measurement:
    loop = asyncio.get_running_loop()
    with Timer() as t:
        items = list(range(n))
        batches = [items[i:i + batch] for i in range(0, n, batch)]
        parts = await asyncio.gather(*(loop.run_in_executor(ex, square_batch, b) for b in batches))
        results = list(itertools.chain.from_iterable(parts))
    check(results, n, f"run_in_executor+gather batch:{batch}")
    return Measurement(t.seconds, t.cpu_seconds, items=n)


async def bench_submit(ex, coroutines: int, each: int) -> Measurement:
    async def one(c: int) -> int:
        wrong = 0
        for k in range(each):
            x = c * each + k
            wrong += await asyncio.wrap_future(ex.submit(square, x)) != x * x
        return wrong
    with Timer() as t:
        wrong = sum(await asyncio.gather(*(one(c) for c in range(coroutines))))
    if wrong:
        sys.exit("submit: wrong results")
    return Measurement(t.seconds, t.cpu_seconds, items=coroutines * each)


def percentile(sorted_xs: list[float], q: float) -> float:
    """Percentile of an already sorted list (q in 0..100), by the rule of the
    C++ side (coshard::bench::set_latency_counters): element floor(q*n)."""
    return sorted_xs[min(len(sorted_xs) - 1, int(q / 100 * len(sorted_xs)))]


async def bench_latency(ex: ProcessPoolExecutor, samples: int) -> Measurement:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    with Timer() as t:
        for i in range(samples):
            t0 = time.perf_counter()
            r = await loop.run_in_executor(ex, square, i)
            lat.append(time.perf_counter() - t0)
            if r != i * i:
                sys.exit("latency: wrong result")
    lat.sort()
    return Measurement(
        t.seconds / samples, t.cpu_seconds / samples, items=1,  # per round trip -> round trips/s
        counters={"p50_us": percentile(lat, 50) * 1e6, "p99_us": percentile(lat, 99) * 1e6},
    )


async def main() -> None:
    parser = base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=2_000_000,
                        help="items for chunksize 4096 and batch 4096 (N)")
    parser.add_argument("--small-items", type=int, default=20_000,
                        help="items for chunksize 1 and one future per item (M)")
    parser.add_argument("--batch", type=int, default=4096,
                        help="items per executor.map chunk / per run_in_executor batch")
    parser.add_argument("--latency-samples", type=int, default=2000,
                        help="sequential one-item round trips for python/latency/one_item")
    parser.add_argument("--submit-coroutines", type=int, default=100,
                        help="coroutines of python/submit (C)")
    parser.add_argument("--submit-each", type=int, default=100,
                        help="tasks each coroutine awaits in turn in python/submit (E)")
    args = parser.parse_args()
    print_header("python dispatch", args, items=args.items, small_items=args.small_items,
                 batch=args.batch)
    rep = Reporter(__file__, args, {"workers": args.workers})
    reps = range(args.repetitions)

    with ProcessPoolExecutor(max_workers=args.workers) as ex:
        # Warm-up: start every worker process and touch the code paths; not timed.
        list(ex.map(square, range(args.workers * 64), chunksize=16))
        # ...and the large-chunk path, whose first call is several times slower.
        list(ex.map(square, range(2 * args.workers * args.batch), chunksize=args.batch))
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(args.workers * 8)))

        b = args.batch
        rep.add(f"python/dispatch/executor.map/chunksize:{b}",
                [bench_executor_map(ex, args.items, b) for _ in reps])
        rep.add("python/dispatch/executor.map/chunksize:1",
                [bench_executor_map(ex, args.small_items, 1) for _ in reps])
        rep.add("python/dispatch/run_in_executor+gather/one_item",
                [await bench_gather_one_item(ex, args.small_items) for _ in reps])
        rep.add(f"python/dispatch/run_in_executor+gather/batch:{b}",
                [await bench_gather_batches(ex, args.items, b) for _ in reps])
        rep.add("python/latency/one_item",
                [await bench_latency(ex, args.latency_samples) for _ in reps], time_unit="us")
        c, e = args.submit_coroutines, args.submit_each
        rep.add(f"python/submit/coroutines:{c}/each:{e}",
                [await bench_submit(ex, c, e) for _ in reps])
    try:
        from joblib.externals.loky import get_reusable_executor
    except ImportError:
        print("joblib (python3-joblib) is not installed: no loky measurement", file=sys.stderr)
    else:
        loky = get_reusable_executor(max_workers=args.workers)
        list(loky.map(square, range(args.workers * 64)))  # start the workers; not timed
        rep.add(f"python/submit/loky/coroutines:{c}/each:{e}",
                [await bench_submit(loky, c, e) for _ in reps])
        loky.shutdown(wait=True)
    rep.write()


if __name__ == "__main__":
    asyncio.run(main())
