// coshard/pool_stats.hpp - what a process_pool has done since it was built,
// as process_pool::stats() reports it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace coshard {

/// Cumulative figures of one pool since its construction. Counts move while
/// jobs run (as their batches come back), so a snapshot taken during a job
/// shows it part done. A stream of submitted tasks counts as one job.
struct pool_stats {
  /// Jobs started (those still running are started but not ended).
  std::size_t jobs_started = 0;
  /// Jobs that ended with their result (map_settled: whatever its items did).
  std::size_t jobs_succeeded = 0;
  /// Jobs that ended with an error: an item's failure in map, a pool_error, ...
  std::size_t jobs_failed = 0;
  /// Jobs that ended cancelled (operation_aborted).
  std::size_t jobs_cancelled = 0;
  /// Items whose result came back (as job_progress::items_done).
  std::size_t items_done = 0;
  /// Items that failed (as job_progress::items_failed).
  std::size_t items_failed = 0;
  /// Items sent to a worker again (as job_progress::items_retried).
  std::size_t items_retried = 0;
  /// Items that ran past item_timeout (cancelled, or their worker replaced).
  std::size_t timeouts = 0;
  /// Batches answered by workers (a reduce batch whose held partial was lost
  /// with its worker is answered, and counted, again when it reruns).
  std::size_t batches = 0;
  /// Workers replaced while jobs ran (died, timed out, or retired).
  std::size_t workers_replaced = 0;
  /// Payload bytes written to the workers.
  std::uint64_t bytes_sent = 0;
  /// Payload bytes read back from the workers.
  std::uint64_t bytes_received = 0;
  /// Per worker slot: the time it held at least one batch not yet answered
  /// (the parent's view: the batch's travel is included). Its share of
  /// `uptime` is the slot's utilisation.
  std::vector<std::chrono::nanoseconds> busy_per_worker;
  /// Time since the pool was built.
  std::chrono::nanoseconds uptime{};
};

}  // namespace coshard
