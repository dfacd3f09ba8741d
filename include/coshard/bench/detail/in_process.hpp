// coshard/bench/detail/in_process.hpp - the baselines: a task run over its
// inputs in the calling process, without a pool.
#pragma once

#include "coshard/detail/asio_config.hpp"
#include "coshard/detail/task_traits.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <span>
#include <utility>
#include <vector>

namespace coshard::bench::detail {

template <class F, class T>
using task_traits_for = coshard::detail::task_traits<F, coshard::detail::no_shared, T>;

/// Calls `visit(index, result)` for every input, in this process. A plain
/// function runs in a loop; a coroutine runs on one io_context with at most
/// `concurrency` items in flight (what one worker of the pool would do, in
/// one process). Each item is passed as a fresh copy, as a worker receives a
/// freshly decoded one. Rethrows the first exception of a task.
template <class T, class F, class Visit>
void run_in_process(std::span<const T> inputs, F& fn, std::size_t concurrency, Visit&& visit) {
  if constexpr (!task_traits_for<F, T>::is_awaitable) {
    for (std::size_t i = 0; i < inputs.size(); ++i) visit(i, fn(T(inputs[i])));
  } else {
    asio::io_context io{1};
    std::size_t next = 0;
    std::exception_ptr failure;
    const std::size_t lanes = std::min(std::max<std::size_t>(concurrency, 1), inputs.size());
    for (std::size_t lane = 0; lane < lanes; ++lane)
      asio::co_spawn(
          io,
          [&]() -> asio::awaitable<void> {
            while (next < inputs.size() && !failure) {
              const std::size_t i = next++;
              visit(i, co_await fn(T(inputs[i])));
            }
          },
          [&](std::exception_ptr e) {
            if (e && !failure) failure = e;
          });
    io.run();
    if (failure) std::rethrow_exception(failure);
  }
}

/// The results of `fn` over `inputs`, in input order, computed in this process.
/// (Default constructible, as process_pool::map requires of its results.)
template <class T, class F>
auto map_in_process(std::span<const T> inputs, F& fn, std::size_t concurrency) {
  using R = typename task_traits_for<F, T>::result_type;
  std::vector<R> out(inputs.size());  // one allocation, written in place: a fair baseline
  run_in_process(inputs, fn, concurrency, [&](std::size_t i, R&& r) { out[i] = std::move(r); });
  return out;
}

/// `init` folded with `reduce` over the results of `fn`, in this process.
template <class T, class F, class Reduce, class Acc>
Acc map_reduce_in_process(std::span<const T> inputs, F& fn, Reduce& reduce, Acc init,
                          std::size_t concurrency) {
  using R = typename task_traits_for<F, T>::result_type;
  run_in_process(inputs, fn, concurrency, [&](std::size_t, R&& r) { init = reduce(std::move(init), std::move(r)); });
  return init;
}

}  // namespace coshard::bench::detail
