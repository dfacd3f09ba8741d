// coshard/detail/byte_buffer.hpp - a growable byte buffer without zero-filling.
#pragma once

#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <vector>

namespace coshard::detail {

/// A trivially copyable T rebuilt from its bytes at `p` (any alignment), with
/// no constructor run: lambdas travel this way and need not be default
/// constructible.
template <class T>
T load_trivial(const std::byte* p) noexcept {
  static_assert(std::is_trivially_copyable_v<T>);
  alignas(T) std::byte raw[sizeof(T)];
  std::memcpy(raw, p, sizeof(T));
  return *std::launder(reinterpret_cast<T*>(raw));
}

// std::vector<std::byte> value-initialises on resize; batches are written once
// and reused across jobs, so the zero fill would be pure overhead.
class byte_buffer {
 public:
  byte_buffer() = default;
  byte_buffer(byte_buffer&& o) noexcept
      : data_(std::move(o.data_)), size_(o.size_), capacity_(o.capacity_) {
    o.size_ = o.capacity_ = 0;
  }
  byte_buffer& operator=(byte_buffer&& o) noexcept {
    data_ = std::move(o.data_);
    size_ = o.size_;
    capacity_ = o.capacity_;
    o.size_ = o.capacity_ = 0;
    return *this;
  }

  [[nodiscard]] std::byte* data() noexcept { return data_.get(); }
  [[nodiscard]] const std::byte* data() const noexcept { return data_.get(); }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::span<const std::byte> view() const noexcept { return {data_.get(), size_}; }

  void clear() noexcept { size_ = 0; }
  /// Drops bytes past `n` (n <= size()).
  void truncate(std::size_t n) noexcept {
    if (n < size_) size_ = n;
  }
  void reserve(std::size_t n) {
    if (n <= capacity_) return;
    std::size_t cap = capacity_ ? capacity_ : 256;
    while (cap < n) cap *= 2;
    auto fresh = std::make_unique_for_overwrite<std::byte[]>(cap);
    if (size_) std::memcpy(fresh.get(), data_.get(), size_);
    data_ = std::move(fresh);
    capacity_ = cap;
  }
  /// Grows by n uninitialised bytes and returns a pointer to them.
  std::byte* grow(std::size_t n) {
    reserve(size_ + n);
    std::byte* p = data_.get() + size_;
    size_ += n;
    return p;
  }
  void append(const void* p, std::size_t n) {
    if (n) std::memcpy(grow(n), p, n);
  }
  /// Drops capacity beyond `keep` bytes so one huge batch does not pin memory forever.
  void shrink_if_above(std::size_t keep) {
    if (capacity_ > keep && size_ == 0) {
      data_.reset();
      capacity_ = 0;
    }
  }

 private:
  std::unique_ptr<std::byte[]> data_;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

/// Buffers of frames already sent, kept for the next ones so that a steady
/// stream of batches or replies allocates nothing per frame.
class buffer_pool {
 public:
  /// Keeps up to `keep` buffers of up to `max_capacity` bytes each, and
  /// (if given) of at most `max_total` bytes together.
  buffer_pool(std::size_t keep, std::size_t max_capacity,
              std::size_t max_total = std::numeric_limits<std::size_t>::max())
      : keep_(keep), max_capacity_(max_capacity), max_total_(max_total) {}

  byte_buffer take() {
    if (spare_.empty()) return {};
    byte_buffer b = std::move(spare_.back());
    spare_.pop_back();
    total_ -= b.capacity();
    return b;
  }
  void give(byte_buffer b) {
    b.clear();
    b.shrink_if_above(max_capacity_);
    if (spare_.size() >= keep_ || b.capacity() > max_total_ - total_) return;
    total_ += b.capacity();
    spare_.push_back(std::move(b));
  }

 private:
  std::size_t keep_;
  std::size_t max_capacity_;
  std::size_t max_total_;
  std::size_t total_ = 0;  // capacity of the buffers kept
  std::vector<byte_buffer> spare_;
};

}  // namespace coshard::detail
