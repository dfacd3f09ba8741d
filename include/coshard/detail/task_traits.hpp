// coshard/detail/task_traits.hpp - what kind of callable a task is and what it yields.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/awaitable.hpp>

#include <functional>
#include <type_traits>
#include <utility>

namespace coshard::detail {

/// Stands in for the shared value when a job has none.
struct no_shared {};
/// Stands in for the reducer of a plain map job.
struct no_reduce {};

template <class T>
struct awaitable_traits : std::false_type {
  using value_type = T;
};
template <class R, class E>
struct awaitable_traits<asio::awaitable<R, E>> : std::true_type {
  using value_type = R;
};

template <class F, class S, class T>
concept invocable_task = (std::same_as<S, no_shared> && std::invocable<F&, T&&>) ||
                         (!std::same_as<S, no_shared> && std::invocable<F&, const S&, T&&>);

/// Calls a task with or without its shared value.
template <class F, class S, class T>
decltype(auto) invoke_task(F& fn, const S& shared, T&& item) {
  if constexpr (std::is_same_v<S, no_shared>)
    return std::invoke(fn, std::forward<T>(item));
  else
    return std::invoke(fn, shared, std::forward<T>(item));
}

template <class F, class S, class T>
struct task_traits {
  using raw_result = decltype(invoke_task(std::declval<F&>(), std::declval<const S&>(),
                                          std::declval<T&&>()));
  static constexpr bool is_awaitable = awaitable_traits<std::remove_cvref_t<raw_result>>::value;
  /// What one item produces once awaited.
  using result_type =
      std::remove_cvref_t<typename awaitable_traits<std::remove_cvref_t<raw_result>>::value_type>;
};

/// A function object can cross to a pre-forked worker only as its bytes.
template <class F>
concept shippable_function = std::is_class_v<F> && std::is_trivially_copyable_v<F>;

}  // namespace coshard::detail
