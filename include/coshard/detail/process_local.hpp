// coshard/detail/process_local.hpp - types whose value is an address in the
// process that made it, and so means nothing in another process.
#pragma once

#include <array>
#include <functional>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace coshard::detail {

template <class T>
struct process_local : std::bool_constant<std::is_pointer_v<T> || std::is_member_pointer_v<T>> {};
template <class C, class Traits>
struct process_local<std::basic_string_view<C, Traits>> : std::true_type {};
template <class T, std::size_t N>
struct process_local<std::span<T, N>> : std::true_type {};
template <class T>
struct process_local<std::reference_wrapper<T>> : std::true_type {};
template <class A, class B>
struct process_local<std::pair<A, B>>
    : std::bool_constant<process_local<std::remove_cv_t<A>>::value || process_local<std::remove_cv_t<B>>::value> {};
template <class... Ts>
struct process_local<std::tuple<Ts...>> : std::bool_constant<(process_local<std::remove_cv_t<Ts>>::value || ...)> {};
template <class T, std::size_t N>
struct process_local<std::array<T, N>> : process_local<std::remove_cv_t<T>> {};
template <class T>
struct process_local<std::optional<T>> : process_local<std::remove_cv_t<T>> {};

/// True for raw pointers, std::string_view, std::span, std::reference_wrapper,
/// and pairs, tuples, arrays, optionals and containers holding them: a
/// worker would receive an address into memory it does not share.
template <class T>
constexpr bool is_process_local() {
  using U = std::remove_cvref_t<T>;
  if constexpr (process_local<U>::value) {
    return true;
  } else if constexpr (std::ranges::range<U> && !std::is_same_v<U, std::string>) {
    using V = std::remove_cvref_t<std::ranges::range_value_t<U>>;
    if constexpr (std::is_same_v<V, U>)
      return false;  // a range of itself (e.g. a path): not a container of addresses
    else
      return is_process_local<V>();
  } else {
    return false;
  }
}

}  // namespace coshard::detail
