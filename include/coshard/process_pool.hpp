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

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <ranges>
#include <thread>
#include <type_traits>
#include <vector>

#include "coshard/detail/collectors.hpp"
#include "coshard/detail/input_source.hpp"
#include "coshard/detail/job.hpp"
#include "coshard/detail/worker_set.hpp"
#include "coshard/errors.hpp"
#include "coshard/keyed_reduce.hpp"
#include "coshard/outcome.hpp"
#include "coshard/pool_options.hpp"
#include "coshard/serialization.hpp"

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
  static_assert(serializable<T>,
                "coshard: the input type cannot cross processes: make it trivially copyable or "
                "give it a cereal serialize() function");
  static_assert(serializable<S>,
                "coshard: the shared value's type cannot cross processes: make it trivially "
                "copyable or give it a cereal serialize() function");
  using R = typename task_traits<F, S, T>::result_type;
  static_assert(!std::is_void_v<R>, "coshard: the function must return a value");
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

}  // namespace detail

/// A fixed set of pre-forked worker processes. Each worker runs a
/// single-threaded asio::io_context; batches of input are pulled by the
/// workers, run there (awaitable tasks up to `concurrency` at once per
/// worker, plain functions inline) and their results or partial reductions
/// come back to the caller.
///
/// One job runs at a time per pool: starting a second while one runs fails
/// with pool_error. The pool must outlive the jobs it runs.
///
/// Function objects cross to workers as bytes (see DESIGN.md): lambdas without
/// captures, or capturing only trivially copyable values. Do not capture
/// references or pointers: the worker sees its own copy of memory as it was
/// when the pool was created.
class process_pool {
 public:
  /// Starts the workers. Throws pool_error if an option is invalid or a worker
  /// cannot be started (every worker already started is reaped first).
  explicit process_pool(pool_options options = {}) : workers_(validated(options)) {}

  process_pool(const process_pool&) = delete;
  process_pool& operator=(const process_pool&) = delete;

  /// Closes the workers' channels, waits up to `shutdown_timeout` for them to
  /// exit and kills the rest. Never throws; leaves no child process behind.
  ~process_pool() { shutdown(shutdown_mode::graceful); }

  /// Shuts the pool down; callable from any thread, also while a job runs
  /// (which then completes with operation_aborted or pool_error). `graceful`
  /// cancels the job, lets workers answer what they hold and exit on EOF, and
  /// escalates to `forced` after shutdown_timeout; `forced` kills the workers
  /// at once. Either way it returns within about two shutdown_timeouts, every
  /// worker reaped. Later jobs fail with pool_error. Idempotent.
  void shutdown(shutdown_mode mode = shutdown_mode::graceful) noexcept {
    workers_.close();
    if (mode == shutdown_mode::forced) workers_.kill_all();
    cancel();
    {
      std::unique_lock lock(busy_mutex_);
      if (!busy_idle_.wait_for(lock, workers_.options().shutdown_timeout, [&] { return !busy_.load(); })) {
        workers_.kill_all();  // graceful ran out of time
        busy_idle_.wait(lock, [&] { return !busy_.load(); });
      }
    }
    if (background_thread_.joinable()) {
      background_guard_.reset();
      background_thread_.join();
    }
    workers_.shutdown(mode == shutdown_mode::forced ? std::chrono::milliseconds(0)
                                                     : workers_.options().shutdown_timeout);
  }

  /// Number of worker processes.
  [[nodiscard]] std::size_t size() const noexcept { return workers_.slots().size(); }

  /// Process ids of the current workers (a replaced worker has a new pid).
  [[nodiscard]] std::vector<pid_t> worker_pids() const {
    std::vector<pid_t> pids;
    for (auto& s : workers_.slots()) pids.push_back(s.pid.load());
    return pids;
  }

  /// Applies `fn` to every input and returns the results in input order.
  /// `fn` is `R(T)` or `asio::awaitable<R>(T)`, T the range's value type.
  /// Inputs are pulled lazily in batches. Blocks the calling thread.
  /// Throws task_error for the failing item with the lowest index seen (the
  /// remaining batches are not started), pool_error if a worker is lost.
  template <std::ranges::input_range Range, class F>
  [[nodiscard]] auto map(Range&& inputs, F fn) {
    return run_blocking(make_map_job(detail::make_input_source(std::forward<Range>(inputs)), fn, detail::no_shared{}));
  }

  /// As map(inputs, fn), calling `fn(shared, item)`; `shared` is sent to each
  /// worker once per job, not once per item.
  template <std::ranges::input_range Range, class F, class S>
  [[nodiscard]] auto map(Range&& inputs, F fn, const S& shared) {
    return run_blocking(make_map_job(detail::make_input_source(std::forward<Range>(inputs)), fn, shared));
  }

  /// Like map, but every item settles on its own: the result is one
  /// coshard::outcome<R> per input, in input order, holding the value or the
  /// failure (task_error, worker_crashed, timeout_error). One failing item does
  /// not stop the others. Throws pool_error only for failures of the pool
  /// itself, and operation_aborted (std::system_error) if cancelled.
  template <std::ranges::input_range Range, class F>
  [[nodiscard]] auto map_settled(Range&& inputs, F fn) {
    return run_blocking(make_settled_job(detail::make_input_source(std::forward<Range>(inputs)), fn));
  }

  /// Asynchronous map_settled; completion signature
  /// `void(std::exception_ptr, std::vector<coshard::outcome<R>>)`.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map_settled(Range&& inputs, F fn, CompletionToken&& token) {
    auto j = make_settled_job(detail::make_input_source(std::forward<Range>(inputs)), fn);
    return launch(std::move(j), std::forward<CompletionToken>(token));
  }

  /// Cancels the job running on this pool, if any; callable from any thread
  /// (e.g. from a std::stop_callback). Queued batches are dropped, workers
  /// cancel their running coroutines, and the job's call completes with
  /// std::system_error(asio::error::operation_aborted) once every worker has
  /// answered. The pool stays usable. Plain functions already running finish.
  void cancel() {
    std::lock_guard lock(cancel_mutex_);
    if (cancel_current_) cancel_current_();
  }

  /// Applies `fn` to every input and folds the results with `reduce`, first
  /// inside each worker (one partial per batch crosses back), then in the
  /// caller. `init` must be an identity of `reduce` (0 for +, an empty map
  /// for merges): every batch starts from it. `reduce` must be associative and
  /// commutative, callable as reduce(Acc, R) and reduce(Acc, Acc), and
  /// shippable like `fn`. Errors as for map.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc>
  [[nodiscard]] Acc map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init) {
    return run_blocking(make_reduce_job(detail::make_input_source(std::forward<Range>(inputs)), fn, reduce,
                                        std::move(init), detail::no_shared{}));
  }

  /// map_reduce with a broadcast `shared` value, passed as fn(shared, item).
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class S>
  [[nodiscard]] Acc map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, const S& shared) {
    return run_blocking(make_reduce_job(detail::make_input_source(std::forward<Range>(inputs)), fn, reduce,
                                        std::move(init), shared));
  }

  /// Keyed reduce: `fn` returns a map (e.g. word -> count) per input; the maps
  /// are merged with `combine` on equal keys, in the workers and then here.
  template <std::ranges::input_range Range, class F, class Combine = std::plus<>>
  [[nodiscard]] auto map_reduce_by_key(Range&& inputs, F fn, Combine combine = {}) {
    using map_type = typename detail::task_traits<F, detail::no_shared,
                                                  detail::input_of<Range>>::result_type;
    return map_reduce(std::forward<Range>(inputs), fn, merge_maps<Combine>{combine}, map_type{});
  }

  /// Streams results in completion order: `sink(index, result)` runs in the
  /// calling thread as each batch returns (use batch_size = 1 for one call per
  /// finished item as early as possible). Returns how many results were
  /// delivered. An exception from `sink` stops the job and is rethrown.
  template <std::ranges::input_range Range, class F, class Sink>
  std::size_t for_each_result(Range&& inputs, F fn, Sink sink) {
    return run_blocking(make_sink_job(detail::make_input_source(std::forward<Range>(inputs)), fn, std::move(sink)));
  }

  /// Asynchronous map. Completion signature:
  /// `void(std::exception_ptr, std::vector<R>)`. The job runs on the completion
  /// handler's associated executor (e.g. the coroutine's with use_awaitable);
  /// a handler without an io executor (use_future, a plain callback) gets it
  /// run on a thread owned by the pool. Lvalue inputs must outlive the
  /// operation; rvalue containers are moved into it. Errors as for map, in the
  /// exception_ptr.
  template <std::ranges::input_range Range, class F, class CompletionToken>
  auto async_map(Range&& inputs, F fn, CompletionToken&& token) {
    auto j = make_map_job(detail::make_input_source(std::forward<Range>(inputs)), fn, detail::no_shared{});
    return launch(std::move(j), std::forward<CompletionToken>(token));
  }

  /// Asynchronous map with a shared value; see async_map.
  template <std::ranges::input_range Range, class F, class S, class CompletionToken>
  auto async_map(Range&& inputs, F fn, const S& shared, CompletionToken&& token) {
    auto j = make_map_job(detail::make_input_source(std::forward<Range>(inputs)), fn, shared);
    return launch(std::move(j), std::forward<CompletionToken>(token));
  }

  /// Asynchronous map_reduce; completion signature `void(std::exception_ptr, Acc)`.
  template <std::ranges::input_range Range, class F, class Reduce, class Acc, class CompletionToken>
  auto async_map_reduce(Range&& inputs, F fn, Reduce reduce, Acc init, CompletionToken&& token) {
    auto j = make_reduce_job(detail::make_input_source(std::forward<Range>(inputs)), fn, reduce, std::move(init),
                             detail::no_shared{});
    return launch(std::move(j), std::forward<CompletionToken>(token));
  }

  /// Asynchronous for_each_result; `sink` runs on the job's executor.
  /// Completion signature `void(std::exception_ptr, std::size_t)`.
  template <std::ranges::input_range Range, class F, class Sink, class CompletionToken>
  auto async_for_each_result(Range&& inputs, F fn, Sink sink, CompletionToken&& token) {
    auto j = make_sink_job(detail::make_input_source(std::forward<Range>(inputs)), fn, std::move(sink));
    return launch(std::move(j), std::forward<CompletionToken>(token));
  }

 private:
  static const pool_options& validated(const pool_options& o) {
    if (o.concurrency == 0) throw pool_error("coshard: pool_options.concurrency must be at least 1");
    if (o.batches_in_flight == 0)
      throw pool_error("coshard: pool_options.batches_in_flight must be at least 1");
    if (o.max_batch_bytes == 0) throw pool_error("coshard: pool_options.max_batch_bytes must be at least 1");
    if (o.max_frame_bytes < 4096)
      throw pool_error("coshard: pool_options.max_frame_bytes must be at least 4096");
    return o;
  }

  template <class View, class F, class S>
  auto make_map_job(View view, const F& fn, const S& shared) {
    using T = detail::source_input_of<View>;
    static_assert(detail::check_task<F, S, T>());
    using spec = detail::job_spec<F, T, S, detail::no_reduce, detail::no_reduce>;
    using R = typename spec::result_type;
    static_assert(std::is_default_constructible_v<R>,
                  "coshard: map results must be default constructible (they are placed by index)");
    return detail::job<spec, View, detail::ordered_collector<R>>(
        workers_, ++job_counter_, std::move(view),
        detail::encode_job_start<spec>(fn, {}, shared, {}), detail::ordered_collector<R>{});
  }

  template <class View, class F>
  auto make_settled_job(View view, const F& fn) {
    using T = detail::source_input_of<View>;
    static_assert(detail::check_task<F, detail::no_shared, T>());
    using spec = detail::job_spec<F, T, detail::no_shared, detail::no_reduce, detail::no_reduce, true>;
    using R = typename spec::result_type;
    return detail::job<spec, View, detail::settled_collector<R>>(
        workers_, ++job_counter_, std::move(view),
        detail::encode_job_start<spec>(fn, {}, detail::no_shared{}, {}), detail::settled_collector<R>{});
  }

  template <class View, class F, class Reduce, class Acc, class S>
  auto make_reduce_job(View view, const F& fn, const Reduce& reduce, Acc init, const S& shared) {
    using T = detail::source_input_of<View>;
    static_assert(detail::check_task<F, S, T>());
    static_assert(std::is_class_v<Reduce> && std::is_trivially_copyable_v<Reduce>,
                  "coshard: the reducer runs in the workers too, so it must be an empty or "
                  "trivially copyable function object (std::plus<>{}, a capture-less lambda, "
                  "coshard::merge_maps<>{})");
    static_assert(serializable<Acc>, "coshard: the accumulator type cannot cross processes");
    using spec = detail::job_spec<F, T, S, Reduce, Acc>;
    using R = typename spec::result_type;
    static_assert(std::is_invocable_r_v<Acc, const Reduce&, Acc&&, R&&>,
                  "coshard: reduce(Acc, R) must be callable and return the accumulator type");
    static_assert(std::is_invocable_r_v<Acc, const Reduce&, Acc&&, Acc&&>,
                  "coshard: reduce(Acc, Acc) must be callable to fold the workers' partials");
    auto start = detail::encode_job_start<spec>(fn, reduce, shared, init);
    return detail::job<spec, View, detail::reduce_collector<Acc, Reduce>>(
        workers_, ++job_counter_, std::move(view), std::move(start),
        detail::reduce_collector<Acc, Reduce>(reduce, std::move(init)));
  }

  template <class View, class F, class Sink>
  auto make_sink_job(View view, const F& fn, Sink sink) {
    using T = detail::source_input_of<View>;
    static_assert(detail::check_task<F, detail::no_shared, T>());
    using spec = detail::job_spec<F, T, detail::no_shared, detail::no_reduce, detail::no_reduce>;
    using R = typename spec::result_type;
    static_assert(std::is_invocable_v<Sink&, std::size_t, R&&>,
                  "coshard: the sink must be callable as sink(std::size_t index, R&& result)");
    return detail::job<spec, View, detail::sink_collector<R, Sink>>(
        workers_, ++job_counter_, std::move(view),
        detail::encode_job_start<spec>(fn, {}, detail::no_shared{}, {}),
        detail::sink_collector<R, Sink>(std::move(sink)));
  }

  // Marks the pool busy for one job; a second concurrent job is an error
  // rather than a silent interleaving of two jobs' frames on one channel.
  class busy_scope {
   public:
    explicit busy_scope(process_pool& pool) : pool_(pool) {
      if (pool_.workers_.closing()) throw pool_error("coshard: this process_pool has been shut down");
      if (pool_.busy_.exchange(true))
        throw pool_error("coshard: this process_pool is already running a job; "
                         "wait for it to finish or use a second pool");
    }
    ~busy_scope() {
      std::lock_guard lock(pool_.busy_mutex_);
      pool_.busy_.store(false);
      pool_.busy_idle_.notify_all();
    }
    busy_scope(const busy_scope&) = delete;
    busy_scope& operator=(const busy_scope&) = delete;

   private:
    process_pool& pool_;
  };

  // Lets cancel() reach the running job from any thread: the request is
  // posted to the job's executor and dropped if the job has ended by then.
  struct cancel_target {
    std::function<void()> cancel;  // set and cleared on the job's executor
  };

  class cancel_scope {
   public:
    template <class Job, class Executor>
    cancel_scope(process_pool& pool, Job& j, Executor ex)
        : pool_(pool), target_(std::make_shared<cancel_target>()) {
      target_->cancel = [&j] { j.cancel(); };
      std::lock_guard lock(pool_.cancel_mutex_);
      pool_.cancel_current_ = [ex, weak = std::weak_ptr<cancel_target>(target_)] {
        asio::post(ex, [weak] {
          if (auto t = weak.lock(); t && t->cancel) t->cancel();
        });
      };
    }
    ~cancel_scope() {
      std::lock_guard lock(pool_.cancel_mutex_);
      pool_.cancel_current_ = nullptr;
      target_->cancel = nullptr;
    }
    cancel_scope(const cancel_scope&) = delete;
    cancel_scope& operator=(const cancel_scope&) = delete;

   private:
    process_pool& pool_;
    std::shared_ptr<cancel_target> target_;
  };

  // `home`: the pool's own io_context the job runs on, if it does; the
  // workers' sockets then stay registered with it from job to job.
  template <class Job>
  static asio::awaitable<typename Job::value_type> run_guarded(process_pool* self, Job j,
                                                               asio::io_context* home) {
    std::optional<busy_scope> busy;
    if (home != &self->io_) busy.emplace(*self);  // run_blocking claimed the pool already
    if (home) j.keep_sockets_on(*home);
    cancel_scope cancellable(*self, j, co_await asio::this_coro::executor);
    self->workers_.replace_broken();
    co_return co_await j.run();
  }

  template <class Job>
  typename Job::value_type run_blocking(Job j) {
    // Claimed before io_ is touched: a second thread's blocking call must
    // fail here, not run this job's handlers on its own thread.
    busy_scope busy(*this);
    std::exception_ptr error;
    std::optional<typename Job::value_type> out;
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> { out.emplace(co_await run_guarded(this, std::move(j), &io_)); },
        [&](std::exception_ptr e) { error = e; });
    io_.restart();
    io_.run();
    if (error) std::rethrow_exception(error);
    return std::move(*out);
  }

  asio::io_context::executor_type background_executor() {
    std::lock_guard lock(background_mutex_);
    if (!background_thread_.joinable()) {
      background_guard_.emplace(background_.get_executor());
      background_thread_ = std::thread([this] { background_.run(); });
    }
    return background_.get_executor();
  }

  template <class Job, class CompletionToken>
  auto launch(Job j, CompletionToken&& token) {
    using value_type = typename Job::value_type;
    return asio::async_initiate<CompletionToken, void(std::exception_ptr, value_type)>(
        [this](auto handler, Job j) {
          using handler_type = decltype(handler);
          using own_executor = asio::associated_executor_t<handler_type, asio::system_executor>;
          if constexpr (detail::is_io_executor<own_executor>::value) {
            auto ex = asio::make_strand(asio::get_associated_executor(handler));
            asio::co_spawn(ex, run_guarded(this, std::move(j), nullptr), std::move(handler));
          } else {
            auto ex = background_executor();
            asio::co_spawn(ex, run_guarded(this, std::move(j), &background_), std::move(handler));
          }
        },
        token, std::move(j));
  }

  detail::worker_set workers_;
  asio::io_context io_{1};
  std::atomic<bool> busy_{false};
  std::mutex busy_mutex_;
  std::condition_variable busy_idle_;
  std::uint64_t job_counter_ = 0;
  std::mutex cancel_mutex_;
  std::function<void()> cancel_current_;
  std::mutex background_mutex_;
  asio::io_context background_{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> background_guard_;
  std::thread background_thread_;
};

}  // namespace coshard
