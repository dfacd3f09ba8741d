// coshard/detail/worker/worker_process.hpp - the event loop a worker process runs
// until its channel to the parent closes.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "coshard/detail/exit_codes.hpp"
#include "coshard/detail/frame_io.hpp"
#include "coshard/detail/worker_status.hpp"
#include "coshard/detail/worker/task_runner.hpp"
#include "coshard/shippable_function.hpp"

namespace coshard::detail {

struct worker_settings {
  std::size_t concurrency = 64;
  std::uint64_t max_frame_bytes = 1ull << 30;
  std::chrono::nanoseconds timeout_grace{0};
  worker_status* status = nullptr;
  // Point into the pool_options the supervisor holds (the owner's copy when
  // forked, the ones rebuilt from the wire when re-executed).
  const coshard::shippable_function<void()>* initializer = nullptr;
  const coshard::shippable_function<asio::awaitable<void>()>* async_initializer = nullptr;
  bool report_rss = false;  // put resident memory in every reply header
  // Run LeakSanitizer at a clean exit (sanitized builds). Only sound where
  // the worker holds every stack that may point at live objects: a fresh
  // image (start_method::exec), or a copy of an owner that ran one thread.
  // A worker forked from a copy of a multi-threaded owner lacks the other
  // threads' stacks, so the owner's live objects would look leaked.
  bool leak_check_at_exit = false;
};

class worker_process final : public worker_context {
 public:
  worker_process(int fd, worker_settings settings)
      : settings_(settings), socket_(io_, asio::local::stream_protocol(), fd) {}

  /// Serves frames until the parent closes the channel. Returns the process
  /// exit code: 0 on a clean EOF, non-zero after a protocol error.
  int run() {
    if (settings_.report_rss) statm_fd_ = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    asio::co_spawn(io_, serve(), [&](std::exception_ptr e) {
      if (e) exit_code_ = report(e);
      io_.stop();
    });
    io_.run();
    if (statm_fd_ >= 0) ::close(statm_fd_);
    return exit_code_;
  }

  ~worker_process() override {
    if (watchdog_.joinable()) {
      {
        std::lock_guard lock(watchdog_mutex_);
        stop_watchdog_ = true;
      }
      watchdog_wake_.notify_all();
      watchdog_.join();
    }
  }

  asio::io_context& io() override { return io_; }
  [[nodiscard]] std::size_t concurrency() const override { return settings_.concurrency; }
  [[nodiscard]] std::chrono::nanoseconds item_timeout() const override { return job_item_timeout_; }
  [[nodiscard]] std::uint64_t max_frame_bytes() const override { return settings_.max_frame_bytes; }
  item_watch& watch() override { return watch_; }
  void count_timeout() noexcept override {
    if (settings_.status) settings_.status->items_timed_out.fetch_add(1, std::memory_order_relaxed);
  }

  byte_buffer take_buffer() override { return spare_.take(); }

  void send(const frame_header& h, byte_buffer payload) override {
    outbox_.emplace_back(h, std::move(payload));
    if (settings_.report_rss) outbox_.back().first.rss_mib = resident_mib();
    if (!writing_) {
      writing_ = true;
      asio::co_spawn(io_, write_loop(), [this](std::exception_ptr e) {
        if (e) {
          report(e);
          io_.stop();
        }
      });
    }
  }

 private:
  // An item stuck in CPU work (a plain function, or an awaitable that
  // blocks the loop) keeps the event loop from noticing, so only a second
  // thread can. It ends the process; the parent reads the item's index from
  // the shared status page and fails that item with timeout_error. It sleeps
  // until the next deadline could pass, never on a fixed tick: with no item
  // running, an item that starts later cannot be overdue before
  // item_timeout + timeout_grace from now. Started by the first job that
  // has an item_timeout; while a job without one runs, it waits to be told
  // of the next job.
  void start_watchdog() {
    watchdog_ = std::thread([this] {
      const auto grace = static_cast<std::uint64_t>(settings_.timeout_grace.count());
      std::unique_lock lock(watchdog_mutex_);
      while (!stop_watchdog_) {
        const std::uint64_t deadline = watch_.deadline_ns.load(std::memory_order_acquire);
        if (deadline == 0 && watchdog_period_ns_ == 0) {  // the current job has no item_timeout
          watchdog_wake_.wait(lock);
          continue;
        }
        const std::uint64_t period = watchdog_period_ns_ + grace;
        const std::uint64_t now = steady_now_ns();
        std::uint64_t wake_at = now + period;
        if (deadline != 0) {
          if (now >= deadline + grace) {
            // With several awaitable items in flight, the one due first may
            // only be waiting for the loop another item blocks: no index is
            // named then, and the parent isolates the culprit as it does a
            // crashing item.
            const bool exact = watch_.running_count.load(std::memory_order_relaxed) <= 1;
            if (settings_.status)
              settings_.status->timed_out_index.store(exact ? watch_.index.load(std::memory_order_relaxed)
                                                            : worker_status::none);
            if (exact)
              std::fprintf(stderr, "coshard worker %d: input index %llu exceeded item_timeout; exiting\n",
                           static_cast<int>(::getpid()), static_cast<unsigned long long>(watch_.index.load()));
            else
              std::fprintf(stderr, "coshard worker %d: its loop stayed blocked past item_timeout; exiting\n",
                           static_cast<int>(::getpid()));
            ::_exit(timeout_exit_code);
          }
          wake_at = deadline + grace;
        }
        watchdog_wake_.wait_for(lock, std::chrono::nanoseconds(wake_at - now));
      }
    });
  }

  static int report(std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::system_error& err) {
      if (err.code() == asio::error::eof || err.code() == asio::error::connection_reset ||
          err.code() == asio::error::broken_pipe)
        return 0;  // the parent went away or shut us down
      std::fprintf(stderr, "coshard worker %d: %s\n", static_cast<int>(::getpid()), err.what());
    } catch (const std::exception& err) {
      std::fprintf(stderr, "coshard worker %d: %s\n", static_cast<int>(::getpid()), err.what());
    }
    return 3;
  }

  std::uint32_t resident_mib() const {
    char buf[64];
    const ssize_t n = statm_fd_ >= 0 ? ::pread(statm_fd_, buf, sizeof buf - 1, 0) : -1;
    if (n <= 0) return 0;
    buf[n] = 0;
    unsigned long size = 0, resident = 0;
    if (std::sscanf(buf, "%lu %lu", &size, &resident) != 2) return 0;
    return static_cast<std::uint32_t>(resident * static_cast<unsigned long>(::sysconf(_SC_PAGESIZE)) >> 20);
  }

  // Runs the initializers, tells the parent how that went, then serves jobs.
  asio::awaitable<void> serve() {
    frame_header ready;
    ready.type = frame_type::worker_ready;
    byte_buffer message;
    try {
      if (settings_.initializer && *settings_.initializer) (*settings_.initializer)();
      if (settings_.async_initializer && *settings_.async_initializer) co_await (*settings_.async_initializer)();
    } catch (...) {
      const auto what = describe_current_exception();
      encode_value(message, what.type_name + (what.message.empty() ? "" : ": " + what.message));
      ready.flags = 1;
    }
    ready.payload_size = message.size();
    co_await write_frame(socket_, ready, message.view());
    if (ready.flags) {
      exit_code_ = init_failed_exit_code;
      co_return;
    }
    co_await read_loop();
  }

  asio::awaitable<void> read_loop() {
    for (;;) {
      frame_header h;
      const auto payload = co_await reader_.read(socket_, h);
      dispatch(h, payload);
    }
  }

  void dispatch(const frame_header& h, std::span<const std::byte> payload) {
    switch (h.type) {
      case frame_type::job_start:
        runner_.reset();
        job_ = h.job;
        try {
          runner_ = make_runner(payload);
        } catch (...) {
          send_job_failed(h, describe_current_exception());
        }
        return;
      case frame_type::batch:
        if (!runner_ || h.job != job_) {
          send_job_failed(h, {"coshard::pool_error", "batch for a job this worker did not start"});
          return;
        }
        try {
          runner_->on_batch(h, payload);
        } catch (...) {
          // Not an item's failure (those are replied per item): the job cannot run here.
          send_job_failed(h, describe_current_exception());
        }
        return;
      case frame_type::job_end:
        runner_.reset();
        return;
      case frame_type::cancel:
        if (runner_ && h.job == job_) runner_->cancel();
        return;
      case frame_type::flush:
        if (!runner_ || h.job != job_) {
          send_job_failed(h, {"coshard::pool_error", "flush for a job this worker did not start"});
          return;
        }
        runner_->on_flush(h);
        return;
      default:
        throw serialization_error("coshard: unexpected frame type " +
                                  std::to_string(static_cast<int>(h.type)) + " from the parent");
    }
  }

  std::shared_ptr<job_runner> make_runner(std::span<const std::byte> payload) {
    const auto [id, parts] = parse_job_start(payload);
    runner_factory make = entry_registry::find(id);
    if (!make)
      throw pool_error("coshard: unknown entry id " + std::to_string(id) +
                       ": the worker does not run the same binary as the parent");
    job_item_timeout_ = std::chrono::nanoseconds(static_cast<std::int64_t>(parts.item_timeout_ns));
    if (parts.item_timeout_ns > 0 || watchdog_.joinable()) {
      {
        // Idle, the watchdog sleeps for the current job's limit: an item
        // that starts meanwhile cannot be overdue before that. (Whether an
        // item is overdue is decided by the item's own deadline.)
        std::lock_guard lock(watchdog_mutex_);
        watchdog_period_ns_ = parts.item_timeout_ns;
      }
      watchdog_wake_.notify_all();
      if (!watchdog_.joinable()) start_watchdog();
    }
    return make(*this, parts);
  }

  void send_job_failed(const frame_header& h, const exception_description& what) {
    byte_buffer out = take_buffer();
    encode_value(out, what.type_name + ": " + what.message);
    frame_header reply = reply_header(h, frame_type::job_failed);
    reply.payload_size = out.size();
    send(reply, std::move(out));
  }

  asio::awaitable<void> write_loop() {
    while (!outbox_.empty()) {
      auto& [h, payload] = outbox_.front();
      co_await write_frame(socket_, h, payload.view());
      spare_.give(std::move(payload));
      outbox_.pop_front();
    }
    writing_ = false;
  }

  worker_settings settings_;
  asio::io_context io_{1};
  asio::local::stream_protocol::socket socket_;
  frame_reader reader_{settings_.max_frame_bytes};
  std::deque<std::pair<frame_header, byte_buffer>> outbox_;
  buffer_pool spare_{8, std::numeric_limits<std::size_t>::max()};
  bool writing_ = false;
  std::shared_ptr<job_runner> runner_;
  std::uint64_t job_ = 0;
  item_watch watch_;
  int exit_code_ = 0;
  int statm_fd_ = -1;
  std::thread watchdog_;
  std::mutex watchdog_mutex_;
  std::condition_variable watchdog_wake_;
  bool stop_watchdog_ = false;
  std::uint64_t watchdog_period_ns_ = 0;  // the current job's item_timeout; guarded by watchdog_mutex_
  std::chrono::nanoseconds job_item_timeout_{0};
};

}  // namespace coshard::detail
