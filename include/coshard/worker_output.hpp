// coshard/worker_output.hpp - what a worker writes to stdout and stderr, as
// the caller receives it.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string_view>

namespace coshard {

/// One line a worker wrote to its stdout or stderr (pool_options::worker_output).
struct worker_output_line {
  /// The worker's slot, 0 to workers-1; a replacement takes its predecessor's.
  std::size_t slot = 0;
  /// The worker's process id.
  pid_t pid = 0;
  /// 1 for stdout, 2 for stderr.
  int stream = 2;
  /// The line without its newline; valid during the call only. A line longer
  /// than 32 KiB arrives in pieces of that size, and a last line without a
  /// newline arrives when the worker exits.
  std::string_view text;
};

}  // namespace coshard
