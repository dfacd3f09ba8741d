// coshard/detail/item_failure.hpp - a failed item as it travels from a worker
// to the parent, and the result records of settled jobs that carry it.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/detail/exception_types.hpp"
#include "coshard/detail/wire.hpp"
#include "coshard/serialization.hpp"

namespace coshard::detail {

/// One failed item as it travels: how it failed and what was thrown.
struct item_failure {
  failure_kind kind = failure_kind::threw;
  std::uint64_t index = 0;
  exception_description what;
};

inline void encode_failure(byte_buffer& out, const item_failure& f) {
  encode_value(out, static_cast<std::uint8_t>(f.kind));
  encode_value(out, f.index);
  encode_value(out, f.what.type_name);
  encode_value(out, f.what.message);
  encode_value(out, f.what.rebuild_as);
  encode_value(out, f.what.standard_base);
  encode_value(out, f.what.code);
  encode_value(out, f.what.category);
}

inline item_failure decode_failure(input_archive& in) {
  item_failure f;
  const auto kind = decode_one<std::uint8_t>(in);
  if (kind > static_cast<std::uint8_t>(failure_kind::undecodable))
    throw serialization_error("coshard: corrupt failure record: kind " + std::to_string(kind));
  f.kind = static_cast<failure_kind>(kind);
  f.index = decode_one<std::uint64_t>(in);
  f.what.type_name = decode_one<std::string>(in);
  f.what.message = decode_one<std::string>(in);
  f.what.rebuild_as = decode_one<std::string>(in);
  f.what.standard_base = decode_one<std::string>(in);
  f.what.code = decode_one<std::int32_t>(in);
  f.what.category = decode_one<std::string>(in);
  return f;
}

// Result records of settled jobs: tag 1 + byte length + value, or tag 0 +
// failure. The length lets the caller skip a value it cannot decode and
// still deliver the rest of the batch.
template <class R>
void encode_settled_value(byte_buffer& out, const R& value) {
  encode_value(out, std::uint8_t{1});
  const std::size_t length_at = out.size();
  encode_value(out, std::uint64_t{0});
  const std::size_t start = out.size();
  encode_value(out, value);
  const std::uint64_t length = out.size() - start;
  std::memcpy(out.data() + length_at, &length, sizeof length);
}
inline void encode_settled_failure(byte_buffer& out, const item_failure& f) {
  encode_value(out, std::uint8_t{0});
  encode_failure(out, f);
}

/// Of the failures offered, the one of the lowest input index: the failure
/// a plain loop over the input would have met first, whatever order items
/// ran in. A job that stops at its first failure reports this one.
template <class Failure>
class lowest_index_failure {
 public:
  void offer(std::uint64_t index, Failure f) {
    if (has_ && index >= index_) return;
    failure_ = std::move(f);
    index_ = index;
    has_ = true;
  }
  explicit operator bool() const noexcept { return has_; }
  [[nodiscard]] const Failure& get() const noexcept { return failure_; }

 private:
  Failure failure_{};
  std::uint64_t index_ = 0;
  bool has_ = false;
};

}  // namespace coshard::detail
