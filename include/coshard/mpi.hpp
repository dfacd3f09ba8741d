// coshard/mpi.hpp - the same jobs across the ranks of an MPI program.
//
// Needs MPI (link coshard::mpi, from find_package(coshard COMPONENTS mpi)).
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <optional>
#include <cstddef>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "coshard/basic_pool.hpp"
#include "coshard/detail/mpi/cluster_transport.hpp"
#include "coshard/detail/mpi/mpi_link.hpp"
#include "coshard/detail/mpi/rank_server.hpp"
#include "coshard/process_pool.hpp"

namespace coshard::mpi {

/// Options of a cluster, meant for designated initializers.
struct cluster_options {
  /// Worker processes each rank forks (the root too, unless root_workers
  /// is false).
  std::size_t workers_per_rank = 1;
  /// Awaitable items running at once inside one worker.
  std::size_t concurrency = 64;
  /// Whether the root forks workers_per_rank workers of its own. Without
  /// them its cores are left to scheduling, merging results and the
  /// program's own work (worth it with many ranks); it needs at least one
  /// other rank then.
  bool root_workers = true;
  /// A rank that sends nothing for this long (it sends a heartbeat every
  /// 500 ms while idle) is taken as lost: the jobs that need its workers fail
  /// with pool_error naming it.
  std::chrono::milliseconds rank_timeout{3000};
  /// Batches for a worker on another rank are closed once their encoded
  /// inputs reach this size (the lesser of this and pool.max_batch_bytes
  /// applies; a batch run again is split the same way). A remote batch is copied
  /// by MPI and by its rank's relay on the way in and again on the way out,
  /// and those copies cost a fraction as much while a batch stays in a
  /// core's cache: the trivial dispatch moved about 1.3x the items per
  /// second with 128 KiB as with 1 MiB (docs/BENCHMARKS.md, "Across MPI
  /// ranks"). Items larger than this still travel, one per batch. Awaitable
  /// jobs with large items (above remote_batch_bytes * batches_in_flight /
  /// concurrency each) then keep fewer than `concurrency` items running in a
  /// remote worker: raise it for them.
  std::size_t remote_batch_bytes = std::size_t{128} << 10;
  /// Everything else, as for a process_pool (batch_size, item_timeout,
  /// max_retries, ...); its `workers` and `concurrency` are the two above.
  pool_options pool{};
};

namespace detail {

/// The root's MPI loop and link, shared with the cluster's transport: a job
/// that outlives its cluster (on an io_context nobody runs any more) may
/// still call it, and must find it there (it does nothing once stopped).
struct root_link {
  asio::io_context io{1};  // the MPI thread's loop: every MPI call after init
  std::optional<coshard::detail::mpi_link> link;
};

/// MPI's state for one process of a cluster: initialised first (before the
/// pool base of cluster), finalised last.
class mpi_session {
 protected:
  mpi_session(int& argc, char**& argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    int provided = 0;
    if (!initialized) {
      // No barrier in MPI_Finalize (Open MPI's MCA parameter async_mpi_finalize): the
      // ranks have said bye already, and after a lost rank Open MPI 4.1's
      // barrier waits for it for ever. A setting of the user's wins.
      ::setenv("OMPI_MCA_async_mpi_finalize", "1", /*overwrite=*/0);
      coshard::detail::check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      owns_mpi_ = true;
    } else {
      MPI_Query_thread(&provided);
    }
    // The root makes its MPI calls on a thread of its own.
    if (provided < MPI_THREAD_SERIALIZED)
      throw pool_error("coshard: MPI runs at a thread level below MPI_THREAD_SERIALIZED"
                       " (initialise it with MPI_Init_thread, or let the cluster do it)");
    coshard::detail::check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~mpi_session() {
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    if (owns_mpi_) MPI_Finalize();
  }
  mpi_session(const mpi_session&) = delete;
  mpi_session& operator=(const mpi_session&) = delete;

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  bool owns_mpi_ = false;

  // The root's side, made before its pool (whose transport uses the link).
  std::shared_ptr<root_link> root_;
  coshard::detail::cluster_transport* transport_ = nullptr;
  std::thread thread_;
  // MPI thread only: when each rank was last heard from (none before its
  // hello), whether it said bye, whether it is lost.
  std::vector<std::optional<std::chrono::steady_clock::time_point>> heard_;
  std::vector<bool> said_bye_;
  std::vector<bool> lost_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::chrono::milliseconds rank_timeout_{3000};
  std::chrono::milliseconds hello_timeout_{30'000};
  std::chrono::milliseconds grace_{2000};
  std::atomic<bool> stopping_{false};
};

}  // namespace detail

/// A pool whose workers are spread over the ranks of an MPI program: every
/// rank forks `workers_per_rank` workers, and the root (rank 0) schedules
/// every job over all of them with the same engine as process_pool: adaptive
/// batches pulled by whichever worker is free, reduce partials combined in
/// the workers, crashing or poisoned items retried and isolated. The other
/// ranks run no user code themselves; they relay frames between the root and
/// their workers.
///
/// Every rank builds the cluster with the same options; the root then runs
/// jobs (every job function of process_pool), the others call serve():
/// \code
/// coshard::mpi::cluster cluster{argc, argv, {.workers_per_rank = 2}};
/// if (!cluster.is_root()) return cluster.serve();
/// auto squares = cluster.map(numbers, [](long x) { return x * x; });
/// \endcode
/// Initialises MPI (MPI_THREAD_SERIALIZED) unless the program did (then it
/// must have at least that level), and finalises it if it did. While the
/// cluster lives, MPI belongs to it: the program makes no MPI calls of its
/// own on the root (they would race the cluster's MPI thread). Job functions
/// throw pool_error on other ranks than the root.
class cluster : private detail::mpi_session, public basic_pool {
 public:
  /// Initialises MPI, forks this rank's workers and, on the root, starts the
  /// MPI thread; remote workers join as their ranks report them. Throws
  /// pool_error if an option is invalid (on every rank, before it forks
  /// anything), or if MPI or a worker cannot start (on the root, the other
  /// ranks are told to stop first, so that nothing waits for it).
  cluster(int& argc, char**& argv, cluster_options options = {})
      : detail::mpi_session(argc, argv), basic_pool(rank_ == 0 ? make_root(options) : nullptr) {
    if (rank_ != 0)
      server_ = std::make_unique<coshard::detail::rank_server>(comm_, 0, local_options(options),
                                                               options.rank_timeout);
  }

  /// On the root: shuts the jobs down (as process_pool's destructor does),
  /// then every rank's workers, then MPI. Never throws.
  ~cluster() {
    if (rank_ == 0) shut_down_root();
  }

  /// Whether this process is the root, the one that runs jobs.
  [[nodiscard]] bool is_root() const noexcept { return rank_ == 0; }
  /// This process's rank.
  [[nodiscard]] int rank() const noexcept { return rank_; }
  /// How many ranks there are.
  [[nodiscard]] int ranks() const noexcept { return size_; }
  /// Worker slots over all ranks (on the root).
  [[nodiscard]] std::size_t size() const noexcept { return core_ ? core_->transport.slot_count() : 0; }

  /// On a rank other than the root: relays frames between the root and this
  /// rank's workers until the root's cluster is destroyed (or the root is
  /// lost: silent for rank_timeout); returns the exit code for main. On the
  /// root: returns 0 at once.
  int serve() { return server_ ? server_->serve() : 0; }

 private:
  // Every rank checks the options before it forks anything, so that a bad
  // value fails every rank at once (none waits for a root that gave up).
  static pool_options local_options(const cluster_options& o) {
    if (o.workers_per_rank == 0) throw pool_error("coshard: cluster_options.workers_per_rank must be at least 1");
    if (o.remote_batch_bytes == 0) throw pool_error("coshard: cluster_options.remote_batch_bytes must be at least 1");
    if (o.rank_timeout < 4 * coshard::detail::heartbeat_interval)
      throw pool_error("coshard: cluster_options.rank_timeout must be at least 4 heartbeats (2000 ms)");
    pool_options p = o.pool;
    p.workers = o.workers_per_rank;
    p.concurrency = o.concurrency;
    coshard::detail::validate_options(p);
    return p;
  }

  std::shared_ptr<coshard::detail::pool_core> make_root(const cluster_options& o) {
    const pool_options own_options = local_options(o);
    if (!o.root_workers && size_ < 2) {
      // The other ranks (none here) are not waiting for anything yet.
      throw pool_error("coshard: cluster_options.root_workers is false and this MPI job has no other rank:"
                       " the cluster would have no worker (start it with mpirun -np 2 or more)");
    }
    root_ = std::make_shared<detail::root_link>();
    root_->link.emplace(comm_, root_->io,
                        [this](int source, const coshard::detail::cluster_message& m,
                               coshard::detail::byte_buffer& message) { on_message(source, m, message); });
    std::shared_ptr<coshard::detail::mpi_link> link(root_, &*root_->link);
    heard_.assign(static_cast<std::size_t>(size_), std::nullopt);
    said_bye_.assign(static_cast<std::size_t>(size_), false);
    lost_.assign(static_cast<std::size_t>(size_), false);
    rank_timeout_ = o.rank_timeout;
    hello_timeout_ = o.pool.startup_timeout + o.rank_timeout;
    grace_ = o.pool.shutdown_timeout;
    const std::vector<std::size_t> ranks(static_cast<std::size_t>(size_), o.workers_per_rank);
    std::shared_ptr<coshard::detail::pool_core> core;
    try {
      core = std::make_shared<coshard::detail::pool_core>(
          own_options, [&](coshard::detail::worker_set& local) {
            auto t = std::make_unique<coshard::detail::cluster_transport>(local, link, ranks, 0,
                                                                           o.remote_batch_bytes);
            transport_ = t.get();
            return t;
          },
          o.root_workers ? o.workers_per_rank : 0);
    } catch (...) {
      // The other ranks would serve for ever and MPI_Finalize wait for them:
      // they are told to stop (the MPI thread does not run yet).
      for (int r = 1; r < size_; ++r) {
        const coshard::detail::cluster_message bye{coshard::detail::cluster_op::shutdown, 0, 0, 0, 0};
        MPI_Send(&bye, sizeof bye, MPI_BYTE, r, coshard::detail::cluster_tag, comm_);
      }
      throw;
    }
    started_ = std::chrono::steady_clock::now();
    asio::co_spawn(root_->io, root_->link->run(), [this](std::exception_ptr e) { mpi_failed(e); });
    asio::co_spawn(root_->io, watch_ranks(), [this](std::exception_ptr e) { mpi_failed(e); });
    thread_ = std::thread([state = root_] { state->io.run(); });
    return core;
  }

  // The MPI thread's loop failed (an MPI error, memory): every remote
  // worker is gone, with the reason.
  void mpi_failed(std::exception_ptr e) noexcept {
    if (!e || stopping_) return;
    std::string why = "the root's MPI loop failed";
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      why += std::string(": ") + x.what();
    } catch (...) {
    }
    if (transport_) transport_->lose_rank(-1, why);
  }

  // On the MPI thread.
  void on_message(int source, const coshard::detail::cluster_message& m, coshard::detail::byte_buffer& message) {
    if (source <= 0 || source >= size_) return;
    const auto i = static_cast<std::size_t>(source);
    heard_[i] = std::chrono::steady_clock::now();
    using coshard::detail::cluster_op;
    switch (m.op) {
      case cluster_op::hello:
      case cluster_op::heartbeat:
        return;
      case cluster_op::bye:
        said_bye_[i] = true;
        return;
      default:
        if (transport_ && !lost_[i]) transport_->on_worker_message(source, m, message);
    }
  }

  // Heartbeats to the ranks (so that they stop when the root is gone), and
  // the ranks' liveness: a rank silent for rank_timeout after its hello, or
  // without a hello for startup_timeout + rank_timeout, is lost, and the
  // jobs that need its workers fail.
  asio::awaitable<void> watch_ranks() {
    asio::steady_timer timer(root_->io);
    for (;;) {
      timer.expires_after(coshard::detail::heartbeat_interval);
      asio::error_code ec;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (stopping_) co_return;
      const auto now = std::chrono::steady_clock::now();
      for (int r = 1; r < size_; ++r) {
        const auto i = static_cast<std::size_t>(r);
        if (lost_[i] || said_bye_[i]) continue;
        root_->link->send(r, {coshard::detail::cluster_op::heartbeat, 0, 0, 0, 0});
        const bool silent = heard_[i] ? now - *heard_[i] > rank_timeout_ : now - started_ > hello_timeout_;
        if (!silent) continue;
        lost_[i] = true;
        transport_->lose_rank(r, "rank " + std::to_string(r) + " is lost: " +
                                     (heard_[i] ? "it sent nothing for " + std::to_string(rank_timeout_.count()) +
                                                      " ms (dead or stopped)"
                                                : std::string("it never reported (does its main call serve()?)")) +
                                     "; the jobs that need its workers fail");
      }
    }
  }

  void shut_down_root() noexcept {
    try {
      core_->shutdown(shutdown_mode::graceful);
      const auto grace = grace_;
      asio::post(root_->io, [this, grace] {
        for (int r = 1; r < size_; ++r)
          root_->link->send(r, {coshard::detail::cluster_op::shutdown, 0, 0, 0, static_cast<std::uint64_t>(grace.count())});
      });
      // Every rank says bye once its workers are reaped (bounded); a lost
      // one is not waited for.
      const auto until = std::chrono::steady_clock::now() + grace + std::chrono::seconds(3);
      for (;;) {
        std::promise<bool> p;
        auto f = p.get_future();
        asio::post(root_->io, [this, &p] {
          bool all = true;
          for (int r = 1; r < size_; ++r)
            all = all && (said_bye_[static_cast<std::size_t>(r)] || lost_[static_cast<std::size_t>(r)]);
          p.set_value(all);
        });
        if (f.get() || std::chrono::steady_clock::now() >= until) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      stopping_ = true;
      root_->link->stop();
      thread_.join();
      root_->link->flush(std::chrono::milliseconds(1000));
      // A job still waiting on a remote worker (its loop no longer runs)
      // ends when it next looks: the ranks are gone.
      transport_->lose_rank(-1, "the cluster was shut down");
    } catch (...) {
    }
  }

  std::unique_ptr<coshard::detail::rank_server> server_;
};

}  // namespace coshard::mpi
