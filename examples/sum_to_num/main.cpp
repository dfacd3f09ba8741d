// The articles' first demo: CPU-bound sums of different sizes run on all
// cores, each result printed the moment it arrives (completion order, as
// Python's asyncio.as_completed gives it), with the time the worker spent.
//
//   sum_to_num [n ...]      defaults: 200000000 50000000 150000000 100000000
#include <coshard/coshard.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

struct timed_sum {
  std::uint64_t n = 0;
  std::uint64_t sum = 0;
  double seconds = 0;
};

// Adds 0..n-1 one by one. The empty asm keeps the compiler from replacing the
// loop with n(n-1)/2, so the work is what it claims to be.
timed_sum sum_to_num(std::uint64_t n) {
  const auto t0 = std::chrono::steady_clock::now();
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    sum += i;
    asm volatile("" : "+r"(sum));
  }
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
  return {n, sum, took.count()};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::uint64_t> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::strtoull(argv[i], nullptr, 10));
  if (sizes.empty()) sizes = {200'000'000, 50'000'000, 150'000'000, 100'000'000};

  // One item per batch, so each result travels back as soon as it is done.
  coshard::process_pool pool{{.workers = 0, .batch_size = 1}};
  std::printf("%zu sums on %zu worker processes\n", sizes.size(), pool.size());

  const auto t0 = std::chrono::steady_clock::now();
  bool all_right = true;
  std::size_t arrived = 0;
  // A bar for runs longer than a second; each result line clears it first.
  coshard::progress_bar bar({.label = "sums", .unit = "sums"});
  coshard::job_options options;
  options.progress = bar;
  const std::size_t delivered = pool.for_each_result(sizes, [](std::uint64_t n) { return sum_to_num(n); },
                       [&](std::size_t index, const timed_sum& r) {
                         const double since_start = std::chrono::duration<double>(
                                                        std::chrono::steady_clock::now() - t0)
                                                        .count();
                         const bool right = r.sum == r.n * (r.n - 1) / 2;
                         all_right = all_right && right;
                         ++arrived;
                         bar.clear();
                         std::printf("input %zu: sum_to_num(%llu) = %llu in %.3f s (arrived at %.3f s)%s\n",
                                     index, static_cast<unsigned long long>(r.n),
                                     static_cast<unsigned long long>(r.sum), r.seconds, since_start,
                                     right ? "" : "  WRONG");
                         std::fflush(stdout);
                       },
                       options);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("all done in %.3f s\n", total);
  if (arrived != sizes.size() || delivered != sizes.size()) {
    std::printf("WRONG: %zu of %zu results arrived\n", arrived, sizes.size());
    return 1;
  }
  return all_right ? 0 : 1;
}
