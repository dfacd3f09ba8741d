#!/usr/bin/env python3
"""The articles' Ngram map-reduce (benchmarks/python/ngram.py) with the process
pool swapped for mpi4py.futures' MPIPoolExecutor: the reference for
`ngram_count --mpi` (docs/BENCHMARKS.md, "Across MPI ranks").

The same pipeline as ngram.py: read the file without blocking the event loop,
cut its lines into partitions of --partition-lines (60,000), one
loop.run_in_executor(pool, map_partition, partition) per partition under
asyncio.gather, the dicts summed key by key in the root. Every worker rank
gets its partitions pickled through MPI.

    mpirun -np 3 -x PYTHONPATH=benchmarks/python /usr/bin/python3 -m mpi4py.futures \
        benchmarks/python/mpi_ngram.py [FILE [RUNS]]

(root + 2 worker ranks). Prints one line per run and the median:
    mpi4py workers=2 bytes=... median_s=... mb_per_s=... words=... Aardvark=...
"""
import asyncio
import os
import statistics
import sys
import time

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from mpi4py import MPI  # noqa: E402
from mpi4py.futures import MPIPoolExecutor  # noqa: E402

from ngram import DEFAULT_INPUT, WORD, map_partition, partition, read_lines, reduce_counts  # noqa: E402


async def run_once(pool: MPIPoolExecutor, path: str, part_lines: int) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    lines = await read_lines(path)
    partials = await asyncio.gather(
        *(loop.run_in_executor(pool, map_partition, p) for p in partition(lines, part_lines)))
    return reduce_counts(partials)


async def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_INPUT
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    if not os.path.isfile(path):
        sys.exit(f"mpi_ngram.py: input file {path} not found (make it with "
                 f"build/examples/ngram_count/ngram_count --generate {path} --size-mb 200)")
    size = os.path.getsize(path)
    with open(path, "rb") as f:  # into the page cache, untimed
        while f.read(1 << 24):
            pass
    with MPIPoolExecutor() as pool:
        workers = MPI.COMM_WORLD.Get_size() - 1
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, map_partition, ["a\t1\t1\t1"])
                               for _ in range(4 * workers)))  # warm-up, untimed
        seconds = []
        for _ in range(runs):
            t0 = time.perf_counter()
            result = await run_once(pool, path, 60_000)
            seconds.append(time.perf_counter() - t0)
            print(f"run {len(seconds)}: {seconds[-1]:.3f} s", flush=True)
    median = statistics.median(seconds)
    print(f"mpi4py workers={workers} bytes={size} median_s={median:.3f} mb_per_s={size / 1e6 / median:.1f} "
          f"words={len(result)} {WORD}={result.get(WORD)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
