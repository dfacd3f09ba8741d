// coshard/detail/job.hpp - the parent side of one job: cut batches from the
// input as workers ask for them, track what each worker holds, collect replies.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/cancellation_state.hpp>
#include <asio/co_spawn.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/post.hpp>
#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <exception>
#include <iterator>
#include <limits>
#include <list>
#include <memory>
#include <optional>
#include <ranges>
#include <vector>

#include "coshard/detail/collectors.hpp"
#include "coshard/detail/frame_io.hpp"
#include "coshard/detail/job_runner.hpp"
#include "coshard/detail/parent/slot_scheduler.hpp"
#include "coshard/detail/worker_set.hpp"
#include "coshard/job_options.hpp"

namespace coshard::detail {

/// Bytes of a job_start frame: entry id, the job's item_timeout, then each
/// part with its length.
template <class Spec>
byte_buffer encode_job_start(const typename Spec::fn_type& fn, const typename Spec::reduce_type& reduce,
                             const typename Spec::shared_type& shared,
                             const typename Spec::acc_type& init,
                             std::chrono::milliseconds item_timeout = {}) {
  byte_buffer out;
  encode_value(out, entry<Spec>::id);
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

struct batch_record {
  std::uint64_t id = 0;
  std::uint64_t first = 0;
  std::uint32_t count = 0;
  byte_buffer payload;  // kept until the reply arrives, so it can be sent again
  // Start of each item in `payload` when items differ in size (empty when they
  // are all sizeof(T) bytes): lets a batch be split without re-encoding.
  std::vector<std::uint32_t> offsets;
  std::uint32_t crashes = 0;  // deaths of a worker that held only this batch
  bool suspect = false;       // held by a worker that died: runs alone until cleared
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
  static constexpr int max_idle_deaths = 50;
  static constexpr std::size_t max_lingering_job_bytes = 64 * 1024;
  static constexpr bool fixed_size_items = bitwise_serializable<T>;
  // A stream of submitted tasks (task_stream.hpp): its input is never done
  // while tasks may come, only empty for now.
  static constexpr bool streaming = [] {
    if constexpr (requires { View::streaming; })
      return View::streaming;
    else
      return false;
  }();

  // The parent's side of one worker during this job.
  struct channel {
    std::list<batch_record> held;  // sent, not yet answered: exactly what a death loses
    socket* sock = nullptr;
    bool reading = false;      // waiting for a reply: a cancel may interrupt the read
    bool cancel_sent = false;
    std::function<void()> interrupt;  // ends a wait for this slot's replacement
    bool leased = false;              // this job holds the slot (slot_scheduler)
    bool yielding = false;            // promised back: no new batches, released once drained
    std::size_t answered_in_lease = 0;
  };

 public:
  using value_type = typename Collector::value_type;

  job(worker_set& workers, slot_scheduler& scheduler, job_settings settings, std::uint64_t job_id, View inputs,
      byte_buffer job_start, Collector collector)
      : workers_(workers),
        scheduler_(scheduler),
        opts_(settings),
        job_id_(job_id),
        inputs_(std::move(inputs)),
        job_start_(std::move(job_start)),
        collector_(std::move(collector)),
        sizer_(opts_, workers.slots().size(), Spec::traits::is_awaitable),
        max_held_(held_limit(opts_)),
        channels_(workers.slots().size()) {}

  /// Runs the job to completion. Cancelling the awaiting coroutine (any
  /// cancellation type) cancels the job; it then completes with
  /// asio::error::operation_aborted once every worker has answered.
  asio::awaitable<value_type> run() {
    auto ex = co_await asio::this_coro::executor;
    co_await asio::this_coro::throw_if_cancelled(false);
    co_await asio::this_coro::reset_cancellation_state(asio::enable_total_cancellation());
    if (job_start_.size() > opts_.max_frame_bytes)
      throw pool_error("coshard: the job's function, reducer and shared value take " +
                       std::to_string(job_start_.size()) + " bytes encoded, above max_frame_bytes (" +
                       std::to_string(opts_.max_frame_bytes) + ")");
    it_.emplace(std::ranges::begin(inputs_.get()));
    if constexpr (!streaming)
      if (*it_ == std::ranges::end(inputs_.get())) input_done_ = true;
    if constexpr (std::ranges::sized_range<range>) {
      total_ = static_cast<std::size_t>(std::ranges::size(inputs_.get()));
      collector_.reserve(*total_);
    }
    asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
    all_done_ = &all_done;
    ex_ = ex;
    // Grants after the first come through the scheduler from any thread, as
    // a post to this job's executor; `self` tells a late one the job ended.
    auto self = std::make_shared<job*>(this);
    if constexpr (streaming)
      inputs_.inbox().attach([ex, self] {
        asio::post(ex, [self] {
          if (*self) (*self)->on_poke();
        });
      });
    std::vector<std::size_t> now;
    last_demand_ = demand();
    tenant_ = scheduler_.join(last_demand_, [ex, self] {
      asio::post(ex, [self] {
        if (*self) (*self)->pick_up();
      });
    }, now);
    // If this coroutine is destroyed before it ends (its io_context is
    // destroyed while the pool lives on), the slots it leased go back: their
    // workers are let go (what they hold belongs to a job that no longer
    // exists) and the next lessee starts replacements.
    struct lease_guard {
      job& j;
      std::shared_ptr<job*>& self;
      bool ended = false;
      ~lease_guard() {
        if (ended) return;
        *self = nullptr;
        if constexpr (streaming) j.inputs_.inbox().detach();
        for (std::size_t i = 0; i < j.channels_.size(); ++i)
          if (j.channels_[i].leased) {
            j.channels_[i].leased = false;
            j.workers_.drop_worker(j.workers_.slots()[i]);
            j.scheduler_.release(*j.tenant_, i, j.channels_[i].yielding);
          }
        j.scheduler_.leave(*j.tenant_);
      }
    } guard{*this, self};
    for (std::size_t i : now) serve_slot(i);
    for (;;) {
      // A stream ends once nothing is left: it closes its inbox (a task
      // submitted later starts a new stream) rather than keep the caller's
      // loop running.
      if constexpr (streaming)
        if (running_ == 0 && !stopping() && retry_.empty() && inputs_.inbox().try_close()) input_done_ = true;
      if (running_ == 0 && finished()) break;
      asio::error_code ec;
      co_await all_done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) {
        cancel();
        co_await asio::this_coro::reset_cancellation_state(asio::enable_total_cancellation());
      }
    }
    *self = nullptr;
    if constexpr (streaming) inputs_.inbox().detach();
    scheduler_.leave(*tenant_);
    guard.ended = true;
    all_done_ = nullptr;
    // A forced shutdown kills the workers under the job: whatever it saw
    // first (the cancel, a lost worker, an item convicted by the kill), it
    // ends as documented. A job that had failed before keeps its error.
    std::exception_ptr end;
    if (cut_by_forced_shutdown_)
      end = std::make_exception_ptr(pool_error("coshard: the pool was shut down (forced) while the job ran"));
    else if (cancelled_)
      end = std::make_exception_ptr(std::system_error(asio::error::operation_aborted, "coshard: job cancelled"));
    else if (failure_)
      end = failure_;
    else if (item_failure_)
      end = item_failure_;
    if constexpr (requires { collector_.close(end); }) collector_.close(end);  // a stream's open tasks
    if (end) std::rethrow_exception(end);
    co_return collector_.take();
  }

  /// Lets the job keep the workers' sockets registered with `ctx` after it
  /// ends (it must run on `ctx`, an io_context that outlives the workers'
  /// channels: one of the pool's own).
  void keep_sockets_on(asio::io_context& ctx) { home_ = &ctx; }

  /// Stops dispatching, asks every worker to cancel what it runs, and lets the
  /// job complete with operation_aborted. Call on the job's executor.
  void cancel() {
    if (cancelled_) return;
    note_stop_cause();
    cancelled_ = true;
    for (auto& ch : channels_)
      if (ch.sock && ch.reading) {
        asio::error_code ignored;
        ch.sock->cancel(ignored);  // the serving coroutine sends the cancel frame
      }
    for (auto& ch : channels_)
      if (ch.interrupt) ch.interrupt();
    notify();
  }

 private:
  // Awaitable items overlap only if the worker holds at least `concurrency`
  // of them; a small fixed batch size is made up for with more batches.
  static std::size_t held_limit(const job_settings& o) {
    std::size_t k = o.batches_in_flight;
    if (Spec::traits::is_awaitable && o.batch_size)
      k = std::max(k, (o.concurrency + o.batch_size - 1) / o.batch_size);
    return k;
  }

  // A pool-level failure wins over item failures; the first one is kept.
  // Called where the job first learns it is stopping: was that a forced
  // shutdown cutting it short?
  void note_stop_cause() {
    if (!cancelled_ && !failure_ && !item_failure_ && workers_.forced_shutdown()) cut_by_forced_shutdown_ = true;
  }

  void fail(std::exception_ptr e) {
    note_stop_cause();
    if (!failure_) failure_ = e;
    notify();
  }

  // Settled jobs keep going; others stop at the first failure and report the
  // lowest failing index seen.
  void fail_item(std::uint64_t index, std::exception_ptr e) {
    note_stop_cause();
    if constexpr (Collector::settled) {
      collector_.set_error(static_cast<std::size_t>(index), std::move(e));
    } else {
      if (!item_failure_ || index < item_failure_index_) {
        item_failure_ = std::move(e);
        item_failure_index_ = index;
      }
      notify();
    }
  }

  [[nodiscard]] bool stopping() const { return cancelled_ || failure_ || item_failure_; }

  [[nodiscard]] bool all_answered() const {
    return std::all_of(channels_.begin(), channels_.end(), [](const channel& c) { return c.held.empty(); });
  }

  // After any change of what is left: tells the scheduler how many slots
  // the job could use now, and wakes run() once nothing holds it. Once
  // nothing is left for any worker, slots still waiting for a replacement
  // stop waiting: the replacement finishes starting in the background and
  // serves the next job that leases the slot.
  void notify() {
    update_demand();
    if (stopping() || (input_done_ && retry_.empty() && all_answered()))
      for (auto& ch : channels_)
        if (ch.interrupt) ch.interrupt();
    if (running_ == 0 && all_done_) all_done_->cancel();
  }

  // No more work can come: run() returns once no slot is served.
  [[nodiscard]] bool finished() const { return stopping() || (input_done_ && retry_.empty()); }

  // Slots the job could keep busy now: those whose workers hold its batches,
  // one per batch waiting to be retried, and as many as the input left
  // would fill with batches (all of them for input of unknown size).
  [[nodiscard]] std::size_t demand() const {
    if (stopping()) return 0;
    const std::size_t slots = channels_.size();
    std::size_t want = retry_.size();
    for (const channel& ch : channels_)
      if (!ch.held.empty()) ++want;
    if constexpr (streaming) {
      if (!input_done_) {
        const std::size_t waiting = inputs_.inbox().size();
        const std::size_t per_batch = std::max<std::size_t>(1, sizer_.next(std::nullopt));
        want += (waiting + per_batch - 1) / per_batch;
      }
    } else if (!input_done_) {
      if (total_) {
        const std::size_t left = *total_ - std::min(*total_, next_index_);
        const std::size_t per_batch = std::max<std::size_t>(1, sizer_.next(left));
        want += (left + per_batch - 1) / per_batch;
      } else {
        want += slots;
      }
    }
    return std::min(want, slots);
  }

  void update_demand() {
    if (!tenant_) return;
    const std::size_t d = demand();
    if (d == last_demand_) return;
    last_demand_ = d;
    scheduler_.set_demand(*tenant_, d);
  }

  // A task was submitted while the stream's job may have been idle.
  void on_poke() {
    if constexpr (streaming) {
      inputs_.inbox().poke_taken();
      notify();
    }
  }

  // Whether input waits to be cut now.
  [[nodiscard]] bool input_waiting() {
    if constexpr (streaming)
      return !input_done_ && !inputs_.inbox().empty();
    else
      return !input_done_;
  }

  // Slots the scheduler granted since the last call: served, or handed
  // straight back if the job has nothing left.
  void pick_up() {
    for (std::size_t i : scheduler_.take_grants(*tenant_)) {
      if (finished())
        scheduler_.release(*tenant_, i, false);
      else
        serve_slot(i);
    }
  }

  void serve_slot(std::size_t i) {
    channel& ch = channels_[i];
    ch.leased = true;
    ch.yielding = false;
    ch.answered_in_lease = 0;
    ++running_;
    asio::co_spawn(ex_, serve(i), [this, i](std::exception_ptr e) {
      if (e) fail(e);
      channel& ch = channels_[i];
      if (!ch.held.empty()) {
        // serve() ended by an error it does not handle, with batches out:
        // the job has failed with that error, and the worker, which still
        // owes replies, must not reach the next job that leases the slot.
        workers_.drop_worker(workers_.slots()[i]);
        for (batch_record& rec : ch.held) recycle(std::move(rec.payload));
        ch.held.clear();
      }
      ch.leased = false;
      --running_;
      update_demand();  // before the release, so the slot is not granted straight back in vain
      scheduler_.release(*tenant_, i, ch.yielding);
      notify();
    });
  }

  // At a batch boundary: whether this slot is to go to another job. Only
  // once the lease has done some work, so leases rotating between more jobs
  // than workers always move some batches forward.
  bool give_way(channel& ch) {
    if (ch.yielding) return true;
    if (ch.answered_in_lease > 0 && tenant_->yield_hint() && scheduler_.try_yield(*tenant_)) ch.yielding = true;
    return ch.yielding;
  }

  // Items this worker process may still be sent under max_items_per_worker.
  [[nodiscard]] std::size_t item_budget(const worker_slot& slot) const {
    if (!opts_.max_items_per_worker) return std::numeric_limits<std::size_t>::max();
    return opts_.max_items_per_worker - std::min(opts_.max_items_per_worker, slot.items_assigned);
  }

  [[nodiscard]] bool can_send(const channel& ch, const worker_slot& slot) const {
    if (slot.retire || item_budget(slot) == 0 || ch.held.size() >= max_held_) return false;
    return !(ch.held.size() == 1 && ch.held.front().suspect);
  }

  // Retries first, then fresh input. A suspect batch is only sent to a worker
  // that holds nothing else, so a second death convicts it alone.
  std::optional<batch_record> next_batch(const channel& ch, std::size_t budget) {
    if (stopping()) return std::nullopt;
    if (!retry_.empty()) {
      if (retry_.front().suspect && !ch.held.empty()) return std::nullopt;
      batch_record rec = std::move(retry_.front());
      retry_.pop_front();
      if (rec.count > budget) {  // give the worker what it may still run, keep the rest
        batch_record rest = slice(rec, budget, rec.count);
        rest.suspect = rec.suspect;
        batch_record head = slice(rec, 0, budget);
        head.suspect = rec.suspect;
        head.crashes = rec.crashes;
        retry_.push_front(std::move(rest));
        recycle(std::move(rec.payload));
        return head;
      }
      return rec;
    }
    return cut_batch(budget);
  }

  // An exception from the input range itself (its iterator's ++ or
  // comparison) ends the job with that exception, as it would end a loop over
  // the range: nothing already cut is shifted and no worker is blamed.
  std::optional<batch_record> cut_batch(std::size_t budget) {
    try {
      return cut_batch_from_input(budget);
    } catch (...) {
      input_done_ = true;
      fail(std::current_exception());
      return std::nullopt;
    }
  }

  // An input that cannot travel fails alone, as a task_error naming why.
  void reject_input(std::uint64_t index, const std::string& type_name, const std::string& why) {
    fail_item(index, std::make_exception_ptr(task_error(type_name, why, static_cast<std::size_t>(index), ::getpid())));
  }

  std::optional<batch_record> cut_batch_from_input(std::size_t budget) {
    for (;;) {
      if (input_done_ || stopping()) return std::nullopt;
      std::optional<std::size_t> remaining;
      if (total_) remaining = *total_ - next_index_;
      const std::size_t target = std::min(sizer_.next(remaining), budget);
      batch_record rec;
      rec.payload = take_spare();
      rec.first = next_index_;
      auto& it = *it_;
      const auto end = std::ranges::end(inputs_.get());
      std::size_t count = 0;
      if constexpr (std::ranges::contiguous_range<range> && bitwise_serializable<T>) {
        const auto left = static_cast<std::size_t>(end - it);
        const std::uint64_t by_bytes = std::min<std::uint64_t>(opts_.max_batch_bytes, opts_.max_frame_bytes) / sizeof(T);
        count = std::min({target, left, static_cast<std::size_t>(std::max<std::uint64_t>(1, by_bytes))});
        rec.payload.append(std::to_address(it), count * sizeof(T));
        it += static_cast<std::ptrdiff_t>(count);
      } else {
        while (count < target && it != end) {
          const std::size_t mark = rec.payload.size();
          const std::uint64_t index = next_index_ + count;
          std::string rejected_type, rejected_why;
          try {
            encode_value(rec.payload, static_cast<const T&>(*it));
          } catch (...) {
            const auto what = describe_current_exception();
            rejected_type = what.type_name;
            rejected_why = "the input could not be encoded: " + what.message;
          }
          const std::size_t item_bytes = rec.payload.size() - mark;
          if (rejected_why.empty() && item_bytes > opts_.max_frame_bytes) {
            rejected_type = "coshard::serialization_error";
            rejected_why = "input index " + std::to_string(index) + " is " + std::to_string(item_bytes) +
                           " bytes encoded, above max_frame_bytes (" + std::to_string(opts_.max_frame_bytes) +
                           "): it cannot be sent to a worker";
          }
          if (!rejected_why.empty()) {
            // Only this item fails; the batch closes before it.
            rec.payload.truncate(mark);
            reject_input(index, rejected_type, rejected_why);
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
          if constexpr (!fixed_size_items) rec.offsets.push_back(static_cast<std::uint32_t>(mark));
          ++it;
          ++count;
          if (rec.payload.size() >= opts_.max_batch_bytes) break;
        }
      }
      if (it == end) input_done_ = !streaming;
      if (count == 0) return std::nullopt;
      finish_cut(rec, count);
      return rec;
    }
  }

  void finish_cut(batch_record& rec, std::size_t count) {
    rec.count = static_cast<std::uint32_t>(count);
    rec.id = next_batch_id_++;
    next_index_ = rec.first + count;
  }

  [[nodiscard]] std::size_t item_offset(const batch_record& rec, std::size_t k) const {
    if (k == rec.count) return rec.payload.size();
    if constexpr (fixed_size_items)
      return k * sizeof(T);
    else
      return rec.offsets[k];
  }

  // Items [from, to) of `rec` as a batch of their own (same encoding, no re-encode).
  batch_record slice(const batch_record& rec, std::size_t from, std::size_t to) {
    batch_record out;
    out.id = next_batch_id_++;
    out.first = rec.first + from;
    out.count = static_cast<std::uint32_t>(to - from);
    const std::size_t begin = item_offset(rec, from), end = item_offset(rec, to);
    out.payload = take_spare();
    out.payload.append(rec.payload.data() + begin, end - begin);
    if constexpr (!fixed_size_items)
      for (std::size_t k = from; k < to; ++k)
        out.offsets.push_back(static_cast<std::uint32_t>(rec.offsets[k] - begin));
    return out;
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
    if (spare_.size() < 2 * channels_.size() * opts_.batches_in_flight) spare_.push_back(std::move(b));
  }

  frame_header header(frame_type type) const {
    frame_header h;
    h.type = type;
    h.job = job_id_;
    return h;
  }

  // When the incarnation ends, however it ends: hands the fd of a socket
  // made for this incarnation back without closing it. (The slot's kept
  // socket is released by the worker_set whenever it closes the fd.)
  struct socket_lease {
    socket* own;
    channel& ch;
    ~socket_lease() {
      ch.sock = nullptr;
      ch.reading = false;
      asio::error_code ec;
      if (own && own->is_open()) own->release(ec);
    }
  };

  // Serves worker slot `i` for the whole job, replacing the worker each time
  // it dies and handing what it held back to the retry queue. A replacement
  // is asked of the supervisor at once and awaited here; the other slots'
  // coroutines go on meanwhile.
  asio::awaitable<void> serve(std::size_t i) {
    auto ex = co_await asio::this_coro::executor;
    worker_slot& slot = workers_.slots()[i];
    channel& ch = channels_[i];
    int idle_deaths = 0;
    for (;;) {
      // A worker the job has nothing for is never registered with the
      // reactor (an epoll_ctl pair and an ioctl per worker per job saved),
      // nor waited for if it is still starting: the slot goes back to the
      // scheduler.
      if (ch.yielding || !work_may_come(ch)) co_return;
      if (!(slot.live() && slot.ready)) {
        if (workers_.closing()) {
          fail(std::make_exception_ptr(pool_error("coshard: the pool was shut down during the job")));
          co_return;
        }
        try {
          if (!co_await workers_.bring_up(slot, ch.interrupt)) co_return;  // cancelled meanwhile
        } catch (const pool_error&) {
          fail(std::current_exception());
          co_return;
        }
        continue;  // the job may have ended while the worker started
      }
      std::string cause;
      bool corrupt = false;
      std::size_t answered = 0;
      {
        // On the pool's own io_context the slot's registered socket is
        // reused; on any other executor the fd is registered for this
        // incarnation only (it cannot stay registered with a reactor the
        // pool does not own).
        std::optional<socket> own;
        if (home_) {
          ch.sock = &slot.socket_on(*home_);
        } else {
          slot.release_socket();
          own.emplace(ex);
          own->assign(asio::local::stream_protocol(), slot.fd);
          ch.sock = &*own;
        }
        socket& sock = *ch.sock;
        ch.cancel_sent = false;
        socket_lease lease{own ? &*own : nullptr, ch};
        try {
          if (!co_await incarnation(i, sock, answered)) co_return;
        } catch (const serialization_error& e) {
          corrupt = true;
          cause = e.what();
        } catch (const std::system_error& e) {
          cause = e.code().message();
        }
      }
      const pid_t dead = slot.pid.load();
      if (cause.empty() && !corrupt) {
        // Retiring (item or memory limit): it exits on EOF, and the
        // supervisor reaps it; a replacement is asked for at once.
        workers_.drop_worker(slot);
        if (!workers_.closing()) workers_.request_start(slot);
        continue;
      }
      // The worker is gone, or its channel can no longer be trusted.
      if (corrupt && dead > 0) workers_.supervisor().kill(dead);
      const int status = dead > 0 ? co_await workers_.exit_status(dead, ex) : unknown_wait_status;
      workers_.drop_worker(slot);
      const std::string how = describe_exit(status) + (corrupt ? "; " + cause : "");
      const bool held_any = !ch.held.empty();
      requeue_lost(i, dead, status, how);  // reads the slot's status page: before the restart resets it
      // Keep the pool at full strength even when this job needs no more of
      // it. (A worker that dies while idle between jobs is noticed only by
      // the next job that has a batch for it.)
      if (!workers_.closing()) workers_.request_start(slot);
      notify();
      // A death while holding work convicts or retries that work, so it
      // cannot repeat forever. Deaths with nothing held (an idle worker
      // killed from outside) are harmless, unless they never stop.
      if (held_any || answered) {
        idle_deaths = 0;
      } else if (++idle_deaths >= max_idle_deaths) {
        fail(std::make_exception_ptr(pool_error(
            "coshard: worker slot " + std::to_string(i) + " died " + std::to_string(max_idle_deaths) +
            " times in a row while idle (last: " + how + ")")));
        co_return;
      }
    }
  }

  static std::string describe_exit(int status) {
    if (status == unknown_wait_status) return "killed with its supervisor process";
    return describe_wait_status(status);
  }

  // Whether this job has a batch for the slot's worker now. If not, the
  // slot is released; should another worker die and leave batches to retry,
  // the demand grows and the scheduler grants a slot again.
  [[nodiscard]] bool work_may_come(const channel& ch) {
    if (!ch.held.empty()) return true;
    if (stopping()) return false;
    return !retry_.empty() || input_waiting();
  }

  // Serves one worker process until the job needs no more of it; returns
  // true if the worker is to be retired and replaced instead.
  asio::awaitable<bool> incarnation(std::size_t i, socket& sock, std::size_t& answered) {
    worker_slot& slot = workers_.slots()[i];
    channel& ch = channels_[i];
    if (slot.retire || item_budget(slot) == 0) co_return true;
    // A worker learns of the job with its first batch, in the same write: a
    // job smaller than the pool never wakes the workers it does not need,
    // and a one-item job costs one write to start instead of one per worker.
    frame_header start = header(frame_type::job_start);
    start.batch = job_start_batch;
    start.payload_size = job_start_.size();
    bool started = false;
    for (;;) {
      while (can_send(ch, slot) && !give_way(ch)) {
        std::optional<batch_record> rec = next_batch(ch, item_budget(slot));
        if (!rec) break;
        ch.held.push_back(std::move(*rec));
        update_demand();
        const batch_record& b = ch.held.back();
        slot.items_assigned += b.count;
        frame_header h = header(frame_type::batch);
        h.batch = b.id;
        h.first_index = b.first;
        h.count = b.count;
        h.payload_size = b.payload.size();
        try {
          if (started) {
            co_await write_frame(sock, h, b.payload.view());
          } else {
            started = true;
            co_await write_frames(sock, start, job_start_.view(), h, b.payload.view());
          }
        } catch (const std::system_error&) {
          // The worker never received this batch whole (e.g. it died while
          // idle, before this job), so the batch cannot be to blame for the
          // death: it goes back to the queue as it was, with no crash
          // counted, and a death with nothing else held counts as idle.
          unsend_last(ch, slot);
          throw;
        }
      }
      if (cancelled_ && started && !ch.cancel_sent) {
        ch.cancel_sent = true;
        co_await write_frame(sock, header(frame_type::cancel), {});
      }
      if (ch.held.empty()) {
        if (ch.yielding) break;
        if ((slot.retire || item_budget(slot) == 0) && !stopping() && !(input_done_ && retry_.empty()))
          co_return true;
        if (!stopping() && (!retry_.empty() || (streaming && input_waiting()))) continue;
        break;
      }
      frame_header h;
      std::span<const std::byte> payload;
      ch.reading = true;
      try {
        payload = co_await slot.reader->read(sock, h);
      } catch (const std::system_error& e) {
        ch.reading = false;
        if (e.code() == asio::error::operation_aborted && cancelled_) continue;
        throw;
      }
      ch.reading = false;
      if (h.job != job_id_)
        throw serialization_error("coshard: worker pid " + std::to_string(slot.pid) +
                                  " replied for job " + std::to_string(h.job) + " during job " +
                                  std::to_string(job_id_));
      if (h.batch == job_start_batch) {  // the worker could not start the job
        handle_reply(slot, h, payload, nullptr);
        continue;
      }
      auto rec = std::find_if(ch.held.begin(), ch.held.end(), [&](auto& r) { return r.id == h.batch; });
      if (rec == ch.held.end() || h.first_index != rec->first || h.count != rec->count)
        throw serialization_error("coshard: worker pid " + std::to_string(slot.pid) +
                                  " replied to a batch it does not hold");
      handle_reply(slot, h, payload, &*rec);
      recycle(std::move(rec->payload));
      ch.held.erase(rec);
      ++answered;
      ++ch.answered_in_lease;
      if (opts_.max_worker_rss_bytes && (std::uint64_t{h.rss_mib} << 20) > opts_.max_worker_rss_bytes)
        slot.retire = true;
      if (input_done_ && retry_.empty() && all_answered()) notify();
    }
    // job_end only frees the worker's copy of the job early; the next
    // job_start replaces it anyway. A small job is left in place instead,
    // saving a write here and a wake-up of the worker; a large one (a big
    // shared value) is freed now.
    if (started && job_start_.size() > max_lingering_job_bytes)
      co_await write_frame(sock, header(frame_type::job_end), {});
    co_return false;
  }

  // Retries go out lowest input index first.
  void sort_retries() {
    std::sort(retry_.begin(), retry_.end(), [](const batch_record& a, const batch_record& b) {
      return a.first < b.first;
    });
  }

  // Takes the batch whose write just failed back from the worker's held list.
  void unsend_last(channel& ch, worker_slot& slot) {
    batch_record rec = std::move(ch.held.back());
    ch.held.pop_back();
    slot.items_assigned -= std::min<std::size_t>(slot.items_assigned, rec.count);
    retry_.push_back(std::move(rec));
    sort_retries();
  }

  // Decides the fate of each batch a dead worker held: a batch held alone is
  // convicted (split in two, or failed once a single item has crashed
  // max_retries + 1 times); batches held together become suspects that are
  // retried alone. An item a watchdog timed out fails with timeout_error.
  void requeue_lost(std::size_t i, pid_t pid, int status, const std::string& how) {
    worker_slot& slot = workers_.slots()[i];
    channel& ch = channels_[i];
    std::uint64_t timed_out = worker_status::none;
    if (status != unknown_wait_status && WIFEXITED(status) && WEXITSTATUS(status) == timeout_exit_code &&
        slot.status)
      timed_out = slot.status->timed_out_index.load();
    const bool alone = ch.held.size() == 1;
    for (batch_record& rec : ch.held) {
      if (timed_out >= rec.first && timed_out < rec.first + rec.count) {
        fail_item(timed_out, std::make_exception_ptr(timeout_error(
                                 "coshard: input index " + std::to_string(timed_out) +
                                     " ran past item_timeout + timeout_grace; its worker (pid " +
                                     std::to_string(pid) + ") was replaced",
                                 static_cast<std::size_t>(timed_out), pid)));
        const std::size_t k = timed_out - rec.first;
        if (k > 0) retry_.push_back(slice(rec, 0, k));
        if (k + 1 < rec.count) retry_.push_back(slice(rec, k + 1, rec.count));
        recycle(std::move(rec.payload));
        continue;
      }
      if (!alone) {
        rec.suspect = true;
        retry_.push_back(std::move(rec));
        continue;
      }
      ++rec.crashes;
      if (rec.count > 1) {
        batch_record a = slice(rec, 0, rec.count / 2), b = slice(rec, rec.count / 2, rec.count);
        a.suspect = b.suspect = true;
        retry_.push_back(std::move(a));
        retry_.push_back(std::move(b));
        recycle(std::move(rec.payload));
      } else if (rec.crashes > opts_.max_retries) {
        // A worker whose supervisor died was killed by its parent-death signal.
        const bool unknown = status == unknown_wait_status;
        const int sig = unknown ? SIGKILL : WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        const int code = !unknown && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (code == timeout_exit_code)  // its worker's watchdog ended it, every time
          fail_item(rec.first, std::make_exception_ptr(timeout_error(
                                   "coshard: input index " + std::to_string(rec.first) +
                                       " ran past item_timeout + timeout_grace, blocking its worker; the "
                                       "worker (pid " + std::to_string(pid) + ") was replaced",
                                   static_cast<std::size_t>(rec.first), pid)));
        else
          fail_item(rec.first, std::make_exception_ptr(worker_crashed(
                                   static_cast<std::size_t>(rec.first), pid, sig, code, how)));
        recycle(std::move(rec.payload));
      } else {
        rec.suspect = true;
        retry_.push_back(std::move(rec));
      }
    }
    ch.held.clear();
    sort_retries();
  }

  void handle_reply(worker_slot& slot, const frame_header& h, std::span<const std::byte> payload,
                    batch_record* rec) {
    switch (h.type) {
      case frame_type::result:
        sizer_.observe(h.count, h.elapsed_ns);
        if (stopping() && !Collector::settled) return;  // a failed job's late results are dropped
        if (cancelled_) return;
        try {
          collector_.on_result(h, payload, slot.pid);
        } catch (const serialization_error&) {
          throw;
        } catch (...) {
          fail(std::current_exception());  // the caller's sink threw
        }
        return;
      case frame_type::task_failed: {
        input_archive in(payload);
        item_failure f = decode_failure(in);
        if (f.kind == failure_kind::cancelled && cancelled_) return;
        if (f.kind == failure_kind::undecodable) {
          if (!rec || f.index < rec->first || f.index >= rec->first + rec->count)
            throw serialization_error("coshard: worker pid " + std::to_string(slot.pid) +
                                      " reported an undecodable item outside its batch");
          // The items around the bad one were never run to completion: send them again.
          const std::size_t k = f.index - rec->first;
          if (k > 0) retry_.push_front(slice(*rec, 0, k));
          if (k + 1 < rec->count) retry_.push_back(slice(*rec, k + 1, rec->count));
          sort_retries();
        }
        fail_item(f.index, to_exception(f, slot.pid));
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

  worker_set& workers_;
  slot_scheduler& scheduler_;
  job_settings opts_;
  std::uint64_t job_id_;
  View inputs_;
  byte_buffer job_start_;
  asio::io_context* home_ = nullptr;
  Collector collector_;
  batch_sizer sizer_;
  std::size_t max_held_;
  std::vector<channel> channels_;
  std::deque<batch_record> retry_;
  std::shared_ptr<slot_scheduler::tenant> tenant_;
  std::size_t last_demand_ = 0;
  std::size_t running_ = 0;  // slots being served
  asio::steady_timer* all_done_ = nullptr;
  asio::any_io_executor ex_;
  std::optional<iterator> it_;
  std::optional<std::size_t> total_;
  std::size_t next_index_ = 0;
  std::uint64_t next_batch_id_ = 0;
  bool input_done_ = false;
  bool cancelled_ = false;
  bool cut_by_forced_shutdown_ = false;
  std::vector<byte_buffer> spare_;
  std::exception_ptr failure_;
  std::exception_ptr item_failure_;
  std::uint64_t item_failure_index_ = 0;
};

}  // namespace coshard::detail
