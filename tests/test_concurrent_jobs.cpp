// Many jobs at once on one pool: from several threads and coroutines, every
// kind, each with its own results, errors, cancellation and options, the
// workers shared between them by the scheduler.
#include "coshard/process_pool.hpp"

#include <asio/bind_cancellation_slot.hpp>
#include <asio/bind_executor.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <map>
#include <numeric>
#include <ranges>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;
using coshard_test::child_pids;

namespace {

using coshard_test::with_pool;

std::vector<long> iota_vector(long n, long from = 0) {
  std::vector<long> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), from);
  return v;
}

// Counters shared with every worker (mapped before any pool forks).
struct shared_counters {
  std::atomic<long> big_done{0};
  std::atomic<long> first_job_started{0};
  std::atomic<bool> hold_first_job{false};
  std::atomic<int> runs_of[64];
};
shared_counters* const counters = coshard_test::shared_with_forks<shared_counters>();

void reset_runs() {
  for (auto& r : counters->runs_of) r.store(0);
}

asio::awaitable<long> sleep_then(long x, std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
  co_return x;
}

// How a job ended, for the checks below.
std::string error_kind(std::exception_ptr e) {
  if (!e) return "none";
  try {
    std::rethrow_exception(e);
  } catch (const coshard::pool_error&) {
    return "pool_error";
  } catch (const coshard::worker_crashed&) {
    return "worker_crashed";
  } catch (const coshard::timeout_error&) {
    return "timeout_error";
  } catch (const coshard::task_error&) {
    return "task_error";
  } catch (const std::system_error& s) {
    return s.code() == asio::error::operation_aborted ? "operation_aborted" : "system_error";
  } catch (...) {
    return "other";
  }
}

}  // namespace

TEST_CASE("threads and coroutines run jobs of every kind at once on one pool, each with exact results") {
  with_pool({.workers = 2, .concurrency = 16}, [](coshard::process_pool& pool) {
    constexpr int threads = 4, jobs_per_thread = 6;
    std::atomic<int> wrong{0}, done{0};
    auto one_job = [&pool, &wrong](int t, int k) {
      const long n = 200 + 37 * t + 11 * k;  // every job its own size and answer
      const auto input = iota_vector(n, k);
      switch (k % 6) {
        case 0: {
          auto out = pool.map(input, [](long x) { return x * 3; });
          for (long i = 0; i < n; ++i) wrong += out[static_cast<std::size_t>(i)] != (i + k) * 3;
          break;
        }
        case 1: {
          auto out = pool.map(input, [](long offset, long x) { return x + offset; }, long{1000 * t});
          for (long i = 0; i < n; ++i) wrong += out[static_cast<std::size_t>(i)] != i + k + 1000 * t;
          break;
        }
        case 2: {
          auto out = pool.map_settled(input, [](long x) {
            if (x % 50 == 7) throw std::runtime_error("seven");
            return x;
          });
          for (long i = 0; i < n; ++i) {
            const long x = i + k;
            wrong += out[static_cast<std::size_t>(i)].ok() == (x % 50 == 7);
          }
          break;
        }
        case 3: {
          const long sum = pool.map_reduce(input, [](long x) { return x * x; }, std::plus<>{}, 0L);
          long want = 0;
          for (long x : input) want += x * x;
          wrong += sum != want;
          break;
        }
        case 4: {
          auto counts = pool.map_reduce_by_key(input, [](long x) { return std::map<long, long>{{x % 7, 1}}; });
          long total = 0;
          for (auto& [key, c] : counts) total += c;
          wrong += total != n || counts.size() != 7;
          break;
        }
        case 5: {
          std::vector<int> seen(static_cast<std::size_t>(n), 0);
          const auto delivered = pool.for_each_result(input, [](long x) { return x - 1; }, [&](std::size_t i, long r) {
            ++seen[i];
            wrong += r != static_cast<long>(i) + k - 1;
          });
          wrong += delivered != static_cast<std::size_t>(n);
          for (int s : seen) wrong += s != 1;
          break;
        }
      }
    };
    std::vector<std::jthread> callers;
    for (int t = 0; t < threads; ++t)
      callers.emplace_back([&, t] {
        for (int k = 0; k < jobs_per_thread; ++k) {
          one_job(t, k);
          ++done;
        }
      });
    // Meanwhile, 20 coroutines on one io_context, awaitable tasks in the workers.
    asio::io_context io;
    int async_ok = 0;
    for (int c = 0; c < 20; ++c)
      asio::co_spawn(io, [&, c]() -> asio::awaitable<void> {
        auto out = co_await pool.async_map(iota_vector(30, c), [](long x) -> asio::awaitable<long> {
          co_return co_await sleep_then(x * 2, 1ms);
        }, asio::use_awaitable);
        bool right = out.size() == 30;
        for (long i = 0; i < 30; ++i) right = right && out[static_cast<std::size_t>(i)] == (i + c) * 2;
        async_ok += right;
      }, asio::detached);
    io.run();
    callers.clear();
    CHECK(done.load() == threads * jobs_per_thread);
    CHECK(wrong.load() == 0);
    CHECK(async_ok == 20);
  });
}

TEST_CASE("a second job, async or from another thread, runs beside the first instead of waiting for it") {
  with_pool({.workers = 2, .concurrency = 8}, [](coshard::process_pool& pool) {
    std::atomic<bool> a_running{true};
    bool b_done_while_a_ran = false;
    // A: 20000 items of 20 ms each, 16 at a time (25 s of work), until B is
    // done; from then on each returns at once. So A runs for as long as B
    // takes, however slow the machine, and its batches still end every few
    // items, which is where B is given a worker.
    counters->first_job_started.store(0);
    counters->hold_first_job.store(true);
    std::jthread a([&] {
      const auto delivered = pool.for_each_result(iota_vector(20000), [](long x) -> asio::awaitable<long> {
        counters->first_job_started.fetch_add(1);
        if (counters->hold_first_job.load()) co_await sleep_then(0, 20ms);
        co_return x;
      }, [](std::size_t, long) {});
      CHECK(delivered == 20000);
      a_running.store(false);
    });
    while (counters->first_job_started.load() == 0) std::this_thread::sleep_for(1ms);
    // B, blocking, on this thread: it gets a worker at A's next batch boundary.
    CHECK(pool.map(std::vector<long>{1, 2, 3}, [](long x) { return x * 2; }) == std::vector<long>{2, 4, 6});
    b_done_while_a_ran = a_running.load();
    counters->hold_first_job.store(false);
    // C, async, on the pool's own thread.
    auto c = pool.async_map(std::vector<long>{4, 5}, [](long x) { return x + 1; }, asio::use_future);
    CHECK(c.get() == std::vector<long>{5, 6});
    a.join();
    CHECK(b_done_while_a_ran);
  });
}

TEST_CASE("a blocking call on the thread that runs another job of the pool is refused, not a deadlock") {
  with_pool({.workers = 1}, [](coshard::process_pool& pool) {
    std::string refused;
    const auto delivered = pool.for_each_result(iota_vector(3), [](long x) { return x; }, [&](std::size_t, long) {
      try {
        (void)pool.map(iota_vector(2), [](long x) { return x; });
      } catch (const coshard::pool_error& e) {
        refused = e.what();
      }
    });
    CHECK(delivered == 3);
    CHECK_THAT(refused, Catch::Contains("would wait for itself") && Catch::Contains("async_"));
  });
}

TEST_CASE("cancelling one job, by its token's slot or its stop_token, leaves the others running") {
  with_pool({.workers = 2, .concurrency = 8}, [](coshard::process_pool& pool) {
    auto slow = [](long x) -> asio::awaitable<long> { co_return co_await sleep_then(x, 30ms); };
    SECTION("the completion token's cancellation slot") {
      // Both jobs on one io_context (each on a strand of it); the signal is
      // emitted from that loop, as Asio requires.
      asio::io_context io;
      asio::cancellation_signal cancel_a;
      std::exception_ptr a_error, b_error;
      std::vector<long> b_out;
      pool.async_map(iota_vector(400), slow,
                     asio::bind_cancellation_slot(cancel_a.slot(), asio::bind_executor(io, [&](std::exception_ptr e,
                                                                                               std::vector<long>) {
                       a_error = e;
                     })));
      pool.async_map(iota_vector(40), slow, asio::bind_executor(io, [&](std::exception_ptr e, std::vector<long> out) {
        b_error = e;
        b_out = std::move(out);
      }));
      asio::steady_timer t(io, 60ms);
      t.async_wait([&](const asio::error_code&) { cancel_a.emit(asio::cancellation_type::terminal); });
      io.run();
      CHECK(error_kind(a_error) == "operation_aborted");
      CHECK(error_kind(b_error) == "none");
      CHECK(b_out == iota_vector(40));
    }
    SECTION("job_options::stop_token, for a blocking call") {
      std::stop_source stop;
      std::exception_ptr a_error;
      std::jthread a([&] {
        try {
          (void)pool.map(iota_vector(400), slow, {.stop_token = stop.get_token()});
        } catch (...) {
          a_error = std::current_exception();
        }
      });
      std::this_thread::sleep_for(50ms);
      auto b = pool.async_map(iota_vector(40), slow, asio::use_future);
      stop.request_stop();
      a.join();
      CHECK(error_kind(a_error) == "operation_aborted");
      CHECK(b.get() == iota_vector(40));
    }
    // The pool serves the next job normally.
    CHECK(pool.map(iota_vector(5), [](long x) { return x; }) == iota_vector(5));
  });
}

TEST_CASE("a poison item fails its own job only; the job beside it finishes whole") {
  reset_runs();
  with_pool({.workers = 2, .batch_size = 4}, [](coshard::process_pool& pool) {
    std::exception_ptr poisoned_error;
    std::jthread poisoned([&] {
      try {
        (void)pool.map(iota_vector(40), [](long x) {
          if (x == 7) {
            counters->runs_of[7].fetch_add(1);
            ::raise(SIGKILL);
          }
          return x;
        }, {.batch_size = 1, .max_retries = 0});
      } catch (...) {
        poisoned_error = std::current_exception();
      }
    });
    const auto healthy = pool.map(iota_vector(300), [](long x) -> asio::awaitable<long> {
      co_return co_await sleep_then(x + 1, 1ms);
    });
    poisoned.join();
    CHECK(healthy == iota_vector(300, 1));
    REQUIRE(error_kind(poisoned_error) == "worker_crashed");
    try {
      std::rethrow_exception(poisoned_error);
    } catch (const coshard::worker_crashed& e) {
      CHECK(e.index() == 7);
    }
    // max_retries = 0 for that job (the pool's is 2, which runs it 3 or 4
    // times): once alone, plus once more if its first death was beside
    // another batch.
    CHECK(counters->runs_of[7].load() <= 2);
  });
}

TEST_CASE("job_options set batch_size, item_timeout and max_retries for one job, not the pool") {
  reset_runs();
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    // item_timeout for one job, while a job without one runs items longer
    // than that limit on the same workers.
    std::exception_ptr timed_error;
    std::jthread timed([&] {
      try {
        (void)pool.map(iota_vector(4), [](long x) -> asio::awaitable<long> {
          co_return co_await sleep_then(x, x == 2 ? 10s : 1ms);
        }, {.item_timeout = 100ms});
      } catch (...) {
        timed_error = std::current_exception();
      }
    });
    const auto untimed = pool.map(iota_vector(6), [](long x) -> asio::awaitable<long> {
      co_return co_await sleep_then(x, 250ms);
    });
    timed.join();
    CHECK(untimed == iota_vector(6));
    REQUIRE(error_kind(timed_error) == "timeout_error");
    try {
      std::rethrow_exception(timed_error);
    } catch (const coshard::timeout_error& e) {
      CHECK(e.index() == 2);
    }
    // batch_size 1 and max_retries 0: item 3 fails at its first death alone
    // (at most 2 runs; the pool's max_retries would give 3 or 4), and the
    // items before it, each a batch of its own, ran once.
    try {
      (void)pool.map(iota_vector(8), [](long x) {
        counters->runs_of[x].fetch_add(1);
        if (x == 3) ::raise(SIGKILL);
        return x;
      }, {.batch_size = 1, .max_retries = 0});
      FAIL("no exception");
    } catch (const coshard::worker_crashed& e) {
      CHECK(e.index() == 3);
    }
    CHECK(counters->runs_of[3].load() <= 2);
    for (int x : {0, 1, 2}) CHECK(counters->runs_of[x].load() == 1);
    CHECK_THROWS_WITH(pool.map(iota_vector(2), [](long x) { return x; }, {.item_timeout = -1ms}),
                      Catch::Contains("job_options.item_timeout"));
  });
}

TEST_CASE("a small job started beside a huge one is not starved") {
  counters->big_done.store(0);
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    constexpr long big_items = 4'000'000;
    auto big = pool.async_map_reduce(std::views::iota(0L, big_items), [](long x) {
      counters->big_done.fetch_add(1, std::memory_order_relaxed);
      volatile long spin = x;
      for (int i = 0; i < 200; ++i) spin = spin + i;
      return 1L;
    }, std::plus<>{}, 0L, asio::use_future);
    while (counters->big_done.load() < 10'000) std::this_thread::sleep_for(1ms);
    const auto small = pool.map(iota_vector(20), [](long x) { return x * x; });
    const long big_done_then = counters->big_done.load();
    CHECK(small.back() == 19 * 19);
    // Whatever the speed of the machine: the small job did not wait for the
    // huge one, only for a batch boundary of it.
    CHECK(big_done_then < big_items / 2);
    pool.cancel();
    CHECK_THROWS_AS(big.get(), std::system_error);
  });
}

TEST_CASE("an async job whose io_context is destroyed while it runs gives its workers back") {
  with_pool({.workers = 2, .concurrency = 4}, [](coshard::process_pool& pool) {
    {
      asio::io_context doomed;
      pool.async_map(iota_vector(1000), [](long x) -> asio::awaitable<long> { co_return co_await sleep_then(x, 5s); },
                     [](std::exception_ptr, std::vector<long>) {});
      pool.async_map(iota_vector(1000), [](long x) -> asio::awaitable<long> { co_return co_await sleep_then(x, 5s); },
                     asio::bind_executor(doomed, [](std::exception_ptr, std::vector<long>) {}));
      doomed.run_for(200ms);  // the second job leases a worker and sends it batches
      pool.cancel();          // the first one (on the pool's thread) ends; the second never sees it
    }
    // The destroyed job's worker was let go and is replaced for this job.
    CHECK(pool.map(iota_vector(10), [](long x) { return x * 2; }).back() == 18);
  });
}

TEST_CASE("shutdown() with many jobs running ends every one of them, bounded, leaving no child") {
  for (auto mode : {coshard::shutdown_mode::graceful, coshard::shutdown_mode::forced}) {
    coshard_test::fd_baseline fds;
    std::vector<std::string> ends;
    std::mutex ends_mutex;
    double took_s = 0;
    {
      coshard::process_pool pool{{.workers = 2, .concurrency = 4, .shutdown_timeout = 500ms}};
      auto slow = [](long x) -> asio::awaitable<long> { co_return co_await sleep_then(x, 50ms); };
      std::vector<std::jthread> blocking;
      for (int t = 0; t < 3; ++t)
        blocking.emplace_back([&] {
          std::exception_ptr e;
          try {
            (void)pool.map(iota_vector(1000), slow);
          } catch (...) {
            e = std::current_exception();
          }
          std::lock_guard lock(ends_mutex);
          ends.push_back(error_kind(e));
        });
      auto f1 = pool.async_map(iota_vector(1000), slow, asio::use_future);
      auto f2 = pool.async_map_reduce(iota_vector(1000), slow, std::plus<>{}, 0L, asio::use_future);
      std::this_thread::sleep_for(200ms);
      const auto t0 = std::chrono::steady_clock::now();
      pool.shutdown(mode);
      took_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      blocking.clear();
      try {
        (void)f1.get();
        ends.push_back("none");
      } catch (...) {
        ends.push_back(error_kind(std::current_exception()));
      }
      try {
        (void)f2.get();
        ends.push_back("none");
      } catch (...) {
        ends.push_back(error_kind(std::current_exception()));
      }
    }
    const std::string want = mode == coshard::shutdown_mode::graceful ? "operation_aborted" : "pool_error";
    REQUIRE(ends.size() == 5);
    for (const auto& e : ends) CHECK(e == want);
    CHECK(took_s < 2 * 0.5 + 1.0 + 2.0);  // two shutdown_timeouts and a second, with a wide margin
    CHECK(child_pids().empty());
    CHECK(fds.leaked() == 0);
  }
}

// ---------------------------------------------------------------------------
// Single tasks: submit and async_submit.
// ---------------------------------------------------------------------------

TEST_CASE("submit and async_submit run single tasks with every kind of token") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    // std::future
    std::future<long> f = pool.submit([](long x) { return x * x; }, 12L);
    CHECK(f.get() == 144);
    // a plain callback (run on the pool's own thread)
    std::promise<std::pair<bool, std::string>> got;
    pool.async_submit([](std::string s) { return s + "!"; }, std::string("hi"),
                      [&](std::exception_ptr e, std::string r) { got.set_value({!e, r}); });
    CHECK(got.get_future().get() == std::make_pair(true, std::string("hi!")));
    // use_awaitable, with awaitable tasks, from many coroutines at once
    asio::io_context io;
    long total = 0;
    int finished = 0;
    for (int c = 0; c < 100; ++c)
      asio::co_spawn(io, [&, c]() -> asio::awaitable<void> {
        for (long k = 0; k < 20; ++k) {
          total += co_await pool.async_submit([](long x) -> asio::awaitable<long> { co_return co_await sleep_then(x, 1ms); },
                                              long{c * 100 + k}, asio::use_awaitable);
        }
        ++finished;
      }, asio::detached);
    io.run();
    long want = 0;
    for (int c = 0; c < 100; ++c)
      for (long k = 0; k < 20; ++k) want += c * 100 + k;
    CHECK(finished == 100);
    CHECK(total == want);
  });
}

TEST_CASE("async_submit: each task fails alone, with the errors of map") {
  reset_runs();
  with_pool({.workers = 2, .max_retries = 0}, [](coshard::process_pool& pool) {
    asio::io_context io;
    std::map<long, std::string> ends;
    for (long x = 0; x < 12; ++x)
      pool.async_submit([](long v) {
        if (v == 3) throw std::invalid_argument("three");
        if (v == 5) {
          counters->runs_of[5].fetch_add(1);
          ::raise(SIGKILL);
        }
        return v;
      }, x, asio::bind_executor(io, [&ends, x](std::exception_ptr e, long r) {
        ends[x] = e ? error_kind(e) : (r == x ? "ok" : "wrong");
      }));
    io.run();
    REQUIRE(ends.size() == 12);
    for (long x = 0; x < 12; ++x) {
      const std::string want = x == 3 ? "task_error" : x == 5 ? "worker_crashed" : "ok";
      CHECK(ends[x] == want);
    }
  });
}

TEST_CASE("async_submit: a cancelled task completes with operation_aborted; the others complete") {
  with_pool({.workers = 1, .concurrency = 4}, [](coshard::process_pool& pool) {
    asio::io_context io;
    asio::cancellation_signal cancel_one;
    std::exception_ptr cancelled_error;
    long others = 0;
    auto slow = [](long x) -> asio::awaitable<long> { co_return co_await sleep_then(x, 100ms); };
    pool.async_submit(slow, 1L, asio::bind_cancellation_slot(cancel_one.slot(), asio::bind_executor(io, [&](std::exception_ptr e, long) {
      cancelled_error = e;
    })));
    for (long x = 2; x < 6; ++x)
      pool.async_submit(slow, x, asio::bind_executor(io, [&](std::exception_ptr e, long r) {
        if (!e) others += r;
      }));
    asio::steady_timer t(io, 10ms);
    t.async_wait([&](const asio::error_code&) { cancel_one.emit(asio::cancellation_type::terminal); });
    io.run();
    CHECK(error_kind(cancelled_error) == "operation_aborted");
    CHECK(others == 2 + 3 + 4 + 5);
  });
}

TEST_CASE("submitted tasks waiting when the pool shuts down fail; later ones are refused") {
  coshard_test::fd_baseline fds;
  std::vector<std::future<long>> waiting;
  {
    coshard::process_pool pool{{.workers = 1, .concurrency = 2, .shutdown_timeout = 500ms}};
    for (long x = 0; x < 50; ++x)
      waiting.push_back(pool.submit([](long v) -> asio::awaitable<long> { co_return co_await sleep_then(v, 50ms); }, x));
    std::this_thread::sleep_for(120ms);
    pool.shutdown();
    auto late = pool.submit([](long v) { return v; }, 1L);
    CHECK_THROWS_AS(late.get(), coshard::pool_error);
  }
  int done = 0, aborted = 0;
  for (auto& f : waiting) {
    try {
      (void)f.get();
      ++done;
    } catch (const std::system_error& e) {
      aborted += e.code() == asio::error::operation_aborted;
    }
  }
  CHECK(done + aborted == 50);
  CHECK(done < 50);
  CHECK(child_pids().empty());
  CHECK(fds.leaked() == 0);
}
