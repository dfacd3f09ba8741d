// coshard/detail/worker/worker_context.hpp - what a job's runner sees of the
// worker process hosting it, and the watch its watchdog keeps on items.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/io_context.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <span>
#include <utility>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/detail/item_failure.hpp"
#include "coshard/detail/wire.hpp"

namespace coshard::detail {

/// Lets the worker's watchdog thread see which item runs and until when it
/// may (0: none running). A plain function sets the two atomics around each
/// call; awaitable items, several at once, register with begin/end and the
/// watchdog sees the one due first, so that an awaitable blocking the loop
/// is caught as a stuck plain function is.
struct item_watch {
  std::atomic<std::uint64_t> index{0};
  std::atomic<std::uint64_t> deadline_ns{0};
  /// Awaitable items running at once; with more than one, a blocked loop
  /// cannot be pinned on the item due first.
  std::atomic<std::uint32_t> running_count{0};

  // (deadline, index) of each running awaitable item; loop thread only.
  using running_list = std::list<std::pair<std::uint64_t, std::uint64_t>>;
  running_list running;

  running_list::iterator begin_item(std::uint64_t index, std::uint64_t deadline) {
    auto it = running.emplace(running.end(), deadline, index);
    publish_earliest();
    return it;
  }
  void end_item(running_list::iterator it) {
    running.erase(it);
    publish_earliest();
  }

 private:
  void publish_earliest() {
    std::uint64_t best = 0, best_index = 0;
    for (auto& [deadline, idx] : running)
      if (best == 0 || deadline < best) {
        best = deadline;
        best_index = idx;
      }
    index.store(best_index, std::memory_order_relaxed);
    running_count.store(static_cast<std::uint32_t>(running.size()), std::memory_order_relaxed);
    deadline_ns.store(best, std::memory_order_release);
  }
};

/// What a runner may ask of the worker process hosting it.
class worker_context {
 public:
  virtual ~worker_context() = default;
  virtual asio::io_context& io() = 0;
  [[nodiscard]] virtual std::size_t concurrency() const = 0;
  [[nodiscard]] virtual std::chrono::nanoseconds item_timeout() const = 0;
  /// Largest frame the parent accepts.
  [[nodiscard]] virtual std::uint64_t max_frame_bytes() const = 0;
  virtual item_watch& watch() = 0;
  /// An empty buffer, recycled from earlier replies when possible.
  virtual byte_buffer take_buffer() = 0;
  /// Queues a reply frame; never blocks and never waits for the parent.
  virtual void send(const frame_header& h, byte_buffer payload) = 0;
  /// Counts an item cancelled at item_timeout (pool_stats::timeouts).
  virtual void count_timeout() noexcept = 0;
};

class job_runner : public std::enable_shared_from_this<job_runner> {
 public:
  virtual ~job_runner() = default;
  /// Runs or starts one batch; the payload is valid only during the call.
  virtual void on_batch(const frame_header& h, std::span<const std::byte> payload) = 0;
  /// Skips every queued item and cancels the running coroutines; each held
  /// batch still gets its reply.
  virtual void cancel() = 0;
  /// Replies to a flush (reduce jobs: with the partial held; others never
  /// get one).
  virtual void on_flush(const frame_header& h) = 0;
};

inline std::uint64_t steady_now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

inline frame_header reply_header(const frame_header& batch, frame_type type) {
  frame_header h = batch;
  h.type = type;
  h.flags = 0;
  h.payload_size = 0;
  h.elapsed_ns = 0;
  return h;
}

inline void send_task_failed(worker_context& ctx, const frame_header& batch, const item_failure& f) {
  byte_buffer out = ctx.take_buffer();
  encode_failure(out, f);
  frame_header h = reply_header(batch, frame_type::task_failed);
  h.payload_size = out.size();
  ctx.send(h, std::move(out));
}

}  // namespace coshard::detail
