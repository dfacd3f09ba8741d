// coshard/bench/sweep.hpp - which pool configurations a registered benchmark runs.
#pragma once

#include "coshard/pool_options.hpp"

#include <cstddef>
#include <vector>

namespace coshard::bench {

/// The configurations coshard::bench::register_map and friends register:
/// one benchmark per (workers, batch size, concurrency) combination, plus an
/// in-process baseline.
///
/// `coshard::bench::register_map("parse", pages, parse, {.workers = {1, 2, 4}});`
struct sweep {
  /// Worker counts; empty means one run with `options.workers` (0: one per
  /// hardware thread).
  std::vector<std::size_t> workers{};
  /// pool_options::batch_size values; 0 is the adaptive sizer.
  std::vector<std::size_t> batch_sizes{0};
  /// pool_options::concurrency values (items in flight per worker).
  std::vector<std::size_t> concurrency{64};
  /// Everything else about the pools (timeouts, initializers, limits); its
  /// workers, batch_size and concurrency are replaced by the sweep's values.
  pool_options options{};
  /// Also register the in-process baseline: "<name>/sequential" for a plain
  /// function, "<name>/one_process/concurrency:C" (one io_context in this
  /// process, C items in flight) for a coroutine.
  bool sequential = true;
  /// Check the pool's result (of the last timed pass) against the in-process
  /// result, computed once, untimed; a mismatch fails the benchmark. Needs
  /// the result to be equality comparable (ignored otherwise); a floating
  /// point accumulator may differ by 1e-9 relative (another fold order).
  bool verify = true;
  /// Minimum measuring time per benchmark, seconds (benchmark::MinTime).
  double min_time_s = 0.5;
  /// When > 0, also report bytes_per_second from this many bytes per pass.
  std::size_t bytes_per_pass = 0;
  /// Items mapped once through each new pool before timing starts, so that
  /// worker start-up and the first buffer growth are not measured.
  std::size_t warmup_items = 1024;
};

}  // namespace coshard::bench
