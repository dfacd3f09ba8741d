// coshard/detail/parent/pool_core.hpp - what a process_pool owns, shared with its
// running jobs: the workers and their scheduler, the event loops jobs run on,
// which jobs run now and how to cancel them, and the bounded shutdown.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/any_io_executor.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/strand.hpp>

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <iterator>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "coshard/detail/parent/local_transport.hpp"
#include "coshard/detail/parent/pool_counters.hpp"
#include "coshard/detail/parent/slot_scheduler.hpp"
#include "coshard/detail/parent/task_stream.hpp"
#include "coshard/detail/parent/worker_set.hpp"
#include "coshard/detail/separate_compilation.hpp"
#include "coshard/errors.hpp"
#include "coshard/pool_options.hpp"

namespace coshard::detail {

/// A function telling whether the calling thread runs the event loop behind
/// `ex` (empty when that cannot be known for this executor type).
template <class Executor>
std::function<bool()> loop_thread_probe(const Executor& ex) {
  if constexpr (std::is_same_v<Executor, asio::io_context::executor_type>) {
    return [ex] { return ex.running_in_this_thread(); };
  } else if constexpr (std::is_same_v<Executor, asio::any_io_executor>) {
    if (auto* t = ex.template target<asio::io_context::executor_type>()) return loop_thread_probe(*t);
    if (auto* s = ex.template target<asio::strand<asio::io_context::executor_type>>())
      return loop_thread_probe(s->get_inner_executor());
    if (auto* s = ex.template target<asio::strand<asio::any_io_executor>>())
      return loop_thread_probe(s->get_inner_executor());
    return {};
  } else if constexpr (requires { ex.get_inner_executor(); }) {
    return loop_thread_probe(ex.get_inner_executor());
  } else {
    return {};
  }
}

class pool_core : public std::enable_shared_from_this<pool_core> {
 public:
  /// Makes the transport the pool's jobs run on, given the pool's own local
  /// workers (a cluster adds remote ones); empty: those workers alone.
  using transport_maker = std::function<std::unique_ptr<worker_transport>(worker_set&)>;

  /// Starts the supervisor and the workers (see worker_set; `local_workers`
  /// replaces options.workers, and may be 0 under a cluster's transport).
  explicit pool_core(const pool_options& options, const transport_maker& make_transport = {},
                     std::optional<std::size_t> local_workers = std::nullopt);

  pool_core(const pool_core&) = delete;
  pool_core& operator=(const pool_core&) = delete;
  ~pool_core();

  [[nodiscard]] pid_t owner() const noexcept { return owner_; }

  /// The pool's figures since construction (process_pool::stats()).
  [[nodiscard]] pool_stats stats() const {
    pool_stats s = counters.snapshot();
    // Items cancelled at item_timeout are counted by the workers themselves.
    for (const auto& slot : workers.slots())
      if (slot.status) s.timeouts += slot.status->items_timed_out.load(std::memory_order_relaxed);
    return s;
  }

  /// Throws pool_error unless called in the process that built the pool.
  void check_owner() const {
    if (current_pid() != owner_)
      throw pool_error("coshard: this process_pool belongs to process " + std::to_string(owner_) +
                       "; a process forked from it cannot use it");
  }

  /// One running job, as cancel() and shutdown() see it.
  struct job_entry {
    std::function<bool()> loop_thread;  // does the calling thread run the job's loop? (empty: unknown)
    std::function<void()> canceller;    // posts the job's cancel to its executor
    bool cancel_pending = false;        // cancel() came before the canceller
  };
  using job_ticket = std::list<job_entry>::iterator;

  /// Registers a job about to start. `loop_thread` tells whether the calling
  /// thread runs the job's event loop. Throws pool_error once the pool is
  /// shut down, and for a blocking call (`blocking`) from a thread that runs
  /// another job of this pool: that job could not move while this one waits,
  /// and this one may need the workers that job holds.
  job_ticket claim(std::function<bool()> loop_thread, bool blocking) {
    check_owner();
    // Checked under the lock shutdown() closes the pool under: a job is
    // either refused or seen running by the shutdown.
    std::lock_guard lock(jobs_mutex_);
    if (workers.closing()) throw pool_error("coshard: this process_pool has been shut down");
    if (blocking)
      for (const job_entry& e : jobs_)
        if (e.loop_thread && e.loop_thread())
          throw pool_error(
              "coshard: a blocking call from the thread that runs another job of this process_pool would "
              "wait for itself (e.g. map inside a for_each_result sink); use the async_ form there");
    jobs_.push_back(job_entry{std::move(loop_thread), nullptr, false});
    return std::prev(jobs_.end());
  }

  void release(job_ticket ticket) noexcept {
    {
      std::lock_guard lock(jobs_mutex_);
      jobs_.erase(ticket);
    }
    jobs_idle_.notify_all();
  }

  /// Lets cancel() reach the job from any thread: the request is posted to
  /// the job's executor and dropped if the job has ended by then. Returns
  /// that function (also used for the job's std::stop_token).
  template <class Executor>
  std::function<void()> set_canceller(job_ticket ticket, Executor ex, std::weak_ptr<std::function<void()>> target) {
    std::function<void()> post_cancel = [ex, target] {
      asio::post(ex, [target] {
        if (auto t = target.lock(); t && *t) (*t)();
      });
    };
    std::lock_guard lock(jobs_mutex_);
    ticket->canceller = post_cancel;
    // A cancel (or a shutdown) that came between claim() and now.
    if (std::exchange(ticket->cancel_pending, false)) post_cancel();
    return post_cancel;
  }
  void clear_canceller(job_ticket ticket) {
    std::lock_guard lock(jobs_mutex_);
    ticket->canceller = nullptr;
  }

  /// Cancels every running job; one claimed but not yet reachable is
  /// cancelled as soon as it is (set_canceller).
  void cancel() {
    std::lock_guard lock(jobs_mutex_);
    for (job_entry& e : jobs_) {
      if (e.canceller)
        e.canceller();
      else
        e.cancel_pending = true;
    }
  }

  /// The open inbox of the task stream named `key` (function, result
  /// context), made by `make` if there is none (`made` tells). A closed one
  /// (its job ending) is replaced.
  template <class Inbox>
  std::shared_ptr<Inbox> stream_inbox(const std::string& key, bool& made) {
    std::lock_guard lock(streams_mutex_);
    auto& slot = streams_[key];
    if (auto open = std::static_pointer_cast<Inbox>(slot.lock()); open && !open->closed()) {
      made = false;
      return open;
    }
    auto fresh = std::make_shared<Inbox>();
    slot = fresh;
    made = true;
    if (streams_.size() > 64)  // streams of functions or loops no longer used
      std::erase_if(streams_, [](const auto& entry) { return entry.second.expired(); });
    return fresh;
  }

  /// Whether the blocking calls of this pool may use the pool's own
  /// io_context (whose thread keeps the workers' sockets registered from job
  /// to job): one at a time; the others run on an io_context of their own.
  [[nodiscard]] bool take_home() noexcept { return !home_taken_.exchange(true, std::memory_order_acquire); }
  void give_back_home() noexcept { home_taken_.store(false, std::memory_order_release); }

  /// The pool-owned loop for handlers without an io executor, started on
  /// first use; nullopt once the pool is shut down.
  std::optional<asio::io_context::executor_type> background_executor() {
    std::lock_guard lock(background_mutex_);
    if (workers.closing() || background_stopped_) return std::nullopt;
    if (!background_thread_.joinable()) {
      background_guard_.emplace(background_.get_executor());
      // The thread holds the core: a handler on it may destroy the pool.
      background_thread_ = std::thread([self = shared_from_this()] { self->background_.run(); });
    }
    return background_.get_executor();
  }
  [[nodiscard]] asio::io_context& background_context() noexcept { return background_; }

  /// See process_pool::shutdown. Bounded; never throws.
  void shutdown(shutdown_mode mode) noexcept;

 private:
  // `join`: false while a job may still run on the background loop (it
  // holds the core, so the thread is let go instead of waited for).
  void stop_background(bool join) noexcept {
    std::thread t;
    {
      std::lock_guard lock(background_mutex_);
      background_stopped_ = true;
      background_guard_.reset();
      t = std::move(background_thread_);
    }
    if (!t.joinable()) return;
    if (!join || t.get_id() == std::this_thread::get_id())
      t.detach();  // a handler on the background loop shut the pool down, or a job still runs there
    else
      t.join();
  }

  // In a process forked from the owner: the owner's workers and supervisor
  // are not ours to stop, and threads copied in the fork do not run here.
  void abandon() noexcept {
    if (abandoned_) return;
    abandoned_ = true;
    workers.abandon();
    if (background_thread_.joinable()) keep_until_exit(std::move(background_thread_));
  }

  pid_t owner_;

 public:
  worker_set workers;

 private:
  std::unique_ptr<worker_transport> transport_;

 public:
  /// The worker slots as the job engine sees them.
  worker_transport& transport;
  /// Shares the worker slots between the jobs running at once.
  slot_scheduler scheduler;
  /// The totals behind stats(), added to by every job.
  pool_counters counters{transport.slot_count()};
  /// A blocking call runs its job here, on the calling thread (see take_home).
  asio::io_context io{1};
  std::atomic<std::uint64_t> job_counter{0};

 private:
  bool abandoned_ = false;
  std::mutex shutdown_mutex_;
  std::mutex jobs_mutex_;
  std::condition_variable jobs_idle_;
  std::list<job_entry> jobs_;  // guarded by jobs_mutex_
  std::atomic<bool> home_taken_{false};
  std::mutex streams_mutex_;
  std::unordered_map<std::string, std::weak_ptr<task_inbox_base>> streams_;
  std::mutex background_mutex_;
  asio::io_context background_{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> background_guard_;
  std::thread background_thread_;
  bool background_stopped_ = false;
};

#if COSHARD_DEFINE_MACHINERY
COSHARD_DECL pool_core::pool_core(const pool_options& options, const transport_maker& make_transport,
                                  std::optional<std::size_t> local_workers)
    : owner_(current_pid()),
      workers(options, local_workers),
      transport_(make_transport ? make_transport(workers) : std::make_unique<local_transport>(workers)),
      transport(*transport_),
      scheduler(transport.slot_count()) {}

COSHARD_DECL pool_core::~pool_core() {
  if (background_thread_.joinable()) background_thread_.detach();  // only ever its own last owner
}

COSHARD_DECL void pool_core::shutdown(shutdown_mode mode) noexcept {
  if (::getpid() != owner_) {
    abandon();
    return;
  }
  // Two threads may shut down at once (a signal handler and a destructor):
  // the second waits for the first, then finds nothing left to do.
  std::lock_guard serial(shutdown_mutex_);
  const auto grace = workers.options().shutdown_timeout;
  {
    std::lock_guard lock(jobs_mutex_);
    workers.stop_starting(mode == shutdown_mode::forced);
  }
  if (mode == shutdown_mode::forced) transport.kill_all();
  try {
    cancel();
  } catch (...) {  // posting may allocate
  }
  bool idle;
  {
    std::unique_lock lock(jobs_mutex_);
    const bool on_job_thread =
        std::any_of(jobs_.begin(), jobs_.end(), [](const job_entry& e) { return e.loop_thread && e.loop_thread(); });
    // Called from a thread that runs a job (a signal handler coroutine
    // on its io_context, a for_each_result sink): that job can only end
    // once this call returns, so the jobs are not waited for.
    const auto none_left = [&] { return jobs_.empty(); };
    idle = jobs_.empty() || (!on_job_thread && jobs_idle_.wait_for(lock, grace, none_left));
    if (!idle && !on_job_thread) {
      lock.unlock();
      transport.kill_all();
      lock.lock();
      // A job on an event loop that no longer runs never ends: it keeps
      // this core alive and is given up on here.
      idle = jobs_idle_.wait_for(lock, grace, none_left);
    }
  }
  const auto mode_grace = mode == shutdown_mode::forced ? std::chrono::milliseconds(0) : grace;
  if (idle) {
    workers.shutdown(mode_grace);
  } else {
    // The job still holds the channels' sockets: end the channels without
    // closing their descriptors (closed when the job lets the core go).
    workers.hang_up_channels();
    workers.supervisor().shutdown(mode_grace);
  }
  stop_background(/*join=*/idle);
}
#endif

}  // namespace coshard::detail
