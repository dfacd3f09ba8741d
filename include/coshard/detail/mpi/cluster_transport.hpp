// coshard/detail/mpi/cluster_transport.hpp - the root's worker slots on a
// cluster: its own forked workers first, then every worker of every other
// rank, reached through that rank's relay (rank_server.hpp).
//
// The job engine sees one slot per worker, wherever it runs: the same
// leases, batches, retries and crash isolation as on one machine. A remote
// slot's frames travel as MPI messages, moved by the root's MPI thread
// (mpi_link); a job's coroutine waits for them without blocking its
// executor, woken through a steady_timer the MPI thread cancels.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "coshard/detail/mpi/mpi_link.hpp"
#include "coshard/detail/parent/local_transport.hpp"
#include "coshard/detail/parent/worker_set.hpp"

namespace coshard::detail {

/// One worker of another rank, as the root tracks it. Guarded by `mutex`:
/// the MPI thread fills it, job coroutines read it.
struct remote_worker {
  int rank = 0;
  std::uint32_t worker = 0;
  std::mutex mutex;
  bool ready = false;
  bool starting = false;
  bool interrupted = false;
  pid_t pid = -1;
  std::deque<std::pair<frame_header, byte_buffer>> inbox;  // frames in the messages they came in
  std::optional<worker_end> end;        // set by `ended` (or the rank's loss)
  std::optional<std::string> failure;   // why it could not start
  bool lost = false;                    // its rank is gone: `failure` says how
  std::function<void()> waker;          // wakes the coroutine waiting on this worker
  worker_allowance allowance;

  void wake() {
    if (waker) waker();
    waker = nullptr;
  }
};

/// Waits, on the calling coroutine's executor, until `done()` holds for `w`
/// (checked under its mutex) or `limit` passes. Returns whether it held.
template <class Done>
asio::awaitable<bool> wait_on(remote_worker& w, Done done, std::chrono::milliseconds limit) {
  auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
  const auto until = std::chrono::steady_clock::now() + limit;
  // Unhooked however the wait ends, the frame's destruction included (its
  // io_context gone): the MPI thread must never reach a timer that is gone.
  struct unhook {
    remote_worker& w;
    ~unhook() {
      std::lock_guard lock(w.mutex);
      w.waker = nullptr;
    }
  } guard{w};
  for (;;) {
    {
      std::lock_guard lock(w.mutex);
      if (done()) co_return true;
      if (std::chrono::steady_clock::now() >= until) co_return false;
      w.waker = [timer] { asio::post(timer->get_executor(), [timer] { timer->cancel(); }); };
    }
    timer->expires_at(until);
    asio::error_code ec;
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::lock_guard lock(w.mutex);
    w.waker = nullptr;
  }
}

/// A remote worker's frames for one serving coroutine.
class remote_channel final : public worker_channel {
 public:
  remote_channel(remote_worker& w, mpi_link& link) : w_(w), link_(link) {}

  asio::awaitable<void> send(const frame_header& h, std::span<const std::byte> payload) override {
    check_alive();
    link_.send(w_.rank, {cluster_op::frame, w_.worker, 0, 0, 0}, std::as_bytes(std::span(&h, 1)), payload);
    co_return;
  }
  asio::awaitable<void> send(const frame_header& first, std::span<const std::byte> first_payload,
                             const frame_header& second, std::span<const std::byte> second_payload) override {
    co_await send(first, first_payload);
    co_await send(second, second_payload);
  }
  asio::awaitable<std::span<const std::byte>> receive(frame_header& h) override {
    {
      std::lock_guard lock(w_.mutex);
      w_.interrupted = false;
    }
    co_await wait_on(
        w_, [&] { return !w_.inbox.empty() || w_.end || w_.interrupted; }, std::chrono::hours(24 * 365));
    std::lock_guard lock(w_.mutex);
    if (!w_.inbox.empty()) {
      h = w_.inbox.front().first;
      link_.recycle(std::exchange(current_, std::move(w_.inbox.front().second)));
      w_.inbox.pop_front();
      co_return current_.view().subspan(sizeof(cluster_message) + sizeof h);
    }
    if (w_.interrupted) throw std::system_error(asio::error::operation_aborted);
    throw std::system_error(asio::error::eof);
  }
  void interrupt() noexcept override {
    std::lock_guard lock(w_.mutex);
    w_.interrupted = true;
    w_.wake();
  }

 private:
  void check_alive() {
    std::lock_guard lock(w_.mutex);
    if (w_.end || !w_.ready) throw std::system_error(asio::error::eof);
  }

  remote_worker& w_;
  mpi_link& link_;
  byte_buffer current_;  // the message of the frame receive() returned last
};

/// worker_transport over the root's own workers and the other ranks'.
class cluster_transport final : public worker_transport {
 public:
  /// `ranks[r]` is how many workers rank r serves (the root's own entry is
  /// ignored: its workers are `local`). Remote slots follow the local ones;
  /// batches for them are cut at `remote_batch_bytes`.
  cluster_transport(worker_set& local, std::shared_ptr<mpi_link> link, const std::vector<std::size_t>& ranks,
                    int root, std::size_t remote_batch_bytes)
      : local_(local), local_transport_(local), link_(std::move(link)), remote_batch_bytes_(remote_batch_bytes) {
    first_of_rank_.assign(ranks.size() + 1, 0);
    for (int r = 0; r < static_cast<int>(ranks.size()); ++r) {
      first_of_rank_[static_cast<std::size_t>(r)] = remote_.size();
      if (r == root) continue;
      for (std::size_t w = 0; w < ranks[static_cast<std::size_t>(r)]; ++w) {
        auto rw = std::make_unique<remote_worker>();
        rw->rank = r;
        rw->worker = static_cast<std::uint32_t>(w);
        remote_.push_back(std::move(rw));
      }
    }
    first_of_rank_.back() = remote_.size();
  }

  /// The remote worker `worker` of `rank`, or null. For the MPI thread (once
  /// per message: a table, not a search).
  remote_worker* find(int rank, std::uint32_t worker) noexcept {
    if (rank < 0 || static_cast<std::size_t>(rank) + 1 >= first_of_rank_.size()) return nullptr;
    const std::size_t i = first_of_rank_[static_cast<std::size_t>(rank)] + worker;
    return i < first_of_rank_[static_cast<std::size_t>(rank) + 1] ? remote_[i].get() : nullptr;
  }

  /// Every worker of `rank` is gone with it: waiters wake, jobs fail with `why`.
  /// Any thread.
  void lose_rank(int rank, const std::string& why) {
    for (auto& w : remote_) {
      if (rank >= 0 && w->rank != rank) continue;
      std::lock_guard lock(w->mutex);
      if (!w->end) w->end = worker_end{w->pid, unknown_wait_status, worker_status::none};
      w->failure = why;
      w->lost = true;
      w->ready = false;
      w->wake();
    }
  }

  [[nodiscard]] bool is_remote(std::size_t i) const noexcept override { return i >= local_transport_.slot_count(); }
  [[nodiscard]] std::size_t batch_bytes_limit(std::size_t i) const noexcept override {
    return is_remote(i) ? remote_batch_bytes_ : std::numeric_limits<std::size_t>::max();
  }
  [[nodiscard]] std::size_t slot_count() const noexcept override {
    return local_transport_.slot_count() + remote_.size();
  }
  [[nodiscard]] bool closing() const noexcept override { return local_.closing(); }
  [[nodiscard]] bool forced_shutdown() const noexcept override { return local_.forced_shutdown(); }

  [[nodiscard]] bool ready(std::size_t i) const noexcept override {
    if (const remote_worker* w = remote(i)) {
      std::lock_guard lock(const_cast<remote_worker*>(w)->mutex);
      return w->ready && !w->end;
    }
    return local_transport_.ready(i);
  }

  asio::awaitable<bool> bring_up(std::size_t i, std::function<void()>& interrupt) override {
    remote_worker* w = remote(i);
    if (!w) co_return co_await local_transport_.bring_up(i, interrupt);
    bool ask = false;
    {
      std::lock_guard lock(w->mutex);
      if (w->ready && !w->end) co_return true;
      if (w->lost) throw pool_error("coshard: " + *w->failure);
      if (w->failure && !w->starting) {
        const std::string why = *w->failure;
        w->failure.reset();
        throw pool_error("coshard: worker " + std::to_string(w->worker) + " of rank " + std::to_string(w->rank) +
                         " could not be started: " + why);
      }
      w->interrupted = false;
      if (!w->starting) {
        w->starting = ask = true;
        w->end.reset();
      }
    }
    if (ask) link_->send(w->rank, {cluster_op::bring_up, w->worker, 0, 0, 0});
    interrupt = [w] {
      std::lock_guard lock(w->mutex);
      w->interrupted = true;
      w->wake();
    };
    co_await wait_on(*w, [w] { return w->ready || w->failure || w->interrupted; }, std::chrono::hours(24 * 365));
    interrupt = nullptr;
    std::lock_guard lock(w->mutex);
    if (w->ready) co_return true;
    if (w->lost) throw pool_error("coshard: " + *w->failure);
    if (w->failure) {
      const std::string why = *w->failure;
      w->starting = false;
      throw pool_error("coshard: worker " + std::to_string(w->worker) + " of rank " + std::to_string(w->rank) +
                       " could not be started: " + why);
    }
    co_return false;
  }

  std::unique_ptr<worker_channel> open(std::size_t i, const asio::any_io_executor& ex,
                                       asio::io_context* home) override {
    if (remote_worker* w = remote(i)) return std::make_unique<remote_channel>(*w, *link_);
    return local_transport_.open(i, ex, home);
  }

  [[nodiscard]] pid_t pid(std::size_t i) const noexcept override {
    if (remote_worker* w = remote(i)) {
      std::lock_guard lock(w->mutex);
      return w->pid;
    }
    return local_transport_.pid(i);
  }

  void kill_all() noexcept override {
    local_transport_.kill_all();
    for (auto& w : remote_) {
      pid_t pid;
      {
        std::lock_guard lock(w->mutex);
        if (w->lost || w->pid <= 0) continue;
        pid = w->pid;
      }
      try {
        link_->send(w->rank, {cluster_op::kill, w->worker, pid, 0, 0});
      } catch (...) {
      }
    }
  }

  worker_allowance& allowance(std::size_t i) noexcept override {
    if (remote_worker* w = remote(i)) return w->allowance;
    return local_transport_.allowance(i);
  }

  void release(std::size_t i) noexcept override {
    remote_worker* w = remote(i);
    if (!w) return local_transport_.release(i);
    forget(*w);
    try {
      link_->send(w->rank, {cluster_op::release, w->worker, 0, 0, 0});
    } catch (...) {
    }
  }

  void replace(std::size_t i) override {
    remote_worker* w = remote(i);
    if (!w) return local_transport_.replace(i);
    forget(*w);
    if (local_.closing()) {
      link_->send(w->rank, {cluster_op::release, w->worker, 0, 0, 0});
      return;
    }
    {
      std::lock_guard lock(w->mutex);
      w->starting = true;
    }
    link_->send(w->rank, {cluster_op::replace, w->worker, 0, 0, 0});
  }

  asio::awaitable<worker_end> bury(std::size_t i, bool kill) override {
    remote_worker* w = remote(i);
    if (!w) co_return co_await local_transport_.bury(i, kill);
    pid_t pid;
    {
      std::lock_guard lock(w->mutex);
      pid = w->pid;
    }
    if (kill) link_->send(w->rank, {cluster_op::kill, w->worker, pid, 0, 0});
    // The rank reports every end it sees; a worker alive after 2 s is killed.
    if (!co_await wait_on(*w, [w] { return w->end.has_value(); }, std::chrono::milliseconds(2000))) {
      link_->send(w->rank, {cluster_op::kill, w->worker, pid, 0, 0});
      co_await wait_on(*w, [w] { return w->end.has_value(); }, std::chrono::milliseconds(5000));
    }
    worker_end end;
    {
      std::lock_guard lock(w->mutex);
      end = w->end.value_or(worker_end{pid, unknown_wait_status, worker_status::none});
    }
    forget(*w);
    co_return end;
  }

  /// Handles what a rank says about its workers; on the MPI thread.
  void on_worker_message(int rank, const cluster_message& m, byte_buffer& message) {
    remote_worker* w = find(rank, m.worker);
    if (!w) return;
    const auto body = message.view().subspan(sizeof m);
    std::lock_guard lock(w->mutex);
    switch (m.op) {
      case cluster_op::frame:
        if (body.size() >= sizeof(frame_header) && w->ready && !w->end) {
          frame_header h;
          std::memcpy(&h, body.data(), sizeof h);
          w->inbox.emplace_back(h, std::move(message));
        }
        break;
      case cluster_op::ready:
        if (w->lost) return;  // a lost rank stays lost
        if (w->ready && w->pid == m.pid) return;  // the same worker again (a bring_up crossed its first ready)
        w->ready = true;
        w->starting = false;
        w->pid = m.pid;
        w->end.reset();
        w->failure.reset();
        w->allowance = {};  // a new worker (the engine does not count for a slot that is not ready)
        break;
      case cluster_op::start_failed:
        w->starting = false;
        w->failure = std::string(reinterpret_cast<const char*>(body.data()), body.size());
        break;
      case cluster_op::ended:
        if (w->pid > 0 && m.pid != w->pid) return;  // an earlier worker of this slot
        w->ready = false;
        w->end = worker_end{m.pid, m.status, m.aux};
        break;
      default:
        return;
    }
    w->wake();
  }

 private:
  remote_worker* remote(std::size_t i) const noexcept {
    const std::size_t local = local_transport_.slot_count();
    return i >= local ? remote_[i - local].get() : nullptr;
  }

  // Drops what the root knew of `w`'s current worker.
  static void forget(remote_worker& w) {
    std::lock_guard lock(w.mutex);
    w.ready = false;
    w.inbox.clear();
    w.end.reset();
    w.pid = -1;
    w.allowance = {};
  }

  worker_set& local_;
  local_transport local_transport_;
  std::shared_ptr<mpi_link> link_;  // shared: a job may outlive the cluster that made it
  std::vector<std::unique_ptr<remote_worker>> remote_;  // by rank, then worker
  std::vector<std::size_t> first_of_rank_;  // rank r's workers: remote_[first_of_rank_[r], first_of_rank_[r + 1])
  std::size_t remote_batch_bytes_;          // batch_bytes_limit() of every remote slot
};

}  // namespace coshard::detail
