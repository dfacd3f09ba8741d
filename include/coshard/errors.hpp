// coshard/errors.hpp - the exceptions a pool reports to its caller.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
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
class item_error : public std::runtime_error {
 public:
  /// `what` the message, `index` the input index, `worker_pid` the worker's pid.
  item_error(const std::string& what, std::size_t index, pid_t worker_pid)
      : std::runtime_error(what), index_(index), worker_pid_(worker_pid) {}

  /// Zero-based position of the failing item in the input range.
  [[nodiscard]] std::size_t index() const noexcept { return index_; }
  /// Process id of the worker that ran the failing item.
  [[nodiscard]] pid_t worker_pid() const noexcept { return worker_pid_; }

 private:
  std::size_t index_;
  pid_t worker_pid_;
};

/// A task threw. Carries what the worker saw: the dynamic type of the thrown
/// object (demangled), its `what()` (empty for non-`std::exception` throws),
/// the input index of the failing item and the pid of the worker that ran it.
/// The pool stays usable after a task_error.
class task_error : public item_error {
 public:
  /// Builds the error; `what()` becomes a one-line summary of all fields.
  task_error(std::string type_name, std::string message, std::size_t index, pid_t worker_pid)
      : item_error(summary(type_name, message, index, worker_pid), index, worker_pid),
        type_name_(std::move(type_name)),
        message_(std::move(message)) {}

  /// Demangled type of the exception the task threw, e.g. "std::out_of_range".
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }
  /// The original `what()` of the task's exception (empty if it was not a std::exception).
  [[nodiscard]] const std::string& message() const noexcept { return message_; }

 private:
  static std::string summary(const std::string& type, const std::string& msg, std::size_t index,
                             pid_t pid) {
    std::string s = "coshard: task at input index " + std::to_string(index) + " threw " + type;
    if (!msg.empty()) s += ": " + msg;
    s += " (worker pid " + std::to_string(pid) + ")";
    return s;
  }

  std::string type_name_;
  std::string message_;
};

/// The item kept killing the worker that ran it (a signal such as SIGSEGV, or
/// an exit) on every attempt: it was isolated from the rest of its batch and
/// retried `max_retries` times. Every other item of the job is unaffected.
class worker_crashed : public item_error {
 public:
  /// `term_signal` is the killing signal (0 if the worker exited) and
  /// `exit_code` its exit status (-1 if it was killed); `how` describes both.
  worker_crashed(std::size_t index, pid_t worker_pid, int term_signal, int exit_code,
                 const std::string& how)
      : item_error("coshard: input index " + std::to_string(index) + " crashed its worker (pid " +
                       std::to_string(worker_pid) + " " + how + ")",
                   index, worker_pid),
        signal_(term_signal),
        exit_code_(exit_code) {}

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
class timeout_error : public item_error {
 public:
  /// As item_error's constructor.
  using item_error::item_error;
};

}  // namespace coshard
