// coshard/detail/parent/batch.hpp - a batch of encoded input items as the
// parent keeps it until its reply arrives, and how big the next one should be.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/job_options.hpp"

namespace coshard::detail {

struct batch_record {
  std::uint64_t id = 0;
  std::uint64_t first = 0;
  std::uint32_t count = 0;
  byte_buffer payload;  // kept until the reply arrives, so it can be sent again
  // Where each item starts in `payload`, so that a batch can be split without
  // encoding again: every `item_size` bytes if that is not 0 (items of a
  // bitwise-copied type), else at `offsets`.
  std::uint32_t item_size = 0;
  std::vector<std::uint32_t> offsets;
  std::uint32_t crashes = 0;  // deaths of a worker that held only this batch
  bool suspect = false;       // held by a worker that died: runs alone until cleared
  // Reduce jobs: answered, its partial folded into the one its worker holds
  // until the next flush (a death loses it: the batch runs again).
  bool parked = false;
  // Its items were counted done once already (it ran again after its
  // worker died holding its partial): not counted twice.
  bool counted = false;
  // Its partial travels with its reply, not held: it was parked when its
  // worker died answering a flush, or when a flush could not be sent, so
  // the partial itself may be to blame; alone, the usual rules convict it.
  bool no_hold = false;

  /// Byte offset of item `k` (k == count: the end).
  [[nodiscard]] std::size_t item_offset(std::size_t k) const noexcept {
    if (k == count) return payload.size();
    return item_size ? k * item_size : offsets[k];
  }

  /// Moves the payload into a buffer of about its size if it sits in one
  /// more than twice as large (a recycled buffer of a larger batch: a
  /// cluster's remote slots cut 128 KiB batches into the 1 MiB buffers of
  /// local ones), giving the large buffer back to `spare`. For a batch kept
  /// waiting (parked): the memory it keeps is then what it needs.
  void fit_payload(buffer_pool& spare) {
    if (payload.capacity() <= 2 * payload.size() + 4096) return;
    byte_buffer fitted;
    fitted.reserve(payload.size());
    fitted.append(payload.data(), payload.size());
    spare.give(std::exchange(payload, std::move(fitted)));
  }

  /// How many items from item `from` on a batch cut at `max_bytes` would
  /// take, as a fresh cut closes a batch: all that are left if their bytes
  /// fit, else up to and including the first whose end reaches max_bytes
  /// (so at least one). `from` < count.
  [[nodiscard]] std::size_t items_within(std::size_t from, std::size_t max_bytes) const noexcept {
    const std::size_t base = item_offset(from);
    if (payload.size() - base <= max_bytes) return count - from;
    std::size_t lo = from + 1, hi = count;  // the first k whose item_offset(k) - base reaches max_bytes
    while (lo < hi) {
      const std::size_t mid = lo + (hi - lo) / 2;
      if (item_offset(mid) - base >= max_bytes)
        hi = mid;
      else
        lo = mid + 1;
    }
    return lo - from;
  }
};

/// Chooses batch sizes: fixed, or adapted so one batch takes about
/// `target_batch_time` in a worker, measured from the workers' own timings.
class batch_sizer {
 public:
  batch_sizer(const job_settings& o, std::size_t workers, bool awaitable)
      : fixed_(o.batch_size),
        target_ns_(static_cast<double>(std::chrono::nanoseconds(o.target_batch_time).count())),
        spread_(workers * o.batches_in_flight),
        // Enough awaitable items must be held to keep `concurrency` lanes busy.
        min_(awaitable ? (o.concurrency + o.batches_in_flight - 1) / o.batches_in_flight : 1),
        current_(awaitable ? min_ : 16) {}

  [[nodiscard]] std::size_t next(std::optional<std::size_t> remaining) const {
    if (fixed_) return fixed_;
    std::size_t n = current_;
    // Near the end, smaller batches keep every worker busy until the last
    // item; but not below about an eighth of the target time, where the round
    // trips would cost more than the imbalance they avoid.
    if (remaining) {
      const std::size_t share = (*remaining + spread_ - 1) / spread_;
      n = std::min(n, std::max(share, std::min(n, floor_)));
    }
    return std::max<std::size_t>(n, 1);
  }

  void observe(std::uint32_t count, std::uint64_t elapsed_ns) {
    if (fixed_ || count == 0) return;
    const double per_item = std::max(0.5, static_cast<double>(elapsed_ns) / count);
    const bool first = per_item_ns_ == 0;
    per_item_ns_ = first ? per_item : 0.7 * per_item_ns_ + 0.3 * per_item;
    const double want = target_ns_ / per_item_ns_;
    // The first measurement sets the size outright; later ones move it gradually.
    const double lo = static_cast<double>(current_) / 2;
    const double hi = first ? want : static_cast<double>(current_) * 4;
    current_ =
        std::clamp<std::size_t>(static_cast<std::size_t>(std::clamp(want, lo, std::max(lo, hi))), min_, max_items);
    floor_ = std::max<std::size_t>(1, static_cast<std::size_t>(want / 8));
  }

 private:
  static constexpr std::size_t max_items = std::size_t{1} << 20;
  std::size_t fixed_;
  double target_ns_;
  std::size_t spread_;
  std::size_t min_;
  std::size_t current_;
  std::size_t floor_ = 1;
  double per_item_ns_ = 0;
};

}  // namespace coshard::detail
