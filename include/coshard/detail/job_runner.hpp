// coshard/detail/job_runner.hpp - the worker side of a job: decode a batch, run
// its items (inline, or as up to `concurrency` coroutines), reply once.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstring>
#include <deque>
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

/// What a runner may ask of the worker process hosting it.
class worker_context {
 public:
  virtual ~worker_context() = default;
  virtual asio::io_context& io() = 0;
  [[nodiscard]] virtual std::size_t concurrency() const = 0;
  /// An empty buffer, recycled from earlier replies when possible.
  virtual byte_buffer take_buffer() = 0;
  /// Queues a reply frame; never blocks and never waits for the parent.
  virtual void send(const frame_header& h, byte_buffer payload) = 0;
};

class job_runner : public std::enable_shared_from_this<job_runner> {
 public:
  virtual ~job_runner() = default;
  /// Runs a batch inline or starts it; the payload is valid only during the call.
  virtual void on_batch(const frame_header& h, std::span<const std::byte> payload) = 0;
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

inline void send_task_failed(worker_context& ctx, const frame_header& batch, std::uint64_t index,
                             const exception_description& what) {
  byte_buffer out = ctx.take_buffer();
  encode_value(out, index);
  encode_value(out, what.type_name);
  encode_value(out, what.message);
  frame_header h = reply_header(batch, frame_type::task_failed);
  h.payload_size = out.size();
  ctx.send(h, std::move(out));
}

/// The static shape of a job: function, input, shared value, reducer, accumulator.
template <class F, class T, class S, class Reduce, class Acc>
struct job_spec {
  using fn_type = F;
  using input_type = T;
  using shared_type = S;
  using reduce_type = Reduce;
  using acc_type = Acc;
  using traits = task_traits<F, S, T>;
  using result_type = typename traits::result_type;
  static constexpr bool is_reduce = !std::is_same_v<Reduce, no_reduce>;
};

template <class T>
T object_from_bytes(std::span<const std::byte> bytes, const char* what) {
  if (bytes.size() != sizeof(T))
    throw serialization_error(std::string("coshard: job_start carries ") +
                              std::to_string(bytes.size()) + " bytes for the " + what +
                              ", expected " + std::to_string(sizeof(T)));
  alignas(T) std::byte raw[sizeof(T)];
  std::memcpy(raw, bytes.data(), sizeof(T));
  return *std::launder(reinterpret_cast<T*>(raw));
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

 private:
  decltype(auto) call(T&& item) { return invoke_task(fn_, shared_, std::move(item)); }

  // Plain functions: one pass over the payload, no coroutine frame per item.
  void run_batch_inline(const frame_header& h, std::span<const std::byte> payload) {
    const std::uint64_t t0 = steady_now_ns();
    input_archive in(payload);
    byte_buffer out = ctx_.take_buffer();
    std::optional<Acc> acc;
    if constexpr (is_reduce) acc.emplace(init_);
    for (std::uint32_t i = 0; i < h.count; ++i) {
      T item = decode_one<T>(in);
      try {
        if constexpr (is_reduce)
          *acc = reduce_(std::move(*acc), call(std::move(item)));
        else
          encode_value(out, call(std::move(item)));
      } catch (...) {
        send_task_failed(ctx_, h, h.first_index + i, describe_current_exception());
        return;
      }
    }
    check_fully_consumed<T>(in, "batch");
    if constexpr (is_reduce) {
      try {
        encode_value(out, *acc);
      } catch (...) {
        send_task_failed(ctx_, h, h.first_index, describe_current_exception());
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
    std::uint32_t remaining = 0;
    bool failed = false;
    std::uint64_t failed_index = 0;
    exception_description failure;
  };

  // Awaitable functions: items of every batch held go into one queue, and at
  // most `concurrency` lanes pull from it, so the limit holds per worker even
  // with several batches in flight.
  void start_batch(const frame_header& h, std::span<const std::byte> payload) {
    auto b = std::make_shared<batch_state>();
    b->header = h;
    b->started_ns = steady_now_ns();
    input_archive in(payload);
    b->inputs.reserve(h.count);
    for (std::uint32_t i = 0; i < h.count; ++i) b->inputs.push_back(decode_one<T>(in));
    check_fully_consumed<T>(in, "batch");
    if constexpr (is_reduce)
      b->out = init_;
    else
      b->out.resize(h.count);
    b->remaining = h.count;
    if (h.count == 0) {
      finish(*b);
      return;
    }
    for (std::uint32_t i = 0; i < h.count; ++i) pending_.emplace_back(b, i);
    auto self = std::static_pointer_cast<task_runner>(shared_from_this());
    // Running lanes are busy with an item each; new ones serve the new items.
    for (std::uint32_t i = 0; i < h.count && lanes_ < ctx_.concurrency(); ++i) {
      ++lanes_;
      asio::co_spawn(ctx_.io(), self->lane(self), asio::detached);
    }
  }

  // The (unnamed) pointer parameter keeps the runner alive while a lane runs.
  asio::awaitable<void> lane(std::shared_ptr<task_runner>) {
    while (!pending_.empty()) {
      auto [b, i] = std::move(pending_.front());
      pending_.pop_front();
      if (!b->failed) {
        try {
          R r = co_await call(std::move(b->inputs[i]));
          if constexpr (is_reduce)
            b->out = reduce_(std::move(b->out), std::move(r));
          else
            b->out[i].emplace(std::move(r));
        } catch (...) {
          const std::uint64_t index = b->header.first_index + i;
          if (!b->failed || index < b->failed_index) {
            b->failed_index = index;
            b->failure = describe_current_exception();
          }
          b->failed = true;
        }
      }
      if (--b->remaining == 0) finish(*b);
    }
    --lanes_;
  }

  void finish(batch_state& b) {
    if (b.failed) {
      send_task_failed(ctx_, b.header, b.failed_index, b.failure);
      return;
    }
    byte_buffer out = ctx_.take_buffer();
    std::uint32_t i = 0;
    try {
      if constexpr (is_reduce)
        encode_value(out, b.out);
      else
        for (; i < b.header.count; ++i) encode_value(out, *b.out[i]);
    } catch (...) {
      send_task_failed(ctx_, b.header, b.header.first_index + i, describe_current_exception());
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
  std::size_t lanes_ = 0;
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
