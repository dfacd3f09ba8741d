#!/usr/bin/env python3
"""The articles' Google Books Ngram map-reduce on asyncio + ProcessPoolExecutor
(reference for bench_ngram).

Input: a 1-gram TSV file, one ``word TAB year TAB match_count TAB volume_count`` per
line. Goal: the total match_count of every word. The pipeline, as in the articles:

  1. read the file without blocking the event loop (await loop.run_in_executor(None, f.read));
  2. split it into lines and cut them into partitions of --partition-lines (60,000);
  3. map: one loop.run_in_executor(executor, map_partition, partition) per partition,
     asyncio.gather; map_partition returns a dict word -> summed match_count;
  4. reduce in the parent: sum the dicts key by key.

Benchmarks:

  python/ngram/sequential     the same read + map + reduce in this process, no executor
  python/ngram/workers:W      W = --workers (and also 1 with --scaling)

real_time is one whole pass, reading included (ms); bytes_per_second is file size /
time; counter ``words`` is the number of distinct words. The count of "Aardvark" is
printed when the word is present. The file is read once before timing so that every
pass reads it from the page cache; the executor is created and warmed up untimed.
A pass takes seconds on a 200 MB file, so --repetitions defaults to 1 here.

Usage:
  python3 benchmarks/python/ngram.py [--input FILE] [--workers N] [--scaling]
                                     [--partition-lines L] [--repetitions R] [--json FILE]
  e.g. python3 benchmarks/python/ngram.py --json /tmp/python_ngram.json

The default input, /tmp/coshard-ngram-200mb.tsv, is made by the C++ example:
  build/examples/ngram_count/ngram_count --generate /tmp/coshard-ngram-200mb.tsv --size-mb 200
(build it first with: cmake --build build --target ngram_count)
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
from common import Measurement, Reporter, Timer, base_parser, print_header  # noqa: E402

DEFAULT_INPUT = "/tmp/coshard-ngram-200mb.tsv"
WORD = "Aardvark"


def map_partition(lines: list[str]) -> dict[str, int]:
    """Map step (runs in a worker): word -> summed match_count over these lines."""
    counts: defaultdict[str, int] = defaultdict(int)
    for line in lines:
        word, _year, match_count, _volumes = line.split("\t")
        counts[word] += int(match_count)
    return counts


def reduce_counts(partials: list[dict[str, int]]) -> dict[str, int]:
    """Reduce step (runs in the parent): sum the partial dicts key by key."""
    total: defaultdict[str, int] = defaultdict(int)
    for part in partials:
        for word, count in part.items():
            total[word] += count
    return total


def partition(lines: list[str], size: int) -> list[list[str]]:
    return [lines[i:i + size] for i in range(0, len(lines), size)]


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


async def read_lines(path: str) -> list[str]:
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, read_text, path)
    return text.splitlines()


async def run_sequential(path: str, part_lines: int) -> dict[str, int]:
    lines = await read_lines(path)
    return reduce_counts([map_partition(p) for p in partition(lines, part_lines)])


async def run_pool(ex: ProcessPoolExecutor, path: str, part_lines: int) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    lines = await read_lines(path)
    partials = await asyncio.gather(
        *(loop.run_in_executor(ex, map_partition, p) for p in partition(lines, part_lines)))
    return reduce_counts(partials)


def measure(result: dict[str, int], t: Timer, size: int) -> Measurement:
    return Measurement(t.seconds, t.cpu_seconds, bytes=size,
                       counters={"words": float(len(result))})


async def main() -> None:
    parser = base_parser(__doc__.split("\n", 1)[0], default_repetitions=1)
    parser.add_argument("--input", default=DEFAULT_INPUT, help="1-gram TSV file")
    parser.add_argument("--partition-lines", type=int, default=60_000,
                        help="lines per partition (one run_in_executor each)")
    parser.add_argument("--scaling", action="store_true",
                        help="also run python/ngram/workers:1")
    parser.add_argument("--no-sequential", action="store_true",
                        help="skip python/ngram/sequential")
    args = parser.parse_args()

    path = args.input
    if not os.path.isfile(path):
        sys.exit(f"ngram.py: input file {path} not found. Generate it with\n"
                 f"  build/examples/ngram_count/ngram_count --generate {path} --size-mb 200\n"
                 f"(build that first: cmake --build build --target ngram_count), "
                 f"or pass another 1-gram TSV file with --input FILE.")
    size = os.path.getsize(path)
    print_header("python ngram", args, input=path, size_mb=f"{size / 1e6:.1f}",
                 partition_lines=args.partition_lines)
    rep = Reporter(__file__, args, {"input": path, "input_bytes": size,
                                    "partition_lines": args.partition_lines})
    reps = range(args.repetitions)

    # Bring the file into the page cache so that every pass reads from memory (untimed).
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass

    answers: dict[str, tuple[int, int | None, int]] = {}

    def note(name: str, result: dict[str, int]) -> None:
        answers[name] = (len(result), result.get(WORD), sum(result.values()))

    if not args.no_sequential:
        runs = []
        for _ in reps:
            with Timer() as t:
                result = await run_sequential(path, args.partition_lines)
            runs.append(measure(result, t, size))
            note("sequential", result)
            del result
        rep.add("python/ngram/sequential", runs)

    worker_counts = sorted({1, args.workers} if args.scaling else {args.workers})
    for w in worker_counts:
        with ProcessPoolExecutor(max_workers=w) as ex:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(ex, map_partition, ["a\t1\t1\t1"])
                                   for _ in range(4 * w)))  # warm-up, untimed
            runs = []
            for _ in reps:
                with Timer() as t:
                    result = await run_pool(ex, path, args.partition_lines)
                runs.append(measure(result, t, size))
                note(f"workers:{w}", result)
                del result
        for r in runs:
            r.counters["workers"] = float(w)
        rep.add(f"python/ngram/workers:{w}", runs)

    # Every variant must agree; print the articles' answer.
    if len(set(answers.values())) > 1:
        sys.exit(f"ngram.py: variants disagree: {answers}")
    words, aardvark, _total = next(iter(answers.values()))
    print(f"distinct words: {words}; " + (f"{WORD}: {aardvark}" if aardvark is not None
                                          else f"{WORD}: not in the input"), flush=True)
    rep.context["words"] = words
    if aardvark is not None:
        rep.context[WORD] = aardvark
    rep.write()


if __name__ == "__main__":
    asyncio.run(main())
