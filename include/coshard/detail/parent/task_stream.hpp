// coshard/detail/parent/task_stream.hpp - single tasks (submit/async_submit)
// coalesced into batches.
//
// Tasks submitted with the same function, whose completions run in the same
// execution context, go into one inbox. A job drains that inbox like any
// other job's input (batches, retries, crash isolation, leases from the slot
// scheduler), except that its input never "ends" while tasks keep coming and
// every task settles on its own, through its own completion handler. So a
// thousand coroutines each awaiting async_submit share batches instead of
// paying a round trip each. The job ends once the inbox is empty and every
// task it took has settled (it closes the inbox then, under its lock: a
// later task starts a new job), so it never keeps the caller's io_context
// running on its own.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/associated_executor.hpp>
#include <asio/dispatch.hpp>
#include <asio/error.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <system_error>
#include <utility>

#include "coshard/detail/parent/collectors.hpp"
#include "coshard/errors.hpp"

namespace coshard::detail {

/// A submitted task's completion handler, type-erased. complete() runs the
/// handler through its associated executor (inline when the caller already
/// runs there, e.g. a coroutine's io_context).
template <class R>
class task_completion {
 public:
  virtual ~task_completion() = default;
  virtual void complete(std::exception_ptr e, R value) = 0;
};

template <class R, class Handler>
class task_completion_for final : public task_completion<R> {
 public:
  explicit task_completion_for(Handler h) : handler_(std::move(h)) {}
  void complete(std::exception_ptr e, R value) override {
    auto ex = asio::get_associated_executor(handler_);
    asio::dispatch(ex, [h = std::move(handler_), e, v = std::move(value)]() mutable { std::move(h)(e, std::move(v)); });
  }

 private:
  Handler handler_;
};

/// What the pool's registry of streams knows of an inbox.
class task_inbox_base {
 public:
  virtual ~task_inbox_base() = default;
  /// A closed inbox takes no task: its job has ended or is ending.
  [[nodiscard]] bool closed() {
    std::lock_guard lock(mutex_);
    return closed_;
  }

 protected:
  std::mutex mutex_;
  bool closed_ = false;
};

/// The tasks of one stream: inputs not yet cut into a batch, and the
/// completion of every task not yet settled, numbered in submission order
/// (which is the order the job cuts them, so a task's number is its index).
/// Shared by submitters on any thread and the stream's job.
template <class T, class R>
class task_inbox final : public task_inbox_base {
 public:
  /// Adds a task, taking `input` and `done` (left alone if it returns
  /// false: the stream has closed, start a new one). Returns the task's index
  /// in `index`, and tells the stream's job, which may be idle, of the first
  /// task since it last looked.
  bool push(T& input, std::unique_ptr<task_completion<R>>& done, std::uint64_t& index) {
    std::function<void()> wake;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return false;
      inputs_.push_back(std::move(input));
      index = base_ + completions_.size();
      completions_.push_back(std::move(done));
      if (!poked_) {
        poked_ = true;
        wake = wake_job_;
      }
    }
    if (wake) wake();
    return true;
  }

  /// Set by the job when it starts (`wake` posts to its executor), cleared
  /// when it ends.
  void attach(std::function<void()> wake) {
    std::lock_guard lock(mutex_);
    wake_job_ = std::move(wake);
    poked_ = false;
  }
  void detach() {
    std::lock_guard lock(mutex_);
    wake_job_ = nullptr;
  }

  /// The job was told of the tasks pushed so far.
  void poke_taken() {
    std::lock_guard lock(mutex_);
    poked_ = false;
  }

  // The job's side of the input queue (see stream_range).
  [[nodiscard]] bool empty() {
    std::lock_guard lock(mutex_);
    return inputs_.empty();
  }
  [[nodiscard]] std::size_t size() {
    std::lock_guard lock(mutex_);
    return inputs_.size();
  }
  /// The next input; stays valid until pop() (push_back on a deque moves
  /// no element).
  T& front() {
    std::lock_guard lock(mutex_);
    return inputs_.front();
  }
  void pop() {
    std::lock_guard lock(mutex_);
    inputs_.pop_front();
  }

  /// Closes the stream if no input waits; true if it did.
  bool try_close() {
    std::lock_guard lock(mutex_);
    if (!inputs_.empty()) return false;
    closed_ = true;
    return true;
  }

  /// Settles task `index` (once; later calls for it do nothing).
  void settle(std::uint64_t index, std::exception_ptr e, R value) {
    std::unique_ptr<task_completion<R>> done;
    {
      std::lock_guard lock(mutex_);
      if (index < base_ || index - base_ >= completions_.size()) return;
      done = std::move(completions_[static_cast<std::size_t>(index - base_)]);
      while (!completions_.empty() && !completions_.front()) {
        completions_.pop_front();
        ++base_;
      }
    }
    if (done) {
      settled_.fetch_add(1, std::memory_order_relaxed);
      done->complete(std::move(e), std::move(value));
    }
  }

  /// Closes the stream and settles every task still open with `e`.
  void fail_all(std::exception_ptr e) {
    std::deque<std::unique_ptr<task_completion<R>>> open;
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      wake_job_ = nullptr;
      inputs_.clear();
      open.swap(completions_);
      base_ += open.size();
    }
    for (auto& done : open)
      if (done) done->complete(e, R{});
  }

  [[nodiscard]] std::size_t settled() const noexcept { return settled_.load(std::memory_order_relaxed); }

 private:
  std::deque<T> inputs_;
  std::deque<std::unique_ptr<task_completion<R>>> completions_;
  std::uint64_t base_ = 0;  // index of completions_.front()
  bool poked_ = false;
  std::function<void()> wake_job_;
  std::atomic<std::size_t> settled_{0};  // a cancelled task settles from its own executor
};

/// An inbox seen as a job's input range: never at its end for good, only
/// empty for now.
template <class T, class R>
class stream_range {
 public:
  struct sentinel {};
  class iterator {
   public:
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(task_inbox<T, R>* inbox) : inbox_(inbox) {}
    T& operator*() const { return inbox_->front(); }
    iterator& operator++() {
      inbox_->pop();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, sentinel) { return it.inbox_->empty(); }

   private:
    task_inbox<T, R>* inbox_ = nullptr;
  };

  explicit stream_range(task_inbox<T, R>* inbox) : inbox_(inbox) {}
  iterator begin() { return iterator(inbox_); }
  sentinel end() { return {}; }

 private:
  task_inbox<T, R>* inbox_;
};

/// The input of a stream's job (in place of input_source).
template <class T, class R>
class stream_source {
 public:
  using range_type = stream_range<T, R>;
  static constexpr bool streaming = true;

  explicit stream_source(std::shared_ptr<task_inbox<T, R>> inbox) : inbox_(std::move(inbox)), range_(inbox_.get()) {}
  stream_source(stream_source&& o) noexcept : inbox_(std::move(o.inbox_)), range_(inbox_.get()) {}

  range_type& get() noexcept { return range_; }
  [[nodiscard]] task_inbox<T, R>& inbox() const noexcept { return *inbox_; }

 private:
  std::shared_ptr<task_inbox<T, R>> inbox_;
  range_type range_;
};

/// Settles each task as its result or failure arrives (the settled wire
/// format: one outcome per item).
template <class T, class R>
class stream_collector {
 public:
  using value_type = std::size_t;  // tasks settled
  static constexpr bool is_reduce = false;
  static constexpr bool settled = true;

  explicit stream_collector(std::shared_ptr<task_inbox<T, R>> inbox) : inbox_(std::move(inbox)) {}
  stream_collector(stream_collector&&) noexcept = default;
  ~stream_collector() {
    // A job that never ran (refused, or its coroutine destroyed unstarted)
    // must not leave a task waiting forever.
    if (inbox_) inbox_->fail_all(std::make_exception_ptr(pool_error("coshard: the task's stream ended before it ran")));
  }

  void reserve(std::size_t) {}

  /// Returns how many of the reply's tasks failed.
  std::size_t on_result(const frame_header& h, std::span<const std::byte> payload, pid_t pid) {
    return for_each_settled<R>(h, payload, pid, [this](std::uint64_t index, outcome<R> o) {
      if (o.ok())
        inbox_->settle(index, nullptr, std::move(o).value());
      else
        inbox_->settle(index, o.error(), R{});
    });
  }

  void set_error(std::size_t index, std::exception_ptr e) { inbox_->settle(index, std::move(e), R{}); }

  /// The job ended: tasks still open fail with its error (a cancel, a
  /// shutdown, a failure of the pool).
  void close(std::exception_ptr e) {
    if (!e) e = std::make_exception_ptr(pool_error("coshard: the task's stream ended before it ran"));
    inbox_->fail_all(std::move(e));
  }

  value_type take() { return inbox_->settled(); }

 private:
  std::shared_ptr<task_inbox<T, R>> inbox_;
};

}  // namespace coshard::detail
