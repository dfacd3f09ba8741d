// coshard/detail/parent/pool_counters.hpp - the running totals behind
// process_pool::stats(), added to by every job as its batches come back.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "coshard/pool_stats.hpp"
#include "coshard/progress.hpp"

namespace coshard::detail {

/// Relaxed atomics: jobs on several threads add to them, stats() reads a
/// snapshot that is consistent per counter, not across counters.
class pool_counters {
 public:
  explicit pool_counters(std::size_t slots)
      : busy_ns_(std::make_unique<std::atomic<std::uint64_t>[]>(slots)), slots_(slots) {}

  enum class job_end { succeeded, failed, cancelled };

  void job_started() noexcept { add(jobs_started_, 1); }
  void job_ended(job_end how) noexcept {
    add(how == job_end::succeeded ? jobs_succeeded_ : how == job_end::failed ? jobs_failed_ : jobs_cancelled_, 1);
  }
  void batch_answered() noexcept { add(batches_, 1); }
  void timed_out() noexcept { add(timeouts_, 1); }
  void busy(std::size_t slot, std::chrono::nanoseconds d) noexcept {
    if (slot < slots_ && d.count() > 0) add(busy_ns_[slot], static_cast<std::uint64_t>(d.count()));
  }
  /// Adds what a job counted since its last call (`now` minus `before`).
  void add_progress(const job_progress& now, const job_progress& before) noexcept {
    add(items_done_, now.items_done - before.items_done);
    add(items_failed_, now.items_failed - before.items_failed);
    add(items_retried_, now.items_retried - before.items_retried);
    add(workers_replaced_, now.workers_replaced - before.workers_replaced);
    add(bytes_sent_, now.bytes_sent - before.bytes_sent);
    add(bytes_received_, now.bytes_received - before.bytes_received);
  }

  [[nodiscard]] pool_stats snapshot() const {
    pool_stats s;
    s.jobs_started = get(jobs_started_);
    s.jobs_succeeded = get(jobs_succeeded_);
    s.jobs_failed = get(jobs_failed_);
    s.jobs_cancelled = get(jobs_cancelled_);
    s.items_done = get(items_done_);
    s.items_failed = get(items_failed_);
    s.items_retried = get(items_retried_);
    s.timeouts = get(timeouts_);
    s.batches = get(batches_);
    s.workers_replaced = get(workers_replaced_);
    s.bytes_sent = get(bytes_sent_);
    s.bytes_received = get(bytes_received_);
    s.busy_per_worker.reserve(slots_);
    for (std::size_t i = 0; i < slots_; ++i)
      s.busy_per_worker.emplace_back(static_cast<std::int64_t>(get(busy_ns_[i])));
    s.uptime = std::chrono::steady_clock::now() - since_;
    return s;
  }

 private:
  static void add(std::atomic<std::uint64_t>& c, std::uint64_t n) noexcept {
    if (n) c.fetch_add(n, std::memory_order_relaxed);
  }
  static std::uint64_t get(const std::atomic<std::uint64_t>& c) noexcept { return c.load(std::memory_order_relaxed); }

  std::atomic<std::uint64_t> jobs_started_{0}, jobs_succeeded_{0}, jobs_failed_{0}, jobs_cancelled_{0};
  std::atomic<std::uint64_t> items_done_{0}, items_failed_{0}, items_retried_{0}, timeouts_{0}, batches_{0};
  std::atomic<std::uint64_t> workers_replaced_{0}, bytes_sent_{0}, bytes_received_{0};
  std::unique_ptr<std::atomic<std::uint64_t>[]> busy_ns_;
  std::size_t slots_;
  std::chrono::steady_clock::time_point since_ = std::chrono::steady_clock::now();
};

}  // namespace coshard::detail
