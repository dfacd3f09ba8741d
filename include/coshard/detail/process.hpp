// coshard/detail/process.hpp - starting, watching and reaping worker processes.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <thread>

#include "coshard/detail/worker_process.hpp"
#include "coshard/errors.hpp"

namespace coshard::detail {

struct spawned_worker {
  pid_t pid = -1;
  int fd = -1;  // the parent's end of the socketpair
};

[[noreturn]] inline void worker_main(int fd, pid_t parent, const worker_settings& settings,
                                     std::span<const int> inherited_fds) {
  // Die with the parent even if it is SIGKILLed; the check closes the race
  // where the parent died before prctl ran.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(0);
  for (int other : inherited_fds) ::close(other);
  // Crash handlers installed by the parent (test frameworks, crash reporters)
  // belong to the parent: a worker that faults just dies, and the parent reports it.
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTERM, SIGINT})
    ::signal(sig, SIG_DFL);
  ::signal(SIGPIPE, SIG_IGN);
  int code = 3;
  try {
    worker_process w(fd, settings);
    code = w.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "coshard worker %d: %s\n", static_cast<int>(::getpid()), e.what());
  }
  // _exit, not exit: the parent's static objects and atexit handlers belong to
  // the parent. Flush what tasks printed first.
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  ::_exit(code);
}

/// Forks one worker connected by a socketpair. `inherited_fds` are the parent
/// ends of the other workers' channels, closed in the child so that a worker's
/// EOF is seen as soon as its own peer closes.
inline spawned_worker spawn_worker(const worker_settings& settings,
                                   std::span<const int> inherited_fds) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw pool_error(std::string("coshard: socketpair failed: ") + std::strerror(errno));
  // Larger socket buffers let a whole batch go down in one send (the kernel
  // caps the request at net.core.wmem_max).
  for (int fd : sv) {
    const int bytes = 1 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  }
  // Output buffered in the parent would otherwise be printed twice.
  std::cout.flush();
  std::fflush(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(sv[0]);
    ::close(sv[1]);
    throw pool_error(std::string("coshard: fork failed: ") + std::strerror(err));
  }
  if (pid == 0) {
    ::close(sv[0]);
    worker_main(sv[1], parent, settings, inherited_fds);
  }
  ::close(sv[1]);
  return {pid, sv[0]};
}

/// "exited with code 3", "killed by signal 9 (Killed)".
inline std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "killed by signal " + std::to_string(sig) + " (" + ::strsignal(sig) + ")";
  }
  return "stopped with status " + std::to_string(status);
}

/// Waits up to `grace` for `pid` to exit, then SIGKILLs it and reaps it.
/// Returns the wait status.
inline int reap_worker(pid_t pid, std::chrono::milliseconds grace) {
  const auto deadline = std::chrono::steady_clock::now() + grace;
  int status = 0;
  for (auto pause = std::chrono::microseconds(50);; pause = std::min(pause * 2, decltype(pause)(5000))) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return 0;  // already reaped elsewhere
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(pause);
  }
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace coshard::detail
