// coshard/process_pool.hpp - a pool of worker processes, each running its own
// asio::io_context, that maps functions over input ranges.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/any_io_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/co_spawn.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/strand.hpp>
#include <asio/use_future.hpp>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <ranges>
#include <stop_token>
#include <thread>
#include <type_traits>
#include <vector>

#include "coshard/basic_pool.hpp"
#include "coshard/detail/parent/pool_jobs.hpp"
#include "coshard/detail/process_local.hpp"
#include "coshard/errors.hpp"
#include "coshard/exception_types.hpp"
#include "coshard/job_options.hpp"
#include "coshard/keyed_reduce.hpp"
#include "coshard/outcome.hpp"
#include "coshard/pool_options.hpp"
#include "coshard/pool_stats.hpp"
#include "coshard/progress_bar.hpp"
#include "coshard/serialization.hpp"
#include "coshard/serve_if_worker.hpp"

namespace coshard {



/// A fixed set of pre-forked worker processes. Each worker runs a
/// single-threaded asio::io_context; batches of input are pulled by the
/// workers, run there (awaitable tasks up to `concurrency` at once per
/// worker, plain functions inline) and their results or partial reductions
/// come back to the caller.
///
/// Any number of jobs run at once, from any threads of the process that
/// built the pool: a scheduler shares the workers between them. The pool
/// must outlive the jobs it runs.
///
/// Function objects cross to workers as bytes (see DESIGN.md): lambdas without
/// captures, or capturing only trivially copyable values. Do not capture
/// references or pointers: the worker sees its own copy of memory as it was
/// when the pool was created.
class process_pool : public basic_pool {
 public:
  /// Starts the pool's supervisor (a fork of this process, or this program
  /// run again with start_method::exec), which starts the workers; returns
  /// once all are ready (their initializers ran). After this the calling
  /// process never forks again. Throws pool_error if an option is invalid or a worker cannot
  /// be started (nothing is left behind).
  explicit process_pool(pool_options options = {})
      : basic_pool(std::make_shared<detail::pool_core>(validated(options))) {}

  process_pool(const process_pool&) = delete;
  process_pool& operator=(const process_pool&) = delete;

  /// shutdown(graceful). Never throws; leaves no child process behind. In a
  /// process forked from the owner (which may run this destructor at its
  /// exit) it only lets go of its copies: the owner's workers are untouched.
  ~process_pool() {
    core_->shutdown(shutdown_mode::graceful);
    if (::getpid() != owner_) detail::keep_until_exit(std::move(core_));
  }

  /// Shuts the pool down; callable from any thread, also while a job runs
  /// (which then completes with operation_aborted after a graceful shutdown,
  /// pool_error after a forced one), and from the thread that runs the job
  /// (a signal-handler coroutine on the job's io_context, a for_each_result
  /// sink): the job then ends once that thread gets back to its loop.
  /// `graceful` cancels the job, lets workers answer what they hold and exit
  /// on EOF, and escalates to `forced` after shutdown_timeout; `forced` kills
  /// the workers at once. Either way it returns within about two
  /// shutdown_timeouts plus a second, every worker reaped by the supervisor
  /// and the supervisor by this process. Later jobs fail with pool_error.
  /// Idempotent. In a process forked from the owner it touches nothing.
  void shutdown(shutdown_mode mode = shutdown_mode::graceful) noexcept { core_->shutdown(mode); }

  /// Number of worker processes.
  [[nodiscard]] std::size_t size() const noexcept { return core_->workers.slots().size(); }

  /// Process id of the pool's supervisor, the one child of this process,
  /// which forks and reaps the workers.
  [[nodiscard]] pid_t supervisor_pid() const noexcept { return core_->workers.supervisor().pid(); }

  /// Process ids of the current workers (a replaced worker has a new pid).
  [[nodiscard]] std::vector<pid_t> worker_pids() const {
    std::vector<pid_t> pids;
    for (auto& s : core_->workers.slots()) pids.push_back(s.pid.load());
    return pids;
  }

 private:
  static const pool_options& validated(const pool_options& o) {
    detail::validate_options(o);
    return o;
  }

  pid_t owner_ = ::getpid();
};

}  // namespace coshard
