// coshard/exception_types.hpp - letting a task's own exception type reach the
// caller as that type.
#pragma once

#include <concepts>
#include <exception>
#include <string>
#include <type_traits>
#include <utility>

#include "coshard/detail/exception_types.hpp"
#include "coshard/errors.hpp"

namespace coshard {

/// Registers exception type `E` so that a task throwing an `E` (or a class
/// derived from it) fails in the caller with an object that is an `E` and a
/// coshard::task_error at once: `catch (const E&)` and `catch (const
/// coshard::task_error&)` both catch it. Standard exception types need no
/// registration. `make(message)` builds the `E` from the task's `what()`;
/// its `what()` in the caller is the task_error summary all the same.
///
/// Register in both processes before they meet: before the pool is built for
/// forked workers, and before `serve_if_worker()` (e.g. first thing in
/// `main`) for `start_method::exec` workers, which run `main` again. A worker
/// that does not know `E` reports its nearest standard base; a caller that
/// does not know it rebuilds the nearest standard base. Types registered later
/// are tried first, so register a base before the classes derived from it.
/// Thread-safe; registering a type again replaces its factory.
///
/// Errors: none at run time; `E` must derive from `std::exception`, be
/// copy-constructible and not final (checked at compile time), and its
/// `what()` must not be final either (coshard overrides it). If `make`
/// throws in the caller, or the caller did not register `E`, the failure
/// arrives as `E`'s nearest standard base.
template <class E, class Make>
  requires std::invocable<const Make&, const std::string&> &&
           std::convertible_to<std::invoke_result_t<const Make&, const std::string&>, E>
void register_exception(Make make) {
  static_assert(std::is_base_of_v<std::exception, E>, "coshard::register_exception: E must derive from std::exception");
  static_assert(std::is_class_v<E> && !std::is_final_v<E>, "coshard::register_exception: E must not be final");
  static_assert(std::is_copy_constructible_v<E>, "coshard::register_exception: E must be copy-constructible");
  detail::add_user_exception_type(detail::make_exception_type_entry<E>(
      [make = std::move(make)](const detail::exception_description& d) -> E { return make(d.message); }));
}

/// As above, building the `E` as `E(message)`.
template <class E>
  requires std::constructible_from<E, const std::string&>
void register_exception() {
  register_exception<E>([](const std::string& message) { return E(message); });
}

}  // namespace coshard
