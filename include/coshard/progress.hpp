// coshard/progress.hpp - how far a job has come, as job_options::progress
// reports it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace coshard {

/// A running job's counts, passed to job_options::progress. Counts move as
/// batches come back; each call's counts are at least the previous call's.
struct job_progress {
  /// Items whose result came back (in map_settled: whose value came back;
  /// in a reduce job: folded into the partial their worker holds until the
  /// parent asks for it, and counted once even if that partial is lost with
  /// its worker and the items run again; should one of them fail then, it is
  /// counted in items_failed as well, and the job fails on it).
  std::size_t items_done = 0;
  /// Items that failed: a task_error, a worker_crashed, a timeout_error, or an
  /// input that could not be sent. Not in items_done: done + failed counts
  /// each finished item once (but for the reduce-job case under items_done).
  std::size_t items_failed = 0;
  /// Items sent to a worker again: after the worker holding them died or was
  /// stopped, or because their batch was cut short (counted as they are sent).
  std::size_t items_retried = 0;
  /// The number of inputs, when the input range knows its size.
  std::optional<std::size_t> items_total{};
  /// Worker processes replaced during the job (died, timed out, or retired
  /// by max_items_per_worker or max_worker_rss_bytes).
  std::size_t workers_replaced = 0;
  /// Payload bytes written to the workers (batches and the job's start).
  std::uint64_t bytes_sent = 0;
  /// Payload bytes read back from the workers.
  std::uint64_t bytes_received = 0;
  /// Time since the job started.
  std::chrono::nanoseconds elapsed{};
  /// True in the last call, made once as the job ends (however it ends).
  bool finished = false;
};

}  // namespace coshard
