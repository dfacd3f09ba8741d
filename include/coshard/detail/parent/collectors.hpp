// coshard/detail/parent/collectors.hpp - what the parent does with each reply: place
// results in input order, fold partials, or hand results to a sink.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "coshard/detail/item_failure.hpp"
#include "coshard/detail/wire.hpp"
#include "coshard/outcome.hpp"
#include "coshard/serialization.hpp"

namespace coshard::detail {

/// The exception a caller sees for an item that failed in a worker.
inline std::exception_ptr to_exception(const item_failure& f, pid_t pid) {
  const auto index = static_cast<std::size_t>(f.index);
  switch (f.kind) {
    case failure_kind::timed_out:
      return std::make_exception_ptr(timeout_error(
          "coshard: input index " + std::to_string(index) + " was cancelled at item_timeout (worker pid " +
              std::to_string(pid) + ")",
          index, pid));
    case failure_kind::cancelled:
      return std::make_exception_ptr(
          item_cancelled("coshard: input index " + std::to_string(index) + " was cancelled", index, pid));
    case failure_kind::undecodable: {
      exception_description what = f.what;
      what.message = "the input could not be decoded in the worker: " + what.message;
      return make_task_error(what, index, pid);
    }
    case failure_kind::threw:
      break;
  }
  return make_task_error(f.what, index, pid);
}

/// Results of `map`, placed by input index as batches return in any order.
template <class R>
class ordered_collector {
 public:
  using value_type = std::vector<R>;
  static constexpr bool is_reduce = false;
  static constexpr bool settled = false;

  void reserve(std::size_t n) {
    out_.reserve(n);
    // Fresh pages of a large result vector are faulted in one by one as
    // results land; huge pages cut that by 512x where the kernel allows it.
    const std::size_t bytes = n * sizeof(R);
    if constexpr (!std::is_same_v<R, bool>)  // std::vector<bool> has no data()
      if (bytes >= (std::size_t{8} << 20)) {
        const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
        const auto begin = (reinterpret_cast<std::uintptr_t>(out_.data()) + page - 1) & ~(page - 1);
        const auto end = reinterpret_cast<std::uintptr_t>(out_.data()) + bytes;
        if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
      }
  }

  void on_result(const frame_header& h, std::span<const std::byte> payload, pid_t) {
    const std::size_t first = h.first_index;
    if (out_.size() < first + h.count) out_.resize(first + h.count);
    if constexpr (bitwise_serializable<R> && !std::is_same_v<R, bool>) {
      // Results land in their final place with one copy.
      if (payload.size() != std::size_t{h.count} * sizeof(R))
        throw serialization_error("coshard: corrupt result frame: " + std::to_string(payload.size()) +
                                  " bytes for " + std::to_string(h.count) + " results");
      if (h.count) std::memcpy(static_cast<void*>(out_.data() + first), payload.data(), payload.size());
    } else {
      input_archive in(payload);
      for (std::size_t i = 0; i < h.count; ++i) out_[first + i] = decode_one<R>(in);
      check_fully_consumed(in, "result frame");
    }
  }

  value_type take() { return std::move(out_); }

 private:
  std::vector<R> out_;
};

/// Folds the one partial per batch that map_reduce workers send.
template <class Acc, class Reduce>
class reduce_collector {
 public:
  using value_type = Acc;
  static constexpr bool is_reduce = true;
  static constexpr bool settled = false;

  reduce_collector(Reduce reduce, Acc init) : reduce_(std::move(reduce)), acc_(std::move(init)) {}
  void reserve(std::size_t) {}

  void on_result(const frame_header&, std::span<const std::byte> payload, pid_t) {
    acc_ = reduce_(std::move(acc_), decode<Acc>(payload));
  }

  value_type take() { return std::move(acc_); }

 private:
  Reduce reduce_;
  Acc acc_;
};

/// Hands each result to a callback as its batch returns (completion order).
template <class R, class Sink>
class sink_collector {
 public:
  using value_type = std::size_t;  // how many results were delivered
  static constexpr bool is_reduce = false;
  static constexpr bool settled = false;

  explicit sink_collector(Sink sink) : sink_(std::move(sink)) {}
  void reserve(std::size_t) {}

  void on_result(const frame_header& h, std::span<const std::byte> payload, pid_t) {
    input_archive in(payload);
    std::vector<R> batch;
    batch.reserve(h.count);
    for (std::size_t i = 0; i < h.count; ++i) batch.push_back(decode_one<R>(in));
    check_fully_consumed(in, "result frame");
    for (std::size_t i = 0; i < h.count; ++i) {
      ++delivered_;
      sink_(static_cast<std::size_t>(h.first_index + i), std::move(batch[i]));
    }
  }

  value_type take() { return delivered_; }

 private:
  Sink sink_;
  std::size_t delivered_ = 0;
};

/// Walks a reply in the settled format (per item: tag 1, byte length and
/// value, or tag 0 and a failure record), calling `settle(index,
/// outcome<R>)` for each item in order; returns how many failed. A value
/// that cannot be decoded fails its item alone: the lengths delimit its
/// neighbours. Throws serialization_error if the frame itself is corrupt.
template <class R, class Settle>
std::size_t for_each_settled(const frame_header& h, std::span<const std::byte> payload, pid_t pid, Settle&& settle) {
  input_archive in(payload);
  std::size_t failed = 0;
  for (std::size_t i = 0; i < h.count; ++i) {
    const std::uint64_t index = h.first_index + i;
    if (!decode_one<std::uint8_t>(in)) {
      settle(index, outcome<R>(to_exception(decode_failure(in), pid)));
      ++failed;
      continue;
    }
    const auto length = decode_one<std::uint64_t>(in);
    if (length > in.remaining()) throw serialization_error("coshard: corrupt payload: a result runs past its frame");
    const auto bytes = payload.subspan(in.position(), static_cast<std::size_t>(length));
    in.skip(static_cast<std::size_t>(length));
    std::optional<R> value;
    try {
      value.emplace(coshard::decode<R>(bytes));
    } catch (...) {
      auto what = describe_current_exception();
      what.message = "the result could not be decoded in the caller: " + what.message;
      settle(index, outcome<R>(make_task_error(what, static_cast<std::size_t>(index), pid)));
      ++failed;
      continue;
    }
    settle(index, outcome<R>(std::move(*value)));
  }
  check_fully_consumed(in, "result frame");
  return failed;
}

/// Results of `map_settled`: every item's value or failure, by input index.
template <class R>
class settled_collector {
 public:
  using value_type = std::vector<outcome<R>>;
  static constexpr bool is_reduce = false;
  static constexpr bool settled = true;

  void reserve(std::size_t n) { out_.reserve(n); }

  /// Returns how many of the reply's items failed.
  std::size_t on_result(const frame_header& h, std::span<const std::byte> payload, pid_t pid) {
    grow(h.first_index + h.count);
    return for_each_settled<R>(h, payload, pid,
                               [this](std::uint64_t index, outcome<R> o) { out_[index] = std::move(o); });
  }

  void set_error(std::size_t index, std::exception_ptr e) {
    grow(index + 1);
    out_[index] = outcome<R>(std::move(e));
  }

  value_type take() { return std::move(out_); }

 private:
  void grow(std::size_t n) {
    if (out_.size() < n) out_.resize(n);
  }
  std::vector<outcome<R>> out_;
};

}  // namespace coshard::detail
