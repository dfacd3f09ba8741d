// coshard/basic_pool.hpp - the job functions of every pool: process_pool,
// and mpi::cluster over the same scheduler.
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

/// The job functions every pool has (process_pool; mpi::cluster): map,
/// map_reduce, map_reduce_by_key, map_settled, for_each_result, submit and
/// their async_ forms, cancel() and stats(), all through one scheduler over
/// the pool's worker slots. Not constructed on its own.
class basic_pool {
 public:
  basic_pool(const basic_pool&) = delete;
  basic_pool& operator=(const basic_pool&) = delete;

  /// What the pool has done since it was built: jobs and how they ended,
  /// items done, failed, retried and timed out, batches, workers replaced,
  /// bytes each way, and each worker slot's busy time (see pool_stats).
  /// Counts move while jobs run. Any thread; never blocks on a job.
  [[nodiscard]] pool_stats stats() const { return core().stats(); }

  // Every job function takes an optional `coshard::job_options` (before the
  // completion token of an async_ form): per-job batch_size, item_timeout,
  // max_retries and a std::stop_token. Any number of jobs, blocking and
  // async_, from any threads of this process, run at once; the pool shares
  // its workers between them (see DESIGN.md, "Many jobs at once").
  //
  // Errors, for every job: task_error for the failing item with the lowest
  // input index (batches are cut in input order, items start in input order
  // within a batch and every batch already sent is drained, so every item
  // before it has run, except items of a batch waiting to be retried after a
  // worker crash, which are not started once a failure is known; no further
  // batch is started), worker_crashed for an item that kept killing its
  // worker, timeout_error for one past item_timeout, whatever the input range
  // itself throws, std::system_error(asio::error::operation_aborted) if the
  // job was cancelled or the pool shut down gracefully under it, and
  // pool_error for failures of the pool (shut down, a replacement that cannot
  // start, a blocking call from the thread that runs another job of this
  // pool).
  //
  // The async_ forms (completion signature `void(std::exception_ptr, V)`, V
  // the blocking form's result) run the job on the completion handler's
  // associated executor (the coroutine's with use_awaitable; on a strand of
  // it), and `sink`/`reduce` in the caller run there; a handler without an io
  // executor (use_future, a plain callback) gets it run on a thread owned by
  // the pool. Per-operation cancellation through the handler's cancellation
  // slot: terminal, partial and total cancellation all cancel the job, which
  // then completes with operation_aborted once every worker has answered.
  // Lvalue input ranges must outlive the operation; rvalue containers are
  // moved into it. Callable from any thread of the process that built the
  // pool.

  /// Applies `fn` to every input and returns the results in input order.
  /// `fn` is `R(T)` or `asio::awaitable<R>(T)`, T the range's value type.
  /// Inputs are pulled lazily in batches. Blocks the calling thread.
  template <std::ranges::input_range Range, class F>
  [[nodiscard]] auto map(Range&& inputs, F fn, const job_options& options = {}) {
    return jobs().run_blocking(jobs().map_job(std::forward<Range>(inputs), fn, detail::no_shared{}, options), options);
  }

  /// As map(inputs, fn), calling `fn(shared, item)`; `shared` is sent to each
  /// worker once per job, not once per item.
  template <std::ranges::input_range Range, class F, class S>
  [[nodiscard]] auto map(Range&& inputs, F fn, const S& shared, const job_options& options = {}) {
    return jobs().run_blocking(jobs().map_job(std::forward<Range>(inputs), fn, shared, options), options);
  }

  /// Like map, but every item settles on its own: the result is one
  /// coshard::outcome<R> per input, in input order, holding the value or the
  /// failure (task_error, worker_crashed, timeout_error). One failing item does
  /// not stop the others. Throws pool_error only for failures of the pool
  /// itself, and operation_aborted (std::system_error) if cancelled.
  template <std::ranges::input_range Range, class F>
  [[nodiscard]] auto map_settled(Range&& inputs, F fn, const job_options& options = {}) {
    return jobs().run_blocking(jobs().settled_job(std::forward<Range>(inputs), fn, detail::no_shared{}, options),
                              options);
  }

  /// map_settled with a broadcast `shared` value, passed as fn(shared, item).
  template <std::ranges::input_range Range, class F, class S>
  [[nodiscard]] auto map_settled(Range&& inputs, F fn, const S& shared, const job_options& options = {}) {
    return jobs().run_blocking(jobs().settled_job(std::forward<Range>(inputs), fn, shared, options), options);
  }

  /// Applies `fn` to every input and folds the results with `reduce`, first
  /// inside each worker (one partial per batch crosses back), then in the
  /// caller. `init` must be an identity of `reduce` (0 for +, an empty map
  /// for merges): every batch starts from it. `reduce` must be associative and
  /// commutative, callable as reduce(Acc, R) and reduce(Acc, Acc), and
  /// shippable like `fn`.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc>
  [[nodiscard]] Acc map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const job_options& options = {}) {
    return jobs().run_blocking(
        jobs().reduce_job(std::forward<Range>(inputs), fn, reduce, std::move(init), detail::no_shared{}, options),
        options);
  }

  /// map_reduce with a broadcast `shared` value, passed as fn(shared, item).
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class S>
  [[nodiscard]] Acc map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const S& shared,
                               const job_options& options = {}) {
    return jobs().run_blocking(
        jobs().reduce_job(std::forward<Range>(inputs), fn, reduce, std::move(init), shared, options), options);
  }

  /// Keyed reduce: `fn` returns a map (e.g. word -> count) per input; the maps
  /// are merged with `combine` on equal keys, in the workers and then here.
  template <std::ranges::input_range Range, class F, class Combine = std::plus<>>
  [[nodiscard]] auto map_reduce_by_key(Range&& inputs, F fn, Combine combine = {}, const job_options& options = {}) {
    using map_type = detail::keyed_result_t<F, detail::no_shared, detail::input_of<Range>>;
    return map_reduce(std::forward<Range>(inputs), fn, merge_maps<Combine>{combine}, map_type{}, options);
  }

  /// map_reduce_by_key with a broadcast `shared` value, passed as fn(shared, item).
  template <std::ranges::input_range Range, class F, class Combine, class S>
  [[nodiscard]] auto map_reduce_by_key(Range&& inputs, F fn, Combine combine, const S& shared,
                                       const job_options& options = {}) {
    using map_type = detail::keyed_result_t<F, S, detail::input_of<Range>>;
    return map_reduce(std::forward<Range>(inputs), fn, merge_maps<Combine>{combine}, map_type{}, shared, options);
  }

  /// Streams results in completion order: `sink(index, result)` runs in the
  /// calling thread as each batch returns (use batch_size = 1 for one call per
  /// finished item as early as possible). Returns how many results were
  /// delivered. An exception from `sink` stops the job and is rethrown.
  template <std::ranges::input_range Range, class F, class Sink>
  std::size_t for_each_result(Range&& inputs, F fn, Sink sink, const job_options& options = {}) {
    return jobs().run_blocking(
        jobs().sink_job(std::forward<Range>(inputs), fn, std::move(sink), detail::no_shared{}, options), options);
  }

  /// for_each_result with a broadcast `shared` value, passed as fn(shared, item).
  template <std::ranges::input_range Range, class F, class Sink, class S>
  std::size_t for_each_result(Range&& inputs, F fn, Sink sink, const S& shared, const job_options& options = {}) {
    return jobs().run_blocking(jobs().sink_job(std::forward<Range>(inputs), fn, std::move(sink), shared, options),
                              options);
  }

  /// Runs `fn(input)` as one task and returns its result through a
  /// std::future (an error as its exception: task_error, worker_crashed,
  /// timeout_error; pool_error once the pool is shut down). Tasks submitted
  /// close together with the same function travel to the workers in shared
  /// batches. See async_submit.
  template <class F, class T>
  [[nodiscard]] auto submit(F fn, T input) {
    return async_submit(fn, std::move(input), asio::use_future);
  }

  /// Runs `fn(input)` as one task; completion signature
  /// `void(std::exception_ptr, R)`, errors as for submit. Tasks whose
  /// handlers run in the same execution context (e.g. many coroutines on one
  /// io_context) and use the same function share one stream: they are cut
  /// into batches as workers take them (adaptively, like a map), so a
  /// thousand coroutines awaiting a task each do not pay a round trip each.
  /// The stream runs on a strand of the handler's io executor, or on the
  /// pool's own thread for a handler without one (use_future, a plain
  /// callback). Per-operation cancellation through the handler's
  /// cancellation slot (any type): the task completes at once with
  /// operation_aborted; it may still run in a worker (if it was already
  /// queued there or is cut into a batch later), and its result is dropped.
  /// pool.cancel() and shutdown() end the tasks waiting too. Callable from any thread of the process that
  /// built the pool.
  template <class F, class T, class CompletionToken>
  auto async_submit(F fn, T input, CompletionToken&& token) {
    return jobs().submit(fn, std::move(input), std::forward<CompletionToken>(token));
  }

  /// Cancels every job running on this pool; callable from any thread
  /// (e.g. from a std::stop_callback). Queued batches are dropped, workers
  /// cancel their running coroutines, and each job's call completes with
  /// std::system_error(asio::error::operation_aborted) once every worker has
  /// answered. The pool stays usable. Plain functions already running finish.
  /// To cancel one job only, use its completion token's cancellation slot or
  /// job_options::stop_token.
  void cancel() { core().cancel(); }

  /// Asynchronous map. Completion signature:
  /// `void(std::exception_ptr, std::vector<R>)`.
  /// Executor: the job, and any sink or reducer of the caller, run on a
  /// strand of the handler's associated io executor (a pool-owned thread for
  /// a handler without one, such as use_future). Cancellation: terminal,
  /// partial or total through the handler's cancellation slot; the job then
  /// completes with operation_aborted once every worker has answered.
  /// Threads: callable from any thread of the process that built the pool.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map(Range&& inputs, F fn, CompletionToken&& token) {
    return async_map(std::forward<Range>(inputs), fn, job_options{}, std::forward<CompletionToken>(token));
  }
  /// async_map with job options.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map(Range&& inputs, F fn, const job_options& options, CompletionToken&& token) {
    return jobs().launch(jobs().map_job(std::forward<Range>(inputs), fn, detail::no_shared{}, options), options,
                        std::forward<CompletionToken>(token));
  }
  /// async_map with a broadcast `shared` value.
  template <std::ranges::input_range Range, class F, class S, class CompletionToken>
  auto async_map(Range&& inputs, F fn, const S& shared, CompletionToken&& token) {
    return async_map(std::forward<Range>(inputs), fn, shared, job_options{}, std::forward<CompletionToken>(token));
  }
  /// async_map with a broadcast `shared` value and job options.
  template <std::ranges::input_range Range, class F, class S, class CompletionToken>
  auto async_map(Range&& inputs, F fn, const S& shared, const job_options& options, CompletionToken&& token) {
    return jobs().launch(jobs().map_job(std::forward<Range>(inputs), fn, shared, options), options,
                        std::forward<CompletionToken>(token));
  }

  /// Asynchronous map_settled. Completion signature:
  /// `void(std::exception_ptr, std::vector<coshard::outcome<R>>)`.
  /// Executor: the job, and any sink or reducer of the caller, run on a
  /// strand of the handler's associated io executor (a pool-owned thread for
  /// a handler without one, such as use_future). Cancellation: terminal,
  /// partial or total through the handler's cancellation slot; the job then
  /// completes with operation_aborted once every worker has answered.
  /// Threads: callable from any thread of the process that built the pool.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map_settled(Range&& inputs, F fn, CompletionToken&& token) {
    return async_map_settled(std::forward<Range>(inputs), fn, job_options{}, std::forward<CompletionToken>(token));
  }
  /// async_map_settled with job options.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map_settled(Range&& inputs, F fn, const job_options& options, CompletionToken&& token) {
    return jobs().launch(jobs().settled_job(std::forward<Range>(inputs), fn, detail::no_shared{}, options), options,
                        std::forward<CompletionToken>(token));
  }
  /// async_map_settled with a broadcast `shared` value.
  template <std::ranges::input_range Range, class F, class S, class CompletionToken>
  auto async_map_settled(Range&& inputs, F fn, const S& shared, CompletionToken&& token) {
    return async_map_settled(std::forward<Range>(inputs), fn, shared, job_options{},
                             std::forward<CompletionToken>(token));
  }
  /// async_map_settled with a broadcast `shared` value and job options.
  template <std::ranges::input_range Range, class F, class S, class CompletionToken>
  auto async_map_settled(Range&& inputs, F fn, const S& shared, const job_options& options, CompletionToken&& token) {
    return jobs().launch(jobs().settled_job(std::forward<Range>(inputs), fn, shared, options), options,
                        std::forward<CompletionToken>(token));
  }

  /// Asynchronous map_reduce. Completion signature:
  /// `void(std::exception_ptr, Acc)`. The caller's final folds run on the
  /// job's executor.
  /// Executor: the job, and any sink or reducer of the caller, run on a
  /// strand of the handler's associated io executor (a pool-owned thread for
  /// a handler without one, such as use_future). Cancellation: terminal,
  /// partial or total through the handler's cancellation slot; the job then
  /// completes with operation_aborted once every worker has answered.
  /// Threads: callable from any thread of the process that built the pool.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class CompletionToken>
  auto async_map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, CompletionToken&& token) {
    return async_map_reduce(std::forward<Range>(inputs), fn, reduce, std::move(init), job_options{},
                            std::forward<CompletionToken>(token));
  }
  /// async_map_reduce with job options.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class CompletionToken>
  auto async_map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const job_options& options,
                        CompletionToken&& token) {
    return jobs().launch(
        jobs().reduce_job(std::forward<Range>(inputs), fn, reduce, std::move(init), detail::no_shared{}, options),
        options, std::forward<CompletionToken>(token));
  }
  /// async_map_reduce with a broadcast `shared` value.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class S, class CompletionToken>
  auto async_map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const S& shared, CompletionToken&& token) {
    return async_map_reduce(std::forward<Range>(inputs), fn, reduce, std::move(init), shared, job_options{},
                            std::forward<CompletionToken>(token));
  }
  /// async_map_reduce with a broadcast `shared` value and job options.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class S, class CompletionToken>
  auto async_map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const S& shared, const job_options& options,
                        CompletionToken&& token) {
    return jobs().launch(jobs().reduce_job(std::forward<Range>(inputs), fn, reduce, std::move(init), shared, options),
                        options, std::forward<CompletionToken>(token));
  }

  /// Asynchronous map_reduce_by_key. Completion signature:
  /// `void(std::exception_ptr, Map)`, Map the type `fn` returns.
  /// Executor: the job, and any sink or reducer of the caller, run on a
  /// strand of the handler's associated io executor (a pool-owned thread for
  /// a handler without one, such as use_future). Cancellation: terminal,
  /// partial or total through the handler's cancellation slot; the job then
  /// completes with operation_aborted once every worker has answered.
  /// Threads: callable from any thread of the process that built the pool.
  template <std::ranges::input_range Range, class F, class Combine, class CompletionToken>
  auto async_map_reduce_by_key(Range&& inputs, F fn, Combine combine, CompletionToken&& token) {
    return async_map_reduce_by_key(std::forward<Range>(inputs), fn, combine, job_options{},
                                   std::forward<CompletionToken>(token));
  }
  /// async_map_reduce_by_key with job options.
  template <std::ranges::input_range Range, class F, class Combine, class CompletionToken>
  auto async_map_reduce_by_key(Range&& inputs, F fn, Combine combine, const job_options& options,
                               CompletionToken&& token) {
    using map_type = detail::keyed_result_t<F, detail::no_shared, detail::input_of<Range>>;
    return async_map_reduce(std::forward<Range>(inputs), fn, merge_maps<Combine>{combine}, map_type{}, options,
                            std::forward<CompletionToken>(token));
  }
  /// async_map_reduce_by_key with a broadcast `shared` value.
  template <std::ranges::input_range Range, class F, class Combine, class S, class CompletionToken>
  auto async_map_reduce_by_key(Range&& inputs, F fn, Combine combine, const S& shared, CompletionToken&& token) {
    return async_map_reduce_by_key(std::forward<Range>(inputs), fn, combine, shared, job_options{},
                                   std::forward<CompletionToken>(token));
  }
  /// async_map_reduce_by_key with a broadcast `shared` value and job options.
  template <std::ranges::input_range Range, class F, class Combine, class S, class CompletionToken>
  auto async_map_reduce_by_key(Range&& inputs, F fn, Combine combine, const S& shared, const job_options& options,
                               CompletionToken&& token) {
    using map_type = detail::keyed_result_t<F, S, detail::input_of<Range>>;
    return async_map_reduce(std::forward<Range>(inputs), fn, merge_maps<Combine>{combine}, map_type{}, shared, options,
                            std::forward<CompletionToken>(token));
  }

  /// Asynchronous for_each_result. Completion signature:
  /// `void(std::exception_ptr, std::size_t)`. `sink` runs on the job's
  /// executor, one batch's results at a time.
  /// Executor: the job, and any sink or reducer of the caller, run on a
  /// strand of the handler's associated io executor (a pool-owned thread for
  /// a handler without one, such as use_future). Cancellation: terminal,
  /// partial or total through the handler's cancellation slot; the job then
  /// completes with operation_aborted once every worker has answered.
  /// Threads: callable from any thread of the process that built the pool.
  template <std::ranges::input_range Range, class F, class Sink, class CompletionToken>
  auto async_for_each_result(Range&& inputs, F fn, Sink sink, CompletionToken&& token) {
    return async_for_each_result(std::forward<Range>(inputs), fn, std::move(sink), job_options{},
                                 std::forward<CompletionToken>(token));
  }
  /// async_for_each_result with job options.
  template <std::ranges::input_range Range, class F, class Sink, class CompletionToken>
  auto async_for_each_result(Range&& inputs, F fn, Sink sink, const job_options& options, CompletionToken&& token) {
    return jobs().launch(jobs().sink_job(std::forward<Range>(inputs), fn, std::move(sink), detail::no_shared{}, options),
                        options, std::forward<CompletionToken>(token));
  }
  /// async_for_each_result with a broadcast `shared` value.
  template <std::ranges::input_range Range, class F, class Sink, class S, class CompletionToken>
  auto async_for_each_result(Range&& inputs, F fn, Sink sink, const S& shared, CompletionToken&& token) {
    return async_for_each_result(std::forward<Range>(inputs), fn, std::move(sink), shared, job_options{},
                                 std::forward<CompletionToken>(token));
  }
  /// async_for_each_result with a broadcast `shared` value and job options.
  template <std::ranges::input_range Range, class F, class Sink, class S, class CompletionToken>
  auto async_for_each_result(Range&& inputs, F fn, Sink sink, const S& shared, const job_options& options,
                             CompletionToken&& token) {
    return jobs().launch(jobs().sink_job(std::forward<Range>(inputs), fn, std::move(sink), shared, options), options,
                        std::forward<CompletionToken>(token));
  }

 protected:
  /// Over `core`, which the derived pool built and shuts down.
  explicit basic_pool(std::shared_ptr<detail::pool_core> core) : core_(std::move(core)), jobs_(core_) {}
  ~basic_pool() = default;

  /// The pool's shared state, held also by every running job (null on an
  /// MPI rank other than the root, which runs no jobs).
  std::shared_ptr<detail::pool_core> core_;
  /// The job-making half, over core_.
  detail::pool_jobs jobs_;

 private:
  detail::pool_core& core() const {
    if (!core_) throw pool_error("coshard: job functions run on the root rank only; the other ranks call serve()");
    return *core_;
  }
  detail::pool_jobs& jobs() {
    (void)core();
    return jobs_;
  }
};

}  // namespace coshard
