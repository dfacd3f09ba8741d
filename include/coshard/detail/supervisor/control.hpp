// coshard/detail/supervisor/control.hpp - the messages between a pool's owner
// and its supervisor process (one SOCK_SEQPACKET socket), and the pidfd calls
// both sides use.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <span>
#include <string_view>
#include <utility>
#include <thread>
#include <vector>

#include "coshard/detail/child_setup.hpp"
#include "coshard/detail/oneshot.hpp"
#include "coshard/detail/worker/worker_main.hpp"
#include "coshard/errors.hpp"

namespace coshard::detail {

// glibc 2.36 declares these in <sys/pidfd.h> without C linkage for C++;
// the system calls themselves are in every kernel since 5.3.
inline int open_pidfd(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
inline int signal_pidfd(int pidfd, int sig) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

// ---------------------------------------------------------------------------
// Control messages (SOCK_SEQPACKET: one message per send, a descriptor rides
// along with `spawned`).
// ---------------------------------------------------------------------------

enum class supervisor_op : std::uint32_t {
  // owner -> supervisor
  spawn = 1,     // fork a worker for `slot`; answered by spawned or spawn_failed with `id`
  kill = 2,      // SIGKILL worker `pid`, if it is still a live child
  kill_all = 3,  // SIGKILL every worker
  shutdown = 4,  // no more spawns; kill what is left after `arg` ms, then exit
  // supervisor -> owner
  spawned = 10,       // worker `pid` started for `slot`; its channel comes as SCM_RIGHTS
  spawn_failed = 11,  // `arg` is the errno of the failed fork or socketpair
  exited = 12,        // worker `pid` was reaped; `arg` is its wait status
  hello = 13,         // the supervisor is ready to serve (its first message)
  start_failed = 14,  // it cannot serve; one text datagram saying why follows
  output = 15,        // worker `pid` in `slot` wrote lines to stream `arg` (1, 2): they follow in the same datagram
};

/// Where workers' output goes.
enum class output_route : std::uint32_t {
  inherit = 0,          // the caller's own descriptors, untouched
  prefixed_stderr = 1,  // the supervisor writes "[worker S pid P] line" to its stderr (the caller's)
  owner = 2,            // the supervisor sends lines to the owner, whose link calls the user's sink
};

/// A line is passed on at this length even without its newline, so that a
/// worker writing no newline cannot make the supervisor hold unbounded memory.
inline constexpr std::size_t max_output_line = 32 * 1024;
/// Lines travel to the owner in datagrams of at most this size.
inline constexpr std::size_t max_output_datagram = 64 * 1024;

struct supervisor_message {
  supervisor_op op{};
  std::uint32_t slot = 0;
  std::uint64_t id = 0;
  std::int32_t pid = 0;
  std::int32_t arg = 0;
};

inline bool send_message(int fd, const supervisor_message& m, int pass_fd = -1, int flags = 0) noexcept {
  iovec iov{const_cast<supervisor_message*>(&m), sizeof m};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (pass_fd >= 0) {
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  for (;;) {
    if (::sendmsg(fd, &msg, MSG_NOSIGNAL | flags) == static_cast<ssize_t>(sizeof m)) return true;
    if (errno != EINTR) return false;
  }
}

/// Receives one message (and the descriptor it carries, close-on-exec, into
/// `got_fd`; the bytes after the message, such as an `output` message's
/// lines, into `extra`, their count into `extra_size`). Returns false on EOF
/// or error.
inline bool receive_message(int fd, supervisor_message& m, int& got_fd, std::span<char> extra = {},
                            std::size_t* extra_size = nullptr) noexcept {
  got_fd = -1;
  if (extra_size) *extra_size = 0;
  iovec iov[2] = {{&m, sizeof m}, {extra.data(), extra.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = extra.empty() ? 1 : 2;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  for (cmsghdr* c = n > 0 ? CMSG_FIRSTHDR(&msg) : nullptr; c; c = CMSG_NXTHDR(&msg, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) std::memcpy(&got_fd, CMSG_DATA(c), sizeof(int));
  if (n < static_cast<ssize_t>(sizeof m) || (extra.empty() && n != static_cast<ssize_t>(sizeof m))) {
    if (got_fd >= 0) ::close(got_fd);
    got_fd = -1;
    return false;
  }
  if (extra_size) *extra_size = static_cast<std::size_t>(n) - sizeof m;
  return true;
}

/// Sends `text` as one datagram (after start_failed).
inline void send_text(int fd, const std::string& text) noexcept {
  const std::size_t n = std::min<std::size_t>(text.size(), 4000);
  while (::send(fd, text.data(), n, MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

enum class send_result { sent, full, gone };

/// Sends an `output` message with its lines (each ending in '\n', at most
/// max_output_datagram bytes) as one datagram, so that a full socket can
/// refuse it whole (`flags` MSG_DONTWAIT: `full`).
inline send_result send_output(int fd, std::uint32_t slot, pid_t pid, int stream, std::string_view lines,
                               int flags) noexcept {
  supervisor_message m{supervisor_op::output, slot, lines.size(), pid, stream};
  iovec iov[2] = {{&m, sizeof m}, {const_cast<char*>(lines.data()), lines.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  for (;;) {
    if (::sendmsg(fd, &msg, MSG_NOSIGNAL | flags) >= 0) return send_result::sent;
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK ? send_result::full : send_result::gone;
  }
}

/// Builds the settings of the worker for one slot, in the supervisor.
using worker_settings_factory = std::function<worker_settings(std::uint32_t slot)>;

/// Sets the socket buffers of a worker channel: a whole batch goes down in
/// one send (the kernel caps the request at net.core.wmem_max).
inline void size_channel_buffers(int fd) noexcept {
  const int bytes = 1 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

}  // namespace coshard::detail
