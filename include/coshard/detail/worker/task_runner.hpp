// coshard/detail/worker/task_runner.hpp - the worker side of a job: decode a
// batch, run its items (inline, or as up to `concurrency` coroutines), reply
// once per batch.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "coshard/detail/entry_registry.hpp"
#include "coshard/detail/item_failure.hpp"
#include "coshard/detail/job_spec.hpp"
#include "coshard/detail/worker/worker_context.hpp"
#include "coshard/serialization.hpp"

namespace coshard::detail {

template <class Spec>
class task_runner final : public job_runner {
  using F = typename Spec::fn_type;
  using T = typename Spec::input_type;
  using S = typename Spec::shared_type;
  using R = typename Spec::result_type;
  using Reduce = typename Spec::reduce_type;
  using Acc = typename Spec::acc_type;
  static constexpr bool is_reduce = Spec::is_reduce;
  static constexpr bool settled = Spec::settled;

 public:
  task_runner(worker_context& ctx, F fn, Reduce reduce, S shared, Acc init)
      : ctx_(ctx),
        fn_(std::move(fn)),
        reduce_(std::move(reduce)),
        shared_(std::move(shared)),
        init_(std::move(init)) {}

  void on_batch(const frame_header& h, std::span<const std::byte> payload) override {
    if constexpr (Spec::traits::is_awaitable)
      start_batch(h, payload);
    else
      run_batch_inline(h, payload);
  }

  void cancel() override {
    cancelled_ = true;
    for (auto& lane : lanes_) lane->signal.emit(asio::cancellation_type::terminal);
  }

  void on_flush(const frame_header& h) override {
    byte_buffer out = ctx_.take_buffer();
    frame_header reply = reply_header(h, frame_type::result);
    reply.flags = result_flushed;
    if constexpr (is_reduce) {
      if (held_) {
        try {
          encode_or_rollback(out, *held_, false);
        } catch (...) {
          // Too large for a frame, or its save threw: not the fault of any
          // one item. The parent runs the batches again, each partial alone.
          reply.flags = result_flush_refused;
        }
        held_.reset();
      }
    }
    reply.payload_size = out.size();
    ctx_.send(reply, std::move(out));
  }

 private:
  decltype(auto) call(T&& item) { return invoke_task(fn_, shared_, std::move(item)); }

  // Encodes a value, leaving `out` as it was if encoding throws midway. A
  // value too large for any frame is refused here, as this item's failure,
  // rather than sent and taken by the parent for a corrupt channel.
  template <class V>
  void encode_or_rollback(byte_buffer& out, const V& value, bool tagged) {
    const std::size_t mark = out.size();
    try {
      if (tagged)
        encode_settled_value(out, value);
      else
        encode_value(out, value);
    } catch (...) {
      out.truncate(mark);
      throw;
    }
    if (const std::size_t bytes = out.size() - mark; bytes > ctx_.max_frame_bytes()) {
      out.truncate(mark);
      throw serialization_error("coshard: the result is " + std::to_string(bytes) +
                                " bytes encoded, above max_frame_bytes (" +
                                std::to_string(ctx_.max_frame_bytes()) + ")");
    }
  }

  // A reduce batch's partial: folded into the one this worker holds for the
  // job (answered with no payload) if the batch says so, else sent now.
  void reply_partial(const frame_header& h, Acc&& acc, std::uint64_t started_ns) {
    byte_buffer out = ctx_.take_buffer();
    frame_header reply = reply_header(h, frame_type::result);
    try {
      if (h.flags & batch_hold_partial) {
        if (held_)
          *held_ = reduce_(std::move(*held_), std::move(acc));
        else
          held_.emplace(std::move(acc));
        reply.flags = result_partial_held;
      } else {
        encode_or_rollback(out, acc, false);
      }
    } catch (...) {
      send_task_failed(ctx_, h, {failure_kind::threw, h.first_index, describe_current_exception()});
      return;
    }
    reply.elapsed_ns = steady_now_ns() - started_ns;
    reply.payload_size = out.size();
    ctx_.send(reply, std::move(out));
  }

  // Trivially copyable inputs: the batch's size is checked once, then each
  // item is a plain copy out of the payload (no per-item bounds check or
  // exception scope: a third of a trivial item's cost in the worker).
  static constexpr bool raw_inputs = bitwise_serializable<T>;

  // False (and the batch answered as undecodable) unless the payload holds
  // exactly h.count items.
  bool raw_batch_size_ok(const frame_header& h, std::span<const std::byte> payload) {
    if (payload.size() == std::size_t{h.count} * sizeof(T)) return true;
    const std::size_t whole = payload.size() / sizeof(T);
    const std::uint64_t bad = h.first_index + std::min<std::size_t>(whole, h.count ? h.count - 1 : 0);
    send_task_failed(ctx_, h,
                     {failure_kind::undecodable, bad,
                      {"coshard::serialization_error",
                       "coshard: corrupt batch: " + std::to_string(payload.size()) + " bytes for " +
                           std::to_string(h.count) + " items of " + std::to_string(sizeof(T)) + " bytes"}});
    return false;
  }

  // Plain functions: one pass over the payload, no coroutine frame per item.
  void run_batch_inline(const frame_header& h, std::span<const std::byte> payload) {
    const std::uint64_t t0 = steady_now_ns();
    if constexpr (raw_inputs)
      if (!raw_batch_size_ok(h, payload)) return;
    input_archive in(payload);
    byte_buffer out;  // results (a reduce batch's partial goes through reply_partial)
    if constexpr (!is_reduce) out = ctx_.take_buffer();
    std::optional<Acc> acc;
    if constexpr (is_reduce) acc.emplace(init_);
    const auto timeout = static_cast<std::uint64_t>(ctx_.item_timeout().count());
    item_watch& watch = ctx_.watch();
    for (std::uint32_t i = 0; i < h.count; ++i) {
      const std::uint64_t index = h.first_index + i;
      std::optional<T> decoded;
      if constexpr (raw_inputs) {
        decoded.emplace(load_trivial<T>(payload.data() + std::size_t{i} * sizeof(T)));
      } else {
        try {
          decoded.emplace(decode_one<T>(in));
        } catch (...) {
          // The rest of the payload cannot be located: give the batch back.
          send_task_failed(ctx_, h, {failure_kind::undecodable, index, describe_current_exception()});
          return;
        }
      }
      T& item = *decoded;
      if (timeout) {
        watch.index.store(index, std::memory_order_relaxed);
        watch.deadline_ns.store(steady_now_ns() + timeout, std::memory_order_release);
      }
      try {
        if constexpr (is_reduce)
          *acc = reduce_(std::move(*acc), call(std::move(item)));
        else
          encode_or_rollback(out, call(std::move(item)), settled);
      } catch (...) {
        watch.deadline_ns.store(0, std::memory_order_release);
        item_failure f{failure_kind::threw, index, describe_current_exception()};
        if constexpr (settled) {
          encode_settled_failure(out, f);
          continue;
        } else {
          send_task_failed(ctx_, h, f);
          return;
        }
      }
      watch.deadline_ns.store(0, std::memory_order_release);
    }
    if constexpr (!raw_inputs) check_fully_consumed(in, "batch");
    if constexpr (is_reduce) {
      reply_partial(h, std::move(*acc), t0);
      return;
    }
    frame_header reply = reply_header(h, frame_type::result);
    reply.elapsed_ns = steady_now_ns() - t0;
    reply.payload_size = out.size();
    ctx_.send(reply, std::move(out));
  }

  struct batch_state {
    frame_header header;
    std::uint64_t started_ns = 0;
    std::vector<T> inputs;
    std::conditional_t<is_reduce, Acc, std::vector<std::optional<R>>> out;
    std::vector<std::optional<item_failure>> failures;  // settled jobs: per item
    std::uint32_t remaining = 0;
    lowest_index_failure<item_failure> first_failure;  // other jobs
  };

  // One coroutine serving items; `signal` cancels the item it runs.
  struct lane_state {
    asio::cancellation_signal signal;
    std::uint64_t item_serial = 0;  // tells a stale timeout from the current item's
    bool timed_out = false;
  };

  // Awaitable functions: items of every batch held go into one queue, and at
  // most `concurrency` lanes pull from it, so the limit holds per worker even
  // with several batches in flight.
  void start_batch(const frame_header& h, std::span<const std::byte> payload) {
    auto b = std::make_shared<batch_state>();
    b->header = h;
    b->started_ns = steady_now_ns();
    b->inputs.reserve(h.count);
    if constexpr (raw_inputs) {
      if (!raw_batch_size_ok(h, payload)) return;
      for (std::uint32_t i = 0; i < h.count; ++i)
        b->inputs.push_back(load_trivial<T>(payload.data() + std::size_t{i} * sizeof(T)));
    } else {
      input_archive in(payload);
      for (std::uint32_t i = 0; i < h.count; ++i) {
        try {
          b->inputs.push_back(decode_one<T>(in));
        } catch (...) {
          send_task_failed(ctx_, h, {failure_kind::undecodable, h.first_index + i, describe_current_exception()});
          return;
        }
      }
      check_fully_consumed(in, "batch");
    }
    if constexpr (is_reduce)
      b->out = init_;
    else
      b->out.resize(h.count);
    if constexpr (settled) b->failures.resize(h.count);
    b->remaining = h.count;
    if (h.count == 0) {
      finish(*b);
      return;
    }
    for (std::uint32_t i = 0; i < h.count; ++i) pending_.emplace_back(b, i);
    auto self = std::static_pointer_cast<task_runner>(shared_from_this());
    // Running lanes are busy with an item each; new ones serve the new items.
    for (std::uint32_t i = 0; i < h.count && lanes_.size() < ctx_.concurrency(); ++i) {
      auto lane_it = lanes_.insert(lanes_.end(), std::make_shared<lane_state>());
      asio::co_spawn(ctx_.io(), self->lane(self, lane_it),
                     asio::bind_cancellation_slot((*lane_it)->signal.slot(), asio::detached));
    }
  }

  void record_failure(batch_state& b, std::uint32_t i, item_failure f) {
    if constexpr (settled) {
      b.failures[i] = std::move(f);
    } else {
      b.first_failure.offer(f.index, std::move(f));
    }
  }

  // The (unnamed) runner pointer keeps the runner alive while a lane runs.
  asio::awaitable<void> lane(std::shared_ptr<task_runner>,
                             typename std::list<std::shared_ptr<lane_state>>::iterator me) {
    std::shared_ptr<lane_state> ls = *me;
    const auto timeout = ctx_.item_timeout();
    while (!pending_.empty()) {
      auto [b, i] = std::move(pending_.front());
      pending_.pop_front();
      const std::uint64_t index = b->header.first_index + i;
      if (cancelled_) {
        record_failure(*b, i, {failure_kind::cancelled, index, {"coshard::cancelled", "job cancelled"}});
      } else if (settled || !b->first_failure) {
        const std::uint64_t serial = ++ls->item_serial;
        ls->timed_out = false;
        std::optional<asio::steady_timer> timer;
        std::optional<item_watch::running_list::iterator> watched;
        if (timeout.count() > 0) {
          watched = ctx_.watch().begin_item(
              index, steady_now_ns() + static_cast<std::uint64_t>(
                                           std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count()));
          timer.emplace(ctx_.io(), timeout);
          timer->async_wait([ls, serial](const asio::error_code& ec) {
            if (ec || ls->item_serial != serial) return;
            ls->timed_out = true;
            ls->signal.emit(asio::cancellation_type::terminal);
          });
        }
        try {
          R r = co_await call(std::move(b->inputs[i]));
          if constexpr (is_reduce)
            b->out = reduce_(std::move(b->out), std::move(r));
          else
            b->out[i].emplace(std::move(r));
        } catch (...) {
          item_failure f{failure_kind::threw, index, describe_current_exception()};
          if (ls->timed_out) {
            f = {failure_kind::timed_out, index, {"coshard::timeout_error", "item timed out"}};
            ctx_.count_timeout();
          }
          else if (cancelled_)
            f = {failure_kind::cancelled, index, {"coshard::cancelled", "job cancelled"}};
          record_failure(*b, i, std::move(f));
        }
        ++ls->item_serial;  // a timer that fires from now on is stale
        if (timer) timer->cancel();
        if (watched) ctx_.watch().end_item(*watched);
        co_await asio::this_coro::reset_cancellation_state();
      }
      if (--b->remaining == 0) finish(*b);
    }
    lanes_.erase(me);
  }

  void finish(batch_state& b) {
    if constexpr (!settled) {
      if (b.first_failure) {
        send_task_failed(ctx_, b.header, b.first_failure.get());
        return;
      }
    }
    if constexpr (is_reduce) {
      reply_partial(b.header, std::move(b.out), b.started_ns);
      return;
    }
    byte_buffer out = ctx_.take_buffer();
    std::uint32_t i = 0;
    try {
      if constexpr (!is_reduce) {
        for (; i < b.header.count; ++i) {
          if constexpr (settled) {
            if (b.failures[i]) {
              encode_settled_failure(out, *b.failures[i]);
              continue;
            }
            try {
              encode_or_rollback(out, *b.out[i], true);
            } catch (...) {
              encode_settled_failure(
                  out, {failure_kind::threw, b.header.first_index + i, describe_current_exception()});
            }
          } else {
            encode_or_rollback(out, *b.out[i], false);
          }
        }
      }
    } catch (...) {
      send_task_failed(ctx_, b.header,
                       {failure_kind::threw, b.header.first_index + i, describe_current_exception()});
      return;
    }
    frame_header reply = reply_header(b.header, frame_type::result);
    reply.elapsed_ns = steady_now_ns() - b.started_ns;
    reply.payload_size = out.size();
    ctx_.send(reply, std::move(out));
  }

  worker_context& ctx_;
  F fn_;
  [[no_unique_address]] Reduce reduce_;
  S shared_;
  Acc init_;
  std::optional<Acc> held_;  // reduce: the batches answered partial_held since the last flush, folded
  std::deque<std::pair<std::shared_ptr<batch_state>, std::uint32_t>> pending_;
  std::list<std::shared_ptr<lane_state>> lanes_;
  bool cancelled_ = false;
};

/// The registered entry point of one job shape. Referencing `entry<Spec>::id`
/// in the parent instantiates it, which registers it in every process image.
template <class Spec>
struct entry {
  static std::shared_ptr<job_runner> make(worker_context& ctx, const job_start_view& v) {
    using F = typename Spec::fn_type;
    using Reduce = typename Spec::reduce_type;
    using S = typename Spec::shared_type;
    using Acc = typename Spec::acc_type;
    F fn = object_from_bytes<F>(v.fn, "function object");
    Reduce reduce = object_from_bytes<Reduce>(v.reduce, "reducer");
    S shared = decode<S>(v.shared);
    Acc init = decode<Acc>(v.init);
    return std::make_shared<task_runner<Spec>>(ctx, std::move(fn), std::move(reduce),
                                               std::move(shared), std::move(init));
  }
  inline static const std::uint64_t id = entry_registry::add(type_hash<Spec>(), &make);
};

}  // namespace coshard::detail
