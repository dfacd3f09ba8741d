// coshard/detail/worker_set.hpp - the parent's view of its worker processes.
#pragma once

#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "coshard/detail/asio_config.hpp"

#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>

#include "coshard/detail/frame_io.hpp"
#include "coshard/detail/process.hpp"
#include "coshard/pool_options.hpp"

namespace coshard::detail {

// An anonymous shared page: survives fork, so parent and worker see it both.
class shared_status_page {
 public:
  shared_status_page() {
    void* p = ::mmap(nullptr, sizeof(worker_status), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    if (p == MAP_FAILED) throw pool_error("coshard: mmap of a worker status page failed");
    status_ = new (p) worker_status;
  }
  shared_status_page(const shared_status_page&) = delete;
  shared_status_page& operator=(const shared_status_page&) = delete;
  ~shared_status_page() { ::munmap(status_, sizeof(worker_status)); }
  [[nodiscard]] worker_status* get() const noexcept { return status_; }

 private:
  worker_status* status_;
};

struct worker_slot {
  /// Atomic because process_pool::shutdown(forced) reads it from another thread.
  std::atomic<pid_t> pid{-1};
  int fd = -1;
  /// Written by the worker before it exits on its own (e.g. its watchdog).
  std::unique_ptr<shared_status_page> status;
  /// Set when the channel can no longer be trusted (EOF, corrupt frame): the
  /// worker is killed and replaced before the next job.
  bool broken = false;
  /// Reads this worker's replies; its buffer is reused from job to job.
  std::unique_ptr<frame_reader> reader;
  /// Items sent to this worker process so far (for max_items_per_worker).
  std::size_t items_assigned = 0;
  /// Over max_worker_rss_bytes: replace once it has answered what it holds.
  bool retire = false;
  /// The channel as a socket registered with the reactor of `socket_context`,
  /// kept from job to job when jobs run on one of the pool's own io_contexts:
  /// registering the fd for every job costs an epoll_ctl pair and an ioctl per
  /// worker, a good part of a small job's round trip. `fd` keeps owning the
  /// descriptor; the socket is released (never closed) before `fd` is closed.
  std::unique_ptr<asio::local::stream_protocol::socket> socket;
  asio::io_context* socket_context = nullptr;

  /// The socket of this channel registered with `ctx`'s reactor.
  asio::local::stream_protocol::socket& socket_on(asio::io_context& ctx) {
    if (socket && socket_context != &ctx) release_socket();
    if (!socket) {
      auto s = std::make_unique<asio::local::stream_protocol::socket>(ctx);
      s->assign(asio::local::stream_protocol(), fd);
      socket = std::move(s);
      socket_context = &ctx;
    }
    return *socket;
  }

  /// Deregisters the kept socket, if any, leaving the fd open.
  void release_socket() noexcept {
    if (!socket) return;
    asio::error_code ignored;
    if (socket->is_open()) socket->release(ignored);
    socket.reset();
    socket_context = nullptr;
  }
};

class worker_set {
 public:
  explicit worker_set(const pool_options& opts) : opts_(opts) {
    std::size_t n = opts.workers ? opts.workers : std::max(1u, std::thread::hardware_concurrency());
    slots_ = std::vector<worker_slot>(n);
    try {
      // Fork all first so that their initializers run in parallel.
      for (auto& s : slots_) fork_worker(s);
      for (auto& s : slots_) await_ready(s);
    } catch (...) {
      shutdown();
      throw;
    }
  }
  worker_set(const worker_set&) = delete;
  worker_set& operator=(const worker_set&) = delete;
  ~worker_set() { shutdown(); }

  [[nodiscard]] std::vector<worker_slot>& slots() noexcept { return slots_; }
  [[nodiscard]] const std::vector<worker_slot>& slots() const noexcept { return slots_; }
  [[nodiscard]] const pool_options& options() const noexcept { return opts_; }

  /// Replaces the worker of `s` (killing and reaping it first if it still
  /// runs). Throws pool_error if the pool is closing or the new worker fails
  /// to start.
  void restart(worker_slot& s) {
    // A replacement can be killed from outside while it starts (as any worker
    // can); only a failure that repeats is reported.
    for (int attempt = 1;; ++attempt) {
      stop(s, std::chrono::milliseconds(0));
      if (closing_.load()) throw pool_error("coshard: the pool was shut down");
      try {
        start(s);
        return;
      } catch (const pool_error&) {
        if (attempt == max_start_attempts) throw;
      }
    }
  }

  /// Refuses replacements from now on; a shutdown is under way.
  void close() noexcept { closing_.store(true); }
  [[nodiscard]] bool closing() const noexcept { return closing_.load(); }

  /// SIGKILLs every worker; callable from any thread. Reaping is left to the
  /// job that notices, or to shutdown().
  void kill_all() noexcept {
    for (auto& s : slots_)
      if (const pid_t pid = s.pid.load(); pid > 0) ::kill(pid, SIGKILL);
  }

  /// Kills and replaces every worker whose channel broke in an earlier job.
  void replace_broken() {
    for (auto& s : slots_) {
      if (!s.broken) continue;
      stop(s, std::chrono::milliseconds(0));
      start(s);
    }
  }

  /// Closes every channel (a worker exits on EOF), then reaps each worker,
  /// killing those still alive after `shutdown_timeout`.
  void shutdown() noexcept { shutdown(opts_.shutdown_timeout); }

  void shutdown(std::chrono::milliseconds grace) noexcept {
    closing_.store(true);
    for (auto& s : slots_)
      if (s.fd >= 0) {
        s.release_socket();
        ::close(s.fd);
        s.fd = -1;
      }
    const auto deadline = std::chrono::steady_clock::now() + grace;
    for (auto& s : slots_) {
      if (s.pid <= 0) continue;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      reap_worker(s.pid, std::max(left, std::chrono::milliseconds(0)));
      s.pid = -1;
    }
  }

 private:
  worker_settings settings(worker_slot& s) const {
    return {opts_.concurrency, opts_.max_frame_bytes, opts_.item_timeout, opts_.timeout_grace,
            s.status->get(), &opts_.initializer, &opts_.async_initializer,
            opts_.max_worker_rss_bytes > 0};
  }

  void start(worker_slot& s) {
    fork_worker(s);
    await_ready(s);
  }

  // Blocks until the worker's ready frame arrives (its initializers ran), or
  // throws pool_error saying why not; the worker is reaped on failure.
  void await_ready(worker_slot& s) {
    const auto deadline = std::chrono::steady_clock::now() + opts_.startup_timeout;
    const pid_t pid = s.pid;
    auto fail = [&](const std::string& why) {
      stop(s, std::chrono::milliseconds(1000));
      throw pool_error("coshard: worker pid " + std::to_string(pid) + " " + why);
    };
    auto read_exact = [&](void* dst, std::size_t n) {
      auto* p = static_cast<char*>(dst);
      while (n > 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        pollfd pfd{s.fd, POLLIN, 0};
        const int r = ::poll(&pfd, 1, static_cast<int>(std::max<long long>(0, left.count())));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0)
          fail("did not start within startup_timeout (" + std::to_string(opts_.startup_timeout.count()) +
               " ms)");
        const ssize_t got = ::read(s.fd, p, n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
          const int status = reap_worker(pid, std::chrono::milliseconds(1000));
          s.pid = -1;
          fail("exited during startup (" + describe_wait_status(status) + ")");
        }
        p += got;
        n -= static_cast<std::size_t>(got);
      }
    };
    frame_header h;
    read_exact(&h, sizeof h);
    if (h.magic != frame_magic || h.type != frame_type::worker_ready || h.payload_size > (1u << 20))
      fail("sent a malformed ready frame");
    std::string message;
    if (h.payload_size) {
      std::vector<std::byte> payload(h.payload_size);
      read_exact(payload.data(), payload.size());
      message = decode<std::string>(payload);
    }
    if (h.flags) fail("could not start: its initializer threw " + message);
  }

  void fork_worker(worker_slot& s) {
    std::vector<int> others;
    for (auto& o : slots_)
      if (&o != &s && o.fd >= 0) others.push_back(o.fd);
    if (!s.status) s.status = std::make_unique<shared_status_page>();
    s.status->get()->timed_out_index.store(worker_status::none);
    auto w = spawn_worker(settings(s), others);
    s.pid = w.pid;
    s.fd = w.fd;
    s.broken = false;
    s.reader = std::make_unique<frame_reader>(opts_.max_frame_bytes);
    s.items_assigned = 0;
    s.retire = false;
  }

  void stop(worker_slot& s, std::chrono::milliseconds grace) {
    s.release_socket();
    if (s.fd >= 0) ::close(s.fd);
    s.fd = -1;
    if (s.pid > 0) reap_worker(s.pid, grace);
    s.pid = -1;
  }

  static constexpr int max_start_attempts = 5;
  pool_options opts_;
  std::vector<worker_slot> slots_;
  std::atomic<bool> closing_{false};
};

}  // namespace coshard::detail
