// coshard/detail/frame_io.hpp - reading and writing frames with few syscalls.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/read.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <span>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/detail/wire.hpp"

namespace coshard::detail {

// Asio's transfer_all caps each send/recv at 64 KiB; a batch of 1 MiB would
// cost 16 syscalls. This condition lets one call move all the kernel takes.
struct transfer_rest {
  std::size_t total;
  std::size_t operator()(const asio::error_code& ec, std::size_t done) const {
    return ec ? 0 : total - done;
  }
};

/// Writes one frame (header and payload gathered into one sendmsg where possible).
template <class Stream>
asio::awaitable<void> write_frame(Stream& s, const frame_header& h, std::span<const std::byte> payload) {
  std::array<asio::const_buffer, 2> bufs{asio::buffer(&h, sizeof h),
                                         asio::buffer(payload.data(), payload.size())};
  co_await asio::async_write(s, bufs, transfer_rest{sizeof h + payload.size()}, asio::use_awaitable);
}

/// Writes two frames back to back in one gathered write (e.g. a job's start
/// and its first batch: one syscall and one wake-up of the reader).
template <class Stream>
asio::awaitable<void> write_frames(Stream& s, const frame_header& h1, std::span<const std::byte> p1,
                                   const frame_header& h2, std::span<const std::byte> p2) {
  std::array<asio::const_buffer, 4> bufs{asio::buffer(&h1, sizeof h1), asio::buffer(p1.data(), p1.size()),
                                         asio::buffer(&h2, sizeof h2), asio::buffer(p2.data(), p2.size())};
  co_await asio::async_write(s, bufs, transfer_rest{sizeof h1 + p1.size() + sizeof h2 + p2.size()},
                             asio::use_awaitable);
}

/// Reads frames through one buffer: a receive takes whatever has arrived, so a
/// header and its payload (and often the next frame) cost one syscall.
class frame_reader {
 public:
  explicit frame_reader(std::uint64_t max_frame_bytes) : max_frame_(max_frame_bytes) {}

  /// Reads the next frame into `h`; returns its payload, valid until the next call.
  /// Throws serialization_error for a malformed header, system_error on EOF.
  template <class Stream>
  asio::awaitable<std::span<const std::byte>> read(Stream& s, frame_header& h) {
    consume();
    co_await fill(s, sizeof h);
    h = load_trivial<frame_header>(buf_.data() + begin_);
    validate_header(h, max_frame_);
    co_await fill(s, sizeof h + h.payload_size);
    pending_ = sizeof h + h.payload_size;
    co_return std::span<const std::byte>(buf_.data() + begin_ + sizeof h, h.payload_size);
  }

  static constexpr std::size_t min_capacity = 256 * 1024;

  void consume() {
    begin_ += pending_;
    pending_ = 0;
    if (begin_ == end_) {
      begin_ = end_ = 0;
      // One huge frame should not pin its buffer for the life of the channel.
      if (buf_.capacity() > 16 * min_capacity) buf_ = byte_buffer();
    }
  }

  /// Reads the next frame into `h` and into `out`, whole: `headroom` bytes
  /// left for the caller, then the header, then the payload, so that a relay
  /// can pass the frame on in one message without copying it. Reads of at
  /// most 4 KiB find the header, and the rest of a large payload is read
  /// straight into `out`; only what those reads brought is copied. Errors as
  /// read(). Unlike read(), a call interrupted midway cannot be resumed (the
  /// bytes it took are in `out`): the channel is to be given up then, as the
  /// rank relay does.
  template <class Stream>
  asio::awaitable<void> read_into(Stream& s, frame_header& h, byte_buffer& out, std::size_t headroom) {
    consume();
    co_await fill(s, sizeof h, small_read);
    h = load_trivial<frame_header>(buf_.data() + begin_);
    validate_header(h, max_frame_);
    const std::size_t total = sizeof h + static_cast<std::size_t>(h.payload_size);
    out.clear();
    std::byte* into = out.grow(headroom + total) + headroom;  // not zeroed: all of it is written below
    const std::size_t have = std::min(end_ - begin_, total);
    std::memcpy(into, buf_.data() + begin_, have);
    begin_ += have;
    if (have < total)
      co_await asio::async_read(s, asio::buffer(into + have, total - have), transfer_rest{total - have},
                                asio::use_awaitable);
  }

 private:
  static constexpr std::size_t small_read = 4096;

  // Makes sure `want` bytes are buffered; a read takes at most what there is
  // room for, or `limit` bytes (at least what is missing) if given.
  template <class Stream>
  asio::awaitable<void> fill(Stream& s, std::size_t want, std::size_t limit = 0) {
    if (end_ - begin_ >= want) co_return;
    if (buf_.capacity() - begin_ < std::max(want, min_capacity / 2)) {
      // Move the partial frame to the front, growing the buffer if it cannot hold it.
      const std::size_t have = end_ - begin_;
      if (buf_.capacity() >= std::max(want, min_capacity)) {
        if (have) std::memmove(buf_.data(), buf_.data() + begin_, have);
      } else {
        byte_buffer fresh;
        fresh.reserve(std::max(want, min_capacity));
        fresh.append(buf_.data() + begin_, have);
        buf_ = std::move(fresh);
      }
      begin_ = 0;
      end_ = have;
    }
    while (end_ - begin_ < want) {
      std::size_t room = buf_.capacity() - end_;
      if (limit) room = std::min(room, std::max(limit, want - (end_ - begin_)));
      end_ += co_await s.async_read_some(asio::buffer(buf_.data() + end_, room), asio::use_awaitable);
    }
  }

  byte_buffer buf_;  // only capacity is used; [begin_, end_) holds received bytes
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::size_t pending_ = 0;  // bytes of the frame last returned, dropped on the next read
  std::uint64_t max_frame_;
};

}  // namespace coshard::detail
