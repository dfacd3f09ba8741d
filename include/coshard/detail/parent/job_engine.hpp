// coshard/detail/parent/job_engine.hpp - the parent side of one job, apart
// from the types of its items: which batch goes to which worker, what each
// worker holds, retries and crash isolation, cancellation, and the job's end.
//
// Not a template: every job of every type runs this same code, compiled once
// per program rather than once per job type. The typed part (cutting batches
// from the input range, decoding results into the caller's values) is the
// `job` of job.hpp, which derives from this and fills in its hooks. The
// workers are reached through a worker_transport only (transport.hpp), so the
// same engine serves local workers and remote ones.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/cancellation_state.hpp>
#include <asio/co_spawn.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <exception>
#include <limits>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "coshard/detail/item_failure.hpp"
#include "coshard/detail/parent/batch.hpp"
#include "coshard/detail/parent/collectors.hpp"
#include "coshard/detail/parent/pool_counters.hpp"
#include "coshard/detail/parent/slot_scheduler.hpp"
#include "coshard/detail/parent/transport.hpp"
#include "coshard/detail/separate_compilation.hpp"
#include "coshard/detail/worker_status.hpp"
#include "coshard/errors.hpp"
#include "coshard/job_options.hpp"
#include "coshard/progress.hpp"

namespace coshard::detail {

/// What the engine must know of a job's types.
struct job_shape {
  bool awaitable = false;  // the function returns an awaitable: items overlap in a worker
  bool settled = false;    // every item's outcome is kept; a failed item does not end the job
  bool streaming = false;  // the input is an inbox of submitted tasks, never done while tasks may come
  bool reduce = false;     // one partial per batch: workers hold them until a flush
};

class job_engine {
  static constexpr std::uint64_t job_start_batch = ~std::uint64_t{0};
  static constexpr std::uint64_t flush_batch = ~std::uint64_t{0} - 1;
  // A worker is asked for its reduce partial once it holds this many
  // batches' worth, or their inputs (kept to run them again should it die)
  // take this many bytes, or it has nothing else to do: what a death can
  // cost, and the memory a lazy input may take.
  static constexpr std::size_t max_parked = 64;
  static constexpr std::size_t max_parked_bytes = std::size_t{1} << 20;
  static constexpr int max_idle_deaths = 50;
  static constexpr std::size_t max_lingering_job_bytes = 64 * 1024;

  // The parent's side of one worker slot during this job.
  struct channel {
    std::list<batch_record> held;  // sent and not answered, or parked: exactly what a death loses
    std::size_t parked = 0;        // of `held`, answered with their partial kept by the worker
    std::size_t parked_bytes = 0;  // their payloads' memory
    bool flush_sent = false;       // a flush is out: its reply takes every parked batch
    bool partial_left = false;     // the job stopped with a partial in the worker: job_end frees it
    worker_channel* link = nullptr;  // while a coroutine serves the slot
    bool reading = false;  // waiting for a reply: a cancel may interrupt the read
    bool cancel_sent = false;
    std::function<void()> interrupt;  // ends a wait for this slot's replacement
    bool leased = false;              // this job holds the slot (slot_scheduler)
    bool yielding = false;            // promised back: no new batches, released once drained
    std::size_t answered_in_lease = 0;
    std::chrono::steady_clock::time_point busy_since{};  // when `held` last became non-empty
  };

 public:
  job_engine(worker_transport& transport, slot_scheduler& scheduler, pool_counters& counters, job_settings settings,
             std::uint64_t job_id, byte_buffer job_start, job_shape shape)
      : opts_(settings),
        transport_(transport),
        scheduler_(scheduler),
        counters_(counters),
        job_id_(job_id),
        job_start_(std::move(job_start)),
        shape_(shape),
        sizer_(opts_, transport.slot_count(), shape.awaitable),
        max_held_(held_limit(opts_, shape.awaitable)),
        channels_(transport.slot_count()),
        spare_(spare_pool(opts_, transport, shape)) {}
  virtual ~job_engine() = default;
  job_engine(job_engine&&) = default;  // before it runs only
  job_engine& operator=(job_engine&&) = delete;

  /// Runs the job to completion on the calling coroutine's executor; throws
  /// the job's error. Cancelling the awaiting coroutine (any cancellation
  /// type) cancels the job; it then ends with asio::error::operation_aborted
  /// once every worker has answered.
  asio::awaitable<void> run();

  /// Lets the job keep the workers' channels registered with `ctx` after it
  /// ends (it must run on `ctx`, an io_context that outlives the workers'
  /// channels: one of the pool's own).
  void keep_sockets_on(asio::io_context& ctx) noexcept { home_ = &ctx; }

  /// Stops dispatching, asks every worker to cancel what it runs, and lets the
  /// job end with operation_aborted. Call on the job's executor.
  void cancel() {
    if (cancelled_) return;
    note_stop_cause();
    cancelled_ = true;
    for (auto& ch : channels_)
      if (ch.link && ch.reading) ch.link->interrupt();  // the serving coroutine sends the cancel frame
    for (auto& ch : channels_)
      if (ch.interrupt) ch.interrupt();
    notify();
  }

 protected:
  // --- The typed job's hooks. -------------------------------------------

  /// Starts reading the input: sets input_done_ if it is empty and total_ if
  /// its size is known.
  virtual void open_input() = 0;
  /// The next batch of at most `budget` items cut from the input, closed
  /// once its encoded inputs reach `max_bytes` (made with new_batch() and
  /// finished with finish_cut()), or none if none is ready.
  /// Sets input_done_ at the end of the input; may throw what the input
  /// range throws, and reject single items with reject_input().
  virtual std::optional<batch_record> cut_from_input(std::size_t budget, std::size_t max_bytes) = 0;
  /// Takes a reply's results (a serialization_error if they do not decode);
  /// returns how many of its items failed (settled replies carry failures).
  virtual std::size_t on_result(const frame_header& h, std::span<const std::byte> payload, pid_t pid) = 0;
  /// A settled job's failed item.
  virtual void on_item_error(std::uint64_t /*index*/, std::exception_ptr /*error*/) {}
  /// The job ended with `error` (null if it succeeded).
  virtual void on_end(std::exception_ptr /*error*/) {}

  // Streaming input only (shape.streaming): an inbox of tasks.
  /// Calls `wake` (from any thread) whenever a task arrives.
  virtual void attach_input_wake(std::function<void()> /*wake*/) {}
  virtual void detach_input_wake() noexcept {}
  /// Tasks waiting to be cut.
  [[nodiscard]] virtual std::size_t input_queued() const { return 0; }
  /// Closes the inbox if it is empty; false if a task came meanwhile.
  virtual bool try_close_input() { return false; }
  /// The wake of attach_input_wake() was handled.
  virtual void input_wake_taken() {}

  // --- For the hooks. ------------------------------------------------------

  /// An empty batch whose first item is the next input index.
  batch_record new_batch() {
    batch_record rec;
    rec.payload = spare_.take();
    rec.first = next_index_;
    return rec;
  }
  /// Closes a cut batch of `count` items.
  void finish_cut(batch_record& rec, std::size_t count) {
    rec.count = static_cast<std::uint32_t>(count);
    rec.id = next_batch_id_++;
    next_index_ = rec.first + count;
  }
  /// Fails input `index` alone, as a task_error naming why it cannot travel.
  void reject_input(std::uint64_t index, const exception_description& why) {
    fail_item(index, make_task_error(why, static_cast<std::size_t>(index), ::getpid()));
  }
  [[nodiscard]] bool stopping() const { return cancelled_ || failure_ || first_item_error_; }
  [[nodiscard]] std::size_t next_batch_size() const {
    std::optional<std::size_t> remaining;
    if (total_) remaining = *total_ - next_index_;
    return sizer_.next(remaining);
  }

  job_settings opts_;
  std::optional<std::size_t> total_;
  std::size_t next_index_ = 0;
  bool input_done_ = false;

 private:
  // Whether slot i's worker folds this reduce job's partials into one it
  // holds (hold_partials; unset: remote slots only).
  static bool holds_partials(const job_settings& o, const worker_transport& transport, std::size_t i) {
    return o.hold_partials.value_or(transport.is_remote(i));
  }
  // Whether any worker of the job may hold reduce partials.
  static bool may_hold(const job_settings& o, const worker_transport& transport, const job_shape& shape) {
    if (!shape.reduce) return false;
    for (std::size_t i = 0; i < transport.slot_count(); ++i)
      if (holds_partials(o, transport, i)) return true;
    return false;
  }

  // Batch buffers kept for reuse. Jobs whose workers hold partials: the
  // batches parked in a worker give their buffers back at each flush, for
  // the next ones (not freed and allocated again), so up to max_parked more
  // per slot, of at most max_parked_bytes more per slot together. What is
  // kept never exceeds what the job had in use at once.
  static buffer_pool spare_pool(const job_settings& o, const worker_transport& transport, const job_shape& shape) {
    const bool holding = may_hold(o, transport, shape);
    const std::size_t slots = transport.slot_count();
    return buffer_pool(spare_buffers(o, slots, holding), 4 * o.max_batch_bytes, spare_bytes(o, slots, holding));
  }
  static std::size_t spare_buffers(const job_settings& o, std::size_t slots, bool holding) {
    return 2 * slots * o.batches_in_flight + (holding ? slots * max_parked : 0);
  }
  static std::size_t spare_bytes(const job_settings& o, std::size_t slots, bool holding) {
    constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();
    if (!holding) return unlimited;  // bounded by count and size alone, as before
    const auto product = [](std::size_t a, std::size_t b) { return a != 0 && b > unlimited / a ? unlimited : a * b; };
    // Buffers in flight and the one that crosses the cap, each up to the
    // pool's largest kept size (4 * max_batch_bytes), and the parked ones.
    const std::size_t per_slot = product(2 * o.batches_in_flight + 1, 4 * o.max_batch_bytes);
    return product(slots, std::min(unlimited - max_parked_bytes, per_slot) + max_parked_bytes);
  }

  // Awaitable items overlap only if the worker holds at least `concurrency`
  // of them; a small fixed batch size is made up for with more batches.
  static std::size_t held_limit(const job_settings& o, bool awaitable) {
    std::size_t k = o.batches_in_flight;
    if (awaitable && o.batch_size) k = std::max(k, (o.concurrency + o.batch_size - 1) / o.batch_size);
    return k;
  }

  // A pool-level failure wins over item failures; the first one is kept.
  // Called where the job first learns it is stopping: was that a forced
  // shutdown cutting it short?
  void note_stop_cause() {
    if (!cancelled_ && !failure_ && !first_item_error_ && transport_.forced_shutdown()) cut_by_forced_shutdown_ = true;
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
    ++progress_.items_failed;
    if (shape_.settled) {
      on_item_error(index, std::move(e));
      return;
    }
    first_item_error_.offer(index, std::move(e));
    notify();
  }

  // Tells the caller how far the job has come (job_options::progress): at
  // most every 100 ms as replies come, and once as the job ends. Only after
  // a reply is fully taken in, so that nothing the callback does can make a
  // batch count twice. A callback that throws fails the job (unless it has
  // failed already) and is not called again.
  void report_progress(bool final) noexcept {
    if (!opts_.progress || progress_failed_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!final && now - last_report_ < std::chrono::milliseconds(100)) return;
    last_report_ = now;
    progress_.elapsed = now - started_;
    progress_.finished = final;
    try {
      opts_.progress(progress_);
    } catch (...) {
      progress_failed_ = true;
      if (!stopping()) failure_ = std::current_exception();
      if (!final) notify();
    }
  }

  // Batches a worker has not answered yet (parked ones are answered).
  [[nodiscard]] static std::size_t unanswered(const channel& ch) { return ch.held.size() - ch.parked; }

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
    if (!input_done_) {
      if (shape_.streaming) {
        const std::size_t per_batch = std::max<std::size_t>(1, sizer_.next(std::nullopt));
        want += (input_queued() + per_batch - 1) / per_batch;
      } else if (total_) {
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
    input_wake_taken();
    notify();
  }

  // Whether input waits to be cut now.
  [[nodiscard]] bool input_waiting() const { return !input_done_ && (!shape_.streaming || input_queued() > 0); }

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

  void serve_slot(std::size_t i);

  // At a batch boundary: whether this slot is to go to another job. Only
  // once the lease has done some work, so leases rotating between more jobs
  // than workers always move some batches forward.
  bool give_way(channel& ch) {
    if (ch.yielding) return true;
    if (ch.answered_in_lease > 0 && tenant_->yield_hint() && scheduler_.try_yield(*tenant_)) ch.yielding = true;
    return ch.yielding;
  }

  // Items this worker process may still be sent under max_items_per_worker.
  [[nodiscard]] std::size_t item_budget(std::size_t i) {
    if (!opts_.max_items_per_worker) return std::numeric_limits<std::size_t>::max();
    return opts_.max_items_per_worker - std::min(opts_.max_items_per_worker, transport_.allowance(i).items_assigned);
  }

  [[nodiscard]] bool must_retire(std::size_t i) { return transport_.allowance(i).retire || item_budget(i) == 0; }

  [[nodiscard]] bool can_send(std::size_t i) {
    const channel& ch = channels_[i];
    if (must_retire(i) || unanswered(ch) >= max_held_) return false;
    if (unanswered(ch) != 1) return true;
    for (const batch_record& rec : ch.held)
      if (!rec.parked) return !rec.suspect;
    return true;
  }

  // Retries first, then fresh input. A suspect batch is only sent to a worker
  // that holds nothing else, so a second death convicts it alone.
  std::optional<batch_record> next_batch(std::size_t i, const channel& ch, std::size_t budget) {
    if (stopping()) return std::nullopt;
    const std::size_t max_bytes = std::min(opts_.max_batch_bytes, transport_.batch_bytes_limit(i));
    if (!retry_.empty()) {
      // (Parked batches too: a flush first, so that isolating a poison item
      // does not cost them again each time it kills the worker.)
      if (retry_.front().suspect && !ch.held.empty()) return std::nullopt;
      batch_record rec = std::move(retry_.front());
      retry_.pop_front();
      // Give the worker what it may still run, and (a batch cut for a local
      // slot going to a remote one) what its smaller batches hold; keep the
      // rest, cut the same way at once (slicing the rest again at each pull
      // would copy it once per piece).
      const bool by_bytes = max_bytes < opts_.max_batch_bytes;
      const std::size_t take = std::min(budget, by_bytes ? rec.items_within(0, max_bytes) : rec.count);
      if (rec.count > take) {
        batch_record head = slice(rec, 0, take);
        head.suspect = rec.suspect;
        head.crashes = rec.crashes;
        std::vector<batch_record> rest;
        for (std::size_t from = take; from < rec.count;) {
          const std::size_t n = by_bytes ? rec.items_within(from, max_bytes) : rec.count - from;
          rest.push_back(slice(rec, from, from + n));
          rest.back().suspect = rec.suspect;
          from += n;
        }
        for (auto it = rest.rbegin(); it != rest.rend(); ++it) retry_.push_front(std::move(*it));
        spare_.give(std::move(rec.payload));
        progress_.items_retried += head.count;
        return head;
      }
      progress_.items_retried += rec.count;  // sent again
      return rec;
    }
    // An exception from the input range itself (its iterator's ++ or
    // comparison) ends the job with that exception, as it would end a loop
    // over the range: nothing already cut is shifted and no worker is blamed.
    try {
      if (input_done_ || stopping()) return std::nullopt;
      return cut_from_input(budget, max_bytes);
    } catch (...) {
      input_done_ = true;
      fail(std::current_exception());
      return std::nullopt;
    }
  }

  // Items [from, to) of `rec` as a batch of their own (same encoding, no re-encode).
  batch_record slice(const batch_record& rec, std::size_t from, std::size_t to) {
    batch_record out;
    out.id = next_batch_id_++;
    out.first = rec.first + from;
    out.count = static_cast<std::uint32_t>(to - from);
    out.item_size = rec.item_size;
    out.counted = rec.counted;
    out.no_hold = rec.no_hold;
    const std::size_t begin = rec.item_offset(from), end = rec.item_offset(to);
    out.payload = spare_.take();
    out.payload.append(rec.payload.data() + begin, end - begin);
    if (!rec.item_size)
      for (std::size_t k = from; k < to; ++k) out.offsets.push_back(static_cast<std::uint32_t>(rec.offsets[k] - begin));
    return out;
  }

  frame_header header(frame_type type) const {
    frame_header h;
    h.type = type;
    h.job = job_id_;
    return h;
  }

  asio::awaitable<void> serve(std::size_t i);
  asio::awaitable<bool> serve_worker(std::size_t i, worker_channel& link, std::size_t& answered);

  static std::string describe_exit(int status) {
    if (status == unknown_wait_status) return "killed with its supervisor process";
    return describe_wait_status(status);
  }

  // Whether this job has a batch for the slot's worker now. If not, the
  // slot is released; should another worker die and leave batches to retry,
  // the demand grows and the scheduler grants a slot again.
  [[nodiscard]] bool work_may_come(const channel& ch) const {
    if (!ch.held.empty()) return true;
    if (stopping()) return false;
    return !retry_.empty() || input_waiting();
  }

  // Retries go out lowest input index first.
  // Adds what the job counted since the last call to the pool's totals.
  void flush_counters() noexcept {
    counters_.add_progress(progress_, counted_);
    counted_ = progress_;
  }

  // The worker in slot `i` holds no batch any more: the time since it got
  // its first one was busy time.
  void worker_idle(std::size_t i) noexcept {
    counters_.busy(i, std::chrono::steady_clock::now() - channels_[i].busy_since);
  }

  void sort_retries() {
    std::sort(retry_.begin(), retry_.end(),
              [](const batch_record& a, const batch_record& b) { return a.first < b.first; });
  }

  // Takes every parked batch out of the worker's held list, in order, into
  // `take`: the worker holds no partial any more.
  template <class Take>
  static void take_parked(channel& ch, Take take) {
    for (auto it = ch.held.begin(); it != ch.held.end();) {
      if (!it->parked) {
        ++it;
        continue;
      }
      take(*it);
      it = ch.held.erase(it);
    }
    ch.parked = 0;
    ch.parked_bytes = 0;
    ch.flush_sent = false;
  }

  // Sends the parked batches again (their worker's partial is lost or could
  // not be sent): answered once, their items are not counted again.
  // `no_hold`: each one's partial then travels with its reply.
  void requeue_parked(channel& ch, bool no_hold) {
    take_parked(ch, [&](batch_record& rec) {
      rec.parked = false;
      rec.counted = true;
      rec.no_hold = rec.no_hold || no_hold;
      retry_.push_back(std::move(rec));
    });
    sort_retries();
  }

  // Forgets the batches whose partial the worker held (flushed, or of no more use).
  void drop_parked(channel& ch) {
    take_parked(ch, [&](batch_record& rec) { spare_.give(std::move(rec.payload)); });
  }

  // Takes the batch whose write just failed back from the worker's held list.
  void unsend_last(std::size_t i) {
    channel& ch = channels_[i];
    batch_record rec = std::move(ch.held.back());
    ch.held.pop_back();
    if (unanswered(ch) == 0) worker_idle(i);
    auto& assigned = transport_.allowance(i).items_assigned;
    assigned -= std::min<std::size_t>(assigned, rec.count);
    retry_.push_back(std::move(rec));
    sort_retries();
  }

  void requeue_lost(std::size_t i, const worker_end& end, const std::string& how);
  void handle_reply(std::size_t i, const frame_header& h, std::span<const std::byte> payload, batch_record* rec);

  // If run() is destroyed before it ends (its io_context is destroyed while
  // the pool lives on), the slots it leased go back: their workers are let
  // go (what they hold belongs to a job that no longer exists) and the next
  // lessee starts replacements.
  struct lease_guard {
    job_engine& j;
    std::shared_ptr<job_engine*>& self;
    bool ended = false;
    ~lease_guard() {
      if (ended) return;
      *self = nullptr;
      if (j.shape_.streaming) j.detach_input_wake();
      for (std::size_t i = 0; i < j.channels_.size(); ++i) {
        if (unanswered(j.channels_[i]) != 0) j.worker_idle(i);
        if (j.channels_[i].leased) {
          j.channels_[i].leased = false;
          j.transport_.release(i);
          j.scheduler_.release(*j.tenant_, i, j.channels_[i].yielding);
        }
      }
      j.scheduler_.leave(*j.tenant_);
      // The pool's totals: the job ends here, given up on with its loop.
      j.flush_counters();
      j.counters_.job_ended(pool_counters::job_end::cancelled);
    }
  };
  // A serving coroutine's channel is forgotten however the coroutine leaves
  // it; not if the job is gone (its io_context destroyed the job's frames
  // first, in any order).
  struct channel_unlink {
    channel& ch;
    std::shared_ptr<job_engine*> alive;
    ~channel_unlink() {
      if (!*alive) return;
      ch.link = nullptr;
      ch.reading = false;
    }
  };

  worker_transport& transport_;
  slot_scheduler& scheduler_;
  pool_counters& counters_;
  std::uint64_t job_id_;
  byte_buffer job_start_;
  job_shape shape_;
  asio::io_context* home_ = nullptr;
  batch_sizer sizer_;
  std::size_t max_held_;
  std::vector<channel> channels_;
  std::deque<batch_record> retry_;
  std::shared_ptr<slot_scheduler::tenant> tenant_;
  std::shared_ptr<job_engine*> alive_;  // null inside once run() has ended or its frame is gone
  job_progress progress_;
  job_progress counted_;  // progress_ as last added to counters_
  bool progress_failed_ = false;  // the callback threw: not called again
  std::chrono::steady_clock::time_point started_{};
  std::chrono::steady_clock::time_point last_report_{};
  std::size_t last_demand_ = 0;
  std::size_t running_ = 0;  // slots being served
  asio::steady_timer* all_done_ = nullptr;
  asio::any_io_executor ex_;
  std::uint64_t next_batch_id_ = 0;
  bool cancelled_ = false;
  bool cut_by_forced_shutdown_ = false;
  // A flush failed or its worker died answering one: this job's partials
  // travel with their batches from now on.
  bool stop_holding_ = false;
  buffer_pool spare_;
  std::exception_ptr failure_;
  lowest_index_failure<std::exception_ptr> first_item_error_;
};

#if COSHARD_DEFINE_MACHINERY
COSHARD_DECL asio::awaitable<void> job_engine::run() {
  auto ex = co_await asio::this_coro::executor;
  co_await asio::this_coro::throw_if_cancelled(false);
  co_await asio::this_coro::reset_cancellation_state(asio::enable_total_cancellation());
  started_ = last_report_ = std::chrono::steady_clock::now();
  counters_.job_started();
  try {
    if (job_start_.size() > opts_.max_frame_bytes)
      throw pool_error("coshard: the job's function, reducer and shared value take " +
                       std::to_string(job_start_.size()) + " bytes encoded, above max_frame_bytes (" +
                       std::to_string(opts_.max_frame_bytes) + ")");
    open_input();
  } catch (...) {
    report_progress(/*final=*/true);
    flush_counters();
    counters_.job_ended(pool_counters::job_end::failed);
    throw;
  }
  progress_.items_total = total_;
  asio::steady_timer all_done(ex, asio::steady_timer::time_point::max());
  all_done_ = &all_done;
  ex_ = ex;
  // Grants after the first come through the scheduler from any thread, as
  // a post to this job's executor; `self` tells a late one the job ended.
  auto self = std::make_shared<job_engine*>(this);
  alive_ = self;
  if (shape_.streaming)
    attach_input_wake([ex, self] {
      asio::post(ex, [self] {
        if (*self) (*self)->on_poke();
      });
    });
  std::vector<std::size_t> now;
  last_demand_ = demand();
  tenant_ = scheduler_.join(
      last_demand_,
      [ex, self] {
        asio::post(ex, [self] {
          if (*self) (*self)->pick_up();
        });
      },
      now);
  lease_guard guard{*this, self};  // gives the leases back should this frame be destroyed mid-run
  for (std::size_t i : now) serve_slot(i);
  for (;;) {
    // A stream ends once nothing is left: it closes its inbox (a task
    // submitted later starts a new stream) rather than keep the caller's
    // loop running.
    if (shape_.streaming && running_ == 0 && !stopping() && retry_.empty() && try_close_input()) input_done_ = true;
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
  if (shape_.streaming) detach_input_wake();
  scheduler_.leave(*tenant_);
  guard.ended = true;
  all_done_ = nullptr;
  report_progress(/*final=*/true);
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
  else if (first_item_error_)
    end = first_item_error_.get();
  flush_counters();
  counters_.job_ended(!end                          ? pool_counters::job_end::succeeded
                      : cancelled_ && !cut_by_forced_shutdown_ ? pool_counters::job_end::cancelled
                                                               : pool_counters::job_end::failed);
  on_end(end);  // a stream's open tasks
  if (end) std::rethrow_exception(end);
}

COSHARD_DECL void job_engine::serve_slot(std::size_t i) {
  channel& ch = channels_[i];
  ch.leased = true;
  ch.yielding = false;
  ch.answered_in_lease = 0;
  ++running_;
  asio::co_spawn(ex_, serve(i), [this, i](std::exception_ptr e) {
    if (e) fail(e);
    channel& ch = channels_[i];
    if (!ch.held.empty()) {
      // serve() ended by an error it does not handle, with batches out: the
      // job has failed with that error, and the worker, which still owes
      // replies, must not reach the next job that leases the slot.
      transport_.release(i);
      if (unanswered(ch) != 0) worker_idle(i);
      for (batch_record& rec : ch.held) spare_.give(std::move(rec.payload));
      ch.held.clear();
      ch.parked = 0;
      ch.parked_bytes = 0;
      ch.flush_sent = false;
    }
    ch.leased = false;
    --running_;
    update_demand();  // before the release, so the slot is not granted straight back in vain
    scheduler_.release(*tenant_, i, ch.yielding);
    notify();
  });
}

// Serves worker slot `i` for the whole lease, replacing the worker each time
// it dies and handing what it held back to the retry queue. A replacement is
// asked for at once and awaited here; the other slots' coroutines go on
// meanwhile.
COSHARD_DECL asio::awaitable<void> job_engine::serve(std::size_t i) {
  auto ex = co_await asio::this_coro::executor;
  channel& ch = channels_[i];
  int idle_deaths = 0;
  for (;;) {
    // A worker the job has nothing for is never opened (for a local worker:
    // never registered with the reactor, an epoll_ctl pair and an ioctl per
    // worker per job saved), nor waited for if it is still starting: the slot
    // goes back to the scheduler.
    if (ch.yielding || !work_may_come(ch)) co_return;
    if (!transport_.ready(i)) {
      if (transport_.closing()) {
        fail(std::make_exception_ptr(pool_error("coshard: the pool was shut down during the job")));
        co_return;
      }
      try {
        if (!co_await transport_.bring_up(i, ch.interrupt)) co_return;  // cancelled meanwhile
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
      std::unique_ptr<worker_channel> link = transport_.open(i, ex, home_);
      ch.link = link.get();
      ch.cancel_sent = false;
      channel_unlink on_exit{ch, alive_};
      try {
        if (!co_await serve_worker(i, *link, answered)) co_return;
      } catch (const serialization_error& e) {
        corrupt = true;
        cause = e.what();
      } catch (const std::system_error& e) {
        cause = e.code().message();
      }
    }
    if (cause.empty() && !corrupt) {
      // Retiring (item or memory limit): it exits on EOF; a replacement is
      // asked for at once.
      transport_.replace(i);
      ++progress_.workers_replaced;
      continue;
    }
    // The worker is gone, or its channel can no longer be trusted.
    const worker_end end = co_await transport_.bury(i, corrupt);
    const std::string how = describe_exit(end.status) + (corrupt ? "; " + cause : "");
    const bool held_any = !ch.held.empty();
    requeue_lost(i, end, how);
    // Keep the pool at full strength even when this job needs no more of it.
    // (A worker that dies while idle between jobs is noticed only by the next
    // job that has a batch for it.)
    transport_.replace(i);
    ++progress_.workers_replaced;
    notify();
    // A death while holding work convicts or retries that work, so it cannot
    // repeat forever. Deaths with nothing held (an idle worker killed from
    // outside) are harmless, unless they never stop.
    if (held_any || answered) {
      idle_deaths = 0;
    } else if (++idle_deaths >= max_idle_deaths) {
      fail(std::make_exception_ptr(pool_error("coshard: worker slot " + std::to_string(i) + " died " +
                                              std::to_string(max_idle_deaths) +
                                              " times in a row while idle (last: " + how + ")")));
      co_return;
    }
  }
}

// Serves one worker until the job needs no more of it; returns true if the
// worker is to be retired and replaced instead.
COSHARD_DECL asio::awaitable<bool> job_engine::serve_worker(std::size_t i, worker_channel& link, std::size_t& answered) {
  channel& ch = channels_[i];
  if (must_retire(i)) co_return true;
  // A worker learns of the job with its first batch, in the same write: a
  // job smaller than the pool never wakes the workers it does not need, and
  // a one-item job costs one write to start instead of one per worker.
  frame_header start = header(frame_type::job_start);
  start.batch = job_start_batch;
  start.payload_size = job_start_.size();
  bool started = false;
  for (;;) {
    while (can_send(i) && !give_way(ch)) {
      std::optional<batch_record> rec = next_batch(i, ch, item_budget(i));
      if (!rec) break;
      if (unanswered(ch) == 0) ch.busy_since = std::chrono::steady_clock::now();
      ch.held.push_back(std::move(*rec));
      update_demand();
      const batch_record& b = ch.held.back();
      transport_.allowance(i).items_assigned += b.count;
      frame_header h = header(frame_type::batch);
      h.batch = b.id;
      h.first_index = b.first;
      h.count = b.count;
      h.payload_size = b.payload.size();
      if (shape_.reduce && !stop_holding_ && !b.no_hold && holds_partials(opts_, transport_, i))
        h.flags = batch_hold_partial;
      try {
        if (started) {
          co_await link.send(h, b.payload.view());
        } else {
          started = true;
          co_await link.send(start, job_start_.view(), h, b.payload.view());
          progress_.bytes_sent += job_start_.size();
        }
        progress_.bytes_sent += b.payload.size();
      } catch (const std::system_error&) {
        // The worker never received this batch whole (e.g. it died while
        // idle, before this job), so the batch cannot be to blame for the
        // death: it goes back to the queue as it was, with no crash counted,
        // and a death with nothing else held counts as idle.
        unsend_last(i);
        throw;
      }
    }
    if (cancelled_ && started && !ch.cancel_sent) {
      ch.cancel_sent = true;
      co_await link.send(header(frame_type::cancel), {});
    }
    if (ch.parked > 0 && !ch.flush_sent) {
      if (stopping()) {
        // The job has ended badly: its partials are of no more use.
        if (unanswered(ch) == 0) {
          drop_parked(ch);
          ch.partial_left = true;
        }
      } else if (unanswered(ch) == 0 || ch.parked >= max_parked || ch.parked_bytes >= max_parked_bytes) {
        // Its partial is wanted: nothing else for this worker now (the job
        // is ending, the slot goes to another job, the worker retires), or
        // it holds enough that a death would cost much.
        frame_header f = header(frame_type::flush);
        f.batch = flush_batch;
        f.first_index = ch.held.front().first;
        ch.flush_sent = true;
        co_await link.send(f, {});
      }
    }
    if (ch.held.empty()) {
      if (ch.yielding) break;
      if (must_retire(i) && !stopping() && !(input_done_ && retry_.empty())) co_return true;
      if (!stopping() && (!retry_.empty() || (shape_.streaming && input_waiting()))) continue;
      break;
    }
    frame_header h;
    std::span<const std::byte> payload;
    ch.reading = true;
    try {
      payload = co_await link.receive(h);
    } catch (const std::system_error& e) {
      ch.reading = false;
      if (e.code() == asio::error::operation_aborted && cancelled_) continue;
      throw;
    }
    ch.reading = false;
    progress_.bytes_received += payload.size();
    if (h.job != job_id_)
      throw serialization_error("coshard: worker pid " + std::to_string(transport_.pid(i)) + " replied for job " +
                                std::to_string(h.job) + " during job " + std::to_string(job_id_));
    if (h.batch == job_start_batch) {  // the worker could not start the job
      handle_reply(i, h, payload, nullptr);
      continue;
    }
    if (h.batch == flush_batch) {
      if (!ch.flush_sent) throw serialization_error("coshard: worker pid " + std::to_string(transport_.pid(i)) +
                                                    " answered a flush it was not sent");
      if (h.type != frame_type::result)
        throw serialization_error("coshard: worker pid " + std::to_string(transport_.pid(i)) +
                                  " answered a flush with frame type " + std::to_string(static_cast<int>(h.type)));
      if (h.flags & result_flush_refused) {
        stop_holding_ = true;  // this job's partials grow too large to hold
        requeue_parked(ch, /*no_hold=*/true);
      } else {
        if (!stopping()) {
          try {
            (void)on_result(h, payload, transport_.pid(i));
          } catch (const serialization_error&) {
            throw;
          } catch (...) {
            fail(std::current_exception());
          }
        }
        drop_parked(ch);
      }
      if (opts_.max_worker_rss_bytes && (std::uint64_t{h.rss_mib} << 20) > opts_.max_worker_rss_bytes)
        transport_.allowance(i).retire = true;
      report_progress(/*final=*/false);
      flush_counters();
      notify();
      continue;
    }
    auto rec = std::find_if(ch.held.begin(), ch.held.end(), [&](auto& r) { return r.id == h.batch; });
    if (rec == ch.held.end() || h.first_index != rec->first || h.count != rec->count)
      throw serialization_error("coshard: worker pid " + std::to_string(transport_.pid(i)) +
                                " replied to a batch it does not hold");
    if (rec->parked)
      throw serialization_error("coshard: worker pid " + std::to_string(transport_.pid(i)) + " answered a batch twice");
    handle_reply(i, h, payload, &*rec);
    if (h.type == frame_type::result && (h.flags & result_partial_held) && !stopping()) {
      rec->parked = true;  // its partial stays in the worker until the next flush
      rec->suspect = false;  // it ran to the end: none of its items is to blame
      rec->crashes = 0;
      ++ch.parked;
      rec->fit_payload(spare_);
      ch.parked_bytes += rec->payload.capacity();  // the memory it keeps
    } else {
      spare_.give(std::move(rec->payload));
      ch.held.erase(rec);
    }
    counters_.batch_answered();
    if (unanswered(ch) == 0) worker_idle(i);
    report_progress(/*final=*/false);
    flush_counters();
    ++answered;
    ++ch.answered_in_lease;
    if (opts_.max_worker_rss_bytes && (std::uint64_t{h.rss_mib} << 20) > opts_.max_worker_rss_bytes)
      transport_.allowance(i).retire = true;
    if (input_done_ && retry_.empty() && all_answered()) notify();
  }
  // job_end only frees the worker's copy of the job early; the next
  // job_start replaces it anyway. A small job is left in place instead,
  // saving a write here and a wake-up of the worker; a large one (a big
  // shared value) is freed now.
  if (started && (job_start_.size() > max_lingering_job_bytes || std::exchange(ch.partial_left, false)))
    co_await link.send(header(frame_type::job_end), {});
  co_return false;
}

// Decides the fate of each batch a dead worker held: a batch held alone is
// convicted (split in two, or failed once a single item has crashed
// max_retries + 1 times); batches held together become suspects that are
// retried alone. An item a watchdog timed out fails with timeout_error.
COSHARD_DECL void job_engine::requeue_lost(std::size_t i, const worker_end& end, const std::string& how) {
  channel& ch = channels_[i];
  const int status = end.status;
  const pid_t pid = end.pid;
  const bool unknown = status == unknown_wait_status;
  const int code = !unknown && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const std::uint64_t timed_out = code == timeout_exit_code ? end.timed_out_index : worker_status::none;
  const bool alone = unanswered(ch) == 1;
  // A worker that died while it owed only a flush died over the partial
  // itself (its save, its size): those batches run again with their
  // partials sent one by one, where a crash convicts as usual. That a
  // flush was out at all makes the partial a suspect too.
  const bool flush_to_blame = ch.flush_sent;
  if (flush_to_blame) stop_holding_ = true;
  // Answered, but their partial died with the worker: they run again.
  requeue_parked(ch, flush_to_blame);
  for (batch_record& rec : ch.held) {
    if (timed_out >= rec.first && timed_out < rec.first + rec.count) {
      counters_.timed_out();
      fail_item(timed_out,
                std::make_exception_ptr(timeout_error("coshard: input index " + std::to_string(timed_out) +
                                                          " ran past item_timeout + timeout_grace; its worker (pid " +
                                                          std::to_string(pid) + ") was replaced",
                                                      static_cast<std::size_t>(timed_out), pid)));
      const std::size_t k = timed_out - rec.first;
      if (k > 0) retry_.push_back(slice(rec, 0, k));
      if (k + 1 < rec.count) retry_.push_back(slice(rec, k + 1, rec.count));
      spare_.give(std::move(rec.payload));
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
      spare_.give(std::move(rec.payload));
    } else if (rec.crashes > opts_.max_retries) {
      // A worker whose supervisor died was killed by its parent-death signal.
      const int sig = unknown ? SIGKILL : WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      if (code == timeout_exit_code) {  // its worker's watchdog ended it, every time
        counters_.timed_out();
        fail_item(rec.first, std::make_exception_ptr(timeout_error(
                                 "coshard: input index " + std::to_string(rec.first) +
                                     " ran past item_timeout + timeout_grace, blocking its worker; the worker (pid " +
                                     std::to_string(pid) + ") was replaced",
                                 static_cast<std::size_t>(rec.first), pid)));
      } else {
        fail_item(rec.first,
                  std::make_exception_ptr(worker_crashed(static_cast<std::size_t>(rec.first), pid, sig, code, how)));
      }
      spare_.give(std::move(rec.payload));
    } else {
      rec.suspect = true;
      retry_.push_back(std::move(rec));
    }
  }
  if (unanswered(ch) != 0) worker_idle(i);
  ch.held.clear();
  ch.parked = 0;
  ch.parked_bytes = 0;
  ch.flush_sent = false;
  sort_retries();
}

COSHARD_DECL void job_engine::handle_reply(std::size_t i, const frame_header& h, std::span<const std::byte> payload,
                                     batch_record* rec) {
  const pid_t pid = transport_.pid(i);
  switch (h.type) {
    case frame_type::result:
      sizer_.observe(h.count, h.elapsed_ns);
      if (stopping() && !shape_.settled) return;  // a failed job's late results are dropped
      if (cancelled_) return;
      if ((h.flags & result_partial_held) && !shape_.reduce)
        throw serialization_error("coshard: worker pid " + std::to_string(pid) + " held a partial of a job with none");
      try {
        const std::size_t failed = (h.flags & result_partial_held) ? 0 : on_result(h, payload, pid);
        if (!rec || !rec->counted) progress_.items_done += h.count - failed;
        progress_.items_failed += failed;
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
          throw serialization_error("coshard: worker pid " + std::to_string(pid) +
                                    " reported an undecodable item outside its batch");
        // The items around the bad one were never run to completion: send them again.
        const std::size_t k = f.index - rec->first;
        if (k > 0) retry_.push_front(slice(*rec, 0, k));
        if (k + 1 < rec->count) retry_.push_back(slice(*rec, k + 1, rec->count));
        sort_retries();
      }
      fail_item(f.index, to_exception(f, pid));
      return;
    }
    case frame_type::job_failed:
      fail(std::make_exception_ptr(pool_error("coshard: worker pid " + std::to_string(pid) +
                                              " could not run the job: " + decode<std::string>(payload))));
      return;
    default:
      throw serialization_error("coshard: unexpected frame type " + std::to_string(static_cast<int>(h.type)) +
                                " from worker pid " + std::to_string(pid));
  }
}
#endif

}  // namespace coshard::detail
