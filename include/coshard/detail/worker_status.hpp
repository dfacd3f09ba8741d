// coshard/detail/worker_status.hpp - what the parent learns of how a worker
// ended: the status page the worker writes before it exits on its own, and
// its wait status, as the supervisor reports it.
#pragma once

#include <sys/wait.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

namespace coshard::detail {

/// A page shared between the parent and the workers of one slot: written by
/// the worker just before it exits on its own (so the parent learns why),
/// and counting what the parent cannot see in its replies.
struct worker_status {
  static constexpr std::uint64_t none = ~std::uint64_t{0};
  std::atomic<std::uint64_t> timed_out_index{none};
  /// Items cancelled at item_timeout by this slot's workers, all of them.
  std::atomic<std::uint64_t> items_timed_out{0};
};

/// Wait status reported for a worker whose supervisor died before reaping it
/// (the worker was killed by its parent-death signal).
inline constexpr int unknown_wait_status = -1;

/// "exited with code 3", "killed by signal 9 (Killed)".
inline std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "killed by signal " + std::to_string(sig) + " (" + ::strsignal(sig) + ")";
  }
  return "stopped with status " + std::to_string(status);
}

}  // namespace coshard::detail
