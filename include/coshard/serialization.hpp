// coshard/serialization.hpp - what may cross between the parent and a worker,
// and how it is written.
//
// A type crosses the process boundary if it is
//   * trivially copyable (and not a pointer): copied as raw bytes, a whole
//     batch in one memcpy; or
//   * serializable by cereal: standard containers (this header includes
//     cereal's support for them), or user types with a `serialize`
//     (or `save`/`load`) member or free function.
// Anything else fails to compile at the call into the pool.
#pragma once

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <cstddef>
#include <cstring>
#include <new>
#include <span>
#include <type_traits>
#include <vector>

#include "coshard/detail/archive.hpp"
#include "coshard/detail/byte_buffer.hpp"
#include "coshard/errors.hpp"

namespace coshard {

/// Types copied as raw bytes. Pointers are excluded: an address means nothing
/// in another process. (A struct holding a pointer cannot be detected; don't.)
/// A class with its own serialize/save function is written through it even
/// when trivially copyable: the user asked for that format (or for its checks).
template <class T>
concept bitwise_serializable =
    std::is_trivially_copyable_v<T> && std::is_object_v<T> && !std::is_pointer_v<T> &&
    !std::is_member_pointer_v<T> && !std::is_array_v<T> && !std::is_empty_v<T> &&
    !(std::is_class_v<T> && cereal::traits::is_output_serializable<T, detail::output_archive>::value);

/// Types cereal can write and read with coshard's binary archives.
template <class T>
concept cereal_serializable =
    !std::is_pointer_v<T> &&  // cereal claims raw pointers, then static_asserts inside
    cereal::traits::is_output_serializable<T, detail::output_archive>::value &&
    cereal::traits::is_input_serializable<T, detail::input_archive>::value &&
    std::is_default_constructible_v<T>;

/// Everything that may be an input, a shared value or a result.
template <class T>
concept serializable = bitwise_serializable<T> || cereal_serializable<T> || std::is_empty_v<T>;

namespace detail {

template <class T>
void encode_value(byte_buffer& out, const T& value) {
  if constexpr (bitwise_serializable<T>) {
    out.append(std::addressof(value), sizeof(T));
  } else if constexpr (std::is_empty_v<T>) {
    // nothing to send
  } else {
    output_archive ar(out);
    ar(value);
  }
}

template <class T>
void decode_value(input_archive& ar, T& value) {
  if constexpr (bitwise_serializable<T>) {
    ar.load_binary(std::addressof(value), sizeof(T));
  } else if constexpr (std::is_empty_v<T>) {
  } else {
    ar(value);
  }
}

// Objects are created in raw storage because results need not be default
// constructible when they are bitwise copies.
template <class T>
T decode_one(input_archive& ar) {
  if constexpr (bitwise_serializable<T>) {
    alignas(T) std::byte raw[sizeof(T)];
    ar.load_binary(raw, sizeof(T));
    return *std::launder(reinterpret_cast<T*>(raw));
  } else {
    T value{};
    decode_value(ar, value);
    return value;
  }
}

inline void check_fully_consumed(const input_archive& ar, const char* what) {
  if (ar.remaining() != 0)
    throw serialization_error(std::string("coshard: corrupt payload: ") + what + " left " +
                              std::to_string(ar.remaining()) + " unread bytes");
}

}  // namespace detail

/// Encodes one value into a fresh byte vector, exactly as the pool would send it.
/// Useful to check a user type round-trips. Throws whatever the type's
/// `serialize` throws.
template <serializable T>
[[nodiscard]] std::vector<std::byte> encode(const T& value) {
  detail::byte_buffer buf;
  detail::encode_value(buf, value);
  return {buf.data(), buf.data() + buf.size()};
}

/// Decodes a value written by `encode`. Throws coshard::serialization_error if
/// the bytes are truncated, carry a corrupt element count, or have bytes left over.
template <serializable T>
[[nodiscard]] T decode(std::span<const std::byte> bytes) {
  detail::input_archive ar(bytes);
  T value = detail::decode_one<T>(ar);
  detail::check_fully_consumed(ar, "decode");
  return value;
}

}  // namespace coshard
