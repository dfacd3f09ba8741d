// coshard/detail/child_setup.hpp - what every process coshard forks does
// first: keep only the descriptors it was given, forget the parent's signal
// handling.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

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

/// Resets every signal disposition to its default and unblocks every signal:
/// handlers and masks the parent installed (test frameworks, crash reporters,
/// a Ctrl-C handler) belong to the parent.
inline void reset_signal_handling() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ::sigaction(sig, &dfl, nullptr);  // fails harmlessly for the few reserved ones
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
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
