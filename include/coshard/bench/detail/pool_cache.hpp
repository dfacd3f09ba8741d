// coshard/bench/detail/pool_cache.hpp - the one pool a benchmark run keeps alive.
#pragma once

#include "coshard/process_pool.hpp"

#include <cstddef>
#include <memory>
#include <optional>

namespace coshard::bench::detail {

/// Which registered benchmark configuration a pool was started for.
struct pool_key {
  const void* owner = nullptr;  // the registration's shared state
  std::size_t workers = 0;
  std::size_t batch_size = 0;
  std::size_t concurrency = 0;
  friend bool operator==(const pool_key&, const pool_key&) = default;
};

/// The pool for `key`, started with `options` unless the pool kept from the
/// previous call has the same key. Google Benchmark runs the repetitions of
/// one benchmark back to back, so they share a pool (started once, outside
/// the timed loop), while at most one pool's workers are alive at a time:
/// a sweep over 1..16 workers never holds 16 pools. `fresh` tells whether a
/// new pool was started (the caller warms it up). Throws what the
/// process_pool constructor throws.
inline process_pool& cached_pool(const pool_key& key, const pool_options& options, bool& fresh) {
  static std::optional<pool_key> kept_key;
  static std::unique_ptr<process_pool> kept;
  fresh = !(kept && kept_key == key);
  if (fresh) {
    kept.reset();  // the old workers exit before the new ones start
    kept_key.reset();
    kept = std::make_unique<process_pool>(options);
    kept_key = key;
  }
  return *kept;
}

}  // namespace coshard::bench::detail
