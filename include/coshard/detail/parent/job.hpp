// coshard/detail/parent/job.hpp - the typed part of one job on the parent's
// side: its job_start frame, cutting batches from the input range, and
// handing results to the collector. Everything else is job_engine's.
#pragma once

#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <string>

#include "coshard/detail/job_spec.hpp"
#include "coshard/detail/parent/job_engine.hpp"
#include "coshard/detail/worker/task_runner.hpp"  // entry<Spec>: registered in this binary, run by its workers

namespace coshard::detail {

/// One job: input `View` (an input_source or a stream_source) cut into
/// batches of Spec's input type, results into `Collector`.
template <class Spec, class View, class Collector>
class job final : public job_engine {
  using T = typename Spec::input_type;
  using range = typename View::range_type;
  using iterator = std::ranges::iterator_t<range&>;
  static constexpr bool streaming = [] {
    if constexpr (requires { View::streaming; })
      return View::streaming;
    else
      return false;
  }();

 public:
  using value_type = typename Collector::value_type;

  job(worker_transport& transport, slot_scheduler& scheduler, pool_counters& counters, job_settings settings,
      std::uint64_t job_id, View inputs, byte_buffer job_start, Collector collector)
      : job_engine(transport, scheduler, counters, settings, job_id, std::move(job_start),
                   job_shape{Spec::traits::is_awaitable, Collector::settled, streaming, Collector::is_reduce}),
        inputs_(std::move(inputs)),
        collector_(std::move(collector)) {}

  /// The job's results, once run() has completed.
  value_type take() { return collector_.take(); }

 private:
  void open_input() override {
    it_.emplace(std::ranges::begin(inputs_.get()));
    if constexpr (!streaming)
      if (*it_ == std::ranges::end(inputs_.get())) input_done_ = true;
    if constexpr (std::ranges::sized_range<range>) {
      total_ = static_cast<std::size_t>(std::ranges::size(inputs_.get()));
      collector_.reserve(*total_);
    }
  }

  std::optional<batch_record> cut_from_input(std::size_t budget, std::size_t max_bytes) override {
    const std::size_t target = std::min(next_batch_size(), budget);
    batch_record rec = new_batch();
    if constexpr (bitwise_serializable<T>) rec.item_size = static_cast<std::uint32_t>(sizeof(T));
    auto& it = *it_;
    const auto end = std::ranges::end(inputs_.get());
    std::size_t count = 0;
    if constexpr (std::ranges::contiguous_range<range> && bitwise_serializable<T>) {
      const auto left = static_cast<std::size_t>(end - it);
      const std::uint64_t by_bytes = std::min<std::uint64_t>(max_bytes, opts_.max_frame_bytes) / sizeof(T);
      count = std::min({target, left, static_cast<std::size_t>(std::max<std::uint64_t>(1, by_bytes))});
      rec.payload.append(std::to_address(it), count * sizeof(T));
      it += static_cast<std::ptrdiff_t>(count);
    } else {
      while (count < target && it != end) {
        const std::size_t mark = rec.payload.size();
        const std::uint64_t index = next_index_ + count;
        std::optional<exception_description> rejected;
        try {
          encode_value(rec.payload, static_cast<const T&>(*it));
        } catch (...) {
          rejected = describe_current_exception();
          rejected->message = "the input could not be encoded: " + rejected->message;
        }
        const std::size_t item_bytes = rec.payload.size() - mark;
        if (!rejected && item_bytes > opts_.max_frame_bytes) {
          rejected = exception_description{
              "coshard::serialization_error",
              "input index " + std::to_string(index) + " is " + std::to_string(item_bytes) +
                  " bytes encoded, above max_frame_bytes (" + std::to_string(opts_.max_frame_bytes) +
                  "): it cannot be sent to a worker"};
        }
        if (rejected) {
          // Only this item fails; the batch closes before it.
          rec.payload.truncate(mark);
          reject_input(index, *rejected);
          ++it;
          if (it == end) input_done_ = !streaming;
          if (count > 0) {
            finish_cut(rec, count);
            ++next_index_;  // past the bad item
            return rec;
          }
          ++next_index_;
          rec.first = next_index_;
          if (stopping() || input_done_) return std::nullopt;
          continue;
        }
        if (rec.payload.size() > opts_.max_frame_bytes) {
          // This item fits a frame alone, not with the ones before it: it
          // starts the next batch (encoded again then).
          rec.payload.truncate(mark);
          break;
        }
        if constexpr (!bitwise_serializable<T>) rec.offsets.push_back(static_cast<std::uint32_t>(mark));
        ++it;
        ++count;
        if (rec.payload.size() >= max_bytes) break;
      }
    }
    if (it == end) input_done_ = !streaming;
    if (count == 0) return std::nullopt;
    finish_cut(rec, count);
    return rec;
  }

  std::size_t on_result(const frame_header& h, std::span<const std::byte> payload, pid_t pid) override {
    if constexpr (std::is_same_v<decltype(collector_.on_result(h, payload, pid)), std::size_t>) {
      return collector_.on_result(h, payload, pid);
    } else {
      collector_.on_result(h, payload, pid);
      return 0;
    }
  }
  void on_item_error(std::uint64_t index, std::exception_ptr e) override {
    if constexpr (Collector::settled) collector_.set_error(static_cast<std::size_t>(index), std::move(e));
  }
  void on_end(std::exception_ptr e) override {
    if constexpr (requires { collector_.close(e); }) collector_.close(e);
  }

  void attach_input_wake(std::function<void()> wake) override {
    if constexpr (streaming) inputs_.inbox().attach(std::move(wake));
  }
  void detach_input_wake() noexcept override {
    if constexpr (streaming) inputs_.inbox().detach();
  }
  [[nodiscard]] std::size_t input_queued() const override {
    if constexpr (streaming)
      return inputs_.inbox().size();
    else
      return 0;
  }
  bool try_close_input() override {
    if constexpr (streaming)
      return inputs_.inbox().try_close();
    else
      return false;
  }
  void input_wake_taken() override {
    if constexpr (streaming) inputs_.inbox().poke_taken();
  }

  View inputs_;
  Collector collector_;
  std::optional<iterator> it_;
};

}  // namespace coshard::detail
