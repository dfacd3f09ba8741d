// Fault tests of coshard/process_pool.hpp: worker deaths, poison items,
// errors at every stage of an item's trip, timeouts and cancellation. Ported
// from the scenarios of CPython's test_concurrent_futures (test_deadlock,
// test_process_pool, test_shutdown) and loky's test_reusable_executor. Every
// test ends by checking that no child process and no descriptor is left.
#include "coshard/process_pool.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/steady_timer.hpp>
#include <asio/detached.hpp>
#include <asio/co_spawn.hpp>
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <thread>

#include "test_support.hpp"

using namespace std::chrono_literals;
using coshard_test::child_pids;

namespace {

template <class Body>
void with_pool(coshard::pool_options opts, Body body) {
  coshard_test::fd_baseline fds;
  {
    coshard::process_pool pool{opts};
    body(pool);
  }
  CHECK(child_pids().empty());
  CHECK(fds.leaked() == 0);
}

std::vector<long> iota_vector(long n) {
  std::vector<long> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0L);
  return v;
}

// What a `touchy` input or result does when it crosses a process boundary.
enum class trap : int { none, throw_on_save, abort_on_save, throw_on_load, abort_on_load, exit_on_load };

struct touchy {
  long value = 0;
  trap what = trap::none;
  template <class Archive>
  void save(Archive& ar) const {
    if (what == trap::throw_on_save) throw std::runtime_error("cannot save " + std::to_string(value));
    if (what == trap::abort_on_save) std::abort();
    ar(value, what);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(value, what);
    if (what == trap::throw_on_load) throw std::runtime_error("cannot load " + std::to_string(value));
    if (what == trap::abort_on_load) std::abort();
    if (what == trap::exit_on_load) ::_exit(7);
  }
};

std::vector<touchy> touchy_inputs(long n, long bad, trap t) {
  std::vector<touchy> v;
  for (long i = 0; i < n; ++i) v.push_back({i, i == bad ? t : trap::none});
  return v;
}

long expected_sum(long n) { return n * (n - 1) / 2; }

int crash_mode = 0;  // a signal, or 1000 + an exit code

}  // namespace

TEST_CASE("a crash inside the function fails only that item, named by signal or exit code") {
  struct crash_case {
    const char* name;
    int signal;
    int exit_code;
  };
  const auto c = GENERATE(crash_case{"segfault", SIGSEGV, -1}, crash_case{"abort", SIGABRT, -1},
                          crash_case{"_exit(3)", 0, 3}, crash_case{"SIGKILL", SIGKILL, -1});
  INFO(c.name);
  crash_mode = c.signal ? c.signal : 1000 + c.exit_code;  // before the pool forks its workers
  with_pool({.workers = 2, .batch_size = 64, .max_retries = 1}, [&](coshard::process_pool& pool) {
    auto results = pool.map_settled(iota_vector(1000), [](long x) {
      if (x == 321) {
        if (crash_mode >= 1000) ::_exit(crash_mode - 1000);
        ::signal(crash_mode, SIG_DFL);
        ::raise(crash_mode);
      }
      return x * 2;
    });
    REQUIRE(results.size() == 1000);
    for (long i = 0; i < 1000; ++i) {
      if (i == 321) continue;
      REQUIRE(results[static_cast<std::size_t>(i)].ok());
      REQUIRE(results[static_cast<std::size_t>(i)].value() == 2 * i);
    }
    REQUIRE_FALSE(results[321].ok());
    try {
      std::rethrow_exception(results[321].error());
    } catch (const coshard::worker_crashed& e) {
      CHECK(e.index() == 321);
      CHECK(e.term_signal() == c.signal);
      CHECK(e.exit_code() == c.exit_code);
    }
    // Crashes cost workers, not the pool.
    CHECK(coshard_test::workers_once_settled(2) == 2);
    CHECK(pool.map_reduce(iota_vector(100), [](long x) { return x; }, std::plus<>{}, 0L) == 4950);
  });
}

TEST_CASE("map raises the first failure by input order; map_settled keeps every success") {
  with_pool({.workers = 2, .batch_size = 8}, [](coshard::process_pool& pool) {
    auto fn = [](long x) {
      if (x % 100 == 37) throw std::domain_error("bad " + std::to_string(x));
      return x;
    };
    try {
      (void)pool.map(iota_vector(1000), fn);
      FAIL("no exception");
    } catch (const coshard::task_error& e) {
      CHECK(e.index() % 100 == 37);
      CHECK(e.type_name() == "std::domain_error");
    }
    auto settled = pool.map_settled(iota_vector(1000), fn);
    int failed = 0;
    for (std::size_t i = 0; i < settled.size(); ++i) {
      if (i % 100 == 37) {
        ++failed;
        CHECK_THROWS_WITH(settled[i].value(), Catch::Contains("bad " + std::to_string(i)));
      } else {
        REQUIRE(settled[i].value() == static_cast<long>(i));
      }
    }
    CHECK(failed == 10);
  });
}

TEST_CASE("errors at input encode, input decode and result encode fail only their item") {
  with_pool({.workers = 2, .batch_size = 16}, [](coshard::process_pool& pool) {
    auto id = [](touchy t) { return t.value; };
    SECTION("100 unencodable inputs, then 100 good ones") {
      std::vector<touchy> in;
      for (long i = 0; i < 200; ++i) in.push_back({i, i < 100 ? trap::throw_on_save : trap::none});
      auto out = pool.map_settled(in, id);
      REQUIRE(out.size() == 200);
      for (long i = 0; i < 100; ++i)
        CHECK_THROWS_WITH(out[static_cast<std::size_t>(i)].value(), Catch::Contains("could not be encoded"));
      for (long i = 100; i < 200; ++i) CHECK(out[static_cast<std::size_t>(i)].value() == i);
    }
    SECTION("an input whose decoding throws in the worker") {
      auto out = pool.map_settled(touchy_inputs(200, 77, trap::throw_on_load), id);
      for (long i = 0; i < 200; ++i) {
        if (i == 77)
          CHECK_THROWS_WITH(out[77].value(), Catch::Contains("cannot load 77"));
        else
          CHECK(out[static_cast<std::size_t>(i)].value() == i);
      }
    }
    SECTION("an input whose decoding aborts or exits the worker") {
      const auto t = GENERATE(trap::abort_on_load, trap::exit_on_load);
      auto out = pool.map_settled(touchy_inputs(100, 42, t), id);
      for (long i = 0; i < 100; ++i)
        if (i != 42) CHECK(out[static_cast<std::size_t>(i)].value() == i);
      CHECK_THROWS_AS(out[42].value(), coshard::worker_crashed);
    }
    SECTION("a result whose encoding crashes the worker") {
      auto out = pool.map_settled(iota_vector(100), [](long x) {
        return touchy{x, x == 31 ? trap::abort_on_save : trap::none};
      });
      for (long i = 0; i < 100; ++i)
        if (i != 31) CHECK(out[static_cast<std::size_t>(i)].value().value == i);
      try {
        std::rethrow_exception(out[31].error());
      } catch (const coshard::worker_crashed& e) {
        CHECK(e.index() == 31);
        CHECK(e.term_signal() == SIGABRT);
      }
    }
    SECTION("a result that cannot be encoded") {
      auto out = pool.map_settled(iota_vector(100), [](long x) {
        return touchy{x, x == 13 ? trap::throw_on_save : trap::none};
      });
      for (long i = 0; i < 100; ++i) {
        if (i == 13)
          CHECK_THROWS_WITH(out[13].value(), Catch::Contains("cannot save 13"));
        else
          CHECK(out[static_cast<std::size_t>(i)].value().value == i);
      }
    }
  });
}

TEST_CASE("a worker SIGKILLed from outside mid-task: its batches are retried, nothing lost or doubled") {
  const int victims = GENERATE(1, 2);
  INFO(victims << " worker(s) killed at once");
  with_pool({.workers = 3, .concurrency = 4, .batch_size = 4}, [&](coshard::process_pool& pool) {
    const auto pids = pool.worker_pids();
    // 600 items of 20 ms, 12 at a time: the job lasts about a second.
    std::jthread killer([&] {
      std::this_thread::sleep_for(300ms);
      for (int v = 0; v < victims; ++v) ::kill(pids[static_cast<std::size_t>(v)], SIGKILL);
    });
    const long sum = pool.map_reduce(iota_vector(600), [](long x) -> asio::awaitable<long> {
      asio::steady_timer t(co_await asio::this_coro::executor, 20ms);
      co_await t.async_wait(asio::use_awaitable);
      co_return x;
    }, std::plus<>{}, 0L);
    killer.join();
    CHECK(sum == expected_sum(600));
    const auto now = pool.worker_pids();
    for (int v = 0; v < victims; ++v)
      CHECK(std::find(now.begin(), now.end(), pids[static_cast<std::size_t>(v)]) == now.end());
  });
}

TEST_CASE("jobs alternating between executors, small and large, survive idle workers killed between them") {
  // Sockets stay registered with the pool's own loop from job to job, small
  // jobs skip job_end, and a job only starts on the workers it has batches
  // for: none of this may lose a dead worker or mix two jobs' frames.
  with_pool({.workers = 3}, [](coshard::process_pool& pool) {
    const auto in = iota_vector(5'000);
    const long want = 3 * expected_sum(5'000);
    const auto times3 = [](long x) { return x * 3; };
    const auto total = [](const std::vector<long>& v) { return std::accumulate(v.begin(), v.end(), 0L); };
    const std::string big(200'000, 'x');  // a job_start above 64 KiB: its job_end is sent
    std::vector<pid_t> killed;
    for (int round = 0; round < 24; ++round) {
      INFO("round " << round);
      switch (round % 4) {
        case 0:  // the pool's own loop, in this thread
          REQUIRE(total(pool.map(in, times3)) == want);
          break;
        case 1: {  // the pool's background thread (a handler without an io executor)
          std::promise<long> got;
          pool.async_map(in, times3, [&](std::exception_ptr e, std::vector<long> v) {
            if (e) got.set_exception(e); else got.set_value(total(v));
          });
          REQUIRE(got.get_future().get() == want);
          break;
        }
        case 2: {  // the caller's io_context
          asio::io_context io;
          long got = 0;
          asio::co_spawn(io, [&]() -> asio::awaitable<void> {
            got = total(co_await pool.async_map(in, times3, asio::use_awaitable));
          }, asio::detached);
          io.run();
          REQUIRE(got == want);
          break;
        }
        default:
          REQUIRE(total(pool.map(in, [](const std::string& s, long x) {
                    return x * 3 + static_cast<long>(s.size()) - 200'000;
                  }, big)) == want);
      }
      // A one-item job needs one worker; the others are not told of it.
      REQUIRE(pool.map(std::vector<long>{round}, times3) == std::vector<long>{3L * round});
      if (round % 3 == 2) {  // an idle worker dies between jobs
        const pid_t victim = pool.worker_pids()[static_cast<std::size_t>(round / 3 % 3)];
        ::kill(victim, SIGKILL);
        killed.push_back(victim);
        std::this_thread::sleep_for(20ms);
      }
    }
    REQUIRE(total(pool.map(in, times3)) == want);
    const auto now = pool.worker_pids();
    CHECK(now.size() == 3);
    for (pid_t dead : killed) CHECK(std::find(now.begin(), now.end(), dead) == now.end());
  });
}

TEST_CASE("a worker that died while idle costs the next job's items none of their retries") {
  // The first write to the dead worker fails: the batch never reached it, so
  // it is re-queued as it was, even with max_retries = 0.
  with_pool({.workers = 1, .batch_size = 1, .max_retries = 0}, [](coshard::process_pool& pool) {
    const auto times3 = [](long x) { return x * 3; };
    for (int round = 0; round < 5; ++round) {
      INFO("round " << round);
      REQUIRE(pool.map(std::vector<long>{round}, times3) == std::vector<long>{3L * round});
      const pid_t victim = pool.worker_pids().front();
      ::kill(victim, SIGKILL);
      std::this_thread::sleep_for(20ms);
      REQUIRE(pool.map(std::vector<long>{7, 8}, times3) == std::vector<long>{21, 24});
      CHECK(pool.worker_pids().front() != victim);
    }
  });
}

TEST_CASE("a blocking call from a second thread while one runs is refused, not run on that thread") {
  with_pool({.workers = 2, .concurrency = 8}, [](coshard::process_pool& pool) {
    std::atomic<bool> first_result{false};
    std::size_t delivered = 0;
    std::chrono::steady_clock::time_point a_done, refused_at;
    // 160 items of 50 ms, 16 at a time: results keep coming for ~450 ms
    // after the first one.
    std::jthread a([&] {
      delivered = pool.for_each_result(iota_vector(160), [](long x) -> asio::awaitable<long> {
        asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
        co_await t.async_wait(asio::use_awaitable);
        co_return x;
      }, [&](std::size_t, long) { first_result.store(true); });
      a_done = std::chrono::steady_clock::now();
    });
    while (!first_result.load()) std::this_thread::sleep_for(1ms);
    std::string refused;
    try {
      (void)pool.map(std::vector<long>{1, 2, 3}, [](long x) { return x; });
    } catch (const coshard::pool_error& e) {
      refused = e.what();
      refused_at = std::chrono::steady_clock::now();
    }
    a.join();
    CHECK(delivered == 160);
    // At once: the refused caller must not join the running job's event loop.
    CHECK(refused_at < a_done);
    CHECK(refused.find("already running a job") != std::string::npos);
    // And the pool serves the next caller normally.
    CHECK(pool.map(std::vector<long>{1, 2, 3}, [](long x) { return x * 2; }) == std::vector<long>{2, 4, 6});
  });
}

// Set before a pool is created, so that its forked workers see it.
char first_attempt_marker[128];

TEST_CASE("a worker that dies while a pipe-sized batch is being written to it") {
  std::snprintf(first_attempt_marker, sizeof first_attempt_marker, "/tmp/coshard-test-%d-marker",
                static_cast<int>(::getpid()));
  ::unlink(first_attempt_marker);
  with_pool({.workers = 2, .batch_size = 4}, [](coshard::process_pool& pool) {
    std::vector<std::string> big;
    for (int i = 0; i < 40; ++i) big.push_back(std::string(std::size_t{1} << 20, static_cast<char>('a' + i % 26)));
    // The first attempt at item 5 kills its worker at once, while the parent
    // is still writing 4 MB batches to it (larger than the socket buffer):
    // the write fails with EPIPE (never SIGPIPE) and the batches are retried.
    auto sizes = pool.map(big, [](const std::string& s) {
      if (s[0] == 'f') {
        const int fd = ::open(first_attempt_marker, O_CREAT | O_EXCL | O_WRONLY, 0600);
        if (fd >= 0) ::raise(SIGKILL);
      }
      return s.size() + static_cast<std::size_t>(s[0] - 'a');
    });
    REQUIRE(sizes.size() == 40);
    for (std::size_t i = 0; i < 40; ++i) CHECK(sizes[i] == (std::size_t{1} << 20) + i % 26);
  });
  CHECK(::unlink(first_attempt_marker) == 0);  // the crash really happened
}

TEST_CASE("chaos: map_reduce over 10^5 items while workers are SIGKILLed at random gives the exact answer") {
  with_pool({.workers = 2, .batch_size = 500}, [](coshard::process_pool& pool) {
    std::atomic<int> kills{0};
    // A jthread: stopped and joined even if map_reduce throws.
    std::jthread chaos([&](std::stop_token stop) {
      std::mt19937 rng(12345);
      while (!stop.stop_requested()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 100));
        if (stop.stop_requested()) break;
        const auto pids = pool.worker_pids();
        const pid_t victim = pids[rng() % pids.size()];
        if (victim > 0 && ::kill(victim, SIGKILL) == 0) ++kills;
      }
    });
    const long sum = pool.map_reduce(iota_vector(100'000), [](long x) {
      auto spin = static_cast<std::uint64_t>(x);  // unsigned: wrapping is defined
      for (std::uint64_t i = 0; i < 40'000; ++i) spin = spin * 31 + i;  // ~40 us: the job lasts seconds
      asm volatile("" : : "r"(spin));
      return x % 1000;
    }, std::plus<>{}, 0L);
    chaos.request_stop();
    chaos.join();
    long want = 0;
    for (long x = 0; x < 100'000; ++x) want += x % 1000;
    CHECK(sum == want);
    WARN(kills.load() << " workers killed during the job");
    CHECK(kills.load() >= 3);
  });
}

TEST_CASE("item_timeout cancels a slow awaitable item and kills a stuck plain one") {
  with_pool({.workers = 2, .item_timeout = 200ms, .timeout_grace = 300ms}, [](coshard::process_pool& pool) {
    SECTION("awaitable: cancelled through Asio at the timeout") {
      const auto t0 = std::chrono::steady_clock::now();
      auto out = pool.map_settled(iota_vector(50), [](long x) -> asio::awaitable<long> {
        asio::steady_timer t(co_await asio::this_coro::executor, x == 7 ? 60s : 1ms);
        co_await t.async_wait(asio::use_awaitable);
        co_return x;
      });
      CHECK(std::chrono::steady_clock::now() - t0 < 30s);
      CHECK_THROWS_AS(out[7].value(), coshard::timeout_error);
      for (long i = 0; i < 50; ++i)
        if (i != 7) CHECK(out[static_cast<std::size_t>(i)].value() == i);
    }
    SECTION("plain function stuck in CPU work: worker replaced, item failed") {
      const auto pids = pool.worker_pids();
      auto out = pool.map_settled(iota_vector(50), [](long x) {
        if (x == 9)
          for (volatile bool forever = true; forever;) {
          }
        return x;
      });
      REQUIRE(out.size() == 50);
      try {
        std::rethrow_exception(out[9].error());
      } catch (const coshard::timeout_error& e) {
        CHECK(e.index() == 9);
      }
      for (long i = 0; i < 50; ++i)
        if (i != 9) CHECK(out[static_cast<std::size_t>(i)].value() == i);
      CHECK(pool.worker_pids() != pids);
    }
  });
}

TEST_CASE("cancelling a running job completes it with operation_aborted; the pool stays usable") {
  with_pool({.workers = 2, .concurrency = 8}, [](coshard::process_pool& pool) {
    auto slow = [](long x) -> asio::awaitable<long> {
      asio::steady_timer t(co_await asio::this_coro::executor, 30s);
      co_await t.async_wait(asio::use_awaitable);
      co_return x;
    };
    SECTION("through the completion handler's cancellation slot") {
      asio::io_context io;
      asio::cancellation_signal stop;
      std::exception_ptr error;
      pool.async_map(iota_vector(10'000), slow,
                     asio::bind_cancellation_slot(stop.slot(), asio::bind_executor(io, [&](std::exception_ptr e, std::vector<long>) {
                       error = e;
                     })));
      asio::steady_timer later(io, 100ms);
      later.async_wait([&](asio::error_code) { stop.emit(asio::cancellation_type::terminal); });
      const auto t0 = std::chrono::steady_clock::now();
      io.run();
      CHECK(std::chrono::steady_clock::now() - t0 < 10s);
      REQUIRE(error);
      try {
        std::rethrow_exception(error);
      } catch (const std::system_error& e) {
        CHECK(e.code() == asio::error::operation_aborted);
      }
    }
    SECTION("pool.cancel() from another thread stops a blocking call") {
      std::jthread canceller([&] {
        std::this_thread::sleep_for(100ms);
        pool.cancel();
      });
      CHECK_THROWS_AS(pool.map(iota_vector(10'000), slow), std::system_error);
      canceller.join();
    }
    CHECK(pool.map(iota_vector(10), [](long x) { return x; }).back() == 9);
    CHECK(coshard_test::workers_once_settled(2) == 2);
  });
}

// ---------------------------------------------------------------------------
// Worker lifecycle: initializers, recycling, memory cap, shutdown.
// ---------------------------------------------------------------------------

int initialized_in = 0;  // set by the initializer, in each worker
std::vector<char>* leaked = nullptr;

TEST_CASE("the initializer runs once in every worker before any task, also as a coroutine") {
  with_pool({.workers = 2,
             .initializer = [] { initialized_in = ::getpid(); },
             .async_initializer = []() -> asio::awaitable<void> {
               asio::steady_timer t(co_await asio::this_coro::executor, 5ms);
               co_await t.async_wait(asio::use_awaitable);
               initialized_in = -initialized_in;  // proves it ran after the plain one
             }},
            [](coshard::process_pool& pool) {
              auto seen = pool.map(iota_vector(200), [](long) -> asio::awaitable<std::pair<int, int>> {
                asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
                co_await t.async_wait(asio::use_awaitable);
                co_return std::pair<int, int>{initialized_in, ::getpid()};
              });
              for (auto& [init, pid] : seen) REQUIRE(init == -pid);
              CHECK(initialized_in == 0);  // the parent never ran it
            });
}

TEST_CASE("a failing initializer is a clear pool_error from the constructor, no hang, no child") {
  coshard_test::fd_baseline fds;
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(coshard::process_pool({.workers = 3,
                                           .initializer = [] { throw std::runtime_error("db unreachable"); }}),
                    Catch::Contains("initializer threw std::runtime_error: db unreachable"));
  CHECK_THROWS_WITH(coshard::process_pool({.workers = 1, .initializer = [] { ::_exit(9); }}),
                    Catch::Contains("exited during startup (exited with code 9)"));
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  CHECK(child_pids().empty());
  CHECK(fds.leaked() == 0);
}

TEST_CASE("max_items_per_worker recycles workers under a backlog") {
  struct shape {
    std::size_t workers, limit;
    long items;
  };
  const auto c = GENERATE(shape{1, 2, 6}, shape{2, 2, 8}, shape{2, 3, 50});
  INFO("workers " << c.workers << ", limit " << c.limit << ", items " << c.items);
  with_pool({.workers = c.workers, .max_items_per_worker = c.limit}, [&](coshard::process_pool& pool) {
    auto pids = pool.map(iota_vector(c.items), [](long) -> asio::awaitable<pid_t> {
      asio::steady_timer t(co_await asio::this_coro::executor, 2ms);
      co_await t.async_wait(asio::use_awaitable);
      co_return ::getpid();
    });
    std::map<pid_t, std::size_t> per_worker;
    for (pid_t p : pids) ++per_worker[p];
    for (auto& [pid, n] : per_worker) CHECK(n <= c.limit);
    CHECK(per_worker.size() >= static_cast<std::size_t>(c.items) / c.limit);
    CHECK(coshard_test::workers_once_settled(c.workers) == c.workers);
  });
}

TEST_CASE("a leaking task's worker is retired by max_worker_rss_bytes and replaced") {
  with_pool({.workers = 1, .batch_size = 1, .max_worker_rss_bytes = std::size_t{96} << 20},
            [](coshard::process_pool& pool) {
              auto pids = pool.map(iota_vector(20), [](long) {
                // Leaks 16 MB per item, touched so that it is resident.
                auto* block = new std::vector<char>(std::size_t{16} << 20, 1);
                block->back() = 2;
                leaked = block;
                return ::getpid();
              });
              std::map<pid_t, int> per_worker;
              for (pid_t p : pids) ++per_worker[p];
              CHECK(per_worker.size() >= 3);  // 20 x 16 MB through a 96 MB cap
              for (auto& [pid, n] : per_worker) CHECK(n <= 7);
            });
}

TEST_CASE("shutdown with queued work is bounded, graceful or forced, and leaves no child") {
  const auto mode = GENERATE(coshard::shutdown_mode::graceful, coshard::shutdown_mode::forced);
  coshard_test::fd_baseline fds;
  {
    coshard::process_pool pool{{.workers = 2, .concurrency = 4, .shutdown_timeout = 1500ms}};
    std::exception_ptr job_error;
    std::thread caller([&] {
      try {
        (void)pool.map(iota_vector(100'000), [](long x) -> asio::awaitable<long> {
          asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
          co_await t.async_wait(asio::use_awaitable);
          co_return x;
        });
      } catch (...) {
        job_error = std::current_exception();
      }
    });
    std::this_thread::sleep_for(200ms);
    const auto t0 = std::chrono::steady_clock::now();
    pool.shutdown(mode);
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    caller.join();
    CHECK(job_error);
    CHECK(child_pids().empty());
    CHECK_THROWS_WITH(pool.map(iota_vector(3), [](long x) { return x; }), Catch::Contains("shut down"));
  }
  CHECK(child_pids().empty());
  CHECK(fds.leaked() == 0);
}

TEST_CASE("graceful shutdown escalates when a plain function never returns") {
  coshard::process_pool pool{{.workers = 1, .shutdown_timeout = 300ms}};
  std::thread caller([&] {
    try {
      (void)pool.map(iota_vector(4), [](long x) {
        for (volatile bool forever = true; forever;) {
        }
        return x;
      });
    } catch (...) {
    }
  });
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  pool.shutdown();
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  caller.join();
  CHECK(child_pids().empty());
}

// Parent death: tests/test_supervision.cpp ("the supervisor and workers exit soon
// after the owner dies"), for pools built in main and in a thread that ended.
