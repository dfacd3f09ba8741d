// coshard/detail/job_runner.hpp - the worker side of a job: decode a batch, run
// its items (inline, or as up to `concurrency` coroutines), reply once.
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

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/detail/demangle.hpp"
#include "coshard/detail/entry_registry.hpp"
#include "coshard/detail/task_traits.hpp"
#include "coshard/detail/wire.hpp"
#include "coshard/serialization.hpp"

namespace coshard::detail {

/// Lets the worker's watchdog thread see which item runs and until when it
/// may (0: none running). A plain function sets the two atomics around each
/// call; awaitable items, several at once, register with begin/end and the
/// watchdog sees the one due first, so that an awaitable blocking the loop
/// is caught as a stuck plain function is.
struct item_watch {
  std::atomic<std::uint64_t> index{0};
  std::atomic<std::uint64_t> deadline_ns{0};
  /// Awaitable items running at once; with more than one, a blocked loop
  /// cannot be pinned on the item due first.
  std::atomic<std::uint32_t> running_count{0};

  // (deadline, index) of each running awaitable item; loop thread only.
  using running_list = std::list<std::pair<std::uint64_t, std::uint64_t>>;
  running_list running;

  running_list::iterator begin_item(std::uint64_t index, std::uint64_t deadline) {
    auto it = running.emplace(running.end(), deadline, index);
    publish_earliest();
    return it;
  }
  void end_item(running_list::iterator it) {
    running.erase(it);
    publish_earliest();
  }

 private:
  void publish_earliest() {
    std::uint64_t best = 0, best_index = 0;
    for (auto& [deadline, idx] : running)
      if (best == 0 || deadline < best) {
        best = deadline;
        best_index = idx;
      }
    index.store(best_index, std::memory_order_relaxed);
    running_count.store(static_cast<std::uint32_t>(running.size()), std::memory_order_relaxed);
    deadline_ns.store(best, std::memory_order_release);
  }
};

/// What a runner may ask of the worker process hosting it.
class worker_context {
 public:
  virtual ~worker_context() = default;
  virtual asio::io_context& io() = 0;
  [[nodiscard]] virtual std::size_t concurrency() const = 0;
  [[nodiscard]] virtual std::chrono::nanoseconds item_timeout() const = 0;
  /// Largest frame the parent accepts.
  [[nodiscard]] virtual std::uint64_t max_frame_bytes() const = 0;
  virtual item_watch& watch() = 0;
  /// An empty buffer, recycled from earlier replies when possible.
  virtual byte_buffer take_buffer() = 0;
  /// Queues a reply frame; never blocks and never waits for the parent.
  virtual void send(const frame_header& h, byte_buffer payload) = 0;
};

class job_runner : public std::enable_shared_from_this<job_runner> {
 public:
  virtual ~job_runner() = default;
  /// Runs or starts one batch; the payload is valid only during the call.
  virtual void on_batch(const frame_header& h, std::span<const std::byte> payload) = 0;
  /// Skips every queued item and cancels the running coroutines; each held
  /// batch still gets its reply.
  virtual void cancel() = 0;
};

inline std::uint64_t steady_now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

inline frame_header reply_header(const frame_header& batch, frame_type type) {
  frame_header h = batch;
  h.type = type;
  h.payload_size = 0;
  h.elapsed_ns = 0;
  return h;
}

/// One failed item as it travels: how it failed and what was thrown.
struct item_failure {
  failure_kind kind = failure_kind::threw;
  std::uint64_t index = 0;
  exception_description what;
};

inline void encode_failure(byte_buffer& out, const item_failure& f) {
  encode_value(out, static_cast<std::uint8_t>(f.kind));
  encode_value(out, f.index);
  encode_value(out, f.what.type_name);
  encode_value(out, f.what.message);
}

inline item_failure decode_failure(input_archive& in) {
  item_failure f;
  const auto kind = decode_one<std::uint8_t>(in);
  if (kind > static_cast<std::uint8_t>(failure_kind::undecodable))
    throw serialization_error("coshard: corrupt failure record: kind " + std::to_string(kind));
  f.kind = static_cast<failure_kind>(kind);
  f.index = decode_one<std::uint64_t>(in);
  f.what.type_name = decode_one<std::string>(in);
  f.what.message = decode_one<std::string>(in);
  return f;
}

inline void send_task_failed(worker_context& ctx, const frame_header& batch, const item_failure& f) {
  byte_buffer out = ctx.take_buffer();
  encode_failure(out, f);
  frame_header h = reply_header(batch, frame_type::task_failed);
  h.payload_size = out.size();
  ctx.send(h, std::move(out));
}

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

// Result records of settled jobs: tag 1 + byte length + value, or tag 0 +
// failure. The length lets the caller skip a value it cannot decode and
// still deliver the rest of the batch.
template <class R>
void encode_settled_value(byte_buffer& out, const R& value) {
  encode_value(out, std::uint8_t{1});
  const std::size_t length_at = out.size();
  encode_value(out, std::uint64_t{0});
  const std::size_t start = out.size();
  encode_value(out, value);
  const std::uint64_t length = out.size() - start;
  std::memcpy(out.data() + length_at, &length, sizeof length);
}
inline void encode_settled_failure(byte_buffer& out, const item_failure& f) {
  encode_value(out, std::uint8_t{0});
  encode_failure(out, f);
}

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

  static T load_raw(const std::byte* p) {
    alignas(T) std::byte raw[sizeof(T)];
    std::memcpy(raw, p, sizeof(T));
    return *std::launder(reinterpret_cast<T*>(raw));
  }

  // Plain functions: one pass over the payload, no coroutine frame per item.
  void run_batch_inline(const frame_header& h, std::span<const std::byte> payload) {
    const std::uint64_t t0 = steady_now_ns();
    if constexpr (raw_inputs)
      if (!raw_batch_size_ok(h, payload)) return;
    input_archive in(payload);
    byte_buffer out = ctx_.take_buffer();
    std::optional<Acc> acc;
    if constexpr (is_reduce) acc.emplace(init_);
    const auto timeout = static_cast<std::uint64_t>(ctx_.item_timeout().count());
    item_watch& watch = ctx_.watch();
    for (std::uint32_t i = 0; i < h.count; ++i) {
      const std::uint64_t index = h.first_index + i;
      std::optional<T> decoded;
      if constexpr (raw_inputs) {
        decoded.emplace(load_raw(payload.data() + std::size_t{i} * sizeof(T)));
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
      try {
        encode_or_rollback(out, *acc, false);
      } catch (...) {
        send_task_failed(ctx_, h, {failure_kind::threw, h.first_index, describe_current_exception()});
        return;
      }
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
    std::optional<item_failure> first_failure;  // other jobs: lowest index
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
        b->inputs.push_back(load_raw(payload.data() + std::size_t{i} * sizeof(T)));
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
      if (!b.first_failure || f.index < b.first_failure->index) b.first_failure = std::move(f);
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
          if (ls->timed_out)
            f = {failure_kind::timed_out, index, {"coshard::timeout_error", "item timed out"}};
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
        send_task_failed(ctx_, b.header, *b.first_failure);
        return;
      }
    }
    byte_buffer out = ctx_.take_buffer();
    std::uint32_t i = 0;
    try {
      if constexpr (is_reduce) {
        encode_or_rollback(out, b.out, false);
      } else {
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
  std::deque<std::pair<std::shared_ptr<batch_state>, std::uint32_t>> pending_;
  std::list<std::shared_ptr<lane_state>> lanes_;
  bool cancelled_ = false;
};

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
