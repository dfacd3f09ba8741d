// coshard/detail/job_spec.hpp - the static shape of a job, and its job_start
// frame as the parent writes it and a worker reads it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/detail/entry_registry.hpp"
#include "coshard/detail/task_traits.hpp"
#include "coshard/serialization.hpp"

namespace coshard::detail {

/// The static shape of a job: function, input, shared value, reducer,
/// accumulator, and whether every item reports its own outcome (settled).
template <class F, class T, class S, class Reduce, class Acc, bool Settled = false>
struct job_spec {
  using fn_type = F;
  using input_type = T;
  using shared_type = S;
  using reduce_type = Reduce;
  using acc_type = Acc;
  using traits = task_traits<F, S, T>;
  using result_type = typename traits::result_type;
  static constexpr bool is_reduce = !std::is_same_v<Reduce, no_reduce>;
  static constexpr bool settled = Settled;
  static_assert(!(settled && is_reduce));
};

/// Bytes of a job_start frame: the registered entry id of the job's shape,
/// the job's item_timeout, then each part with its length: the function and
/// the reducer as their bytes, the shared value and the initial accumulator
/// encoded.
template <class F, class Reduce, class S, class Acc>
byte_buffer encode_job_start(std::uint64_t entry_id, const F& fn, const Reduce& reduce, const S& shared,
                             const Acc& init, std::chrono::milliseconds item_timeout = {}) {
  byte_buffer out;
  encode_value(out, entry_id);
  encode_value(out, static_cast<std::uint64_t>(std::chrono::nanoseconds(item_timeout).count()));
  auto raw = [&](const auto& obj) {
    encode_value(out, std::uint64_t{sizeof(obj)});
    out.append(std::addressof(obj), sizeof(obj));
  };
  auto encoded = [&](const auto& value) {
    byte_buffer part;
    encode_value(part, value);
    encode_value(out, std::uint64_t{part.size()});
    out.append(part.data(), part.size());
  };
  raw(fn);
  raw(reduce);
  encoded(shared);
  encoded(init);
  return out;
}

/// Splits a job_start payload into the entry id and its length-prefixed
/// parts. Throws serialization_error if any length runs past the payload.
inline std::pair<std::uint64_t, job_start_view> parse_job_start(std::span<const std::byte> payload) {
  input_archive in(payload);
  const auto id = decode_one<std::uint64_t>(in);
  const auto item_timeout_ns = decode_one<std::uint64_t>(in);
  auto part = [&] {
    const auto n = decode_one<std::uint64_t>(in);
    if (n > in.remaining()) throw serialization_error("coshard: truncated job_start frame");
    std::span<const std::byte> s = payload.subspan(in.position(), static_cast<std::size_t>(n));
    in.skip(static_cast<std::size_t>(n));
    return s;
  };
  job_start_view v;
  v.item_timeout_ns = item_timeout_ns;
  v.fn = part();
  v.reduce = part();
  v.shared = part();
  v.init = part();
  check_fully_consumed(in, "job_start");
  return {id, v};
}

}  // namespace coshard::detail
