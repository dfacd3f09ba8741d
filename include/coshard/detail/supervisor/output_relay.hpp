// coshard/detail/supervisor/output_relay.hpp - workers' stdout and stderr, as
// the supervisor passes them on: one pipe per stream per worker, read in the
// supervisor's poll loop and passed on in whole lines.
//
// Why the supervisor: it is single-threaded and already wakes for every
// worker event, so one writer puts whole lines on the caller's stderr (two
// workers' lines never tear, whatever their length) without a thread in the
// caller; and a user's sink gets them over the control socket it already has.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
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
/// `at_end`, else up to the last newline or last whole max_output_line piece.
template <class Line>
std::size_t split_output_lines(std::string_view text, bool at_end, Line&& line) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    const std::size_t end = nl == std::string_view::npos ? text.size() : nl;
    if (end - pos >= max_output_line) {
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

  /// Appends a pollfd per open stream; serve() takes them back in that order.
  void add_poll_fds(std::vector<pollfd>& fds) const {
    for (const auto& s : streams_) fds.push_back({s.fd, POLLIN, 0});
  }

  /// Reads every stream whose pollfd (as added by add_poll_fds) is ready,
  /// once each, so that a chatty worker cannot starve the others.
  void serve(const pollfd* fds, std::size_t n) {
    for (std::size_t i = 0; i < n && i < streams_.size(); ++i)
      if (fds[i].revents) read_once(streams_[i]);
    erase_closed();
  }

  /// Before the supervisor exits: passes on whatever is left, without waiting
  /// for a writer that still holds a pipe open (a worker's own child).
  void drain() noexcept {
    try {
      for (auto& s : streams_)
        while (s.fd >= 0 && read_once(s)) {
        }
      for (auto& s : streams_)
        if (s.fd >= 0) finish(s);
      erase_closed();
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

  void pass_on(stream& s, bool at_end) {
    out_.clear();
    const std::size_t used = split_output_lines(s.pending, at_end, [&](std::string_view line) {
      if (route_ == output_route::prefixed_stderr) {
        out_ += "[worker " + std::to_string(s.slot) + " pid " + std::to_string(s.pid) + "] ";
      } else if (out_.size() + line.size() + 1 > max_output_datagram) {
        send_to_owner(s);
      }
      out_.append(line);
      out_ += '\n';
    });
    s.pending.erase(0, used);
    if (out_.empty()) return;
    if (route_ == output_route::prefixed_stderr)
      write_all(STDERR_FILENO, out_);
    else
      send_to_owner(s);
  }

  // One `output` message, then the lines as one datagram. Blocking: the
  // owner's reader takes them as fast as its sink does.
  void send_to_owner(const stream& s) {
    if (out_.empty() || !owner_open_) return;
    if (!send_output(control_, s.slot, s.pid, s.which, out_)) owner_open_ = false;
    out_.clear();
  }

  static void write_all(int fd, std::string_view text) noexcept {
    while (!text.empty()) {
      const ssize_t n = ::write(fd, text.data(), text.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // stderr closed or full for good: the lines are dropped
      text.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  output_route route_;
  int control_;
  bool owner_open_ = true;
  std::vector<stream> streams_;
  std::string out_;
};

}  // namespace coshard::detail
