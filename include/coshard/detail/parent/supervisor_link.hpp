// coshard/detail/parent/supervisor_link.hpp - the owner's side of the
// supervisor process (supervisor/supervisor_process.hpp): how it is started,
// and the link that asks it for workers and hears how they ended.
#pragma once

#include <condition_variable>
#include <deque>
#include <string_view>

#include "coshard/detail/supervisor/supervisor_process.hpp"
#include "coshard/detail/worker_status.hpp"

namespace coshard::detail {

// ---------------------------------------------------------------------------
// The owner's side.
// ---------------------------------------------------------------------------

/// A worker as the supervisor started it: its pid and the owner's end of its
/// channel, or why it could not be started.
struct spawn_result {
  pid_t pid = -1;
  int fd = -1;
  std::string error;
};

/// How a supervisor process comes to exist: `start` makes a child process
/// that serves `control` (its end of the control socket; the launcher closes
/// nothing) and returns its pid, or throws pool_error. `exit_hint` is added
/// to the error when the child exits before it says hello.
struct supervisor_launch {
  std::function<pid_t(int control)> start;
  std::string exit_hint;
};

/// The fork-server launch: the supervisor is a fork of the calling process.
inline supervisor_launch fork_supervisor(const worker_settings_factory& settings, output_route output) {
  return {[&settings, output](int control) {
            const pid_t owner = ::getpid();
            flush_standard_streams();
            // Signals stay blocked across the fork: until the child has reset
            // the owner's handlers, one of them (a signal_set writing to the
            // owner's self-pipe) must not run in it.
            sigset_t all, old;
            sigfillset(&all);
            ::pthread_sigmask(SIG_SETMASK, &all, &old);
            const pid_t pid = ::fork();
            if (pid == 0) supervisor_process(control, owner, settings, output).run();
            const int fork_errno = errno;
            ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
            if (pid < 0)
              throw pool_error(std::string("coshard: fork of the supervisor failed: ") + std::strerror(fork_errno));
            return pid;
          },
          ""};
}

/// The owner's link to its supervisor: requests go down the control socket
/// from any thread; a thread of the owner reads the supervisor's reports and
/// hands each to whoever waits for it.
class supervisor_link {
 public:
  /// Starts the supervisor through `launch` and waits (up to
  /// `startup_timeout`) until it says it serves. Throws pool_error naming the
  /// cause if it cannot be started, exits first or stays silent; nothing is
  /// left behind then.
  /// `output_sink` receives the lines of an output_route::owner supervisor.
  supervisor_link(const supervisor_launch& launch, std::chrono::milliseconds startup_timeout,
                  std::function<void(const worker_output_line&)> output_sink = {})
      : owner_(::getpid()), output_sink_(std::move(output_sink)) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      throw pool_error(std::string("coshard: socketpair for the supervisor failed: ") + std::strerror(errno));
    pid_t pid;
    try {
      pid = launch.start(sv[1]);
    } catch (...) {
      ::close(sv[0]);
      ::close(sv[1]);
      throw;
    }
    ::close(sv[1]);
    control_ = sv[0];
    pid_ = pid;
    pidfd_ = open_pidfd(pid);  // it cannot have been reaped: only we wait for it
    if (pidfd_ < 0) {
      const int err = errno;
      ::close(control_);  // the supervisor sees EOF and exits
      int status;
      ::waitpid(pid, &status, 0);
      throw pool_error(std::string("coshard: pidfd_open failed (Linux 5.3 or later is needed): ") +
                       std::strerror(err));
    }
    await_hello(startup_timeout, launch.exit_hint);
    if (output_sink_) sink_thread_ = std::thread([this] { deliver_output(); });
    reader_ = std::thread([this] { read_reports(); });
  }

  supervisor_link(const supervisor_link&) = delete;
  supervisor_link& operator=(const supervisor_link&) = delete;
  ~supervisor_link() { shutdown(std::chrono::milliseconds(0)); }

  /// Asks for a worker for `slot`; the result arrives as soon as it is forked
  /// (its initializer may still be running).
  std::shared_ptr<oneshot<spawn_result>> spawn(std::uint32_t slot) {
    auto result = std::make_shared<oneshot<spawn_result>>();
    std::uint64_t id;
    {
      std::lock_guard lock(mutex_);
      if (!alive_) {
        result->set({-1, -1, "the pool's supervisor process is gone"});
        return result;
      }
      id = next_id_++;
      spawns_[id] = result;
    }
    if (!request({supervisor_op::spawn, slot, id, 0, 0})) {
      std::lock_guard lock(mutex_);
      spawns_.erase(id);
      result->set({-1, -1, "the pool's supervisor process is gone"});
    }
    return result;
  }

  /// Gives up every start not answered yet: its worker's channel is closed
  /// as soon as it arrives, so the worker sees EOF and exits at once (a
  /// shutdown does not wait for it). Its waiter gets an error.
  void abandon_spawns() {
    std::map<std::uint64_t, std::shared_ptr<oneshot<spawn_result>>> spawns;
    {
      std::lock_guard lock(mutex_);
      spawns.swap(spawns_);
    }
    for (auto& [id, s] : spawns) s->set({-1, -1, "the pool is shutting down"});
  }

  /// The wait status of worker `pid`, set once the supervisor has reaped it.
  std::shared_ptr<oneshot<int>> exit_of(pid_t pid) {
    std::lock_guard lock(mutex_);
    auto& slot = exits_[pid];
    if (!slot) slot = std::make_shared<oneshot<int>>();
    if (!alive_) slot->set(unknown_wait_status);
    return slot;
  }

  /// Drops what is known or awaited of `pid`'s exit.
  void forget(pid_t pid) {
    std::lock_guard lock(mutex_);
    auto it = exits_.find(pid);
    const bool reported = it != exits_.end() && it->second->peek();
    if (it != exits_.end()) exits_.erase(it);
    if (!reported && alive_) ignored_.insert(pid);
  }

  /// SIGKILLs worker `pid` if the supervisor has not reaped it yet (so a pid
  /// reused by an unrelated process is never signalled). Any thread.
  void kill(pid_t pid) noexcept { request({supervisor_op::kill, 0, 0, pid, 0}); }

  /// SIGKILLs every worker. Any thread.
  void kill_all() noexcept { request({supervisor_op::kill_all, 0, 0, 0, 0}); }

  /// Tells the supervisor to let its workers exit for up to `grace`, kill the
  /// rest, and exit; waits for that (bounded: grace + 1 s, then the
  /// supervisor is killed, which kills its workers). Idempotent; a no-op in a
  /// process the owner forked.
  void shutdown(std::chrono::milliseconds grace) noexcept {
    if (control_ < 0 || ::getpid() != owner_) return;
    request({supervisor_op::shutdown, 0, 0, 0, static_cast<std::int32_t>(grace.count())});
    if (!wait_readable(pidfd_, grace + std::chrono::milliseconds(1000))) {
      signal_pidfd(pidfd_, SIGKILL);
      wait_readable(pidfd_, std::chrono::milliseconds(5000));
    }
    // Reaped through the pidfd: a user's waitpid(-1) or SIGCHLD = SIG_IGN
    // may have reaped it already (ECHILD), and a recycled pid is never waited for.
    siginfo_t info;
    while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_), &info, WEXITED | WNOHANG) < 0 &&
           errno == EINTR) {
    }
    ::shutdown(control_, SHUT_RDWR);  // the reader sees EOF
    if (reader_.joinable()) reader_.join();
    finish_output();
    ::close(control_);
    ::close(pidfd_);
    control_ = pidfd_ = -1;
  }

  /// In a process forked from the owner: lets go of everything without
  /// touching the owner's supervisor (the reader thread does not exist here).
  void abandon() noexcept {
    if (reader_.joinable()) {
      // Never joined or destroyed: no such thread runs in this process.
      keep_until_exit(std::move(reader_));
    }
    if (sink_thread_.joinable()) keep_until_exit(std::move(sink_thread_));
    if (control_ >= 0) ::close(control_);
    if (pidfd_ >= 0) ::close(pidfd_);
    control_ = pidfd_ = -1;
  }

  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

 private:
  // Never blocks: a supervisor that stopped reading (stopped, or wedged)
  // must not hang a job's executor or a shutdown; its death is handled by
  // the bounded waits instead.
  bool request(const supervisor_message& m) noexcept { return send_message(control_, m, -1, MSG_DONTWAIT); }

  // The supervisor's first word: hello, or why it cannot serve. Anything
  // else (an exit, silence) is turned into a pool_error after the process
  // is killed and reaped.
  void await_hello(std::chrono::milliseconds timeout, const std::string& exit_hint) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string failure;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd fds[2] = {{control_, POLLIN, 0}, {pidfd_, POLLIN, 0}};
      const int r = ::poll(fds, 2, static_cast<int>(std::max<long long>(0, left.count())));
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) {
        failure = "coshard: the supervisor process did not start within startup_timeout (" +
                  std::to_string(timeout.count()) + " ms)" + exit_hint;
        break;
      }
      if (r > 0 && (fds[0].revents & POLLIN)) {
        supervisor_message m;
        int fd = -1;
        if (receive_message(control_, m, fd)) {
          if (fd >= 0) ::close(fd);
          if (m.op == supervisor_op::hello) return;
          if (m.op == supervisor_op::start_failed) {
            char text[4096];
            ssize_t n;
            while ((n = ::recv(control_, text, sizeof text, 0)) < 0 && errno == EINTR) {
            }
            failure = "coshard: the supervisor process could not start: " +
                      (n > 0 ? std::string(text, static_cast<std::size_t>(n)) : std::string("no reason given"));
            break;
          }
        }
      }
      if (r < 0 || fds[1].revents || (fds[0].revents & (POLLHUP | POLLERR))) {
        // It exited (or closed its end) without a word.
        // Peeked, not reaped (WNOWAIT): its process group is killed below,
        // before its pid can be reused.
        siginfo_t info{};
        wait_readable(pidfd_, std::chrono::milliseconds(1000));
        const bool reaped =
            ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_), &info,
                     WEXITED | WNOHANG | WNOWAIT) == 0 &&
            info.si_pid != 0;
        failure = "coshard: the supervisor process ended before it served (" +
                  (reaped ? (info.si_code == CLD_EXITED ? "exited with code " + std::to_string(info.si_status)
                                                        : "killed by signal " + std::to_string(info.si_status))
                          : std::string("closed its control socket")) +
                  ")" + exit_hint;
        break;
      }
    }
    // Its process group too: a re-run program that went on into its own
    // code (no serve_if_worker) may have started children; the group is its
    // own (exec) or not yet made (fork), so nothing else is in it.
    ::kill(-pid_, SIGKILL);
    signal_pidfd(pidfd_, SIGKILL);
    siginfo_t info;
    while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd_), &info, WEXITED) < 0 && errno == EINTR) {
    }
    ::close(control_);
    ::close(pidfd_);
    control_ = pidfd_ = -1;
    throw pool_error(failure);
  }

  static bool wait_readable(int fd, std::chrono::milliseconds timeout) noexcept {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::max<long long>(0, left.count())));
      if (r > 0) return true;
      if (r == 0 || errno != EINTR) return false;
    }
  }

  // Lines from the supervisor wait here for the sink's thread, so that a
  // slow sink never holds up the reports jobs wait for. Past this many bytes
  // the reader waits for the sink after all (the supervisor then keeps the
  // lines, and the workers that print wait).
  static constexpr std::size_t max_queued_output = 16u << 20;

  void queue_output(const supervisor_message& m, std::string_view lines) {
    std::unique_lock lock(output_mutex_);
    output_room_.wait(lock, [&] { return output_bytes_ < max_queued_output || !output_sink_running_; });
    if (!output_sink_running_) return;
    output_bytes_ += lines.size();
    output_queue_.push_back({m.slot, m.pid, m.arg, std::string(lines)});
    output_ready_.notify_one();
  }

  // The sink's thread: one line at a time, in arrival order, until the
  // reader is done and the queue is empty.
  void deliver_output() noexcept {
    for (;;) {
      queued_lines q;
      {
        std::unique_lock lock(output_mutex_);
        output_ready_.wait(lock, [&] { return !output_queue_.empty() || output_closed_; });
        if (output_queue_.empty()) break;
        q = std::move(output_queue_.front());
        output_queue_.pop_front();
        output_bytes_ -= q.lines.size();
        output_room_.notify_one();
      }
      worker_output_line line;
      line.slot = q.slot;
      line.pid = q.pid;
      line.stream = q.stream;
      std::string_view lines(q.lines);
      while (!lines.empty()) {
        const std::size_t nl = lines.find('\n');
        line.text = lines.substr(0, nl);
        lines.remove_prefix(nl == std::string_view::npos ? lines.size() : nl + 1);
        try {
          output_sink_(line);
        } catch (...) {
          // Documented: what the sink throws is dropped.
        }
      }
    }
    std::lock_guard lock(output_mutex_);
    output_sink_running_ = false;
    output_room_.notify_all();
  }

  // After the reader's end: the sink gets what is queued, then its thread ends.
  void finish_output() noexcept {
    {
      std::lock_guard lock(output_mutex_);
      output_closed_ = true;
      output_ready_.notify_all();
    }
    if (sink_thread_.joinable()) sink_thread_.join();
  }

  void read_reports() noexcept {
    supervisor_message m;
    int fd = -1;
    std::size_t extra = 0;
    while (receive_message(control_, m, fd, output_buffer_, &extra)) {
      if (m.op == supervisor_op::output) {
        if (output_sink_) queue_output(m, std::string_view(output_buffer_.data(), extra));
        continue;
      }
      std::shared_ptr<oneshot<spawn_result>> spawn;
      std::shared_ptr<oneshot<int>> exit;
      {
        std::lock_guard lock(mutex_);
        if (m.op == supervisor_op::spawned || m.op == supervisor_op::spawn_failed) {
          auto it = spawns_.find(m.id);
          if (it != spawns_.end()) {
            spawn = std::move(it->second);
            spawns_.erase(it);
          }
        } else if (m.op == supervisor_op::exited) {
          if (ignored_.erase(m.pid) == 0) {
            auto& slot = exits_[m.pid];
            if (!slot) slot = std::make_shared<oneshot<int>>();
            exit = slot;
          }
        }
      }
      if (spawn) {
        if (m.op == supervisor_op::spawned && fd >= 0)
          spawn->set({m.pid, std::exchange(fd, -1), {}});
        else
          spawn->set({-1, -1, std::string(std::strerror(m.arg ? m.arg : EIO))});
      }
      if (exit) exit->set(m.arg);
      if (fd >= 0) ::close(fd);  // a worker no one waits for any more: it exits on EOF
      fd = -1;
    }
    // The supervisor is gone: nothing pending will ever be answered.
    std::map<std::uint64_t, std::shared_ptr<oneshot<spawn_result>>> spawns;
    std::map<pid_t, std::shared_ptr<oneshot<int>>> exits;
    {
      std::lock_guard lock(mutex_);
      alive_ = false;
      spawns.swap(spawns_);
      exits = exits_;
    }
    for (auto& [id, s] : spawns) s->set({-1, -1, "the pool's supervisor process is gone"});
    for (auto& [pid, e] : exits) e->set(unknown_wait_status);
  }

  pid_t owner_;
  pid_t pid_ = -1;
  int control_ = -1;
  int pidfd_ = -1;
  std::function<void(const worker_output_line&)> output_sink_;
  std::vector<char> output_buffer_ = std::vector<char>(max_output_datagram);
  struct queued_lines {
    std::uint32_t slot = 0;
    pid_t pid = 0;
    int stream = 0;
    std::string lines;
  };
  std::mutex output_mutex_;
  std::condition_variable output_ready_, output_room_;
  std::deque<queued_lines> output_queue_;  // guarded by output_mutex_
  std::size_t output_bytes_ = 0;           // guarded by output_mutex_
  bool output_closed_ = false;             // guarded by output_mutex_
  bool output_sink_running_ = true;        // guarded by output_mutex_
  std::thread sink_thread_;
  std::thread reader_;
  std::mutex mutex_;
  bool alive_ = true;
  std::uint64_t next_id_ = 1;
  std::map<std::uint64_t, std::shared_ptr<oneshot<spawn_result>>> spawns_;
  std::map<pid_t, std::shared_ptr<oneshot<int>>> exits_;
  std::set<pid_t> ignored_;
};

}  // namespace coshard::detail
