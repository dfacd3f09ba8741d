// The trivial dispatch across MPI ranks against the local pool: map of x*x
// over N int64, timed in the root, median of R runs. Prints one line:
//   <mode> workers=<n> items=<N> median_s=<t> items_per_s=<rate>
//
//   mpirun -np 3 mpi_dispatch --mpi [N [R [BATCH]]]   3 ranks x 1 worker
//   mpi_dispatch [N [R [BATCH]]]                      process_pool, 2 workers
//
// BATCH fixes the batch size (0: adaptive). Also prints the root's CPU time
// (all its threads, the MPI thread included) per batch and per byte moved,
// the inputs of docs/SCALING.md's model.
#include <coshard/coshard.hpp>
#include <coshard/mpi.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

int main(int argc, char** argv) {
  const bool use_mpi = argc > 1 && std::strcmp(argv[1], "--mpi") == 0;
  const int first = use_mpi ? 2 : 1;
  const long n = argc > first ? std::atol(argv[first]) : 10'000'000;
  const int runs = argc > first + 1 ? std::atoi(argv[first + 1]) : 5;
  const long batch = argc > first + 2 ? std::atol(argv[first + 2]) : 0;
  coshard::job_options options;
  if (batch > 0) options.batch_size = static_cast<std::size_t>(batch);

  std::unique_ptr<coshard::mpi::cluster> cluster;
  std::unique_ptr<coshard::process_pool> local;
  coshard::basic_pool* pool = nullptr;
  std::size_t workers = 0;
  if (use_mpi) {
    cluster = std::make_unique<coshard::mpi::cluster>(argc, argv, coshard::mpi::cluster_options{.workers_per_rank = 1});
    if (!cluster->is_root()) return cluster->serve();
    pool = cluster.get();
    workers = cluster->size();
  } else {
    local = std::make_unique<coshard::process_pool>(coshard::pool_options{.workers = 2});
    pool = local.get();
    workers = local->size();
  }
  std::vector<std::int64_t> in(static_cast<std::size_t>(n));
  std::iota(in.begin(), in.end(), std::int64_t{0});
  (void)pool->map(std::vector<std::int64_t>(in.begin(), in.begin() + 100'000),
                  [](std::int64_t x) { return x * x; });  // warm-up
  std::vector<double> seconds;
  const auto before = pool->stats();
  rusage u0{};
  ::getrusage(RUSAGE_SELF, &u0);
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto out = pool->map(in, [](std::int64_t x) { return x * x; }, options);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (out.back() != (n - 1) * (n - 1)) {
      std::fprintf(stderr, "wrong result\n");
      return 1;
    }
  }
  rusage u1{};
  ::getrusage(RUSAGE_SELF, &u1);
  const auto after = pool->stats();
  const auto cpu = [](const rusage& u) {
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  };
  const double root_cpu = cpu(u1) - cpu(u0);
  const double batches = static_cast<double>(after.batches - before.batches);
  const double bytes = static_cast<double>(after.bytes_sent - before.bytes_sent + after.bytes_received -
                                           before.bytes_received);
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  std::printf("%s workers=%zu items=%ld median_s=%.4f items_per_s=%.0f root_cpu_s=%.3f batches=%.0f bytes=%.0f\n",
              use_mpi ? "mpi" : "local", workers, n, median, static_cast<double>(n) / median, root_cpu, batches, bytes);
  return 0;
}
