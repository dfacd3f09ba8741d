// coshard/detail/worker/worker_main.hpp - the first moments of a worker
// process, forked by the supervisor.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "coshard/detail/child_setup.hpp"
#include "coshard/detail/worker/worker_process.hpp"

namespace coshard::detail {

/// Runs a worker on channel `fd` until the parent closes it, then ends the
/// process. Called in a fresh child of the supervisor, `supervisor` being its
/// parent. Never returns and never lets an exception unwind into the caller's
/// frames (in a forked child they belong to the user's program).
[[noreturn]] inline void worker_main(int fd, pid_t supervisor, const worker_settings& settings) noexcept {
  // Die with the supervisor even if it is SIGKILLed. The supervisor is
  // single-threaded, so this fires on its death and nothing else; the check
  // closes the race where it died before prctl ran.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != supervisor) ::_exit(0);
  ::prctl(PR_SET_NAME, "coshard-worker");
  reset_signal_handling();
  ::signal(SIGPIPE, SIG_IGN);  // a write to a closed peer is an error, not a death
  int code = 3;
  try {
    worker_process w(fd, settings);
    code = w.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "coshard worker %d: %s\n", static_cast<int>(::getpid()), e.what());
  } catch (...) {
    std::fprintf(stderr, "coshard worker %d: a non-standard exception escaped the worker\n",
                 static_cast<int>(::getpid()));
  }
  // _exit, not exit: the parent's static objects and atexit handlers belong to
  // the parent. Flush what tasks printed first.
  flush_standard_streams();
  ::_exit(settings.leak_check_at_exit ? leak_check_at_clean_exit(code) : code);
}

}  // namespace coshard::detail
