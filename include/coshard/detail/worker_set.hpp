// coshard/detail/worker_set.hpp - the parent's view of its worker processes.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <new>
#include <thread>
#include <vector>

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
  pid_t pid = -1;
  int fd = -1;
  /// Written by the worker before it exits on its own (e.g. its watchdog).
  std::unique_ptr<shared_status_page> status;
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

  /// Replaces the worker of `s` (killing and reaping it first if it still runs).
  void restart(worker_slot& s) {
    stop(s, std::chrono::milliseconds(0));
    start(s);
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
  worker_settings settings(worker_slot& s) const {
    return {opts_.concurrency, opts_.max_frame_bytes, opts_.item_timeout, opts_.timeout_grace,
            s.status->get()};
  }

  void start(worker_slot& s) {
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
