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

/// A task threw. Carries what the worker saw: the dynamic type of the thrown
/// object (demangled), its `what()` (empty for non-`std::exception` throws),
/// the input index of the failing item and the pid of the worker that ran it.
/// The pool stays usable after a task_error.
class task_error : public std::runtime_error {
 public:
  /// Builds the error; `what()` becomes a one-line summary of all fields.
  task_error(std::string type_name, std::string message, std::size_t index, pid_t worker_pid)
      : std::runtime_error(summary(type_name, message, index, worker_pid)),
        type_name_(std::move(type_name)),
        message_(std::move(message)),
        index_(index),
        worker_pid_(worker_pid) {}

  /// Demangled type of the exception the task threw, e.g. "std::out_of_range".
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }
  /// The original `what()` of the task's exception (empty if it was not a std::exception).
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  /// Zero-based position of the failing item in the input range.
  [[nodiscard]] std::size_t index() const noexcept { return index_; }
  /// Process id of the worker that ran the failing item.
  [[nodiscard]] pid_t worker_pid() const noexcept { return worker_pid_; }

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
  std::size_t index_;
  pid_t worker_pid_;
};

}  // namespace coshard
