// coshard/outcome.hpp - one item's result or its failure, for map_settled.
#pragma once

#include <exception>
#include <utility>
#include <variant>

namespace coshard {

/// The outcome of one input item of `process_pool::map_settled`: either the
/// task's result or the exception that stands for its failure (task_error,
/// worker_crashed, timeout_error).
template <class R>
class outcome {
 public:
  outcome() = default;
  /// A successful outcome holding `value`.
  explicit outcome(R value) : state_(std::in_place_index<1>, std::move(value)) {}
  /// A failed outcome holding `error` (non-null).
  explicit outcome(std::exception_ptr error) : state_(std::in_place_index<0>, std::move(error)) {}

  /// True if the item produced a value.
  [[nodiscard]] bool ok() const noexcept { return state_.index() == 1; }
  /// ok().
  explicit operator bool() const noexcept { return ok(); }

  /// The result; rethrows the item's failure if it has none.
  [[nodiscard]] R& value() & {
    if (!ok()) std::rethrow_exception(std::get<0>(state_));
    return std::get<1>(state_);
  }
  /// The result; rethrows the item's failure if it has none.
  [[nodiscard]] const R& value() const& {
    if (!ok()) std::rethrow_exception(std::get<0>(state_));
    return std::get<1>(state_);
  }
  /// The result, moved out; rethrows the item's failure if it has none.
  [[nodiscard]] R&& value() && {
    if (!ok()) std::rethrow_exception(std::get<0>(state_));
    return std::get<1>(std::move(state_));
  }

  /// The failure, or null for a successful outcome.
  [[nodiscard]] std::exception_ptr error() const noexcept {
    return ok() ? nullptr : std::get<0>(state_);
  }

 private:
  std::variant<std::exception_ptr, R> state_;
};

}  // namespace coshard
