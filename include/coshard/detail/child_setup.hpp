// coshard/detail/child_setup.hpp - what every process coshard forks does
// first: keep only the descriptors it was given, forget the parent's signal
// handling.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define COSHARD_DETAIL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define COSHARD_DETAIL_ASAN 1
#endif
#endif
#ifdef COSHARD_DETAIL_ASAN
#include <sanitizer/lsan_interface.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <initializer_list>
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

#include "coshard/detail/exit_codes.hpp"

namespace coshard::detail {

/// Closes every descriptor above stderr except `keep`. A child that holds a
/// copy of the parent's sockets (a second pool's channels, a user's listening
/// socket or pipe) keeps their peers from seeing EOF, so nothing else is kept.
inline void close_descriptors_except(std::initializer_list<int> keep) {
  std::vector<int> kept(keep);
  std::sort(kept.begin(), kept.end());
  unsigned from = 3;
  for (int fd : kept) {
    if (fd < 3) continue;
    if (static_cast<unsigned>(fd) > from) ::close_range(from, static_cast<unsigned>(fd) - 1, 0);
    from = static_cast<unsigned>(fd) + 1;
  }
  ::close_range(from, ~0u, 0);
}

/// The signal handlers the program had when this was captured, during static
/// initialisation: none in an ordinary program (exec resets handlers), a
/// sanitizer runtime's own ones (SIGSEGV, SIGBUS, SIGFPE) in a sanitized
/// build. Before main, so before a test framework or Ctrl-C handler installs
/// its own; a crash handler that another static constructor installed
/// earlier (the order across files is unspecified), or that a host program
/// installed before loading coshard in a plugin, is captured too.
struct startup_signal_handlers {
  struct sigaction action[NSIG]{};
  bool is_handler[NSIG]{};
  startup_signal_handlers() {
    for (int sig = 1; sig < NSIG; ++sig) {
      if (::sigaction(sig, nullptr, &action[sig]) != 0) continue;
      // sa_handler and sa_sigaction share storage: SIG_DFL and SIG_IGN read
      // the same through either.
      is_handler[sig] = action[sig].sa_handler != SIG_DFL && action[sig].sa_handler != SIG_IGN;
    }
  }
};
inline const startup_signal_handlers startup_handlers{};

/// Puts every signal back as the program started (see startup_signal_handlers;
/// in practice: the default, or a sanitizer's handler, so that a worker's
/// memory error is still reported) and unblocks every signal. Handlers,
/// ignores and masks the parent installed later (test frameworks, crash
/// reporters, a Ctrl-C handler, SIGCHLD ignored) belong to the parent: a crash
/// in a worker must be a plain death the pool can report.
inline void reset_signal_handling() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    // Fails harmlessly for the few reserved ones.
    ::sigaction(sig, startup_handlers.is_handler[sig] ? &startup_handlers.action[sig] : &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

/// This process's pid without a system call (glibc no longer caches
/// getpid): read on every job to refuse use from a forked copy of the owner.
/// A pthread_atfork child handler refreshes it in every child fork() makes.
inline pid_t current_pid() noexcept {
  struct cache {
    std::atomic<pid_t> pid{::getpid()};
    cache() {
      ::pthread_atfork(nullptr, nullptr, [] { instance().pid.store(::getpid(), std::memory_order_relaxed); });
    }
    static cache& instance() {
      static cache c;
      return c;
    }
  };
  return cache::instance().pid.load(std::memory_order_relaxed);
}

/// In an AddressSanitizer build, runs LeakSanitizer over this process (a
/// worker leaving cleanly through _exit, which skips the check at exit) and
/// returns leak_found_exit_code if it reported a leak; else `code`. Only
/// meaningful in a process whose every thread's stack it can see.
inline int leak_check_at_clean_exit(int code) noexcept {
#ifdef COSHARD_DETAIL_ASAN
  if (code == 0 && __lsan_do_recoverable_leak_check() != 0) return leak_found_exit_code;
#endif
  return code;
}

/// Writes out what the C and C++ streams buffered, so that a fork does not
/// print it twice.
inline void flush_standard_streams() {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
}

/// In a process forked from a pool's owner: `object` is part of the owner's
/// copy and must not be torn down here (a std::thread whose thread does not
/// run here, a socket registered with the owner's epoll set, the pool's
/// state). It is kept reachable, so leak checkers stay quiet, and never
/// destroyed, not even by static destructors at exit().
template <class T>
void keep_until_exit(T&& object) {
  static std::mutex m;
  static auto* kept = new std::vector<std::decay_t<T>>;
  std::lock_guard lock(m);
  kept->push_back(std::forward<T>(object));
}

}  // namespace coshard::detail
