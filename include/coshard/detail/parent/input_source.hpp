// coshard/detail/parent/input_source.hpp - holds a job's input range: borrowed when
// the caller passed an lvalue, owned when it passed an rvalue.
#pragma once

#include <memory>
#include <ranges>
#include <type_traits>
#include <utility>

namespace coshard::detail {

// Plays the part of std::views::all, which clang 14 cannot instantiate with
// libstdc++ 12's view_interface.
template <class Range>
class input_source {
  static constexpr bool borrowed = std::is_lvalue_reference_v<Range>;
  using stored = std::conditional_t<borrowed, std::remove_reference_t<Range>*, std::remove_cvref_t<Range>>;

 public:
  using range_type = std::conditional_t<borrowed, std::remove_reference_t<Range>, std::remove_cvref_t<Range>>;

  explicit input_source(Range&& r) : r_(wrap(std::forward<Range>(r))) {}

  range_type& get() noexcept {
    if constexpr (borrowed)
      return *r_;
    else
      return r_;
  }

 private:
  static stored wrap(Range&& r) {
    if constexpr (borrowed)
      return std::addressof(r);
    else
      return stored(std::move(r));
  }
  stored r_;
};

template <class Range>
input_source<Range> make_input_source(Range&& r) {
  return input_source<Range>(std::forward<Range>(r));
}

}  // namespace coshard::detail
