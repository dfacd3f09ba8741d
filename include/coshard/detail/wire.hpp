// coshard/detail/wire.hpp - the frames exchanged between parent and workers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "coshard/detail/exit_codes.hpp"
#include "coshard/errors.hpp"

namespace coshard::detail {

enum class frame_type : std::uint8_t {
  // parent -> worker
  job_start = 1,  // payload: entry id, function bytes, shared value, reduce init
  batch = 2,      // payload: `count` encoded inputs starting at `first_index`
  job_end = 3,    // no payload: the worker drops the job's state
  cancel = 4,     // no payload: skip queued items, cancel running coroutines
  flush = 5,      // no payload: reply with the reduce partial held since the last flush
  // worker -> parent
  result = 10,       // payload: `count` encoded results, or one partial for reduce jobs
  task_failed = 11,  // payload: item_failure (the batch's first failing item)
  job_failed = 12,   // payload: message; the job cannot run in this worker at all
  worker_ready = 13,  // sent once at start; flags = 1 and a message if the initializer failed
};

inline constexpr std::uint32_t frame_magic = 0x31485343;  // "CSH1"

// frame_header::flags of a reduce job's frames. A batch flagged hold_partial
// is folded into the partial its worker keeps for the job, and answered by a
// result with partial_held and no payload; a flush is answered by a result
// flagged flushed carrying that partial (every batch answered partial_held
// since the previous flush), which the worker then starts afresh.
inline constexpr std::uint8_t batch_hold_partial = 1;
inline constexpr std::uint8_t result_partial_held = 1;
inline constexpr std::uint8_t result_flushed = 2;
// A flush answered with no partial: it could not be encoded (e.g. above
// max_frame_bytes); the worker dropped it, and the parked batches run again
// with their partials travelling one by one.
inline constexpr std::uint8_t result_flush_refused = 4;

// Fixed-size header in native byte order: parent and workers are the same
// binary on the same machine.
struct frame_header {
  std::uint32_t magic = frame_magic;
  frame_type type{};
  std::uint8_t flags = 0;
  std::uint16_t reserved = 0;
  std::uint32_t count = 0;        // items in a batch / result
  std::uint32_t rss_mib = 0;  // worker's resident memory after the batch (if asked for)
  std::uint64_t job = 0;          // job id: stale frames from an earlier job are detectable
  std::uint64_t batch = 0;        // batch id within the job
  std::uint64_t first_index = 0;  // input index of the batch's first item
  std::uint64_t elapsed_ns = 0;   // worker time spent on the batch (result frames)
  std::uint64_t payload_size = 0;
};
static_assert(sizeof(frame_header) == 56);

inline bool known_frame_type(frame_type t) {
  switch (t) {
    case frame_type::job_start:
    case frame_type::batch:
    case frame_type::job_end:
    case frame_type::cancel:
    case frame_type::flush:
    case frame_type::result:
    case frame_type::task_failed:
    case frame_type::job_failed:
    case frame_type::worker_ready:
      return true;
  }
  return false;
}

/// Throws serialization_error naming the defect if `h` cannot be a valid frame.
inline void validate_header(const frame_header& h, std::uint64_t max_frame_bytes) {
  if (h.magic != frame_magic)
    throw serialization_error("coshard: corrupt frame: bad magic number");
  if (!known_frame_type(h.type))
    throw serialization_error("coshard: corrupt frame: unknown frame type " +
                              std::to_string(static_cast<int>(h.type)));
  if (h.payload_size > max_frame_bytes)
    throw serialization_error("coshard: frame of " + std::to_string(h.payload_size) +
                              " bytes exceeds max_frame_bytes (" + std::to_string(max_frame_bytes) +
                              ")");
}

/// How an item failed inside a worker.
enum class failure_kind : std::uint8_t {
  threw = 0,      // the task threw
  timed_out = 1,  // an awaitable task was cancelled at pool_options::item_timeout
  cancelled = 2,  // the job was cancelled before or while the item ran
  undecodable = 3,  // the item's input could not be decoded: the batch's other items go back
};

}  // namespace coshard::detail
