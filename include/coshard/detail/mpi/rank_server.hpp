// coshard/detail/mpi/rank_server.hpp - a rank other than the root: it hosts a
// local pool of forked workers and relays their frames to and from the root,
// whose job engine schedules them as it does its own workers.
//
// The rank runs no user code itself, and knows nothing of jobs: frames pass
// through unchanged. It reports each worker's start, pid and end (its wait
// status and timed-out index, as the local transport learns them), so the
// root convicts crashing items, retries batches and replaces workers exactly
// as on one machine.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>

#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "coshard/detail/mpi/mpi_link.hpp"
#include "coshard/detail/parent/local_transport.hpp"
#include "coshard/detail/parent/worker_set.hpp"

namespace coshard::detail {

class rank_server {
 public:
  /// Starts this rank's workers (their supervisor and every worker, ready).
  /// Throws pool_error as process_pool's constructor does.
  /// `root_timeout`: the root is taken as gone (and this rank shuts its
  /// workers down and returns from serve()) after that long without a word.
  rank_server(MPI_Comm comm, int root, const pool_options& local, std::chrono::milliseconds root_timeout)
      : root_timeout_(root_timeout),
        root_(root),
        workers_(local),
        transport_(workers_),
        link_(comm, io_, [this](int source, const cluster_message& m, byte_buffer& message) {
          on_message(source, m, message);
        }),
        slots_(transport_.slot_count()) {}

  rank_server(const rank_server&) = delete;
  rank_server& operator=(const rank_server&) = delete;

  /// Serves the root until it says shutdown (or is lost); returns the exit
  /// code for main. The workers are shut down and reaped before it returns.
  int serve() {
    link_.send(root_, {cluster_op::hello, 0, 0, 0, slots_.size()});
    for (std::size_t w = 0; w < slots_.size(); ++w) open_worker(w);
    asio::co_spawn(io_, link_.run(), [this](std::exception_ptr e) {
      if (!e || stopping_) return;
      // MPI failed under us: no word can reach the root any more.
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        std::fprintf(stderr, "coshard rank: the MPI loop failed: %s\n", x.what());
      } catch (...) {
      }
      exit_code_ = 1;
      stopping_ = true;
      workers_.shutdown(std::chrono::milliseconds(0));
      io_.stop();
    });
    asio::co_spawn(io_, heartbeat(), asio::detached);
    io_.run();
    return exit_code_;
  }

 private:
  struct slot {
    std::unique_ptr<worker_channel> channel;
    std::deque<std::pair<frame_header, byte_buffer>> outbox;  // frames for the worker, in their messages
    bool writing = false;
    bool starting = false;
    std::uint64_t generation = 0;  // which worker the coroutines serve
  };

  void on_message(int source, const cluster_message& m, byte_buffer& message) {
    if (source != root_) return;
    const auto body = message.view().subspan(sizeof m);
    heard_from_root_ = std::chrono::steady_clock::now();
    const std::size_t w = m.worker;
    if (w >= slots_.size() && (m.op == cluster_op::bring_up || m.op == cluster_op::replace)) {
      const std::string why = "this rank serves " + std::to_string(slots_.size()) +
                              " workers (are the cluster_options the same on every rank?)";
      link_.send(root_, {cluster_op::start_failed, m.worker, 0, 0, 0},
                 std::as_bytes(std::span(why.data(), why.size())));
      return;
    }
    switch (m.op) {
      case cluster_op::frame:
        if (w < slots_.size() && body.size() >= sizeof(frame_header)) forward_to_worker(w, message);
        return;
      case cluster_op::bring_up:
        if (w < slots_.size()) bring_up(w);
        return;
      case cluster_op::release:
        if (w < slots_.size()) close_worker(w, /*replace=*/false);
        return;
      case cluster_op::replace:
        if (w < slots_.size()) close_worker(w, /*replace=*/true);
        return;
      case cluster_op::kill:
        if (w < slots_.size() && m.pid > 0 && transport_.pid(w) == m.pid) workers_.supervisor().kill(m.pid);
        return;
      case cluster_op::shutdown:
        shut_down(std::chrono::milliseconds(static_cast<std::int64_t>(m.aux)));
        return;
      default:
        return;
    }
  }

  // The worker in slot `w` is ready: tell the root, and relay its replies.
  void open_worker(std::size_t w) {
    slot& s = slots_[w];
    s.channel = transport_.open(w, io_.get_executor(), &io_);
    ++s.generation;
    link_.send(root_, {cluster_op::ready, static_cast<std::uint32_t>(w), transport_.pid(w), 0, 0});
    asio::co_spawn(io_, pump(w, s.generation), asio::detached);
  }

  // Worker -> root, until the worker's channel ends; then its end goes to the root.
  asio::awaitable<void> pump(std::size_t w, std::uint64_t generation) {
    slot& s = slots_[w];
    try {
      for (;;) {
        // Read into the message itself: the frame is not copied on its way.
        frame_header h;
        byte_buffer message = link_.message_buffer();
        co_await s.channel->receive_into(h, message, sizeof(cluster_message));
        if (s.generation != generation) co_return;
        link_.send_built(root_, {cluster_op::frame, static_cast<std::uint32_t>(w), 0, 0, 0}, std::move(message));
      }
    } catch (...) {
    }
    if (s.generation != generation || stopping_) co_return;  // released on purpose: nothing to report
    ++s.generation;
    s.channel.reset();
    s.outbox.clear();
    const worker_end end = co_await transport_.bury(w, /*kill=*/false);
    // Reported even if the root released or replaced the slot meanwhile:
    // the pid tells the root which worker it was.
    if (!stopping_)
      link_.send(root_, {cluster_op::ended, static_cast<std::uint32_t>(w), end.pid, end.status, end.timed_out_index});
  }

  // Keeps the message itself (no copy) until the frame is written.
  void forward_to_worker(std::size_t w, byte_buffer& message) {
    slot& s = slots_[w];
    if (!s.channel) return;  // the worker is gone; the root hears of it from its `ended`
    frame_header h;
    std::memcpy(&h, message.data() + sizeof(cluster_message), sizeof h);
    s.outbox.emplace_back(h, std::move(message));
    if (!s.writing) {
      s.writing = true;
      asio::co_spawn(io_, write_out(w, s.generation), asio::detached);
    }
  }

  // Root -> worker, one frame at a time (two writes must not interleave).
  asio::awaitable<void> write_out(std::size_t w, std::uint64_t generation) {
    slot& s = slots_[w];
    while (s.generation == generation && !s.outbox.empty() && s.channel) {
      auto [h, message] = std::move(s.outbox.front());
      s.outbox.pop_front();
      try {
        co_await s.channel->send(h, message.view().subspan(sizeof(cluster_message) + sizeof h));
      } catch (...) {
        break;  // the pump sees the end too, and reports it
      }
      link_.recycle(std::move(message));
    }
    s.writing = false;
    // Frames for a newer worker of this slot that came while this writer
    // (of an older one) was suspended get a writer of their own.
    if (s.generation != generation && !s.outbox.empty() && s.channel) {
      s.writing = true;
      asio::co_spawn(io_, write_out(w, s.generation), asio::detached);
    }
  }

  void close_worker(std::size_t w, bool replace) {
    slot& s = slots_[w];
    ++s.generation;
    s.outbox.clear();
    if (s.channel) s.channel->interrupt();
    s.channel.reset();
    if (replace) {
      transport_.replace(w);
      bring_up(w);  // the root waits for its `ready`
    } else {
      transport_.release(w);
    }
  }

  void bring_up(std::size_t w) {
    slot& s = slots_[w];
    if (s.channel) {  // ready already (its first `ready` may have come before the root listened)
      link_.send(root_, {cluster_op::ready, static_cast<std::uint32_t>(w), transport_.pid(w), 0, 0});
      return;
    }
    if (s.starting) return;
    s.starting = true;
    asio::co_spawn(io_, start_worker(w), asio::detached);
  }

  asio::awaitable<void> start_worker(std::size_t w) {
    std::function<void()> interrupt;
    std::string failure;
    try {
      if (co_await transport_.bring_up(w, interrupt)) {
        slots_[w].starting = false;
        if (!stopping_) open_worker(w);
        co_return;
      }
      failure = "interrupted";
    } catch (const std::exception& e) {
      failure = e.what();
    }
    slots_[w].starting = false;
    link_.send(root_, {cluster_op::start_failed, static_cast<std::uint32_t>(w), 0, 0, 0},
               std::as_bytes(std::span(failure.data(), failure.size())));
  }

  // The rank says it is alive, so that the root can tell a lost
  // rank from a quiet one; it also gives up when the root has been silent
  // for long (a root that died without a word: Open MPI may not tell us).
  asio::awaitable<void> heartbeat() {
    asio::steady_timer timer(io_);
    while (!stopping_) {
      if (std::chrono::steady_clock::now() - heard_from_root_ > root_timeout_) {
        shut_down(std::chrono::milliseconds(0));  // the root is gone: nothing will ever be asked again
        co_return;
      }
      link_.send(root_, {cluster_op::heartbeat, 0, 0, 0, 0});
      timer.expires_after(heartbeat_interval);
      asio::error_code ec;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  void shut_down(std::chrono::milliseconds grace) {
    if (stopping_) return;
    stopping_ = true;
    for (std::size_t w = 0; w < slots_.size(); ++w) {
      slots_[w].generation++;
      if (slots_[w].channel) slots_[w].channel->interrupt();
      slots_[w].channel.reset();
    }
    workers_.shutdown(grace);
    link_.send(root_, {cluster_op::bye, 0, 0, 0, 0});
    link_.flush(std::chrono::milliseconds(2000));
    link_.stop();
    io_.stop();
  }

  std::chrono::milliseconds root_timeout_;
  int root_;
  // Destroyed in reverse: the channels and the link (registered with io_)
  // before io_, and io_ (which destroys the coroutines still pending, e.g. a
  // replacement being started) before the workers those coroutines use.
  worker_set workers_;
  local_transport transport_;
  asio::io_context io_{1};
  mpi_link link_;
  std::vector<slot> slots_;
  bool stopping_ = false;
  int exit_code_ = 0;
  std::chrono::steady_clock::time_point heard_from_root_ = std::chrono::steady_clock::now();
};

}  // namespace coshard::detail
