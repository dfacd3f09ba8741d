// coshard/detail/supervisor/output_relay.hpp - workers' stdout and stderr, as
// the supervisor passes them on: one pipe per stream per worker, read in the
// supervisor's poll loop and passed on in whole lines.
//
// Why the supervisor: it is single-threaded and already wakes for every
// worker event, so one writer puts whole lines on the caller's stderr (two
// workers' lines never tear, whatever their length) without a thread in the
// caller; and a user's sink gets them over the control socket it already has.
//
// The supervisor never blocks on output: lines wait in a bounded buffer and
// go out when poll says stderr (or the control socket) has room. While the
// buffer is full, the workers' pipes are not read, so a reader that does not
// keep up slows the workers that print, never the supervisor's own work
// (reaping, spawning, killing).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <chrono>
#include <climits>
#include <cstdio>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "coshard/detail/supervisor/control.hpp"
#include "coshard/pool_options.hpp"

namespace coshard::detail {

/// The route `o` asks for.
inline output_route output_route_of(const pool_options& o) noexcept {
  if (!o.capture_worker_output) return output_route::inherit;
  return o.worker_output ? output_route::owner : output_route::prefixed_stderr;
}

/// The pipes of one worker's stdout and stderr: read ends, then write ends.
struct worker_pipes {
  int out[2] = {-1, -1};
  int err[2] = {-1, -1};
};

/// Calls `line(text)` for each line of `text` (a run of lines each ending in
/// '\n', the last one possibly not), splitting lines longer than
/// max_output_line. Returns how many bytes were used: all of them if
/// `at_end`, else up to the last newline or last whole max_output_line piece
/// (a piece of exactly that length is passed on only once more follows it,
/// so that a newline arriving in the next read ends it rather than making
/// an empty line).
template <class Line>
std::size_t split_output_lines(std::string_view text, bool at_end, Line&& line) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    const std::size_t end = nl == std::string_view::npos ? text.size() : nl;
    if (end - pos > max_output_line || (end - pos == max_output_line && nl != std::string_view::npos)) {
      line(text.substr(pos, max_output_line));
      pos += max_output_line;
      if (pos == end && nl != std::string_view::npos) ++pos;  // the newline ended exactly that piece
      continue;
    }
    if (nl == std::string_view::npos && !at_end) break;
    line(text.substr(pos, end - pos));
    pos = nl == std::string_view::npos ? end : nl + 1;
  }
  return pos;
}

class output_relay {
 public:
  /// `control` is the supervisor's end of the control socket (route owner).
  output_relay(output_route route, int control) noexcept : route_(route), control_(control) {}

  [[nodiscard]] bool captures() const noexcept { return route_ != output_route::inherit; }

  /// Makes the pipes of a worker about to be forked. False (errno set) if
  /// they could not be made; nothing is left open then.
  bool make_pipes(worker_pipes& p) noexcept {
    if (!captures()) return true;
    if (::pipe2(p.out, O_CLOEXEC) != 0) return false;
    if (::pipe2(p.err, O_CLOEXEC) != 0) {
      const int e = errno;
      close_pipe(p.out);
      errno = e;
      return false;
    }
    return true;
  }

  /// In the forked worker: its stdout and stderr become the pipes, stdout
  /// line-buffered as on a terminal (a pipe would make it fully buffered,
  /// holding lines back and losing them in a crash).
  void become_worker_side(const worker_pipes& p) noexcept {
    if (!captures()) return;
    std::fflush(nullptr);
    ::dup2(p.out[1], STDOUT_FILENO);  // dup2 clears close-on-exec on the copy
    ::dup2(p.err[1], STDERR_FILENO);
    std::setvbuf(stdout, nullptr, _IOLBF, BUFSIZ);
  }

  /// In the supervisor after the fork: keeps the read ends, for `pid` in
  /// `slot`. If it throws (out of memory), the read ends are still in `p`.
  void adopt(worker_pipes& p, pid_t pid, std::uint32_t slot) {
    if (!captures()) return;
    ::close(std::exchange(p.out[1], -1));
    ::close(std::exchange(p.err[1], -1));
    streams_.reserve(streams_.size() + 2);
    for (auto [fd, which] : {std::pair{p.out[0], 1}, std::pair{p.err[0], 2}}) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      streams_.push_back({fd, pid, slot, which, {}});
    }
    p.out[0] = p.err[0] = -1;
  }

  /// After a failed fork: closes both pipes.
  static void discard(worker_pipes& p) noexcept {
    close_pipe(p.out);
    close_pipe(p.err);
  }

  /// Appends a pollfd for where waiting lines go (if any wait), then one per
  /// open stream (asking for nothing while the buffer is full); serve()
  /// takes them back in that order.
  void add_poll_fds(std::vector<pollfd>& fds) const {
    fds.push_back({waiting_.empty() ? -1 : destination(), POLLOUT, 0});
    const short in = waiting_.size() < max_waiting ? short(POLLIN) : short(0);
    for (const auto& s : streams_) fds.push_back({s.fd, in, 0});
  }

  /// Passes waiting lines on if there is room, then reads every stream whose
  /// pollfd is ready, once each, so that a chatty worker cannot starve the
  /// others.
  void serve(const pollfd* fds, std::size_t n) {
    if (n == 0) return;
    if (fds[0].revents) flush_some();
    for (std::size_t i = 1; i < n && i - 1 < streams_.size(); ++i)
      if (fds[i].revents) read_once(streams_[i - 1]);
    erase_closed();
  }

  /// Before the supervisor exits: reads what the pipes hold now (not what a
  /// writer that outlives its worker, such as a worker's own child, writes
  /// later) and passes it on, waiting at most `limit` for room.
  void drain(std::chrono::milliseconds limit) noexcept {
    try {
      for (auto& s : streams_) {
        for (int reads = 0; s.fd >= 0 && reads < 64 && read_once(s); ++reads) {
        }
        if (s.fd >= 0) finish(s);
      }
      erase_closed();
      const auto until = std::chrono::steady_clock::now() + limit;
      while (!waiting_.empty() && owner_open_) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        pollfd p{destination(), POLLOUT, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
        if (!flush_some()) break;
      }
    } catch (...) {
    }
  }

 private:
  struct stream {
    int fd;
    pid_t pid;
    std::uint32_t slot;
    int which;
    std::string pending;  // the start of a line whose newline has not come yet
  };

  static void close_pipe(int (&p)[2]) noexcept {
    for (int& fd : p)
      if (fd >= 0) ::close(std::exchange(fd, -1));
  }

  // Reads once; passes on the whole lines. False when nothing more is there
  // now (EAGAIN) or ever (EOF, error: the stream is finished and closed).
  bool read_once(stream& s) {
    char buffer[max_output_datagram];
    ssize_t n;
    do {
      n = ::read(s.fd, buffer, sizeof buffer);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (n <= 0) {
      finish(s);
      return false;
    }
    s.pending.append(buffer, static_cast<std::size_t>(n));
    pass_on(s, false);
    return true;
  }

  void finish(stream& s) {
    pass_on(s, true);
    ::close(s.fd);
    s.fd = -1;
  }

  void erase_closed() {
    std::erase_if(streams_, [](const stream& s) { return s.fd < 0; });
  }

  // Queues the whole lines of `s` (all of it `at_end`) to be passed on.
  void pass_on(stream& s, bool at_end) {
    const std::size_t used = split_output_lines(s.pending, at_end, [&](std::string_view line) {
      if (route_ == output_route::prefixed_stderr) {
        if (waiting_.empty() || waiting_.back().text.size() >= max_output_datagram) waiting_.emplace_back();
        std::string& out = waiting_.back().text;
        out += "[worker " + std::to_string(s.slot) + " pid " + std::to_string(s.pid) + "] ";
        out.append(line);
        out += '\n';
        return;
      }
      // To the owner: datagrams of one stream's lines, at most max_output_datagram each.
      if (waiting_.empty() || waiting_.back().slot != s.slot || waiting_.back().pid != s.pid ||
          waiting_.back().which != s.which || waiting_.back().text.size() + line.size() + 1 > max_output_datagram)
        waiting_.push_back({s.slot, s.pid, s.which, {}});
      waiting_.back().text.append(line);
      waiting_.back().text += '\n';
    });
    s.pending.erase(0, used);
    flush_some();
  }

  [[nodiscard]] int destination() const noexcept {
    return route_ == output_route::prefixed_stderr ? STDERR_FILENO : control_;
  }

  // Passes on what fits now without blocking. To stderr: at most PIPE_BUF
  // bytes per write, cut after a newline where one is, so that lines up to
  // that length stay whole even beside the caller's own writes to stderr
  // (poll's POLLOUT on a pipe promises room for PIPE_BUF bytes). To the
  // owner: whole datagrams, MSG_DONTWAIT. False if nothing could go.
  bool flush_some() noexcept {
    bool moved = false;
    while (!waiting_.empty()) {
      if (route_ == output_route::prefixed_stderr) {
        std::string& text = waiting_.front().text;
        pollfd p{STDERR_FILENO, POLLOUT, 0};
        if (::poll(&p, 1, 0) <= 0 || !(p.revents & POLLOUT)) return moved;
        std::size_t n = std::min<std::size_t>(text.size(), PIPE_BUF);
        if (n < text.size())
          if (const std::size_t nl = text.rfind('\n', n - 1); nl != std::string::npos) n = nl + 1;
        const ssize_t w = ::write(STDERR_FILENO, text.data(), n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return moved;
        if (w <= 0) {  // stderr closed for good: the lines are dropped
          waiting_.clear();
          return moved;
        }
        text.erase(0, static_cast<std::size_t>(w));
        if (text.empty()) waiting_.pop_front();
      } else {
        if (!owner_open_) {
          waiting_.clear();
          return moved;
        }
        const waiting_lines& d = waiting_.front();
        const auto r = send_output(control_, d.slot, d.pid, d.which, d.text, MSG_DONTWAIT);
        if (r == send_result::full) return moved;
        if (r == send_result::gone) owner_open_ = false;
        waiting_.pop_front();
      }
      moved = true;
    }
    return moved;
  }

  // Lines waiting for room, in entries of up to about max_output_datagram
  // bytes: for the owner, one datagram each.
  struct waiting_lines {
    std::uint32_t slot = 0;
    pid_t pid = 0;
    int which = 0;
    std::string text;
  };
  // Beyond this many entries (about 4 MiB) the workers' pipes are not read.
  static constexpr std::size_t max_waiting = 64;

  output_route route_;
  int control_;
  bool owner_open_ = true;
  std::vector<stream> streams_;
  std::deque<waiting_lines> waiting_;
};

}  // namespace coshard::detail
