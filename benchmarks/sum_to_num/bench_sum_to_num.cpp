// bench_sum_to_num - CPU-bound scaling: the sum_to_num task of the Python
// articles (add 0..n-1 in a loop) across worker processes, beside a
// single-process loop and a thread-per-core pool of io_contexts.
//
//   sum_to_num/sequential                        the items one after another, here
//   sum_to_num/workers:W/batch:1/concurrency:1   process_pool::map, W = 1..N
//   sum_to_num/threads:W                         W threads, each running its own
//                                                io_context, pulling items from a
//                                                shared counter (the same dynamic
//                                                distribution as batch size 1)
//
// `speedup` on the pool rows is the sequential time over the pool's; compare
// threads:W with workers:W for the cost of processes over threads.
//
// Environment:
//   COSHARD_SUM_ITEMS        items per pass (default 16)
//   COSHARD_SUM_N            n of every item (default 5*10^7: 20-50 ms each)
//   COSHARD_BENCH_WORKERS    largest worker/thread count (default: hardware threads)
//
// Example:
//   build/benchmarks/bench_sum_to_num --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <coshard/benchmark.hpp>

#include <asio/co_spawn.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using coshard::bench::env_size;

/// 0 + 1 + ... + (n - 1). The empty asm makes `s` opaque to the optimizer, so
/// the loop is neither vectorised nor replaced by n(n-1)/2: one add per step,
/// the same work in every configuration.
std::int64_t sum_to_num(std::int64_t n) {
  std::int64_t s = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    s += i;
    asm volatile("" : "+r"(s));
  }
  return s;
}

constexpr auto task = [](std::int64_t n) { return sum_to_num(n); };

std::size_t max_workers() {
  return env_size("COSHARD_BENCH_WORKERS", std::max(1u, std::thread::hardware_concurrency()));
}

std::vector<std::int64_t> inputs() {
  return std::vector<std::int64_t>(env_size("COSHARD_SUM_ITEMS", 16),
                                   static_cast<std::int64_t>(env_size("COSHARD_SUM_N", 50'000'000)));
}

/// A thread per io_context; the threads live as long as the pool.
class io_thread_pool {
 public:
  explicit io_thread_pool(std::size_t threads) {
    for (std::size_t i = 0; i < threads; ++i) {
      auto& ctx = *contexts_.emplace_back(std::make_unique<asio::io_context>(1));
      guards_.emplace_back(ctx.get_executor());
      threads_.emplace_back([&ctx] { ctx.run(); });
    }
  }
  ~io_thread_pool() {
    guards_.clear();
    for (auto& t : threads_) t.join();
  }
  io_thread_pool(const io_thread_pool&) = delete;
  io_thread_pool& operator=(const io_thread_pool&) = delete;

  /// task(in[k]) for every k, spread over the threads, results in order.
  std::vector<std::int64_t> map(const std::vector<std::int64_t>& in) {
    std::vector<std::int64_t> out(in.size());
    std::atomic<std::size_t> next{0};
    std::latch done(static_cast<std::ptrdiff_t>(contexts_.size()));
    for (auto& ctx : contexts_)
      asio::co_spawn(
          *ctx,
          [&]() -> asio::awaitable<void> {
            for (std::size_t k; (k = next.fetch_add(1)) < in.size();) out[k] = task(in[k]);
            co_return;
          },
          [&](std::exception_ptr) { done.count_down(); });
    done.wait();
    return out;
  }

 private:
  std::vector<std::unique_ptr<asio::io_context>> contexts_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
  std::vector<std::thread> threads_;
};

void bm_threads(benchmark::State& state, std::size_t threads) {
  static const std::vector<std::int64_t> in = inputs();
  io_thread_pool pool(threads);
  std::vector<std::int64_t> out;
  for (auto _ : state) {
    out = pool.map(in);
    benchmark::DoNotOptimize(out.data());
  }
  for (std::size_t k = 0; k < in.size(); ++k)
    if (out[k] != in[k] * (in[k] - 1) / 2) {
      state.SkipWithError("thread pool: wrong sum");
      return;
    }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * in.size()));
  state.counters["items"] = static_cast<double>(in.size());
  state.counters["threads"] = static_cast<double>(threads);
}

[[maybe_unused]] const bool registered = [] {
  std::vector<std::size_t> workers;
  for (std::size_t w = 1; w <= max_workers(); ++w) workers.push_back(w);
  // Batch size 1 spreads the few heavy items evenly; one item at a time per
  // worker, as the task never awaits.
  coshard::bench::register_map("sum_to_num", inputs(), task,
                               {.workers = workers,
                                .batch_sizes = {1},
                                .concurrency = {1},
                                .min_time_s = 1.0,
                                .warmup_items = 2});
  for (const std::size_t w : workers)
    benchmark::RegisterBenchmark(("sum_to_num/threads:" + std::to_string(w)).c_str(), bm_threads, w)
        ->UseRealTime()
        ->MinTime(1.0)
        ->Unit(benchmark::kMillisecond);
  return true;
}();

}  // namespace
