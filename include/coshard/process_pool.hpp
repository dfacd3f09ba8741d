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

#include "coshard/detail/collectors.hpp"
#include "coshard/detail/input_source.hpp"
#include "coshard/detail/parent/job.hpp"
#include "coshard/detail/pool_core.hpp"
#include "coshard/detail/process_local.hpp"
#include "coshard/errors.hpp"
#include "coshard/job_options.hpp"
#include "coshard/keyed_reduce.hpp"
#include "coshard/outcome.hpp"
#include "coshard/pool_options.hpp"
#include "coshard/serialization.hpp"
#include "coshard/serve_if_worker.hpp"

namespace coshard {

namespace detail {

// Each requirement gets its own message: the compiler shows the first that fails.
template <class F, class S, class T>
consteval bool check_task() {
  static_assert(!std::is_pointer_v<F> && !std::is_function_v<std::remove_pointer_t<F>>,
                "coshard: pass a lambda or function object, not a function pointer: a pointer is an "
                "address in this process and is never sent to a worker. Wrap it: "
                "[](T x) { return f(x); }");
  static_assert(std::is_trivially_copyable_v<F>,
                "coshard: the function object is sent to pre-forked workers as bytes, so it must be "
                "empty or trivially copyable. Capture only plain values (ints, doubles, POD structs); "
                "pass strings, containers and other state as the `shared` argument or in the input.");
  static_assert(invocable_task<F, S, T>,
                "coshard: the function cannot be called with the input range's value type (after "
                "the `const S&` shared value, when one is given)");
  static_assert(!is_process_local<T>(),
                "coshard: the input type holds an address (a raw pointer, std::string_view, std::span or "
                "std::reference_wrapper) that means nothing in a worker process: send the value itself "
                "(std::string, std::vector, the pointed-to struct)");
  static_assert(!is_process_local<S>(),
                "coshard: the shared value's type holds an address (a raw pointer, std::string_view, "
                "std::span or std::reference_wrapper) that means nothing in a worker process: share the "
                "value itself");
  static_assert(serializable<T>,
                "coshard: the input type cannot cross processes: make it trivially copyable or "
                "give it a cereal serialize() function");
  static_assert(serializable<S>,
                "coshard: the shared value's type cannot cross processes: make it trivially "
                "copyable or give it a cereal serialize() function");
  using R = typename task_traits<F, S, T>::result_type;
  static_assert(!std::is_void_v<R>, "coshard: the function must return a value");
  static_assert(!is_process_local<R>(),
                "coshard: the result type holds an address (a raw pointer, std::string_view, std::span or "
                "std::reference_wrapper) into the worker's memory, which the caller cannot read: return "
                "the value itself (std::string, std::vector)");
  static_assert(serializable<R>,
                "coshard: the result type cannot cross processes: make it trivially copyable or "
                "give it a cereal serialize() function");
  return true;
}

template <class E>
struct is_io_executor
    : std::bool_constant<std::is_same_v<E, asio::any_io_executor> ||
                         std::is_same_v<E, asio::io_context::executor_type>> {};
template <class E>
struct is_io_executor<asio::strand<E>> : is_io_executor<E> {};

template <class Range>
using input_of = std::ranges::range_value_t<Range>;
template <class Source>
using source_input_of = std::ranges::range_value_t<typename Source::range_type&>;
// The map a keyed reduce's function returns.
template <class F, class S, class T>
using keyed_result_t = typename task_traits<F, S, T>::result_type;

}  // namespace detail

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
class process_pool {
 public:
  /// Starts the pool's supervisor (a fork of this process, or this program
  /// run again with start_method::exec), which starts the workers; returns
  /// once all are ready (their initializers ran). After this the calling
  /// process never forks again. Throws pool_error if an option is invalid or a worker cannot
  /// be started (nothing is left behind).
  explicit process_pool(pool_options options = {})
      : core_(std::make_shared<detail::pool_core>(validated(options))) {}

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
    return run_blocking(make_map_job(source(std::forward<Range>(inputs)), fn, detail::no_shared{}, options),
                        options);
  }

  /// As map(inputs, fn), calling `fn(shared, item)`; `shared` is sent to each
  /// worker once per job, not once per item.
  template <std::ranges::input_range Range, class F, class S>
  [[nodiscard]] auto map(Range&& inputs, F fn, const S& shared, const job_options& options = {}) {
    return run_blocking(make_map_job(source(std::forward<Range>(inputs)), fn, shared, options), options);
  }

  /// Like map, but every item settles on its own: the result is one
  /// coshard::outcome<R> per input, in input order, holding the value or the
  /// failure (task_error, worker_crashed, timeout_error). One failing item does
  /// not stop the others. Throws pool_error only for failures of the pool
  /// itself, and operation_aborted (std::system_error) if cancelled.
  template <std::ranges::input_range Range, class F>
  [[nodiscard]] auto map_settled(Range&& inputs, F fn, const job_options& options = {}) {
    return run_blocking(make_settled_job(source(std::forward<Range>(inputs)), fn, detail::no_shared{}, options),
                        options);
  }

  /// map_settled with a broadcast `shared` value, passed as fn(shared, item).
  template <std::ranges::input_range Range, class F, class S>
  [[nodiscard]] auto map_settled(Range&& inputs, F fn, const S& shared, const job_options& options = {}) {
    return run_blocking(make_settled_job(source(std::forward<Range>(inputs)), fn, shared, options), options);
  }

  /// Applies `fn` to every input and folds the results with `reduce`, first
  /// inside each worker (one partial per batch crosses back), then in the
  /// caller. `init` must be an identity of `reduce` (0 for +, an empty map
  /// for merges): every batch starts from it. `reduce` must be associative and
  /// commutative, callable as reduce(Acc, R) and reduce(Acc, Acc), and
  /// shippable like `fn`.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc>
  [[nodiscard]] Acc map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const job_options& options = {}) {
    return run_blocking(make_reduce_job(source(std::forward<Range>(inputs)), fn, reduce, std::move(init),
                                        detail::no_shared{}, options),
                        options);
  }

  /// map_reduce with a broadcast `shared` value, passed as fn(shared, item).
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class S>
  [[nodiscard]] Acc map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const S& shared,
                               const job_options& options = {}) {
    return run_blocking(
        make_reduce_job(source(std::forward<Range>(inputs)), fn, reduce, std::move(init), shared, options), options);
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
    return run_blocking(
        make_sink_job(source(std::forward<Range>(inputs)), fn, std::move(sink), detail::no_shared{}, options),
        options);
  }

  /// for_each_result with a broadcast `shared` value, passed as fn(shared, item).
  template <std::ranges::input_range Range, class F, class Sink, class S>
  std::size_t for_each_result(Range&& inputs, F fn, Sink sink, const S& shared, const job_options& options = {}) {
    return run_blocking(make_sink_job(source(std::forward<Range>(inputs)), fn, std::move(sink), shared, options),
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
    static_assert(detail::check_task<F, detail::no_shared, T>());
    using spec = detail::job_spec<F, T, detail::no_shared, detail::no_reduce, detail::no_reduce, true>;
    using R = typename spec::result_type;
    static_assert(std::is_default_constructible_v<R>,
                  "coshard: a submitted task's result must be default constructible (an error completes with R{})");
    return asio::async_initiate<CompletionToken, void(std::exception_ptr, R)>(
        [core = core_, fn](auto handler, T input) {
          submit_task<spec>(core, fn, std::move(input), std::move(handler));
        },
        token, std::move(input));
  }

  /// Cancels every job running on this pool; callable from any thread
  /// (e.g. from a std::stop_callback). Queued batches are dropped, workers
  /// cancel their running coroutines, and each job's call completes with
  /// std::system_error(asio::error::operation_aborted) once every worker has
  /// answered. The pool stays usable. Plain functions already running finish.
  /// To cancel one job only, use its completion token's cancellation slot or
  /// job_options::stop_token.
  void cancel() { core_->cancel(); }

  /// Asynchronous map; completion signature
  /// `void(std::exception_ptr, std::vector<R>)`.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map(Range&& inputs, F fn, CompletionToken&& token) {
    return async_map(std::forward<Range>(inputs), fn, job_options{}, std::forward<CompletionToken>(token));
  }
  /// async_map with job options.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map(Range&& inputs, F fn, const job_options& options, CompletionToken&& token) {
    return launch(make_map_job(source(std::forward<Range>(inputs)), fn, detail::no_shared{}, options), options,
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
    return launch(make_map_job(source(std::forward<Range>(inputs)), fn, shared, options), options,
                  std::forward<CompletionToken>(token));
  }

  /// Asynchronous map_settled; completion signature
  /// `void(std::exception_ptr, std::vector<coshard::outcome<R>>)`.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map_settled(Range&& inputs, F fn, CompletionToken&& token) {
    return async_map_settled(std::forward<Range>(inputs), fn, job_options{}, std::forward<CompletionToken>(token));
  }
  /// async_map_settled with job options.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map_settled(Range&& inputs, F fn, const job_options& options, CompletionToken&& token) {
    return launch(make_settled_job(source(std::forward<Range>(inputs)), fn, detail::no_shared{}, options), options,
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
    return launch(make_settled_job(source(std::forward<Range>(inputs)), fn, shared, options), options,
                  std::forward<CompletionToken>(token));
  }

  /// Asynchronous map_reduce; completion signature `void(std::exception_ptr, Acc)`.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class CompletionToken>
  auto async_map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, CompletionToken&& token) {
    return async_map_reduce(std::forward<Range>(inputs), fn, reduce, std::move(init), job_options{},
                            std::forward<CompletionToken>(token));
  }
  /// async_map_reduce with job options.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class CompletionToken>
  auto async_map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const job_options& options,
                        CompletionToken&& token) {
    return launch(make_reduce_job(source(std::forward<Range>(inputs)), fn, reduce, std::move(init),
                                  detail::no_shared{}, options),
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
    return launch(make_reduce_job(source(std::forward<Range>(inputs)), fn, reduce, std::move(init), shared, options),
                  options, std::forward<CompletionToken>(token));
  }

  /// Asynchronous map_reduce_by_key; completion signature
  /// `void(std::exception_ptr, Map)`, Map the type `fn` returns.
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
    return async_map_reduce(std::forward<Range>(inputs), fn, merge_maps<Combine>{combine}, map_type{}, shared,
                            options, std::forward<CompletionToken>(token));
  }

  /// Asynchronous for_each_result; `sink` runs on the job's executor.
  /// Completion signature `void(std::exception_ptr, std::size_t)`.
  template <std::ranges::input_range Range, class F, class Sink, class CompletionToken>
  auto async_for_each_result(Range&& inputs, F fn, Sink sink, CompletionToken&& token) {
    return async_for_each_result(std::forward<Range>(inputs), fn, std::move(sink), job_options{},
                                 std::forward<CompletionToken>(token));
  }
  /// async_for_each_result with job options.
  template <std::ranges::input_range Range, class F, class Sink, class CompletionToken>
  auto async_for_each_result(Range&& inputs, F fn, Sink sink, const job_options& options, CompletionToken&& token) {
    return launch(make_sink_job(source(std::forward<Range>(inputs)), fn, std::move(sink), detail::no_shared{}, options),
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
    return launch(make_sink_job(source(std::forward<Range>(inputs)), fn, std::move(sink), shared, options), options,
                  std::forward<CompletionToken>(token));
  }

 private:
  static const pool_options& validated(const pool_options& o) {
    detail::validate_options(o);
    return o;
  }

  template <class Range>
  static auto source(Range&& inputs) {
    return detail::make_input_source(std::forward<Range>(inputs));
  }

  template <class Spec, class View, class Collector, class... Parts>
  static auto make_job(detail::pool_core& core, View view, Collector collector, const job_options& options,
                       const Parts&... parts) {
    detail::job_settings settings(core.workers.options(), options);
    auto start = detail::encode_job_start<Spec>(parts..., settings.item_timeout);
    return detail::job<Spec, View, Collector>(core.transport, core.scheduler, settings, ++core.job_counter,
                                              std::move(view), std::move(start), std::move(collector));
  }
  template <class Spec, class View, class Collector, class... Parts>
  auto make_job(View view, Collector collector, const job_options& options, const Parts&... parts) {
    return make_job<Spec>(*core_, std::move(view), std::move(collector), options, parts...);
  }

  // Puts one task into the stream for its function and its handler's
  // execution context, starting that stream's job if none runs.
  template <class Spec, class Handler>
  static void submit_task(std::shared_ptr<detail::pool_core> core, const typename Spec::fn_type& fn,
                          typename Spec::input_type input, Handler handler) {
    using T = typename Spec::input_type;
    using R = typename Spec::result_type;
    using inbox_type = detail::task_inbox<T, R>;
    using own_executor = asio::associated_executor_t<Handler, asio::system_executor>;
    asio::any_io_executor stream_ex;
    asio::io_context* home = nullptr;
    const void* context = nullptr;
    if constexpr (detail::is_io_executor<own_executor>::value) {
      auto hex = asio::get_associated_executor(handler);
      context = &asio::query(hex, asio::execution::context);
      stream_ex = asio::make_strand(hex);
    } else if (auto bg = core->background_executor()) {
      stream_ex = *bg;
      home = &core->background_context();
      context = home;
    }
    if (!stream_ex || core->workers.closing() || ::getpid() != core->owner()) {
      auto hex = asio::get_associated_executor(handler);
      asio::post(hex, [h = std::move(handler), core]() mutable {
        std::exception_ptr e;
        try {
          core->check_owner();
          e = std::make_exception_ptr(pool_error("coshard: this process_pool has been shut down"));
        } catch (...) {
          e = std::current_exception();
        }
        std::move(h)(e, R{});
      });
      return;
    }
    // The cancellation handler is in place before the task is queued (the
    // task may complete on another thread at once); a cancel that comes
    // before the task has its index is applied as soon as it has one.
    struct cancel_state {
      std::weak_ptr<inbox_type> inbox;
      std::atomic<std::uint64_t> index{~std::uint64_t{0}};
      std::atomic<bool> cancelled{false};
      void apply() {
        const std::uint64_t i = index.load();
        if (i == ~std::uint64_t{0}) return;
        if (auto open = inbox.lock())
          open->settle(i, std::make_exception_ptr(std::system_error(asio::error::operation_aborted, "coshard: task cancelled")),
                       R{});
      }
    };
    std::shared_ptr<cancel_state> cancel_target;
    auto slot = asio::get_associated_cancellation_slot(handler);
    if (slot.is_connected()) {
      cancel_target = std::make_shared<cancel_state>();
      slot.assign([cancel_target, stream_ex](asio::cancellation_type) {
        asio::post(stream_ex, [cancel_target] {
          cancel_target->cancelled.store(true);
          cancel_target->apply();
        });
      });
    }
    std::unique_ptr<detail::task_completion<R>> done =
        std::make_unique<detail::task_completion_for<R, Handler>>(std::move(handler));
    std::string key(reinterpret_cast<const char*>(&context), sizeof context);
    const std::uint64_t entry = detail::entry<Spec>::id;
    key.append(reinterpret_cast<const char*>(&entry), sizeof entry);
    if constexpr (!std::is_empty_v<typename Spec::fn_type>)  // an empty object's byte is unspecified
      key.append(reinterpret_cast<const char*>(std::addressof(fn)), sizeof fn);
    for (;;) {
      bool made = false;
      auto inbox = core->stream_inbox<inbox_type>(key, made);
      if (made) start_stream<Spec>(core, fn, inbox, stream_ex, home);
      if (cancel_target) cancel_target->inbox = inbox;  // before push: read only once the index is set
      std::uint64_t index = 0;
      if (!inbox->push(input, done, index)) continue;  // it closed meanwhile: a new stream
      if (cancel_target) {
        cancel_target->index.store(index);
        if (cancel_target->cancelled.load()) asio::post(stream_ex, [cancel_target] { cancel_target->apply(); });
      }
      return;
    }
  }

  template <class Spec>
  static void start_stream(std::shared_ptr<detail::pool_core> core, const typename Spec::fn_type& fn,
                           std::shared_ptr<detail::task_inbox<typename Spec::input_type, typename Spec::result_type>> inbox,
                           asio::any_io_executor ex, asio::io_context* home) {
    using T = typename Spec::input_type;
    using R = typename Spec::result_type;
    auto j = make_job<Spec>(*core, detail::stream_source<T, R>(inbox), detail::stream_collector<T, R>(inbox),
                            job_options{}, fn, detail::no_reduce{}, detail::no_shared{}, detail::no_reduce{});
    auto probe = detail::loop_thread_probe(ex);
    asio::co_spawn(ex, run_owned(core, std::move(j), home, std::move(probe), std::stop_token{}),
                   [inbox](std::exception_ptr e, std::size_t) {
                     if (e) inbox->fail_all(e);  // refused (shut down): its tasks learn why
                   });
  }

  template <class View, class F, class S>
  auto make_map_job(View view, const F& fn, const S& shared, const job_options& options) {
    using T = detail::source_input_of<View>;
    static_assert(detail::check_task<F, S, T>());
    using spec = detail::job_spec<F, T, S, detail::no_reduce, detail::no_reduce>;
    using R = typename spec::result_type;
    static_assert(std::is_default_constructible_v<R>,
                  "coshard: map results must be default constructible (they are placed by index)");
    return make_job<spec>(std::move(view), detail::ordered_collector<R>{}, options, fn, detail::no_reduce{}, shared,
                          detail::no_reduce{});
  }

  template <class View, class F, class S>
  auto make_settled_job(View view, const F& fn, const S& shared, const job_options& options) {
    using T = detail::source_input_of<View>;
    static_assert(detail::check_task<F, S, T>());
    using spec = detail::job_spec<F, T, S, detail::no_reduce, detail::no_reduce, true>;
    using R = typename spec::result_type;
    return make_job<spec>(std::move(view), detail::settled_collector<R>{}, options, fn, detail::no_reduce{}, shared,
                          detail::no_reduce{});
  }

  template <class View, class F, class Reduce, class Acc, class S>
  auto make_reduce_job(View view, const F& fn, const Reduce& reduce, Acc init, const S& shared,
                       const job_options& options) {
    using T = detail::source_input_of<View>;
    static_assert(detail::check_task<F, S, T>());
    static_assert(std::is_class_v<Reduce> && std::is_trivially_copyable_v<Reduce>,
                  "coshard: the reducer runs in the workers too, so it must be an empty or "
                  "trivially copyable function object (std::plus<>{}, a capture-less lambda, "
                  "coshard::merge_maps<>{})");
    static_assert(!detail::is_process_local<Acc>(),
                  "coshard: the accumulator type holds an address (a raw pointer, std::string_view, "
                  "std::span or std::reference_wrapper) that means nothing in another process");
    static_assert(serializable<Acc>, "coshard: the accumulator type cannot cross processes");
    using spec = detail::job_spec<F, T, S, Reduce, Acc>;
    using R = typename spec::result_type;
    static_assert(std::is_invocable_r_v<Acc, const Reduce&, Acc&&, R&&>,
                  "coshard: reduce(Acc, R) must be callable and return the accumulator type");
    static_assert(std::is_invocable_r_v<Acc, const Reduce&, Acc&&, Acc&&>,
                  "coshard: reduce(Acc, Acc) must be callable to fold the workers' partials");
    auto collector = detail::reduce_collector<Acc, Reduce>(reduce, init);
    return make_job<spec>(std::move(view), std::move(collector), options, fn, reduce, shared, init);
  }

  template <class View, class F, class Sink, class S>
  auto make_sink_job(View view, const F& fn, Sink sink, const S& shared, const job_options& options) {
    using T = detail::source_input_of<View>;
    static_assert(detail::check_task<F, S, T>());
    using spec = detail::job_spec<F, T, S, detail::no_reduce, detail::no_reduce>;
    using R = typename spec::result_type;
    static_assert(std::is_invocable_v<Sink&, std::size_t, R&&>,
                  "coshard: the sink must be callable as sink(std::size_t index, R&& result)");
    return make_job<spec>(std::move(view), detail::sink_collector<R, Sink>(std::move(sink)), options, fn,
                          detail::no_reduce{}, shared, detail::no_reduce{});
  }

  // Registers one job with the pool and lets cancel(), shutdown() and the
  // job's stop_token reach it.
  class job_scope {
   public:
    template <class Job, class Executor>
    job_scope(detail::pool_core& core, Job& j, Executor ex, std::function<bool()> loop_thread,
              std::optional<detail::pool_core::job_ticket> claimed, std::stop_token stop)
        : core_(core),
          ticket_(claimed ? *claimed : core.claim(std::move(loop_thread), /*blocking=*/false)),
          target_(std::make_shared<std::function<void()>>([&j] { j.cancel(); })) {
      auto post_cancel = core_.set_canceller(ticket_, ex, target_);
      if (stop.stop_possible()) on_stop_.emplace(std::move(stop), std::move(post_cancel));
    }
    ~job_scope() {
      on_stop_.reset();
      core_.clear_canceller(ticket_);
      *target_ = nullptr;
      core_.release(ticket_);
    }
    job_scope(const job_scope&) = delete;
    job_scope& operator=(const job_scope&) = delete;

   private:
    detail::pool_core& core_;
    detail::pool_core::job_ticket ticket_;
    std::shared_ptr<std::function<void()>> target_;
    std::optional<std::stop_callback<std::function<void()>>> on_stop_;
  };

  // The coroutine holds the core: a job outlives a pool destroyed under it
  // (e.g. its io_context stopped running) without touching freed memory.
  // `home`: the pool's own io_context the job runs on, if it does; the
  // workers' sockets then stay registered with it from job to job. Not a
  // template: one copy serves every job type.
  static asio::awaitable<void> run_guarded(std::shared_ptr<detail::pool_core> core, detail::job_engine& j,
                                           asio::io_context* home, std::function<bool()> loop_thread,
                                           std::optional<detail::pool_core::job_ticket> claimed,
                                           std::stop_token stop) {
    auto ex = co_await asio::this_coro::executor;
    job_scope scope(*core, j, ex, std::move(loop_thread), claimed, std::move(stop));
    if (home) j.keep_sockets_on(*home);
    co_await j.run();
  }

  // run_guarded for a job this coroutine owns, completing with its results.
  template <class Job>
  static asio::awaitable<typename Job::value_type> run_owned(std::shared_ptr<detail::pool_core> core, Job j,
                                                             asio::io_context* home, std::function<bool()> loop_thread,
                                                             std::stop_token stop) {
    co_await run_guarded(std::move(core), j, home, std::move(loop_thread), std::nullopt, std::move(stop));
    co_return j.take();
  }

  // Runs the job on the calling thread: on the pool's own io_context if no
  // other blocking call uses it now, else on an io_context of its own.
  template <class Job>
  typename Job::value_type run_blocking(Job j, const job_options& options) {
    auto owned = std::make_shared<Job>(std::move(j));
    run_engine_blocking(owned, options);
    return owned->take();
  }
  void run_engine_blocking(std::shared_ptr<detail::job_engine> j, const job_options& options) {
    std::shared_ptr<detail::pool_core> core = core_;
    std::function<bool()> on_this_thread = [id = std::this_thread::get_id()] { return std::this_thread::get_id() == id; };
    const auto ticket = core->claim(on_this_thread, /*blocking=*/true);
    const bool home = core->take_home();
    std::optional<asio::io_context> own;
    asio::io_context& io = home ? core->io : own.emplace(1);
    std::exception_ptr error;
    try {
      // The job is kept by the completion handler: alive as long as the
      // coroutine, should io.run() end before it does.
      asio::co_spawn(io,
                     run_guarded(core, *j, home ? &core->io : nullptr, on_this_thread, ticket, options.stop_token),
                     [&error, j](std::exception_ptr e) { error = e; });
    } catch (...) {
      if (home) core->give_back_home();
      core->release(ticket);
      throw;
    }
    struct home_return {
      detail::pool_core& core;
      bool home;
      ~home_return() {
        if (home) core.give_back_home();
      }
    } give_back{*core, home};
    io.restart();
    io.run();
    if (error) std::rethrow_exception(error);
  }

  template <class Job, class CompletionToken>
  auto launch(Job j, const job_options& options, CompletionToken&& token) {
    using value_type = typename Job::value_type;
    return asio::async_initiate<CompletionToken, void(std::exception_ptr, value_type)>(
        [core = core_](auto handler, Job j, std::stop_token stop) {
          using handler_type = decltype(handler);
          using own_executor = asio::associated_executor_t<handler_type, asio::system_executor>;
          if constexpr (detail::is_io_executor<own_executor>::value) {
            auto ex = asio::make_strand(asio::get_associated_executor(handler));
            auto probe = detail::loop_thread_probe(ex);
            asio::co_spawn(ex, run_owned(core, std::move(j), nullptr, std::move(probe), std::move(stop)),
                           std::move(handler));
          } else if (auto ex = core->background_executor()) {
            auto probe = detail::loop_thread_probe(*ex);
            asio::co_spawn(*ex,
                           run_owned(core, std::move(j), &core->background_context(), std::move(probe),
                                     std::move(stop)),
                           std::move(handler));
          } else {
            // Shut down: the background loop is gone, so the refusal is
            // delivered through the handler's own executor.
            auto hex = asio::get_associated_executor(handler);
            asio::post(hex, [h = std::move(handler)]() mutable {
              std::move(h)(std::make_exception_ptr(pool_error("coshard: this process_pool has been shut down")),
                           value_type{});
            });
          }
        },
        token, std::move(j), options.stop_token);
  }

  pid_t owner_ = ::getpid();
  std::shared_ptr<detail::pool_core> core_;
};

}  // namespace coshard
