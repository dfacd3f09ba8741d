// coshard/job_options.hpp - per-job settings that override the pool's.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>

#include "coshard/errors.hpp"
#include "coshard/pool_options.hpp"
#include "coshard/progress.hpp"

namespace coshard {

/// Settings of one job, the optional last argument (before a completion
/// token) of every job function:
/// `pool.map(urls, fetch, {.batch_size = 1, .item_timeout = 5s})`.
/// An unset field keeps the pool's value (see pool_options).
struct job_options {
  /// Items per batch for this job; 0 adapts (pool_options::batch_size).
  std::optional<std::size_t> batch_size{};
  /// Per-item time limit for this job; zero means none
  /// (pool_options::item_timeout, with the pool's timeout_grace).
  std::optional<std::chrono::milliseconds> item_timeout{};
  /// Retries of an item whose worker died running it alone
  /// (pool_options::max_retries).
  std::optional<std::size_t> max_retries{};
  /// Cancels this job, and only it, when stop is requested (also for the
  /// blocking functions): it then ends as after cancel(), with
  /// operation_aborted. Other jobs on the pool go on.
  std::stop_token stop_token{};
  /// Called with the job's counts as its batches come back, at most every
  /// 100 ms, and once more as the job ends (`finished`). It runs where the
  /// job runs: on the calling thread for a blocking call; for an async_ one,
  /// on a strand of the completion handler's io executor, or on the pool's
  /// own thread for a handler without one (use_future, a plain callback),
  /// where it must not race the caller's other threads. An exception from it
  /// ends the job with that exception (unless the job has already failed or
  /// been cancelled: then the job's own error stands), and it is not called
  /// again.
  std::function<void(const job_progress&)> progress{};
  /// Reduce jobs: whether each worker folds the partials of its batches
  /// into one it keeps, sent when the pool asks (every 64 batches, 1 MiB of
  /// their inputs, or when it has nothing else to do), instead of one
  /// partial per batch. Unset: on for a cluster's workers on other ranks
  /// (their partials cross machines to one root), off for local workers
  /// (the parent merging one partial per batch overlaps the workers' work:
  /// measured faster on one machine).
  std::optional<bool> hold_partials{};
};

namespace detail {

/// What a running job reads of its settings: the pool's, with the job's
/// overrides applied. Throws pool_error naming a job option out of range.
struct job_settings {
  std::size_t batch_size;
  std::size_t batches_in_flight;
  std::size_t concurrency;
  std::chrono::microseconds target_batch_time;
  std::size_t max_batch_bytes;
  std::uint64_t max_frame_bytes;
  std::size_t max_retries;
  std::chrono::milliseconds item_timeout;
  std::size_t max_items_per_worker;
  std::size_t max_worker_rss_bytes;
  std::function<void(const job_progress&)> progress;
  std::optional<bool> hold_partials;

  job_settings(const pool_options& p, const job_options& j)
      : batch_size(j.batch_size.value_or(p.batch_size)),
        batches_in_flight(p.batches_in_flight),
        concurrency(p.concurrency),
        target_batch_time(p.target_batch_time),
        max_batch_bytes(p.max_batch_bytes),
        max_frame_bytes(p.max_frame_bytes),
        max_retries(j.max_retries.value_or(p.max_retries)),
        item_timeout(j.item_timeout.value_or(p.item_timeout)),
        max_items_per_worker(p.max_items_per_worker),
        max_worker_rss_bytes(p.max_worker_rss_bytes),
        progress(j.progress),
        hold_partials(j.hold_partials) {
    auto fail = [](const std::string& what) { throw pool_error("coshard: job_options." + what); };
    if (batch_size > 0xffff'ffffu) fail("batch_size must be below 2^32 (a batch counts its items in 32 bits)");
    if (item_timeout.count() < 0) fail("item_timeout must not be negative");
    if (item_timeout.count() > 0x7fff'ffff) fail("item_timeout must be at most 2^31-1 ms");
  }
};

}  // namespace detail

}  // namespace coshard
