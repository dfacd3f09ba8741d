// coshard/detail/archive.hpp - cereal archives that write to and read from
// memory directly, with every read bounds-checked.
#pragma once

#include <cereal/cereal.hpp>

#include <cstddef>
#include <cstring>
#include <span>
#include <string>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/errors.hpp"

namespace coshard::detail {

// cereal's BinaryArchive goes through std::streambuf virtual calls per field;
// these archives are the same wire format straight into a byte_buffer.
class output_archive : public cereal::OutputArchive<output_archive, cereal::AllowEmptyClassElision> {
 public:
  explicit output_archive(byte_buffer& out)
      : cereal::OutputArchive<output_archive, cereal::AllowEmptyClassElision>(this), out_(out) {}
  void save_binary(const void* data, std::size_t size) { out_.append(data, size); }

 private:
  byte_buffer& out_;
};

class input_archive : public cereal::InputArchive<input_archive, cereal::AllowEmptyClassElision> {
 public:
  explicit input_archive(std::span<const std::byte> in)
      : cereal::InputArchive<input_archive, cereal::AllowEmptyClassElision>(this), in_(in) {}

  void load_binary(void* data, std::size_t size) {
    if (size > in_.size() - pos_)
      throw serialization_error("coshard: truncated payload: needed " + std::to_string(size) +
                                " more bytes at offset " + std::to_string(pos_) + " of " +
                                std::to_string(in_.size()));
    if (size == 0) return;  // data may be null (an empty vector's storage)
    std::memcpy(data, in_.data() + pos_, size);
    pos_ += size;
  }
  [[nodiscard]] std::size_t remaining() const noexcept { return in_.size() - pos_; }
  [[nodiscard]] std::size_t position() const noexcept { return pos_; }
  void skip(std::size_t n) {
    if (n > remaining()) throw serialization_error("coshard: truncated payload");
    pos_ += n;
  }

 private:
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};

// Element counts on the wire are checked before a container is resized, so a
// corrupt count cannot ask for gigabytes. Every non-empty element costs at
// least one byte; small counts are let through for containers of empty types.
inline void check_element_count(const input_archive& ar, std::uint64_t count) {
  constexpr std::uint64_t always_allowed = 1u << 16;
  if (count > always_allowed && count > ar.remaining())
    throw serialization_error("coshard: corrupt payload: element count " + std::to_string(count) +
                              " exceeds the " + std::to_string(ar.remaining()) +
                              " bytes left in the payload");
}

}  // namespace coshard::detail

namespace cereal {

template <class T>
  requires std::is_arithmetic_v<T>
inline void CEREAL_SAVE_FUNCTION_NAME(coshard::detail::output_archive& ar, const T& t) {
  ar.save_binary(std::addressof(t), sizeof(t));
}
template <class T>
  requires std::is_arithmetic_v<T>
inline void CEREAL_LOAD_FUNCTION_NAME(coshard::detail::input_archive& ar, T& t) {
  ar.load_binary(std::addressof(t), sizeof(t));
}
template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(coshard::detail::output_archive& ar, const NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(coshard::detail::input_archive& ar, NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(coshard::detail::output_archive& ar, const SizeTag<T>& t) {
  ar(t.size);
}
template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(coshard::detail::input_archive& ar, SizeTag<T>& t) {
  ar(t.size);
  coshard::detail::check_element_count(ar, static_cast<std::uint64_t>(t.size));
}
template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(coshard::detail::output_archive& ar, const BinaryData<T>& bd) {
  ar.save_binary(bd.data, static_cast<std::size_t>(bd.size));
}
template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(coshard::detail::input_archive& ar, BinaryData<T>& bd) {
  ar.load_binary(bd.data, static_cast<std::size_t>(bd.size));
}

}  // namespace cereal

CEREAL_REGISTER_ARCHIVE(coshard::detail::output_archive)
CEREAL_REGISTER_ARCHIVE(coshard::detail::input_archive)
CEREAL_SETUP_ARCHIVE_TRAITS(coshard::detail::input_archive, coshard::detail::output_archive)
