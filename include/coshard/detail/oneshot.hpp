// coshard/detail/oneshot.hpp - a value delivered once from any thread and
// awaited on an Asio executor without blocking it.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>

namespace coshard::detail {

/// Set once by a producer thread (the supervisor link); awaited by a job's
/// coroutine through a steady_timer that the producer cancels from afar.
template <class T>
class oneshot {
 public:
  /// Stores the value (the first one wins) and wakes the waiter, if any.
  void set(T value) {
    {
      // The waker posts (never runs inline); calling it under the lock keeps
      // it from racing a waiter that unhooks and lets its executor go.
      std::lock_guard lock(mutex_);
      if (value_) return;
      value_ = std::move(value);
      if (waker_) waker_();
      waker_ = nullptr;
    }
  }

  /// Replaces a delivered value by a default one (e.g. once its descriptor
  /// was closed), so that it is never used twice.
  void clear() {
    std::lock_guard lock(mutex_);
    if (value_) value_ = T{};
  }

  [[nodiscard]] std::optional<T> peek() const {
    std::lock_guard lock(mutex_);
    return value_;
  }

  /// Waits until the value is set or `timer` expires or is cancelled (the
  /// caller may cancel it to give up early); returns the value if set. The
  /// timer must belong to the awaiting coroutine's executor.
  asio::awaitable<std::optional<T>> wait(std::shared_ptr<asio::steady_timer> timer) {
    {
      std::lock_guard lock(mutex_);
      if (value_) co_return value_;
      waker_ = [timer] { asio::post(timer->get_executor(), [timer] { timer->cancel(); }); };
    }
    // Unhooked however the wait ends, so that a late set() never reaches a
    // coroutine that is gone.
    struct unhook {
      oneshot* self;
      ~unhook() {
        std::lock_guard lock(self->mutex_);
        self->waker_ = nullptr;
      }
    } guard{this};
    asio::error_code ec;
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return peek();
  }

 private:
  mutable std::mutex mutex_;
  std::optional<T> value_;
  std::function<void()> waker_;
};

}  // namespace coshard::detail
