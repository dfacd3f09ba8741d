// coshard/serve_if_worker.hpp - the entry of a program re-executed by a pool
// with start_method::exec.
#pragma once

#include <cstring>

#include "coshard/detail/supervisor/exec_supervisor.hpp"

namespace coshard {

/// Call as the first line of main in a program whose pools use
/// start_method::exec:
///
///     int main(int argc, char** argv) {
///       coshard::serve_if_worker(argc, argv);
///       ...
///
/// In an ordinary run it returns at once and does nothing. When a pool runs
/// the program again as its supervisor (argv[1] is "--coshard-supervisor"),
/// it serves that pool instead (starting, reaping and reporting its workers,
/// which run the tasks) and never returns; the process exits when the pool
/// is shut down or its owner dies. Anything main does before this call also
/// runs in that re-executed copy, which is why it comes first. Static
/// initializers of the program do run there (they register the entry points
/// the workers need).
inline void serve_if_worker(int argc, char** argv) {
  if (argc >= 2 && argv && argv[1] && std::strcmp(argv[1], detail::exec_supervisor_flag) == 0)
    detail::serve_exec_supervisor(argc, argv);
}

}  // namespace coshard
