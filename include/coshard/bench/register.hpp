// coshard/bench/register.hpp - register Google Benchmark cases that measure a
// task through coshard's process pool, across pool configurations, beside an
// in-process baseline.
#pragma once

#include "coshard/bench/detail/in_process.hpp"
#include "coshard/bench/detail/pool_cache.hpp"
#include "coshard/bench/sweep.hpp"
#include "coshard/detail/demangle.hpp"
#include "coshard/process_pool.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace coshard::bench {

namespace detail {

/// What one registration shares between its benchmarks: the inputs (copied
/// once), the sweep, the in-process result used to verify the pool's, and the
/// baseline's time per pass, from which the pool runs report a speedup.
template <class T, class Out>
struct registration {
  std::string name;
  std::vector<T> inputs;
  bench::sweep sweep;
  bool coroutine = false;
  std::optional<Out> expected;
  std::map<std::size_t, double> baseline_seconds;  // by concurrency (0 for a plain function)
};

template <class T>
std::vector<T> copy_inputs(auto&& inputs) {
  std::vector<T> v;
  if constexpr (std::ranges::sized_range<decltype(inputs)>) v.reserve(std::ranges::size(inputs));
  for (auto&& x : inputs) v.emplace_back(x);
  return v;
}

inline std::string batch_label(std::size_t b) { return b ? std::to_string(b) : std::string("adaptive"); }

inline std::size_t resolved_workers(std::size_t w) {
  return w ? w : std::max(1u, std::thread::hardware_concurrency());
}

inline void skip(benchmark::State& state, const std::string& why) {
  state.SkipWithError(why.c_str());
}

// The exception being handled, as "type: message". Call inside a catch.
inline std::string current_error() {
  const auto what = coshard::detail::describe_current_exception();
  return what.type_name + (what.message.empty() ? "" : ": " + what.message);
}

template <class T, class Out>
void set_common_counters(benchmark::State& state, const registration<T, Out>& r) {
  const auto passes = static_cast<std::int64_t>(state.iterations());
  state.SetItemsProcessed(passes * static_cast<std::int64_t>(r.inputs.size()));
  if (r.sweep.bytes_per_pass)
    state.SetBytesProcessed(passes * static_cast<std::int64_t>(r.sweep.bytes_per_pass));
  state.counters["items"] = static_cast<double>(r.inputs.size());
}

/// Equal, or for floating point equal to 1e-9 relative: a reduction folds in
/// another order in the pool (per batch, then partials as they arrive).
template <class Out>
bool same_result(const Out& a, const Out& b) {
  if constexpr (std::is_floating_point_v<Out>)
    return std::abs(a - b) <= 1e-9 * std::max({std::abs(a), std::abs(b), Out(1)});
  else
    return a == b;
}

/// Compares `out` with the in-process result (computed now if no baseline
/// ran yet); false and a skip on mismatch.
template <class T, class Out, class Local>
bool verified(benchmark::State& state, registration<T, Out>& r, const Out& out, Local& local) {
  if constexpr (std::equality_comparable<Out>) {
    if (!r.sweep.verify) return true;
    if (!r.expected) {
      try {
        r.expected.emplace(local(r.sweep.concurrency.empty() ? 64 : r.sweep.concurrency.front()));
      } catch (...) {
        skip(state, r.name + ": the in-process run used for verification failed: " +
                        current_error());
        return false;
      }
    }
    if (!same_result(out, *r.expected)) {
      skip(state, r.name + ": the pool's result differs from the in-process result");
      return false;
    }
  }
  return true;
}

/// Registers the baseline and every pool configuration of `r`.
/// `pool_pass(pool, inputs)` runs one pass through a pool, `local(C)` one
/// pass in this process with C items in flight.
template <class T, class Out, class PoolPass, class Local>
void register_all(std::shared_ptr<registration<T, Out>> r, PoolPass pool_pass, Local local) {
  using clock = std::chrono::steady_clock;
  const sweep& s = r->sweep;

  // Baselines first, so that the pool runs after them can report a speedup.
  if (s.sequential) {
    const std::vector<std::size_t> levels = r->coroutine ? s.concurrency : std::vector<std::size_t>{0};
    for (const std::size_t c : levels) {
      const std::string name =
          r->coroutine ? r->name + "/one_process/concurrency:" + std::to_string(c) : r->name + "/sequential";
      benchmark::RegisterBenchmark(name.c_str(), [r, local, c](benchmark::State& state) mutable {
        std::optional<Out> out;
        const auto t0 = clock::now();
        for (auto _ : state) {
          try {
            out.emplace(local(c ? c : 1));
          } catch (...) {
            skip(state, r->name + ": " + current_error());
            break;
          }
          benchmark::DoNotOptimize(*out);
        }
        if (state.error_occurred()) return;
        r->baseline_seconds[c] =
            std::chrono::duration<double>(clock::now() - t0).count() / static_cast<double>(state.iterations());
        if constexpr (std::equality_comparable<Out>)
          if (r->sweep.verify && !r->expected) r->expected = std::move(out);
        set_common_counters(state, *r);
        if (c) state.counters["concurrency"] = static_cast<double>(c);
      })
          ->UseRealTime()
          ->MinTime(s.min_time_s)
          ->Unit(benchmark::kMillisecond);
    }
  }

  std::vector<std::size_t> workers = s.workers;
  if (workers.empty()) workers.push_back(s.options.workers);
  for (const std::size_t w : workers)
    for (const std::size_t b : s.batch_sizes)
      for (const std::size_t c : s.concurrency) {
        const std::size_t nw = resolved_workers(w);
        const std::string name = r->name + "/workers:" + std::to_string(nw) + "/batch:" + batch_label(b) +
                                 "/concurrency:" + std::to_string(c);
        benchmark::RegisterBenchmark(name.c_str(), [r, pool_pass, local, nw, b, c](benchmark::State& state) mutable {
          pool_options o = r->sweep.options;
          o.workers = nw;
          o.batch_size = b;
          o.concurrency = c;
          process_pool* pool = nullptr;
          try {
            bool fresh = false;
            pool = &cached_pool(pool_key{r.get(), nw, b, c}, o, fresh);
            const std::size_t warm = std::min(r->sweep.warmup_items, r->inputs.size());
            if (fresh && warm) (void)pool_pass(*pool, std::span<const T>(r->inputs.data(), warm));
          } catch (...) {
            skip(state, r->name + ": starting the pool failed: " + current_error());
            for (auto _ : state) {
            }
            return;
          }
          const std::span<const T> all(r->inputs);
          std::optional<Out> out;
          const auto t0 = clock::now();
          for (auto _ : state) {
            try {
              out.emplace(pool_pass(*pool, all));
            } catch (...) {
              skip(state, r->name + ": " + current_error());
              break;
            }
            benchmark::DoNotOptimize(*out);
          }
          if (state.error_occurred()) return;
          const double seconds =
              std::chrono::duration<double>(clock::now() - t0).count() / static_cast<double>(state.iterations());
          if (!verified(state, *r, *out, local)) return;
          set_common_counters(state, *r);
          state.counters["workers"] = static_cast<double>(pool->size());
          state.counters["batch_size"] = static_cast<double>(b);
          state.counters["concurrency"] = static_cast<double>(c);
          const auto base = r->baseline_seconds.find(r->coroutine ? c : 0);
          if (base != r->baseline_seconds.end() && seconds > 0) state.counters["speedup"] = base->second / seconds;
        })
            ->UseRealTime()
            ->MinTime(r->sweep.min_time_s)
            ->Unit(benchmark::kMillisecond);
      }
}

}  // namespace detail

/// Registers benchmarks of `pool.map(inputs, fn)`: one per combination in
/// `s` (named "<name>/workers:W/batch:B/concurrency:C", B a number or
/// "adaptive") and, unless s.sequential is false, the in-process baseline
/// ("<name>/sequential", or "<name>/one_process/concurrency:C" when `fn`
/// returns asio::awaitable). Call before benchmark::RunSpecifiedBenchmarks()
/// (for example from a namespace-scope initializer, with benchmark_main).
///
/// `inputs` is copied once into a vector shared by the benchmarks. `fn` obeys
/// process_pool::map's rules (an empty or trivially copyable function object;
/// serializable item and result types). Every benchmark measures wall-clock
/// time per pass over all inputs and reports items_per_second (and
/// bytes_per_second if s.bytes_per_pass is set), the pool's counters, and
/// `speedup` over the baseline when the baseline ran earlier in the process.
/// A task or pool failure shows as that benchmark's error; the other
/// benchmarks still run. With s.verify, the pool's results are compared once
/// with the in-process results (a mismatch is an error).
template <std::ranges::input_range R, class Fn>
void register_map(std::string name, R&& inputs, Fn fn, sweep s = {}) {
  using T = std::remove_cvref_t<std::ranges::range_value_t<R>>;
  using traits = detail::task_traits_for<Fn, T>;
  using Out = std::vector<typename traits::result_type>;
  auto r = std::make_shared<detail::registration<T, Out>>();
  r->name = std::move(name);
  r->inputs = detail::copy_inputs<T>(std::forward<R>(inputs));
  r->sweep = std::move(s);
  r->coroutine = traits::is_awaitable;
  detail::registration<T, Out>* raw = r.get();
  detail::register_all(
      r, [fn](process_pool& pool, std::span<const T> in) { return pool.map(in, fn); },
      [raw, fn](std::size_t c) mutable { return detail::map_in_process(std::span<const T>(raw->inputs), fn, c); });
}

/// As register_map, for `pool.map_reduce(inputs, fn, reduce, init)`; the
/// baseline folds in this process with the same `reduce` and `init`.
template <std::ranges::input_range R, class Fn, class Reduce, class Acc>
void register_map_reduce(std::string name, R&& inputs, Fn fn, Reduce reduce, Acc init, sweep s = {}) {
  using T = std::remove_cvref_t<std::ranges::range_value_t<R>>;
  auto r = std::make_shared<detail::registration<T, Acc>>();
  r->name = std::move(name);
  r->inputs = detail::copy_inputs<T>(std::forward<R>(inputs));
  r->sweep = std::move(s);
  r->coroutine = detail::task_traits_for<Fn, T>::is_awaitable;
  detail::registration<T, Acc>* raw = r.get();
  detail::register_all(
      r, [fn, reduce, init](process_pool& pool, std::span<const T> in) { return pool.map_reduce(in, fn, reduce, init); },
      [raw, fn, reduce, init](std::size_t c) mutable {
        return detail::map_reduce_in_process(std::span<const T>(raw->inputs), fn, reduce, init, c);
      });
}

/// Reports per-iteration latencies `us` (microseconds) as the counters
/// p50_us, p99_us and max_us, and one item per iteration. Does nothing for
/// an empty sample.
inline void set_latency_counters(benchmark::State& state, std::vector<double> us) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  const auto at = [&](double q) { return us[std::min(us.size() - 1, static_cast<std::size_t>(q * us.size()))]; };
  state.counters["p50_us"] = at(0.50);
  state.counters["p99_us"] = at(0.99);
  state.counters["max_us"] = us.back();
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}

/// Registers "<name>": the wall-clock round trip of one item, `pool.map` of
/// a single `item`, repeated `samples` times on one pool started with
/// `options` (batch size 1), reporting the median and 99th percentile in
/// microseconds (counters p50_us, p99_us, max_us) besides the mean time.
/// What it measures is everything a caller waits for: the job set-up in the
/// parent, the frames both ways, the worker's call and the result.
template <class T, class Fn>
void register_round_trip(std::string name, T item, Fn fn, pool_options options = {},
                         std::size_t samples = 20'000) {
  options.batch_size = 1;
  const std::string label = name;
  auto owner = std::make_shared<int>(0);  // identifies this registration's pool
  benchmark::RegisterBenchmark(label.c_str(), [name, item, fn, options, owner, samples](benchmark::State& state) {
    using clock = std::chrono::steady_clock;
    process_pool* pool = nullptr;
    const T one[1] = {item};
    try {
      bool fresh = false;
      pool = &detail::cached_pool(detail::pool_key{owner.get(), options.workers, 1, options.concurrency}, options,
                                  fresh);
      if (fresh)
        for (int i = 0; i < 1000; ++i) (void)pool->map(std::span<const T>(one), fn);
    } catch (...) {
      detail::skip(state, name + ": starting the pool failed: " + detail::current_error());
      for (auto _ : state) {
      }
      return;
    }
    std::vector<double> us;
    us.reserve(samples);
    for (auto _ : state) {
      const auto t0 = clock::now();
      try {
        auto out = pool->map(std::span<const T>(one), fn);
        benchmark::DoNotOptimize(out);
      } catch (...) {
        detail::skip(state, name + ": " + detail::current_error());
        break;
      }
      us.push_back(std::chrono::duration<double, std::micro>(clock::now() - t0).count());
    }
    if (state.error_occurred()) return;
    set_latency_counters(state, std::move(us));
  })
      ->UseRealTime()
      ->Iterations(static_cast<benchmark::IterationCount>(samples))
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace coshard::bench
