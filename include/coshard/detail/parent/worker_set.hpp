// coshard/detail/parent/worker_set.hpp - the parent's view of its worker processes:
// one slot per worker, started through the pool's supervisor.
#pragma once

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "coshard/detail/asio_config.hpp"

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>

#include "coshard/detail/frame_io.hpp"
#include "coshard/detail/parent/supervisor_link.hpp"
#include "coshard/detail/parent/transport.hpp"
#include "coshard/detail/supervisor/exec_supervisor.hpp"
#include "coshard/pool_options.hpp"

namespace coshard::detail {

// Shared pages, one per slot, in an anonymous file mapped before the
// supervisor starts: a forked supervisor inherits the mapping, a re-executed
// one maps the file it is handed, and every worker it forks sees the same
// memory.
class shared_status_pages {
 public:
  explicit shared_status_pages(std::size_t n) : n_(n) {
    fd_ = ::memfd_create("coshard-status", MFD_CLOEXEC);
    if (fd_ < 0) throw pool_error(std::string("coshard: memfd_create failed: ") + std::strerror(errno));
    void* p = MAP_FAILED;
    if (::ftruncate(fd_, static_cast<off_t>(bytes())) == 0)
      p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd_);
      throw pool_error(std::string("coshard: mapping the worker status pages failed: ") + std::strerror(err));
    }
    pages_ = static_cast<worker_status*>(p);
    for (std::size_t i = 0; i < n_; ++i) new (pages_ + i) worker_status;
  }
  shared_status_pages(const shared_status_pages&) = delete;
  shared_status_pages& operator=(const shared_status_pages&) = delete;
  ~shared_status_pages() {
    ::munmap(pages_, bytes());
    ::close(fd_);
  }
  [[nodiscard]] worker_status* at(std::size_t i) const noexcept { return pages_ + i; }
  /// The file behind the pages, handed to a re-executed supervisor.
  [[nodiscard]] int fd() const noexcept { return fd_; }

 private:
  [[nodiscard]] std::size_t bytes() const noexcept { return std::max<std::size_t>(1, n_) * sizeof(worker_status); }
  std::size_t n_;
  int fd_ = -1;
  worker_status* pages_ = nullptr;
};

struct worker_slot {
  /// Atomic because worker_pids() may read it from another thread.
  std::atomic<pid_t> pid{-1};
  /// The parent's end of the channel; -1 while the slot has no worker.
  int fd = -1;
  /// Written by the worker before it exits on its own (e.g. its watchdog).
  worker_status* status = nullptr;
  /// A worker asked of the supervisor and not yet taken into the slot.
  std::shared_ptr<oneshot<spawn_result>> starting;
  /// When the worker being started must have said it is ready.
  std::chrono::steady_clock::time_point start_deadline{};
  /// False until the worker's ready frame (its initializers ran) was read.
  bool ready = false;
  /// Reads this worker's replies; its buffer is reused from job to job.
  std::unique_ptr<frame_reader> reader;
  /// What the worker may still be sent (reset when a worker is taken in).
  worker_allowance allowance;
  /// The channel as a socket registered with the reactor of `socket_context`,
  /// kept from job to job when jobs run on one of the pool's own io_contexts:
  /// registering the fd for every job costs an epoll_ctl pair and an ioctl per
  /// worker, a good part of a small job's round trip. `fd` keeps owning the
  /// descriptor; the socket is released (never closed) before `fd` is closed.
  std::unique_ptr<asio::local::stream_protocol::socket> socket;
  asio::io_context* socket_context = nullptr;

  [[nodiscard]] bool live() const noexcept { return fd >= 0; }

  /// The socket of this channel registered with `ctx`'s reactor.
  asio::local::stream_protocol::socket& socket_on(asio::io_context& ctx) {
    if (socket && socket_context != &ctx) release_socket();
    if (!socket) {
      auto s = std::make_unique<asio::local::stream_protocol::socket>(ctx);
      s->assign(asio::local::stream_protocol(), fd);
      socket = std::move(s);
      socket_context = &ctx;
    }
    return *socket;
  }

  /// Deregisters the kept socket, if any, leaving the fd open.
  void release_socket() noexcept {
    if (!socket) return;
    asio::error_code ignored;
    if (socket->is_open()) socket->release(ignored);
    socket.reset();
    socket_context = nullptr;
  }
};

class worker_set {
 public:
  /// Forks the supervisor, has it start every worker and waits until all are
  /// ready (their initializers ran), within startup_timeout. Throws
  /// pool_error naming the first worker that failed; nothing is left behind.
  /// `slot_count`, if given, replaces opts.workers and may be 0 (a cluster's
  /// root that leaves the work to the other ranks: a supervisor, no worker).
  explicit worker_set(const pool_options& opts, std::optional<std::size_t> slot_count = std::nullopt)
      : opts_(checked(opts)),
        slots_(slot_count ? *slot_count
                          : opts.workers ? opts.workers
                                         : std::max(1u, std::thread::hardware_concurrency())),
        pages_(slots_.size()),
        settings_([this](std::uint32_t slot) { return settings(slot); }),
        link_(opts_.start == start_method::exec ? exec_supervisor(opts_, slots_.size(), pages_.fd())
                                                : fork_supervisor(settings_, output_route_of(opts_)),
              opts_.startup_timeout, opts_.worker_output) {
    for (std::size_t i = 0; i < slots_.size(); ++i) slots_[i].status = pages_.at(i);
    try {
      bring_up_all_blocking();
    } catch (...) {
      link_.kill_all();
      close_channels();
      link_.shutdown(std::chrono::milliseconds(0));
      close_started();
      throw;
    }
  }
  worker_set(const worker_set&) = delete;
  worker_set& operator=(const worker_set&) = delete;
  ~worker_set() { shutdown(std::chrono::milliseconds(0)); }

  [[nodiscard]] std::vector<worker_slot>& slots() noexcept { return slots_; }
  [[nodiscard]] const std::vector<worker_slot>& slots() const noexcept { return slots_; }
  [[nodiscard]] const pool_options& options() const noexcept { return opts_; }
  [[nodiscard]] supervisor_link& supervisor() noexcept { return link_; }

  /// Refuses replacements from now on; a shutdown (`forced` or not) is under way.
  void stop_starting(bool forced = false) noexcept {
    if (forced) forced_.store(true);
    closing_.store(true);
  }
  [[nodiscard]] bool closing() const noexcept { return closing_.load(); }
  /// True once a forced shutdown began: a job it cut short ends with
  /// pool_error, not operation_aborted.
  [[nodiscard]] bool forced_shutdown() const noexcept { return forced_.load(); }

  /// SIGKILLs every worker; callable from any thread.
  void kill_all() noexcept { link_.kill_all(); }

  /// Ends every channel at once, from any thread, without closing the
  /// descriptors a running job may still hold in its sockets: the job's reads
  /// see EOF and the workers see EOF (and exit) even if a process the owner
  /// forked holds copies of the descriptors.
  void hang_up_channels() noexcept {
    std::lock_guard lock(fd_mutex_);
    for (auto& s : slots_)
      if (s.fd >= 0) ::shutdown(s.fd, SHUT_RDWR);
  }

  /// Closes every channel (a worker exits on EOF). Only when no job runs.
  void close_channels() noexcept {
    for (auto& s : slots_) drop_worker(s);
  }

  /// Closes the channels, lets the supervisor wait up to `grace` for the
  /// workers to exit and kill the rest, and reaps the supervisor. Bounded by
  /// grace + about 1 s. Idempotent.
  void shutdown(std::chrono::milliseconds grace) noexcept {
    closing_.store(true);
    close_channels();
    link_.abandon_spawns();  // a worker still being started: its channel is closed as it arrives
    close_started();         // a worker started and not yet taken must see EOF too
    link_.shutdown(grace);
    close_started();  // those that arrived meanwhile
  }

  /// In a process forked from the owner: lets go of every descriptor and
  /// touches nothing the owner's workers or supervisor depend on.
  void abandon() noexcept {
    closing_.store(true);
    for (auto& s : slots_) {
      if (s.socket) keep_until_exit(std::move(s.socket));  // its reactor is the owner's epoll set too
      if (s.fd >= 0) ::close(s.fd);
      s.fd = -1;
    }
    // Copies of channels of workers still starting (the reader thread that
    // would deliver more does not run here).
    for (auto& s : slots_) orphans_.push_back(std::move(s.starting));
    for (auto& started : orphans_)
      if (started)
        if (auto r = started->peek(); r && r->fd >= 0) ::close(r->fd);
    orphans_.clear();
    link_.abandon();
  }

  /// Asks the supervisor for a new worker in `s` (which must have none).
  void request_start(worker_slot& s) {
    s.starting = link_.spawn(static_cast<std::uint32_t>(&s - slots_.data()));
    s.start_deadline = std::chrono::steady_clock::now() + opts_.startup_timeout;
    s.status->timed_out_index.store(worker_status::none);
  }

  /// Lets the worker of `s` go: its channel is closed (it exits on EOF) and
  /// its exit is of no more interest. Also drops a start under way.
  void drop_worker(worker_slot& s) noexcept {
    s.release_socket();
    {
      std::lock_guard lock(fd_mutex_);  // hang_up_channels may run on another thread
      if (s.fd >= 0) {
        ::shutdown(s.fd, SHUT_RDWR);
        ::close(s.fd);
      }
      s.fd = -1;
    }
    if (const pid_t pid = s.pid.exchange(-1); pid > 0) link_.forget(pid);
    s.ready = false;
  }

  /// Brings `s` up if it has no ready worker: asks for one if none is being
  /// started, then waits for it on the calling coroutine's executor (never
  /// blocking it) until it is ready. `interrupt` is set to a function that
  /// makes the wait give up early (the job was cancelled); returns false
  /// then, with the start left in place for the next job. Throws pool_error
  /// if the worker cannot be started (the slot is then left empty, to be
  /// started again by the next job).
  asio::awaitable<bool> bring_up(worker_slot& s, std::function<void()>& interrupt) {
    auto ex = co_await asio::this_coro::executor;
    for (int attempt = 1; !(s.live() && s.ready); ++attempt) {
      if (closing()) throw pool_error("coshard: the pool was shut down");
      // A start asked for earlier (a replacement started in the background
      // after a death) ran its initializers under the conditions of then.
      bool requested_here = false;
      if (!s.live() && !s.starting) {
        request_start(s);
        requested_here = true;
      }
      auto interrupted = std::make_shared<bool>(false);  // read after a wait the job cut short
      auto timer = std::make_shared<asio::steady_timer>(ex, s.start_deadline);
      if (s.starting) {
        interrupt = [timer, interrupted] {
          *interrupted = true;
          timer->cancel();
        };
        auto got = co_await s.starting->wait(timer);
        interrupt = nullptr;
        if (!got) {
          if (*interrupted) co_return false;
          give_up_start(s);
          throw pool_error("coshard: the supervisor did not start a worker within startup_timeout (" +
                           std::to_string(opts_.startup_timeout.count()) + " ms)");
        }
        take_started(s, std::move(*got));
      }
      // The ready frame: the worker's initializers ran (or failed). The
      // timeout handler may run after this scope (its expiry can be queued
      // when the read completes), so what it touches is shared, and a fresh
      // timer keeps a stale cancel from the first wait away.
      std::string failure;
      bool died = false;
      bool read_ready = false;  // the ready frame was read (it is gone from the channel)
      bool init_failed = false;  // the ready frame says an initializer threw
      {
        struct read_state {
          explicit read_state(const asio::any_io_executor& ex) : sock(ex) {}
          asio::local::stream_protocol::socket sock;
          bool timed_out = false;
          ~read_state() {
            asio::error_code ignored;
            if (sock.is_open()) sock.release(ignored);  // the slot keeps owning the fd
          }
        };
        auto st = std::make_shared<read_state>(ex);
        st->sock.assign(asio::local::stream_protocol(), s.fd);
        asio::steady_timer deadline(ex, s.start_deadline);
        deadline.async_wait([st](const asio::error_code& ec) {
          if (ec || !st->sock.is_open()) return;
          st->timed_out = true;
          asio::error_code ignored;
          st->sock.cancel(ignored);
        });
        interrupt = [st, interrupted] {
          *interrupted = true;
          asio::error_code ignored;
          st->sock.cancel(ignored);
        };
        try {
          frame_header h;
          const auto payload = co_await s.reader->read(st->sock, h);
          failure = ready_failure(h, payload);
          read_ready = failure.empty();
          init_failed = h.type == frame_type::worker_ready && h.flags;
        } catch (const serialization_error& e) {
          failure = e.what();
        } catch (const std::system_error& e) {
          if (*interrupted) {
            failure.clear();
          } else if (st->timed_out) {
            failure = "did not start within startup_timeout (" + std::to_string(opts_.startup_timeout.count()) +
                      " ms)";
          } else {
            died = true;
          }
        }
        interrupt = nullptr;
        deadline.cancel();
        asio::error_code ignored;
        st->sock.release(ignored);
      }
      // A ready frame read as the wait was interrupted still counts: it is
      // consumed, and a later wait for it would wait until startup_timeout.
      if (read_ready) {
        s.ready = true;
        co_return !*interrupted;
      }
      if (*interrupted) co_return false;
      const pid_t pid = s.pid.load();
      if (died) {
        // Killed from outside while starting, as any worker can be: only a
        // death that repeats is reported.
        const int status = co_await exit_status(pid, ex);
        drop_worker(s);
        if (attempt < max_start_attempts) continue;
        throw pool_error("coshard: worker pid " + std::to_string(pid) + " exited during startup (" +
                         describe_wait_status(status) + ")");
      }
      link_.kill(pid);
      drop_worker(s);
      // An initializer that failed in a start this wait did not ask for is
      // tried again now: only a failure of a start of its own fails the job.
      if (init_failed && !requested_here && attempt < max_start_attempts) continue;
      throw pool_error("coshard: worker pid " + std::to_string(pid) + " " + failure);
    }
    co_return true;
  }

  /// The wait status of worker `pid` (reaped by the supervisor), waited for
  /// on `ex` without blocking it; a worker that has not exited 2 s after its
  /// channel ended is killed.
  asio::awaitable<int> exit_status(pid_t pid, asio::any_io_executor ex) {
    auto exit = link_.exit_of(pid);
    auto timer = std::make_shared<asio::steady_timer>(ex, std::chrono::seconds(2));
    auto status = co_await exit->wait(timer);
    if (!status) {
      link_.kill(pid);
      timer->expires_after(std::chrono::seconds(5));
      status = co_await exit->wait(timer);
    }
    co_return status.value_or(unknown_wait_status);
  }

 private:
  // A program run again as a supervisor that went on into its own code
  // (main did not call serve_if_worker) must not re-execute itself again.
  static const pool_options& checked(const pool_options& o) {
    if (std::getenv(exec_supervisor_env))
      throw pool_error(std::string("coshard: this process was started as a pool's supervisor (start_method::exec, ") +
                       exec_supervisor_env + " is set), but its main did not call coshard::serve_if_worker(argc, "
                       "argv) first; it does not start pools of its own");
    return o;
  }

  worker_settings settings(std::uint32_t slot) const {
    return {opts_.concurrency, opts_.max_frame_bytes, opts_.timeout_grace,
            pages_.at(slot), &opts_.initializer, &opts_.async_initializer, opts_.max_worker_rss_bytes > 0,
            owner_alone_at_fork_};
  }

  // Moves a worker the supervisor started into its slot (not ready yet).
  void take_started(worker_slot& s, spawn_result r) {
    s.starting.reset();
    if (r.fd < 0) throw pool_error("coshard: a worker could not be started: " + r.error);
    {
      std::lock_guard lock(fd_mutex_);
      s.fd = r.fd;
    }
    s.pid = r.pid;
    s.ready = false;
    s.reader = std::make_unique<frame_reader>(opts_.max_frame_bytes);
    s.allowance = {};
  }

  // "" if `h` is the ready frame of a worker that started; else why not.
  static std::string ready_failure(const frame_header& h, std::span<const std::byte> payload) {
    if (h.type != frame_type::worker_ready) return "sent a malformed ready frame";
    if (!h.flags) return {};
    return "could not start: its initializer threw " + decode<std::string>(payload);
  }

  // The constructor's wait: every slot is brought up by the same path as a
  // replacement, on a loop of its own (nothing else runs yet), all at once so
  // that their initializers run in parallel. The first failure cuts the
  // other waits short.
  void bring_up_all_blocking() {
    asio::io_context io{1};
    std::exception_ptr first_failure;
    std::vector<std::function<void()>> interrupts(slots_.size());
    for (std::size_t i = 0; i < slots_.size(); ++i)
      asio::co_spawn(io, bring_up(slots_[i], interrupts[i]), [&](std::exception_ptr e, bool) {
        if (!e || first_failure) return;
        first_failure = e;
        for (auto& interrupt : interrupts)
          if (interrupt) interrupt();
      });
    io.run();
    if (first_failure) std::rethrow_exception(first_failure);
  }

  // A start waited for too long: its descriptor, if one comes, is closed at
  // shutdown. Jobs on several threads may give up starts at once.
  void give_up_start(worker_slot& s) {
    std::lock_guard lock(orphans_mutex_);
    orphans_.push_back(std::move(s.starting));
  }

  // After the supervisor is gone: descriptors of workers it started that no
  // slot took.
  void close_started() noexcept {
    std::vector<std::shared_ptr<oneshot<spawn_result>>> pending;
    for (auto& s : slots_)
      if (s.starting) pending.push_back(s.starting);
    {
      std::lock_guard lock(orphans_mutex_);
      for (auto& started : orphans_) pending.push_back(started);
    }
    for (auto& started : pending)
      if (auto r = started->peek(); r && r->fd >= 0) {
        ::shutdown(r->fd, SHUT_RDWR);
        ::close(r->fd);
        started->clear();
      }
  }

  static constexpr int max_start_attempts = 5;
  pool_options opts_;
  std::vector<worker_slot> slots_;
  shared_status_pages pages_;
  // Whether the owner ran one thread when it forked the supervisor: then a
  // forked worker holds every stack that could reach the owner's objects, and
  // a leak check at its clean exit (sanitized builds) reports only real leaks.
  bool owner_alone_at_fork_ = thread_count() == 1;
  worker_settings_factory settings_;
  supervisor_link link_;
  std::mutex orphans_mutex_;
  std::vector<std::shared_ptr<oneshot<spawn_result>>> orphans_;  // starts given up on
  std::atomic<bool> closing_{false};
  std::atomic<bool> forced_{false};
  std::mutex fd_mutex_;
};

}  // namespace coshard::detail
