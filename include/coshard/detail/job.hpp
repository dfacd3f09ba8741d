// coshard/detail/job.hpp - the parent side of one job: cut batches from the
// input as workers ask for them, track what each worker holds, collect replies.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/co_spawn.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <exception>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <vector>

#include "coshard/detail/frame_io.hpp"
#include "coshard/detail/job_runner.hpp"
#include "coshard/detail/worker_set.hpp"

namespace coshard::detail {

/// Bytes of a job_start frame: entry id, then each part with its length.
template <class Spec>
byte_buffer encode_job_start(const typename Spec::fn_type& fn, const typename Spec::reduce_type& reduce,
                             const typename Spec::shared_type& shared,
                             const typename Spec::acc_type& init) {
  byte_buffer out;
  encode_value(out, entry<Spec>::id);
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

struct batch_record {
  std::uint64_t id = 0;
  std::uint64_t first = 0;
  std::uint32_t count = 0;
  byte_buffer payload;  // kept until the reply arrives, so it can be sent again
};

/// Chooses batch sizes: fixed, or adapted so one batch takes about
/// `target_batch_time` in a worker, measured from the workers' own timings.
class batch_sizer {
 public:
  batch_sizer(const pool_options& o, std::size_t workers, bool awaitable)
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
    current_ = std::clamp<std::size_t>(static_cast<std::size_t>(std::clamp(want, lo, std::max(lo, hi))),
                                       min_, max_items);
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

template <class Spec, class View, class Collector>
class job {
  using T = typename Spec::input_type;
  using range = typename View::range_type;
  using iterator = std::ranges::iterator_t<range&>;
  using socket = asio::local::stream_protocol::socket;
  static constexpr std::uint64_t job_start_batch = ~std::uint64_t{0};

 public:
  using value_type = typename Collector::value_type;

  job(worker_set& workers, std::uint64_t job_id, View inputs, byte_buffer job_start,
      Collector collector)
      : workers_(workers),
        opts_(workers.options()),
        job_id_(job_id),
        inputs_(std::move(inputs)),
        job_start_(std::move(job_start)),
        collector_(std::move(collector)),
        sizer_(opts_, workers.slots().size(), Spec::traits::is_awaitable),
        max_held_(held_limit(opts_)) {}

  asio::awaitable<typename Collector::value_type> run() {
    auto ex = co_await asio::this_coro::executor;
    it_.emplace(std::ranges::begin(inputs_.get()));
    if constexpr (std::ranges::sized_range<range>) {
      total_ = static_cast<std::size_t>(std::ranges::size(inputs_.get()));
      collector_.reserve(*total_);
    }
    asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
    std::size_t running = workers_.slots().size();
    for (auto& slot : workers_.slots()) {
      asio::co_spawn(ex, serve(slot), [&](std::exception_ptr e) {
        if (e) fail(e);
        if (--running == 0) all_done.cancel();
      });
    }
    asio::error_code ec;
    if (running) co_await all_done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (failure_) std::rethrow_exception(failure_);
    if (task_failure_) throw *task_failure_;
    co_return collector_.take();
  }

 private:
  // Awaitable items overlap only if the worker holds at least `concurrency`
  // of them; a small fixed batch size is made up for with more batches.
  static std::size_t held_limit(const pool_options& o) {
    std::size_t k = o.batches_in_flight;
    if (Spec::traits::is_awaitable && o.batch_size)
      k = std::max(k, (o.concurrency + o.batch_size - 1) / o.batch_size);
    return k;
  }

  // A pool-level failure wins over task errors; the first one is kept.
  void fail(std::exception_ptr e) {
    if (!failure_) failure_ = e;
  }
  [[nodiscard]] bool stopping() const { return failure_ || task_failure_; }

  std::optional<batch_record> cut_batch(worker_slot& slot) {
    if (input_done_ || stopping()) return std::nullopt;
    std::optional<std::size_t> remaining;
    if (total_) remaining = *total_ - next_index_;
    const std::size_t target = sizer_.next(remaining);
    batch_record rec;
    rec.payload = take_spare();
    rec.first = next_index_;
    auto& it = *it_;
    const auto end = std::ranges::end(inputs_.get());
    std::size_t count = 0;
    if constexpr (std::ranges::contiguous_range<range> && bitwise_serializable<T>) {
      const auto left = static_cast<std::size_t>(end - it);
      count = std::min({target, left, std::max<std::size_t>(1, opts_.max_batch_bytes / sizeof(T))});
      rec.payload.append(std::to_address(it), count * sizeof(T));
      it += static_cast<std::ptrdiff_t>(count);
    } else {
      try {
        while (count < target && it != end) {
          encode_value(rec.payload, static_cast<const T&>(*it));
          ++it;
          ++count;
          if (rec.payload.size() >= opts_.max_batch_bytes) break;
        }
      } catch (const std::exception& e) {
        throw serialization_error("coshard: input at index " + std::to_string(next_index_ + count) +
                                  " could not be encoded: " + e.what());
      }
    }
    if (it == end) input_done_ = true;
    if (count == 0) return std::nullopt;
    (void)slot;
    rec.count = static_cast<std::uint32_t>(count);
    rec.id = next_batch_id_++;
    next_index_ += count;
    return rec;
  }

  byte_buffer take_spare() {
    if (spare_.empty()) return {};
    byte_buffer b = std::move(spare_.back());
    spare_.pop_back();
    return b;
  }
  void recycle(byte_buffer b) {
    b.clear();
    b.shrink_if_above(4 * opts_.max_batch_bytes);
    if (spare_.size() < 2 * workers_.slots().size() * opts_.batches_in_flight)
      spare_.push_back(std::move(b));
  }

  frame_header header(frame_type type) const {
    frame_header h;
    h.type = type;
    h.job = job_id_;
    return h;
  }

  // Hands the fd back without closing it when the job ends, however it ends.
  struct socket_lease {
    socket& s;
    ~socket_lease() {
      asio::error_code ec;
      if (s.is_open()) s.release(ec);
    }
  };

  asio::awaitable<void> serve(worker_slot& slot) {
    socket sock(co_await asio::this_coro::executor);
    sock.assign(asio::local::stream_protocol(), slot.fd);
    socket_lease lease{sock};
    std::deque<batch_record> held;
    try {
      frame_header start = header(frame_type::job_start);
      start.batch = job_start_batch;
      start.payload_size = job_start_.size();
      co_await write_frame(sock, start, job_start_.view());
      for (;;) {
        while (held.size() < max_held_) {
          std::optional<batch_record> rec;
          try {
            rec = cut_batch(slot);
          } catch (...) {
            fail(std::current_exception());
          }
          if (!rec) break;
          held.push_back(std::move(*rec));
          const batch_record& b = held.back();
          frame_header h = header(frame_type::batch);
          h.batch = b.id;
          h.first_index = b.first;
          h.count = b.count;
          h.payload_size = b.payload.size();
          co_await write_frame(sock, h, b.payload.view());
        }
        if (held.empty()) break;
        frame_header h;
        const auto payload = co_await slot.reader->read(sock, h);
        if (h.job != job_id_)
          throw serialization_error("coshard: worker pid " + std::to_string(slot.pid) +
                                    " replied for job " + std::to_string(h.job) + " during job " +
                                    std::to_string(job_id_));
        if (h.batch == job_start_batch) {  // the worker could not start the job
          handle_reply(slot, h, payload);
          continue;
        }
        auto rec = std::find_if(held.begin(), held.end(), [&](auto& r) { return r.id == h.batch; });
        if (rec == held.end() || h.first_index != rec->first || h.count != rec->count)
          throw serialization_error("coshard: worker pid " + std::to_string(slot.pid) +
                                    " replied to a batch it does not hold");
        handle_reply(slot, h, payload);
        recycle(std::move(rec->payload));
        held.erase(rec);
      }
      co_await write_frame(sock, header(frame_type::job_end), {});
    } catch (const std::system_error& e) {
      slot.broken = true;
      fail(std::make_exception_ptr(lost_worker(slot, held, e.code())));
    } catch (const serialization_error&) {
      slot.broken = true;
      fail(std::current_exception());
    }
  }

  void handle_reply(worker_slot& slot, const frame_header& h, std::span<const std::byte> payload) {
    switch (h.type) {
      case frame_type::result:
        sizer_.observe(h.count, h.elapsed_ns);
        if (stopping()) return;  // a failed job's late results are dropped
        try {
          collector_.on_result(h, payload);
        } catch (const serialization_error&) {
          throw;
        } catch (...) {
          fail(std::current_exception());  // the caller's sink threw
        }
        return;
      case frame_type::task_failed: {
        input_archive in(payload);
        const auto index = decode_one<std::uint64_t>(in);
        auto type = decode_one<std::string>(in);
        auto what = decode_one<std::string>(in);
        if (!task_failure_ || index < task_failure_->index())
          task_failure_.emplace(std::move(type), std::move(what), static_cast<std::size_t>(index),
                                slot.pid);
        return;
      }
      case frame_type::job_failed:
        fail(std::make_exception_ptr(
            pool_error("coshard: worker pid " + std::to_string(slot.pid) +
                       " could not run the job: " + decode<std::string>(payload))));
        return;
      default:
        throw serialization_error("coshard: unexpected frame type " +
                                  std::to_string(static_cast<int>(h.type)) + " from worker pid " +
                                  std::to_string(slot.pid));
    }
  }

  static pool_error lost_worker(worker_slot& slot, const std::deque<batch_record>& held,
                                std::error_code ec) {
    std::string s = "coshard: lost worker pid " + std::to_string(slot.pid);
    if (ec == asio::error::eof || ec == asio::error::connection_reset || ec == asio::error::broken_pipe) {
      const int status = reap_worker(slot.pid, std::chrono::milliseconds(1000));
      s += " (" + describe_wait_status(status) + ")";
      slot.pid = -1;
    } else {
      s += " (" + ec.message() + ")";
    }
    if (!held.empty()) {
      s += " while it held " + std::to_string(held.size()) + " batch(es), input indices";
      for (auto& b : held)
        s += " [" + std::to_string(b.first) + ", " + std::to_string(b.first + b.count) + ")";
    }
    return pool_error(s);
  }

  worker_set& workers_;
  const pool_options& opts_;
  std::uint64_t job_id_;
  View inputs_;
  byte_buffer job_start_;
  Collector collector_;
  batch_sizer sizer_;
  std::size_t max_held_;
  std::optional<iterator> it_;
  std::optional<std::size_t> total_;
  std::size_t next_index_ = 0;
  std::uint64_t next_batch_id_ = 0;
  bool input_done_ = false;
  std::vector<byte_buffer> spare_;
  std::exception_ptr failure_;
  std::optional<task_error> task_failure_;
};

}  // namespace coshard::detail
