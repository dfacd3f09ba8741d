// coshard/detail/supervisor/supervisor_process.hpp - the fork server of a pool: one small,
// single-threaded process, forked when the pool is built, that forks every
// worker on request, reaps them and reports how each ended.
//
// Why: the caller's process may run threads, other pools, signal handlers and
// its own children. Forking workers from it at any later time (from whichever
// thread runs a job) tied them to that thread's life (PR_SET_PDEATHSIG fires
// when the forking *thread* exits), let them inherit whatever was open by
// then, and made the job's thread wait on fork and waitpid. After the pool's
// constructor the caller's process never forks again; its only child is the
// supervisor.
#pragma once

#include "coshard/detail/supervisor/control.hpp"
#include "coshard/detail/supervisor/output_relay.hpp"

namespace coshard::detail {

// ---------------------------------------------------------------------------
// The supervisor process.
// ---------------------------------------------------------------------------

class supervisor_process {
 public:
  supervisor_process(int control, pid_t owner, const worker_settings_factory& settings, output_route output)
      : control_(control), owner_(owner), settings_(settings), output_(output, control) {}

  [[noreturn]] void run() noexcept {
    // The owner's death (SIGKILL included, whichever of its threads built the
    // pool) makes its pidfd readable; the check closes the race where it died
    // before pidfd_open.
    owner_pidfd_ = open_pidfd(owner_);
    if (owner_pidfd_ < 0 || ::getppid() != owner_) ::_exit(0);
    close_descriptors_except({control_, owner_pidfd_});
    // A terminal's Ctrl-C goes to the owner alone: it decides whether the
    // pool shuts down, and its death takes the workers down anyway. (Signals
    // are still blocked from the fork until the reset.)
    ::setpgid(0, 0);
    reset_signal_handling();
    // Workers' lines go to stderr, which may be a pipe whose reader is gone:
    // that must drop the lines, not kill the supervisor and every worker.
    ::signal(SIGPIPE, SIG_IGN);
    ::prctl(PR_SET_NAME, "coshard-sup");
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, nullptr);
    sigchld_ = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigchld_ < 0) {
      report({supervisor_op::start_failed, 0, 0, 0, errno});
      send_text(control_, std::string("signalfd failed: ") + std::strerror(errno));
      ::_exit(supervisor_failed_exit_code);
    }
    report({supervisor_op::hello, 0, 0, ::getpid(), 0});
    std::vector<pollfd> fds;
    for (;;) {
      fds.assign({{control_, control_open_ ? short(POLLIN) : short(0), 0},
                  {owner_pidfd_, POLLIN, 0},
                  {sigchld_, POLLIN, 0}});
      output_.add_poll_fds(fds);
      int timeout = -1;
      if (exiting_) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline_ - std::chrono::steady_clock::now());
        timeout = static_cast<int>(std::max<long long>(0, left.count()));
      }
      const int r = ::poll(fds.data(), fds.size(), timeout);
      if (r < 0 && errno != EINTR) terminate_all_and_exit();
      if (r > 0) serve_output(fds.data() + 3, fds.size() - 3);
      if (fds[2].revents) reap();
      if (fds[1].revents) terminate_all_and_exit();  // the owner is gone
      if (fds[0].revents) serve_control();
      if (exiting_) {
        if (children_.empty()) exit_cleanly();
        if (std::chrono::steady_clock::now() >= deadline_) terminate_all_and_exit();
      }
    }
  }

 private:
  void serve_control() noexcept {
    supervisor_message m;
    int ignored_fd = -1;
    if (!receive_message(control_, m, ignored_fd)) {
      // The owner closed the channel (its pool is gone): whatever the grace
      // was, no one will read our reports any more.
      control_open_ = false;
      if (!exiting_) begin_exit(std::chrono::milliseconds(0));
      return;
    }
    switch (m.op) {
      case supervisor_op::spawn:
        if (exiting_) {
          report({supervisor_op::spawn_failed, m.slot, m.id, 0, ESHUTDOWN});
          return;
        }
        spawn(m);
        return;
      case supervisor_op::kill:
        // Only a child not yet reaped: its pid cannot have been reused.
        if (children_.count(m.pid)) ::kill(m.pid, SIGKILL);
        return;
      case supervisor_op::kill_all:
        for (auto& [pid, slot] : children_) ::kill(pid, SIGKILL);
        return;
      case supervisor_op::shutdown:
        begin_exit(std::chrono::milliseconds(m.arg));
        return;
      default:
        return;
    }
  }

  void begin_exit(std::chrono::milliseconds grace) noexcept {
    const auto at = std::chrono::steady_clock::now() + grace;
    if (!exiting_ || at < deadline_) deadline_ = at;
    exiting_ = true;
  }

  void spawn(const supervisor_message& m) noexcept {
    worker_pipes pipes;
    if (!output_.make_pipes(pipes)) {
      report({supervisor_op::spawn_failed, m.slot, m.id, 0, errno});
      return;
    }
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      const int err = errno;
      output_relay::discard(pipes);
      report({supervisor_op::spawn_failed, m.slot, m.id, 0, err});
      return;
    }
    size_channel_buffers(sv[0]);
    size_channel_buffers(sv[1]);
    flush_standard_streams();
    const pid_t self = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int err = errno;
      ::close(sv[0]);
      ::close(sv[1]);
      output_relay::discard(pipes);
      report({supervisor_op::spawn_failed, m.slot, m.id, 0, err});
      return;
    }
    if (pid == 0) {
      output_.become_worker_side(pipes);
      close_descriptors_except({sv[1]});
      worker_main(sv[1], self, settings_(m.slot));
    }
    ::close(sv[1]);
    try {
      output_.adopt(pipes, pid, m.slot);
    } catch (...) {
      output_relay::discard(pipes);  // out of memory: this worker's output is lost, not the worker
    }
    children_[pid] = m.slot;
    report({supervisor_op::spawned, m.slot, m.id, pid, 0}, sv[0]);
    ::close(sv[0]);
  }

  void reap() noexcept {
    signalfd_siginfo info;
    while (::read(sigchld_, &info, sizeof info) > 0) {
    }
    reap_children(/*wait=*/false);
  }

  // Reports how children ended: those that have (`wait` false), or all of
  // them, waiting for each (`wait` true).
  void reap_children(bool wait) noexcept {
    int status = 0;
    for (;;) {
      if (wait && children_.empty()) return;
      const pid_t pid = ::waitpid(-1, &status, wait ? 0 : WNOHANG);
      if (pid < 0 && errno == EINTR) continue;
      if (pid <= 0) return;
      auto it = children_.find(pid);
      if (it == children_.end()) continue;
      const std::uint32_t slot = it->second;
      children_.erase(it);
      report({supervisor_op::exited, slot, 0, pid, status});
    }
  }

  void report(const supervisor_message& m, int fd = -1) noexcept {
    if (control_open_ && !send_message(control_, m, fd)) control_open_ = false;
  }

  void serve_output(const pollfd* fds, std::size_t n) noexcept {
    try {
      output_.serve(fds, n);
    } catch (...) {
      // Out of memory while buffering a line: what was read is dropped.
    }
  }

  [[noreturn]] void terminate_all_and_exit() noexcept {
    for (auto& [pid, slot] : children_) ::kill(pid, SIGKILL);
    reap_children(/*wait=*/true);
    exit_cleanly();
  }

  // Every worker has been reaped: their last lines are in the pipes. The
  // owner waits a second longer than the workers' grace before it kills us.
  [[noreturn]] void exit_cleanly() noexcept {
    output_.drain(std::chrono::milliseconds(500));
    ::_exit(0);
  }

  int control_;
  pid_t owner_;
  const worker_settings_factory& settings_;
  int owner_pidfd_ = -1;
  int sigchld_ = -1;
  bool control_open_ = true;
  bool exiting_ = false;
  std::chrono::steady_clock::time_point deadline_{};
  std::map<pid_t, std::uint32_t> children_;
  output_relay output_;
};

}  // namespace coshard::detail
