// tests/fuzz/fuzz_modes.hpp - what the fuzz target's first byte selects, and
// the types and job shapes it decodes; shared with make_seeds.cpp, which
// writes one valid input per mode with the library's own encoders.
#pragma once

#include <coshard/coshard.hpp>

#include <asio/awaitable.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace coshard_fuzz {

enum mode : std::uint8_t {
  header = 0,           // a frame header (validate_header)
  job_start = 1,        // parse_job_start
  failure_record = 2,   // decode_failure
  strings = 3,          // cereal payloads: vector<string>
  word_counts = 4,      //   unordered_map<string, long>
  variant_value = 5,    //   variant<int, string, vector<int>>
  record_value = 6,     //   a user struct
  settled_results = 7,  // settled_collector: count byte + result records
  ordered_results = 8,  // ordered_collector: count byte + results
  reduce_partial = 9,   // reduce_collector: one partial
  sink_results = 10,    // sink_collector: count byte + results
  batch_strings = 11,   // a worker's batch decoder, plain function over strings: count byte + inputs
  batch_records = 12,   // the same, awaitable function over records
  batch_longs = 13,     // the same, bitwise inputs
  batch_settled = 14,   // the same, a settled job
  frame_stream = 15,    // frame_reader over a socket: frames back to back
  mode_count
};

struct record {
  std::string name;
  std::vector<double> values;
  std::map<int, std::string> tags;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values, tags);
  }
};

// The job shapes the batch modes run, as the pool would build them.
inline constexpr auto string_size = [](std::string s) { return s.size(); };
inline constexpr auto record_echo = [](record r) -> asio::awaitable<record> { co_return r; };
inline constexpr auto long_flip = [](long x) { return x ^ 0x5555; };  // defined for every input
using strings_spec = coshard::detail::job_spec<std::remove_const_t<decltype(string_size)>, std::string,
                                               coshard::detail::no_shared, coshard::detail::no_reduce,
                                               coshard::detail::no_reduce>;
using records_spec = coshard::detail::job_spec<std::remove_const_t<decltype(record_echo)>, record,
                                               coshard::detail::no_shared, coshard::detail::no_reduce,
                                               coshard::detail::no_reduce>;
using longs_spec = coshard::detail::job_spec<std::remove_const_t<decltype(long_flip)>, long,
                                             coshard::detail::no_shared, coshard::detail::no_reduce,
                                             coshard::detail::no_reduce>;
using settled_spec = coshard::detail::job_spec<std::remove_const_t<decltype(string_size)>, std::string,
                                               coshard::detail::no_shared, coshard::detail::no_reduce,
                                               coshard::detail::no_reduce, true>;

}  // namespace coshard_fuzz
