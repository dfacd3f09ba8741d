"""The trivial dispatch of benchmarks/mpi/mpi_dispatch.cpp with mpi4py.futures:
x*x over N integers through an MPIPoolExecutor, median of R runs.

    mpirun -np 3 python3 -m mpi4py.futures benchmarks/python/mpi_dispatch.py [N [R [CHUNKSIZE]]]

(root + 2 worker ranks, as the C++ cluster's 3 ranks: there the root has a
worker of its own too). Prints one line like the C++ program.
"""
import statistics
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def square(x):
    return x * x


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    chunksize = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
    with MPIPoolExecutor() as pool:
        from mpi4py import MPI
        workers = MPI.COMM_WORLD.Get_size() - 1
        list(pool.map(square, range(10_000), chunksize=chunksize))  # warm-up
        seconds = []
        for _ in range(runs):
            t0 = time.perf_counter()
            out = list(pool.map(square, range(n), chunksize=chunksize))
            seconds.append(time.perf_counter() - t0)
            assert out[-1] == (n - 1) * (n - 1)
    median = statistics.median(seconds)
    print(f"mpi4py workers={workers} items={n} median_s={median:.4f} items_per_s={n / median:.0f} chunksize={chunksize}")


if __name__ == "__main__":
    main()
