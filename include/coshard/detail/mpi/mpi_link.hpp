// coshard/detail/mpi/mpi_link.hpp - messages between the root and the other
// ranks of a cluster, and the loop that moves them.
//
// Every MPI call of a process is made on one thread, the one that runs the
// link's io_context (the library is initialised with MPI_THREAD_SERIALIZED):
// other threads only queue messages. MPI has no descriptor to wait on, so the
// loop polls, and backs off while nothing moves: at most one poll per
// `idle_poll` once idle, so an idle rank costs little CPU while a busy one
// answers within microseconds.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <list>
#include <utility>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/errors.hpp"

namespace coshard::detail {

/// What a cluster message is.
enum class cluster_op : std::uint32_t {
  // root -> rank
  bring_up = 1,  // start worker `worker` if it has none
  release = 2,   // let worker `worker` go (it exits on EOF)
  replace = 3,   // let it go and start another
  kill = 4,      // SIGKILL worker `worker` (pid `pid`)
  shutdown = 5,  // shut the rank's workers down (`aux`: grace in ms) and say bye
  // rank -> root
  hello = 10,         // the rank serves `aux` workers
  ready = 11,         // worker `worker` is ready: pid `pid`
  start_failed = 12,  // worker `worker` could not start; the body says why
  ended = 13,         // worker `worker` (pid `pid`) ended: wait status `status`, timed-out index `aux`
  heartbeat = 14,     // the rank is alive (sent while idle)
  bye = 15,           // the rank shut down
  // both ways
  frame = 20,  // a worker frame (frame_header + payload) for / from worker `worker`
};

/// The fixed head of every message; the body follows it.
struct cluster_message {
  cluster_op op{};
  std::uint32_t worker = 0;
  std::int32_t pid = 0;
  std::int32_t status = 0;
  std::uint64_t aux = 0;
};

inline constexpr int cluster_tag = 4242;

/// How often a rank tells the root it is alive.
inline constexpr std::chrono::milliseconds heartbeat_interval{500};

/// The longest pause between two polls once a process has been idle a while.
inline constexpr std::chrono::microseconds deep_idle_poll{20'000};

/// Throws pool_error naming `what` if an MPI call failed.
inline void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw pool_error(std::string("coshard: ") + what + " failed: " + std::string(text, static_cast<std::size_t>(len)));
}

/// Sends and receives cluster messages for one process. Thread-safe send();
/// everything else on the io_context given at construction.
class mpi_link {
 public:
  /// Called on the link's thread for every message that arrives: its head,
  /// and the whole message (head included) in a buffer the receiver may keep
  /// (move it out, give it back with recycle() when done) so that a frame
  /// is not copied again on its way.
  using receiver = std::function<void(int source, const cluster_message&, byte_buffer& message)>;

  mpi_link(MPI_Comm comm, asio::io_context& io, receiver on_message,
           std::chrono::microseconds idle_poll = std::chrono::milliseconds(2))
      : comm_(comm), io_(io), timer_(io), on_message_(std::move(on_message)), idle_poll_(idle_poll) {}

  mpi_link(const mpi_link&) = delete;
  mpi_link& operator=(const mpi_link&) = delete;

  /// Queues a message to `dest`: head, then `a` and `b` as its body. Any
  /// thread; never blocks (the bytes are copied).
  void send(int dest, const cluster_message& m, std::span<const std::byte> a = {},
            std::span<const std::byte> b = {}) {
    byte_buffer bytes = take_buffer();
    bytes.reserve(sizeof m + a.size() + b.size());
    bytes.append(&m, sizeof m);
    bytes.append(a.data(), a.size());
    bytes.append(b.data(), b.size());
    {
      std::lock_guard lock(mutex_);
      queued_.push_back({dest, std::move(bytes)});
    }
    wake();
  }

  /// A buffer for a message the caller builds in place (for send_built):
  /// a recycled one where there is one. Any thread.
  byte_buffer message_buffer() { return take_buffer(); }

  /// Queues a message built in `message`: its first sizeof(cluster_message)
  /// bytes are overwritten with `m`, the rest is the body. Any thread; the
  /// buffer is kept (not copied) until MPI has sent it.
  void send_built(int dest, const cluster_message& m, byte_buffer message) {
    std::memcpy(message.data(), &m, sizeof m);
    {
      std::lock_guard lock(mutex_);
      queued_.push_back({dest, std::move(message)});
    }
    wake();
  }

  /// Gives a received message's buffer back for reuse. Any thread.
  void recycle(byte_buffer b) {
    if (b.capacity() == 0) return;
    std::lock_guard lock(mutex_);
    spare_.give(std::move(b));
  }

  /// Moves messages until stop(); run it on the link's io_context.
  asio::awaitable<void> run() {
    using namespace std::chrono;
    auto active_at = steady_clock::now();
    while (!stopping()) {
      bool moved = false;
      for (int i = 0; i < 64 && poll_once(); ++i) moved = true;
      moved = start_sends() || moved;
      moved = finish_sends() || moved;
      const auto now = steady_clock::now();
      if (std::exchange(active_, false)) active_at = now;
      if (moved) {
        co_await asio::post(io_, asio::use_awaitable);  // let the other coroutines of this loop run
        continue;
      }
      // Nothing moved: the pause is an eighth of the time since the last
      // message (heartbeats aside), so that a message from another rank waits
      // about an eighth as long as the exchange it answers took (a pause that
      // doubled at each empty poll let it wait as long again: a map of 10^5
      // items took 6 ms on 3 ranks, 1.4 ms now). From 20 us up to idle_poll,
      // and after 200 ms without messages up to deep_idle_poll. A send() from
      // another thread cuts the wait short.
      const auto quiet = now - active_at;
      const microseconds shortest(20);
      const microseconds longest = std::max(shortest, quiet > milliseconds(200) ? deep_idle_poll : idle_poll_);
      const auto pause = std::clamp(duration_cast<microseconds>(quiet) / 8, shortest, longest);
      timer_.expires_after(pause);
      asio::error_code ec;
      co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  /// Ends run() at its next turn. Any thread.
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake();
  }

  /// True while messages are queued or not yet delivered to MPI.
  [[nodiscard]] bool sending() const {
    std::lock_guard lock(mutex_);
    return !queued_.empty() || !in_flight_.empty();
  }

  /// Waits (on the link's thread, outside run()) until every queued message
  /// was handed over, or `limit` passed. For the last words before MPI_Finalize.
  void flush(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (sending() && std::chrono::steady_clock::now() < until) {
      start_sends();
      finish_sends();
      while (poll_once()) {
      }
    }
  }

 private:
  struct outgoing {
    int dest;
    byte_buffer bytes;
    MPI_Request request = MPI_REQUEST_NULL;
  };

  byte_buffer take_buffer() {
    std::lock_guard lock(mutex_);
    return spare_.take();
  }

  bool stopping() const {
    std::lock_guard lock(mutex_);
    return stop_;
  }

  void wake() {
    asio::post(io_, [this] { timer_.cancel(); });
  }

  // Receives one message if one has arrived.
  bool poll_once() {
    int flag = 0;
    MPI_Message message;
    MPI_Status status;
    check_mpi(MPI_Improbe(MPI_ANY_SOURCE, cluster_tag, comm_, &flag, &message, &status), "MPI_Improbe");
    if (!flag) return false;
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    byte_buffer bytes = take_buffer();
    std::byte* into = bytes.grow(static_cast<std::size_t>(count));  // not zeroed: MPI writes it all
    check_mpi(MPI_Mrecv(into, count, MPI_BYTE, &message, MPI_STATUS_IGNORE), "MPI_Mrecv");
    if (bytes.size() >= sizeof(cluster_message)) {  // else not ours: dropped
      cluster_message m;
      std::memcpy(&m, bytes.data(), sizeof m);
      if (m.op != cluster_op::heartbeat) active_ = true;
      on_message_(status.MPI_SOURCE, m, bytes);
    }
    recycle(std::move(bytes));  // unless the receiver kept it
    return true;
  }

  bool start_sends() {
    std::deque<outgoing> batch;
    {
      std::lock_guard lock(mutex_);
      batch.swap(queued_);
    }
    if (batch.empty()) return false;
    for (auto& o : batch) {
      if (o.bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()))
        throw pool_error("coshard: a cluster message of " + std::to_string(o.bytes.size()) +
                         " bytes is above MPI's int count (2 GiB): lower max_frame_bytes for a cluster");
      cluster_message m;
      std::memcpy(&m, o.bytes.data(), sizeof m);
      if (m.op != cluster_op::heartbeat) active_ = true;
      in_flight_.push_back(std::move(o));
      outgoing& f = in_flight_.back();
      check_mpi(MPI_Isend(f.bytes.data(), static_cast<int>(f.bytes.size()), MPI_BYTE, f.dest, cluster_tag, comm_,
                          &f.request),
                "MPI_Isend");
    }
    return true;
  }

  bool finish_sends() {
    bool done_any = false;
    for (auto it = in_flight_.begin(); it != in_flight_.end();) {
      int done = 0;
      check_mpi(MPI_Test(&it->request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) {
        recycle(std::move(it->bytes));
        it = in_flight_.erase(it);
        done_any = true;
      } else {
        ++it;
      }
    }
    return done_any;
  }

  MPI_Comm comm_;
  asio::io_context& io_;
  asio::steady_timer timer_;
  receiver on_message_;
  std::chrono::microseconds idle_poll_;
  mutable std::mutex mutex_;
  std::deque<outgoing> queued_;  // guarded by mutex_
  bool stop_ = false;            // guarded by mutex_
  std::list<outgoing> in_flight_;
  buffer_pool spare_{64, std::size_t{4} << 20};  // guarded by mutex_
  bool active_ = false;  // a message other than a heartbeat moved since the last look
};

}  // namespace coshard::detail
