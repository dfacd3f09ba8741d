// coshard/detail/worker_set.hpp - the parent's view of its worker processes.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <thread>
#include <vector>

#include "coshard/detail/frame_io.hpp"
#include "coshard/detail/process.hpp"
#include "coshard/pool_options.hpp"

namespace coshard::detail {

struct worker_slot {
  pid_t pid = -1;
  int fd = -1;
  /// Set when the channel can no longer be trusted (EOF, corrupt frame): the
  /// worker is killed and replaced before the next job.
  bool broken = false;
  /// Reads this worker's replies; its buffer is reused from job to job.
  std::unique_ptr<frame_reader> reader;
};

class worker_set {
 public:
  explicit worker_set(const pool_options& opts) : opts_(opts) {
    std::size_t n = opts.workers ? opts.workers : std::max(1u, std::thread::hardware_concurrency());
    slots_.resize(n);
    try {
      for (auto& s : slots_) start(s);
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
  void shutdown() noexcept {
    for (auto& s : slots_)
      if (s.fd >= 0) {
        ::close(s.fd);
        s.fd = -1;
      }
    const auto deadline = std::chrono::steady_clock::now() + opts_.shutdown_timeout;
    for (auto& s : slots_) {
      if (s.pid <= 0) continue;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      reap_worker(s.pid, std::max(left, std::chrono::milliseconds(0)));
      s.pid = -1;
    }
  }

 private:
  worker_settings settings() const {
    return {opts_.concurrency, opts_.max_frame_bytes};
  }

  void start(worker_slot& s) {
    std::vector<int> others;
    for (auto& o : slots_)
      if (&o != &s && o.fd >= 0) others.push_back(o.fd);
    auto w = spawn_worker(settings(), others);
    s.pid = w.pid;
    s.fd = w.fd;
    s.broken = false;
    s.reader = std::make_unique<frame_reader>(opts_.max_frame_bytes);
  }

  void stop(worker_slot& s, std::chrono::milliseconds grace) {
    if (s.fd >= 0) ::close(s.fd);
    s.fd = -1;
    if (s.pid > 0) reap_worker(s.pid, grace);
    s.pid = -1;
  }

  pool_options opts_;
  std::vector<worker_slot> slots_;
};

}  // namespace coshard::detail
