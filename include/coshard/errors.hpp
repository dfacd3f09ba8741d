// coshard/errors.hpp - the exceptions a pool reports to its caller.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <exception>
#include <string>
#include <utility>
#include <sys/types.h>

namespace coshard {

/// Something went wrong with the pool itself rather than with one task: a
/// worker could not be started, a worker died, a frame was malformed, the pool
/// is busy with another job. The pool's state after this error is described
/// where it is thrown.
class pool_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Data could not be encoded or decoded on its way between processes: a
/// truncated or corrupt payload, a size that exceeds the frame limit.
class serialization_error : public pool_error {
 public:
  using pool_error::pool_error;
};

/// One input item failed; the subclasses say how. Carries the item's
/// zero-based input index and the pid of the worker that ran it.
///
/// item_error is a mixin, not itself a `std::exception`, so that the object a
/// caller catches can be both a coshard error and the standard exception the
/// task threw (see task_error). Every object coshard throws or stores is
/// derived from exactly one `std::exception`, so `catch (const
/// std::exception&)` catches it; `what()` here is that exception's `what()`.
class item_error {
 public:
  virtual ~item_error() = default;

  /// The one-line description, the same as the `std::exception`'s `what()`.
  [[nodiscard]] virtual const char* what() const noexcept = 0;
  /// Zero-based position of the failing item in the input range.
  [[nodiscard]] std::size_t index() const noexcept { return index_; }
  /// Process id of the worker that ran the failing item.
  [[nodiscard]] pid_t worker_pid() const noexcept { return worker_pid_; }

 protected:
  /// For the concrete classes, which add the `std::exception` base.
  item_error(std::size_t index, pid_t worker_pid) noexcept : index_(index), worker_pid_(worker_pid) {}
  /// Copied only as part of a concrete error.
  item_error(const item_error&) = default;
  /// Assigned only as part of a concrete error.
  item_error& operator=(const item_error&) = default;

 private:
  std::size_t index_;
  pid_t worker_pid_;
};

/// A task threw. Carries what the worker saw: the dynamic type of the thrown
/// object (demangled), its `what()` (empty for non-`std::exception` throws),
/// the input index of the failing item and the pid of the worker that ran it.
/// The pool stays usable after a task_error.
///
/// The object a caller catches is also of the standard exception type the
/// task threw, or of its nearest standard base: a task throwing
/// `std::invalid_argument` (or a class derived from it) can be caught as
/// `std::invalid_argument`, `std::logic_error`, `std::exception` or
/// `coshard::task_error`, and `task_error_of(e)` or a `dynamic_cast` reaches
/// these fields from any of them. A `std::system_error` keeps its code when
/// its category is the generic or the system one. User types opt in with
/// `coshard::register_exception` (coshard/exception_types.hpp). A thrown
/// value that is no `std::exception` (`throw 42`) arrives as a
/// `std::runtime_error`; a class derived from `std::exception` alone as a
/// plain `std::exception`. `what()` is always the one-line summary of the
/// fields, whichever base it is called through.
class task_error : public item_error {
 public:
  /// Demangled type of the exception the task threw, e.g. "std::out_of_range".
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }
  /// The original `what()` of the task's exception (empty if it was not a std::exception).
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  /// The summary: "coshard: task at input index I threw TYPE: MESSAGE (worker pid P)".
  [[nodiscard]] const char* what() const noexcept override { return summary_.c_str(); }

  /// The summary `what()` gives for these fields.
  [[nodiscard]] static std::string summary(const std::string& type, const std::string& message, std::size_t index,
                                           pid_t pid) {
    std::string s = "coshard: task at input index " + std::to_string(index) + " threw " + type;
    if (!message.empty()) s += ": " + message;
    s += " (worker pid " + std::to_string(pid) + ")";
    return s;
  }

 protected:
  /// For the classes coshard throws (detail::remote_task_error<E>), which add
  /// the standard base.
  task_error(std::string type_name, std::string message, std::size_t index, pid_t worker_pid)
      : item_error(index, worker_pid),
        type_name_(std::move(type_name)),
        message_(std::move(message)),
        summary_(summary(type_name_, message_, index, worker_pid)) {}
  /// Copied only as part of a concrete error.
  task_error(const task_error&) = default;
  /// Assigned only as part of a concrete error.
  task_error& operator=(const task_error&) = default;

 private:
  std::string type_name_;
  std::string message_;
  std::string summary_;
};

/// The coshard details of an exception caught by its standard type, e.g. in
/// `catch (const std::invalid_argument& e)`: the task_error it also is, or
/// nullptr if `e` did not come from a task.
[[nodiscard]] inline const task_error* task_error_of(const std::exception& e) noexcept {
  return dynamic_cast<const task_error*>(&e);
}

/// The item kept killing the worker that ran it (a signal such as SIGSEGV, or
/// an exit) on every attempt: it was isolated from the rest of its batch and
/// retried `max_retries` times. Every other item of the job is unaffected.
class worker_crashed : public std::runtime_error, public item_error {
 public:
  /// `term_signal` is the killing signal (0 if the worker exited) and
  /// `exit_code` its exit status (-1 if it was killed); `how` describes both.
  worker_crashed(std::size_t index, pid_t worker_pid, int term_signal, int exit_code, const std::string& how)
      : std::runtime_error("coshard: input index " + std::to_string(index) + " crashed its worker (pid " +
                           std::to_string(worker_pid) + " " + how + ")"),
        item_error(index, worker_pid),
        signal_(term_signal),
        exit_code_(exit_code) {}

  /// The one-line description.
  [[nodiscard]] const char* what() const noexcept override { return std::runtime_error::what(); }
  /// The signal that killed the worker, or 0 if it exited.
  [[nodiscard]] int term_signal() const noexcept { return signal_; }
  /// The worker's exit code, or -1 if it was killed by a signal.
  [[nodiscard]] int exit_code() const noexcept { return exit_code_; }

 private:
  int signal_;
  int exit_code_;
};

/// The item ran longer than pool_options::item_timeout: an awaitable item was
/// cancelled; a plain function stuck past the timeout had its worker killed
/// and replaced.
class timeout_error : public std::runtime_error, public item_error {
 public:
  /// `what` the message, `index` the input index, `worker_pid` the worker's pid.
  timeout_error(const std::string& what, std::size_t index, pid_t worker_pid)
      : std::runtime_error(what), item_error(index, worker_pid) {}
  /// The one-line description.
  [[nodiscard]] const char* what() const noexcept override { return std::runtime_error::what(); }
};

/// The item was started but its job was cancelled before it finished (an
/// awaitable item stops at its next suspension point): the outcome of such an
/// item in `map_settled` and the error of a cancelled submitted task.
class item_cancelled : public std::runtime_error, public item_error {
 public:
  /// `what` the message, `index` the input index, `worker_pid` the worker's pid.
  item_cancelled(const std::string& what, std::size_t index, pid_t worker_pid)
      : std::runtime_error(what), item_error(index, worker_pid) {}
  /// The one-line description.
  [[nodiscard]] const char* what() const noexcept override { return std::runtime_error::what(); }
};

}  // namespace coshard
