// bench_dispatch - dispatch overhead of process_pool::map.
//
// Maps a trivial function (x -> x*x on std::int64_t) over a vector, so what is
// measured is the pool's own cost per item and per batch: cutting batches,
// the socket round trips, encoding/decoding in the workers and placing the
// results in input order. Reported as items/s (wall-clock time: the work runs
// in child processes, so the parent's CPU time means nothing here).
//
//   map/x*x/batch:N          pool_options.batch_size = N
//   map/x*x/adaptive         pool_options.batch_size = 0 (sized toward target_batch_time)
//   sequential/x*x           the same loop in this process, no pool, for scale;
//                            returns a fresh vector per pass, as map does
//   sequential/x*x/no-alloc  the loop alone, into a vector allocated once
//
// Every pass of map (and of sequential/x*x) returns a new result vector. At
// 10^7 items that is 80 MB, which glibc maps fresh from the kernel each time
// (above its 32 MB maximum mmap threshold), so the page faults of that vector
// are part of each pass; on a VM with slow page faults they can dominate.
// To see the pool's own cost without them, let malloc keep freed memory:
//   GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000
// or have it back large blocks with transparent huge pages (fewer faults):
//   GLIBC_TUNABLES=glibc.malloc.hugetlb=1
//
// Environment:
//   COSHARD_BENCH_ITEMS    items per map call (default 10^7). Small fixed
//                          batch sizes are capped at 10^5 batches per call
//                          (batch:1 -> 10^5 items, batch:16 -> 1.6*10^6) so
//                          that they finish in seconds; see the `items` counter.
//   COSHARD_BENCH_WORKERS  worker processes per pool (default 2).
//
// One pool per configuration is created on first use, outside the timed loop,
// and kept for the rest of the run (later repetitions reuse it). The result of
// the last timed map call is checked in full, untimed, after the loop.
//
// Example (about 40 s on 2 cores):
//   build/benchmarks/bench_dispatch --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <coshard/process_pool.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <cstdio>
#include <functional>
#include <map>
#include <ranges>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace {

std::size_t env_size(const char* name, std::size_t fallback) {
  const char* s = std::getenv(name);
  if (!s || !*s) return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (end == s || *end != '\0' || v == 0) return fallback;
  return static_cast<std::size_t>(v);
}

std::size_t bench_items() {
  static const std::size_t n = env_size("COSHARD_BENCH_ITEMS", 10'000'000);
  return n;
}

std::size_t bench_workers() {
  static const std::size_t n = env_size("COSHARD_BENCH_WORKERS", 2);
  return n;
}

// Items for one configuration. Every batch costs a round trip to a worker
// (tens of microseconds on a small VM), so small fixed batch sizes get at most
// `max_batches` batches per map call to keep the run short: batch:1 maps 10^5
// items, batch:16 1.6*10^6; batch:256 and up (and adaptive) the full input.
std::size_t items_for(std::size_t batch_size) {
  constexpr std::size_t max_batches = 100'000;
  if (batch_size == 0) return bench_items();
  return std::min(bench_items(), batch_size * max_batches);
}

// 0, 1, 2, ... : x*x stays within int64 for any input up to ~3e9 items.
const std::vector<std::int64_t>& input() {
  static const std::vector<std::int64_t> v = [] {
    std::vector<std::int64_t> out(bench_items());
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::int64_t>(i);
    return out;
  }();
  return v;
}

constexpr auto square = [](std::int64_t x) { return x * x; };

// One pool per batch size, started on first use and kept until exit.
coshard::process_pool& pool_for(std::size_t batch_size) {
  static std::map<std::size_t, std::unique_ptr<coshard::process_pool>> pools;
  auto& p = pools[batch_size];
  if (!p) {
    p = std::make_unique<coshard::process_pool>(
        coshard::pool_options{.workers = bench_workers(), .batch_size = batch_size});
    // Warm-up, untimed: the first jobs of a pool grow the batch buffers on
    // both sides. Up to 10^6 items, at most 1000 batches of a fixed size.
    std::size_t warm_n = std::min<std::size_t>(items_for(batch_size), 1'000'000);
    if (batch_size) warm_n = std::min(warm_n, batch_size * 1000);
    (void)p->map(std::span<const std::int64_t>(input().data(), warm_n), square);
  }
  return *p;
}

// Full check of one map result; untimed. Returns an error text or "".
std::string check(std::span<const std::int64_t> in, const std::vector<std::int64_t>& out) {
  if (out.size() != in.size())
    return "map returned " + std::to_string(out.size()) + " results for " +
           std::to_string(in.size()) + " inputs";
  for (std::size_t i = 0; i < in.size(); ++i)
    if (out[i] != in[i] * in[i])
      return "wrong result at index " + std::to_string(i) + ": " + std::to_string(out[i]) +
             ", expected " + std::to_string(in[i] * in[i]);
  return {};
}

// items/s, plus the item count and (for the pool) the worker count.
void set_counters(benchmark::State& state, std::size_t n, std::size_t workers = 0) {
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(n));
  state.counters["items"] = static_cast<double>(n);
  if (workers) state.counters["workers"] = static_cast<double>(workers);
}

void bm_map(benchmark::State& state, std::size_t batch_size) {
  const std::size_t n = items_for(batch_size);
  const std::span<const std::int64_t> in(input().data(), n);
  coshard::process_pool* pool = nullptr;
  try {
    pool = &pool_for(batch_size);
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("pool start failed: ") + e.what()).c_str());
    for (auto _ : state) {
    }
    return;
  }

  // Each pass pays, like any caller of map, for the fresh result vector (and
  // for freeing the previous one when `out` is reassigned).
  std::vector<std::int64_t> out;
  for (auto _ : state) {
    try {
      out = pool->map(in, square);
    } catch (const std::exception& e) {
      state.SkipWithError((std::string("map failed: ") + e.what()).c_str());
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  if (state.error_occurred()) return;
  if (const std::string err = check(in, out); !err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  set_counters(state, n, pool->size());
}

// The same work in this process, for scale: builds a new result vector per
// pass, as map does. With 10^7 items the vector is 80 MB, above glibc's mmap
// threshold, so every pass also pays the page faults of fresh memory (as map
// does); sequential/x*x/no-alloc below shows the figure without them.
void bm_sequential(benchmark::State& state) {
  const std::size_t n = bench_items();
  const std::span<const std::int64_t> in(input().data(), n);
  std::vector<std::int64_t> out;
  for (auto _ : state) {
    const std::int64_t* src = in.data();
    benchmark::DoNotOptimize(src);  // the optimizer cannot assume what src holds
    std::vector<std::int64_t> r(n);
    for (std::size_t i = 0; i < n; ++i) r[i] = square(src[i]);
    benchmark::DoNotOptimize(r.data());
    benchmark::ClobberMemory();
    out = std::move(r);
  }
  if (const std::string err = check(in, out); !err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  set_counters(state, n);
}

// The loop alone: results written into a vector allocated once.
void bm_sequential_no_alloc(benchmark::State& state) {
  const std::size_t n = bench_items();
  const std::span<const std::int64_t> in(input().data(), n);
  std::vector<std::int64_t> out(n);
  for (auto _ : state) {
    const std::int64_t* src = in.data();
    benchmark::DoNotOptimize(src);
    std::int64_t* dst = out.data();
    for (std::size_t i = 0; i < n; ++i) dst[i] = square(src[i]);
    benchmark::DoNotOptimize(dst);
    benchmark::ClobberMemory();
  }
  if (const std::string err = check(in, out); !err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  set_counters(state, n);
}

// Peak resident set size of this process (VmHWM), in bytes.
double peak_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  double kb = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
  std::fclose(f);
  return kb * 1024;
}

// Resident set size of this process now, in bytes.
double rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  double pages = 0, resident = 0;
  const int got = std::fscanf(f, "%lf %lf", &pages, &resident);
  std::fclose(f);
  return got == 2 ? resident * static_cast<double>(::sysconf(_SC_PAGESIZE)) : -1;
}

// A lazy std::views::iota of COSHARD_BENCH_LAZY_ITEMS (default 10^9) items
// through map_reduce: the input is never materialised. Reported:
// parent_peak_growth_MB, how far the parent's peak RSS rose above its RSS
// before the job (the other benchmarks' 80 MB vectors are already resident).
void bm_lazy_map_reduce(benchmark::State& state) {
  static const std::size_t n = env_size("COSHARD_BENCH_LAZY_ITEMS", 1'000'000'000);
  coshard::process_pool& pool = pool_for(0);
  const auto count = static_cast<std::int64_t>(n);
  std::int64_t sum = 0;
  if (std::FILE* f = std::fopen("/proc/self/clear_refs", "w")) {  // "5" resets VmHWM
    std::fputs("5", f);
    std::fclose(f);
  }
  const double before = rss_bytes();
  for (auto _ : state) {
    sum = pool.map_reduce(std::views::iota(std::int64_t{0}, count),
                          [](std::int64_t x) { return x & 1023; }, std::plus<>{}, std::int64_t{0});
    benchmark::DoNotOptimize(sum);
  }
  std::int64_t want = (count / 1024) * (1023 * 1024 / 2);
  for (std::int64_t x = count / 1024 * 1024; x < count; ++x) want += x & 1023;
  if (sum != want) {
    state.SkipWithError("lazy map_reduce: wrong sum");
    return;
  }
  set_counters(state, n);
  state.counters["parent_peak_growth_MB"] = (peak_rss_bytes() - before) / (1 << 20);
}

// A pass takes 0.1 to 2 s on a 2-core VM (10^7 items, or the capped counts of
// batch:1 and batch:16), so MinTime 0.5 s means one to a few iterations per
// repetition: the binary takes about 40 s with --benchmark_repetitions=3.
[[maybe_unused]] const bool registered = [] {
  constexpr double min_time_s = 0.5;
  for (const std::size_t b : {std::size_t{1}, std::size_t{16}, std::size_t{256}, std::size_t{4096},
                              std::size_t{0}}) {
    const std::string name = b ? "map/x*x/batch:" + std::to_string(b) : std::string("map/x*x/adaptive");
    benchmark::RegisterBenchmark(name.c_str(), bm_map, b)
        ->UseRealTime()
        ->MinTime(min_time_s)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("map_reduce/lazy_iota", bm_lazy_map_reduce)
      ->UseRealTime()
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("sequential/x*x", bm_sequential)
      ->UseRealTime()
      ->MinTime(min_time_s)
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("sequential/x*x/no-alloc", bm_sequential_no_alloc)
      ->UseRealTime()
      ->MinTime(min_time_s)
      ->Unit(benchmark::kMillisecond);
  return true;
}();

}  // namespace
