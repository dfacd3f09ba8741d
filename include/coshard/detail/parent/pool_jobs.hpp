// coshard/detail/parent/pool_jobs.hpp - how a process_pool call becomes a
// running job: the checks on the caller's types, the job's parts, and where
// and how it runs (blocking on the calling thread, or on the completion
// handler's executor), registered with the pool so that cancel(), shutdown()
// and a stop_token reach it.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/any_io_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/strand.hpp>

#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <stop_token>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>

#include "coshard/detail/parent/collectors.hpp"
#include "coshard/detail/parent/input_source.hpp"
#include "coshard/detail/parent/job.hpp"
#include "coshard/detail/parent/pool_core.hpp"
#include "coshard/detail/parent/task_stream.hpp"
#include "coshard/detail/process_local.hpp"
#include "coshard/detail/separate_compilation.hpp"
#include "coshard/errors.hpp"
#include "coshard/job_options.hpp"
#include "coshard/serialization.hpp"

namespace coshard::detail {

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
struct is_io_executor : std::bool_constant<std::is_same_v<E, asio::any_io_executor> ||
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

/// The job-making half of a process_pool, over its shared core.
class pool_jobs {
 public:
  explicit pool_jobs(std::shared_ptr<pool_core> core) : core_(std::move(core)) {}

  template <class Spec, class View, class Collector, class... Parts>
  static auto make_job(detail::pool_core& core, View view, Collector collector, const job_options& options,
                       const Parts&... parts) {
    // The worker rebuilds the parts as Spec's types: the bytes must be of those.
    static_assert(std::is_same_v<std::tuple<Parts...>, std::tuple<typename Spec::fn_type, typename Spec::reduce_type,
                                                                  typename Spec::shared_type, typename Spec::acc_type>>);
    detail::job_settings settings(core.workers.options(), options);
    auto start = detail::encode_job_start(detail::entry<Spec>::id, parts..., settings.item_timeout);
    return detail::job<Spec, View, Collector>(core.transport, core.scheduler, core.counters, settings, ++core.job_counter,
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
          open->settle(
              i, std::make_exception_ptr(std::system_error(asio::error::operation_aborted, "coshard: task cancelled")),
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
  static void start_stream(
      std::shared_ptr<detail::pool_core> core, const typename Spec::fn_type& fn,
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

  template <class Range, class F, class S>
  auto map_job(Range&& inputs, const F& fn, const S& shared, const job_options& options) {
    auto view = make_input_source(std::forward<Range>(inputs));
    using T = source_input_of<decltype(view)>;
    static_assert(detail::check_task<F, S, T>());
    using spec = detail::job_spec<F, T, S, detail::no_reduce, detail::no_reduce>;
    using R = typename spec::result_type;
    static_assert(std::is_default_constructible_v<R>,
                  "coshard: map results must be default constructible (they are placed by index)");
    return make_job<spec>(std::move(view), detail::ordered_collector<R>{}, options, fn, detail::no_reduce{}, shared,
                          detail::no_reduce{});
  }

  template <class Range, class F, class S>
  auto settled_job(Range&& inputs, const F& fn, const S& shared, const job_options& options) {
    auto view = make_input_source(std::forward<Range>(inputs));
    using T = source_input_of<decltype(view)>;
    static_assert(detail::check_task<F, S, T>());
    using spec = detail::job_spec<F, T, S, detail::no_reduce, detail::no_reduce, true>;
    using R = typename spec::result_type;
    return make_job<spec>(std::move(view), detail::settled_collector<R>{}, options, fn, detail::no_reduce{}, shared,
                          detail::no_reduce{});
  }

  template <class Range, class F, class Reduce, class Acc, class S>
  auto reduce_job(Range&& inputs, const F& fn, const Reduce& reduce, Acc init, const S& shared,
                  const job_options& options) {
    auto view = make_input_source(std::forward<Range>(inputs));
    using T = source_input_of<decltype(view)>;
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

  template <class Range, class F, class Sink, class S>
  auto sink_job(Range&& inputs, const F& fn, Sink sink, const S& shared, const job_options& options) {
    auto view = make_input_source(std::forward<Range>(inputs));
    using T = source_input_of<decltype(view)>;
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
                                           std::optional<detail::pool_core::job_ticket> claimed, std::stop_token stop);

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
  void run_engine_blocking(std::shared_ptr<detail::job_engine> j, const job_options& options);

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
            asio::co_spawn(
                *ex, run_owned(core, std::move(j), &core->background_context(), std::move(probe), std::move(stop)),
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

  /// process_pool::async_submit.
  template <class F, class T, class CompletionToken>
  auto submit(F fn, T input, CompletionToken&& token) {
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

 private:
  std::shared_ptr<pool_core> core_;
};

#if COSHARD_DEFINE_MACHINERY
COSHARD_DECL asio::awaitable<void> pool_jobs::run_guarded(std::shared_ptr<detail::pool_core> core,
                                                          detail::job_engine& j, asio::io_context* home,
                                                          std::function<bool()> loop_thread,
                                                          std::optional<detail::pool_core::job_ticket> claimed,
                                                          std::stop_token stop) {
  auto ex = co_await asio::this_coro::executor;
  job_scope scope(*core, j, ex, std::move(loop_thread), claimed, std::move(stop));
  if (home) j.keep_sockets_on(*home);
  co_await j.run();
}
COSHARD_DECL void pool_jobs::run_engine_blocking(std::shared_ptr<detail::job_engine> j, const job_options& options) {
  std::shared_ptr<detail::pool_core> core = core_;
  std::function<bool()> on_this_thread = [id = std::this_thread::get_id()] { return std::this_thread::get_id() == id; };
  const auto ticket = core->claim(on_this_thread, /*blocking=*/true);
  const bool home = core->take_home();
  std::optional<asio::io_context> own;
  asio::io_context& io = home ? core->io : own.emplace(1);
  // The job and the error are kept by the completion handler: alive as long
  // as the coroutine, should io.run() end (by a throw) before it does.
  auto error = std::make_shared<std::exception_ptr>();
  try {
    asio::co_spawn(io, run_guarded(core, *j, home ? &core->io : nullptr, on_this_thread, ticket, options.stop_token),
                   [error, j](std::exception_ptr e) { *error = e; });
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
  if (*error) std::rethrow_exception(*error);
}
#endif

}  // namespace coshard::detail
