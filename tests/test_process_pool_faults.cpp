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
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <pty.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <map>
#include <new>
#include <numeric>
#include <random>
#include <string>
#include <thread>

#include "test_support.hpp"

using namespace std::chrono_literals;
using coshard_test::child_pids;

namespace {

using coshard_test::with_pool;

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
        // Workers keep a sanitizer's SIGSEGV handler (so a real memory error
        // is reported); this deliberate crash steps around it. The library's
        // own reset of the parent's handlers is tested separately below.
        if (crash_mode == SIGSEGV) ::signal(SIGSEGV, SIG_DFL);
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

namespace {
void parent_only_handler(int) { ::_exit(0); }
}  // namespace

TEST_CASE("workers do not inherit the caller's signal handlers, ignores or mask") {
  // Installed in the caller before the pool exists: had a worker kept them,
  // SIGTERM and SIGILL would end it with code 0 (the handler), SIGINT would
  // be ignored, and a blocked SIGUSR1 would stay pending, so the item would
  // return normally.
  struct saved_state {
    struct sigaction term {}, ill{}, intr{};
    sigset_t mask{};
  } saved;
  struct sigaction handler {};
  handler.sa_handler = parent_only_handler;
  sigemptyset(&handler.sa_mask);
  ::sigaction(SIGTERM, &handler, &saved.term);
  ::sigaction(SIGILL, &handler, &saved.ill);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGINT, &ignore, &saved.intr);
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ::pthread_sigmask(SIG_BLOCK, &usr1, &saved.mask);
  with_pool({.workers = 2, .batch_size = 4, .max_retries = 0}, [](coshard::process_pool& pool) {
    auto out = pool.map_settled(iota_vector(40), [](long x) {
      if (x == 5) ::raise(SIGTERM);
      if (x == 15) ::raise(SIGILL);
      if (x == 25) ::raise(SIGINT);
      if (x == 35) ::raise(SIGUSR1);
      return x;
    });
    for (const auto& [index, sig] : {std::pair{5, SIGTERM}, {15, SIGILL}, {25, SIGINT}, {35, SIGUSR1}}) {
      INFO("input " << index << " raised " << ::strsignal(sig));
      REQUIRE_FALSE(out[static_cast<std::size_t>(index)].ok());
      try {
        std::rethrow_exception(out[static_cast<std::size_t>(index)].error());
      } catch (const coshard::worker_crashed& e) {
        CHECK(e.term_signal() == sig);
      }
    }
    for (long i = 0; i < 40; ++i)
      if (i % 10 != 5) CHECK(out[static_cast<std::size_t>(i)].value() == i);
  });
  ::sigaction(SIGTERM, &saved.term, nullptr);
  ::sigaction(SIGILL, &saved.ill, nullptr);
  ::sigaction(SIGINT, &saved.intr, nullptr);
  ::pthread_sigmask(SIG_SETMASK, &saved.mask, nullptr);
}

namespace {
// Items run, counted across the workers: a page shared with every process
// the pool forks, mapped before the pool exists.
std::atomic<long>* const items_run = coshard_test::shared_with_forks<std::atomic<long>>();
}  // namespace

TEST_CASE("map raises the failure of the lowest failing input index; map_settled keeps every success") {
  with_pool({.workers = 2, .batch_size = 8}, [](coshard::process_pool& pool) {
    // Input 9 (second batch, the other worker) fails at once; input 2 (first
    // batch) fails 100 ms later. The rule is the lowest index, not the first
    // failure seen, so 2 must win every time.
    auto fn = [](long x) {
      if (x == 2) {
        std::this_thread::sleep_for(100ms);
        throw std::domain_error("bad 2");
      }
      if (x == 9 || x % 100 == 37) throw std::domain_error("bad " + std::to_string(x));
      return x;
    };
    try {
      (void)pool.map(iota_vector(1000), fn);
      FAIL("no exception");
    } catch (const coshard::task_error& e) {
      CHECK(e.index() == 2);
      CHECK(e.message() == "bad 2");
      CHECK(e.type_name() == "std::domain_error");
    }
    auto settled = pool.map_settled(iota_vector(1000), fn);
    int failed = 0;
    for (std::size_t i = 0; i < settled.size(); ++i) {
      if (i == 2 || i == 9 || i % 100 == 37) {
        ++failed;
        CHECK_THROWS_WITH(settled[i].value(), Catch::Contains("bad " + std::to_string(i)));
      } else {
        REQUIRE(settled[i].value() == static_cast<long>(i));
      }
    }
    CHECK(failed == 12);
  });
}

TEST_CASE("after a failure, map starts no further batch; those in flight drain") {
  with_pool({.workers = 2, .batch_size = 8}, [](coshard::process_pool& pool) {
    items_run->store(0);
    CHECK_THROWS_AS(pool.map(iota_vector(200'000),
                             [](long x) {
                               items_run->fetch_add(1);
                               if (x == 3) throw std::runtime_error("stop here");
                               return x;
                             }),
                    coshard::task_error);
    const long ran = items_run->load();
    WARN(ran << " of 200000 items ran before the job stopped");
    // Every batch sent before the failure was seen may run; nothing after.
    // Running on would reach all 200000.
    CHECK(ran < 100'000);
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

// A blocking call from a second thread while a job runs: test_concurrent_jobs.cpp
// ("a second job, async or from another thread, runs beside the first").

// Set before a pool is created, so that its forked workers see it.
char first_attempt_marker[128];

TEST_CASE("a worker that dies while a batch is being written to it") {
  std::snprintf(first_attempt_marker, sizeof first_attempt_marker, "/tmp/coshard-test-%d-marker",
                static_cast<int>(::getpid()));
  ::unlink(first_attempt_marker);
  with_pool({.workers = 2, .batch_size = 8}, [](coshard::process_pool& pool) {
    std::vector<std::string> big;
    for (int i = 0; i < 40; ++i) big.push_back(std::string(std::size_t{1} << 20, static_cast<char>('a' + i % 26)));
    // The first attempt at item 5 kills its worker while the parent is
    // writing the worker's next 8 MiB batch (batches_in_flight = 2): the
    // write fails with EPIPE (never SIGPIPE) and the batches are retried.
    // Before dying, the worker lets the parent fill its receive queue and
    // records how much was queued and how large its buffer is.
    auto sizes = pool.map(big, [](const std::string& s) {
      if (s[0] == 'f') {
        const int fd = ::open(first_attempt_marker, O_CREAT | O_EXCL | O_WRONLY, 0600);
        if (fd >= 0) {
          int queued = 0, rcvbuf = 0;
          socklen_t len = sizeof rcvbuf;
          std::this_thread::sleep_for(200ms);
          for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
            std::error_code ec;
            if (std::filesystem::read_symlink(e.path(), ec).string().rfind("socket:", 0) != 0) continue;
            const int channel = std::stoi(e.path().filename().string());  // a worker's only socket
            ::ioctl(channel, FIONREAD, &queued);
            ::getsockopt(channel, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len);
          }
          const std::string text = std::to_string(queued) + " " + std::to_string(rcvbuf);
          (void)!::write(fd, text.data(), text.size());
          ::raise(SIGKILL);
        }
      }
      return s.size() + static_cast<std::size_t>(s[0] - 'a');
    });
    REQUIRE(sizes.size() == 40);
    for (std::size_t i = 0; i < 40; ++i) CHECK(sizes[i] == (std::size_t{1} << 20) + i % 26);
  });
  long queued = 0, rcvbuf = 0;
  std::ifstream(first_attempt_marker) >> queued >> rcvbuf;
  CHECK(::unlink(first_attempt_marker) == 0);  // the crash really happened
  // Bytes of the next batch were arriving when the worker died, and the
  // batch (8 MiB) is more than the two socket buffers hold (the parent's
  // send buffer is sized as the worker's receive buffer): the parent was
  // still writing it.
  CHECK(queued > 0);
  CHECK(rcvbuf > 0);
  CHECK(2 * rcvbuf < 8L << 20);
}

namespace {
constexpr long chaos_kills = 5, chaos_every = 15'000;  // the chaos test's kills, and the items between them
// Workers killed so far by the chaos test's killer, read by its items.
std::atomic<long>* const kills_done = coshard_test::shared_with_forks<std::atomic<long>>();
}  // namespace

TEST_CASE("chaos: map_reduce over 10^5 items while workers are SIGKILLed at random gives the exact answer") {
  // Five kills at progress points (every 15,000 items run); items past the
  // last point wait until all five are done, so every kill lands mid-job,
  // however fast the machine. max_retries = 5: five kills convict no item.
  items_run->store(0);
  kills_done->store(0);
  with_pool({.workers = 2, .batch_size = 500, .max_retries = 5}, [&](coshard::process_pool& pool) {
    // A jthread: stopped and joined even if map_reduce throws.
    std::jthread chaos([&](std::stop_token stop) {
      std::mt19937 rng(12345);
      for (long k = 1; k <= chaos_kills && !stop.stop_requested(); ++k) {
        while (items_run->load() < k * chaos_every && !stop.stop_requested()) std::this_thread::sleep_for(1ms);
        for (;;) {  // a slot being replaced has no pid for a moment
          const auto pids = pool.worker_pids();
          const pid_t victim = pids[rng() % pids.size()];
          if ((victim > 0 && ::kill(victim, SIGKILL) == 0) || stop.stop_requested()) break;
          std::this_thread::sleep_for(1ms);
        }
        kills_done->store(k);
      }
    });
    const long sum = pool.map_reduce(iota_vector(100'000), [](long x) {
      if (items_run->fetch_add(1) + 1 > chaos_kills * chaos_every)
        for (int waited = 0; kills_done->load() < chaos_kills && waited < 30'000; ++waited)
          std::this_thread::sleep_for(1ms);
      return x % 1000;
    }, std::plus<>{}, 0L);
    chaos.request_stop();
    chaos.join();
    long want = 0;
    for (long x = 0; x < 100'000; ++x) want += x % 1000;
    CHECK(sum == want);
    CHECK(kills_done->load() == chaos_kills);
  });
}

namespace {
std::atomic<int>* const held_item_runs = coshard_test::shared_with_forks<std::atomic<int>>();
}  // namespace

TEST_CASE("map_reduce: the partial a dying worker held is computed again, its items counted once") {
  // With hold_partials, a reduce batch is folded into a partial its worker
  // keeps until the parent asks for it (every 64 batches, 1 MiB of inputs, or when the
  // worker has nothing else to do). Item 300 kills its worker once, about
  // 30 batches of 10 into the job: that worker still holds the partial of
  // the batches it answered, and they must run again.
  held_item_runs->store(0);
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    coshard::job_progress last{};
    coshard::job_options o;
    o.batch_size = 10;
    o.hold_partials = true;
    o.progress = [&last](const coshard::job_progress& p) { last = p; };
    const long sum = pool.map_reduce(
        iota_vector(2000),
        [](long x) {
          std::this_thread::sleep_for(200us);
          if (x == 300 && held_item_runs->fetch_add(1) == 0) ::raise(SIGKILL);
          return x;
        },
        std::plus<>{}, 0L, o);
    CHECK(sum == 1999L * 2000 / 2);
    CHECK(held_item_runs->load() == 2);  // item 300 ran again, once
    CHECK(last.finished);
    CHECK(last.items_done == 2000);  // the batches that ran twice count once
    CHECK(last.items_failed == 0);
    CHECK(last.workers_replaced == 1);
    // More than the dead worker's unanswered batches (at most 2 of 10 items)
    // came back: the ones whose partial it held.
    CHECK(last.items_retried > 40);
  });
}

namespace {
// A partial that kills its worker when it is encoded covering more than 15
// items: a held partial of two batches of 10 can never be sent.
struct fragile_sum {
  long value = 0;
  long items = 0;
  template <class Archive>
  void save(Archive& ar) const {
    if (items > 15) ::raise(SIGKILL);
    ar(value, items);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(value, items);
  }
};
struct add_fragile {
  fragile_sum operator()(fragile_sum a, long x) const { return {a.value + x, a.items + 1}; }
  fragile_sum operator()(fragile_sum a, const fragile_sum& b) const { return {a.value + b.value, a.items + b.items}; }
};
struct concatenate {
  std::vector<long> operator()(std::vector<long> a, long x) const {
    a.push_back(x);
    return a;
  }
  std::vector<long> operator()(std::vector<long> a, const std::vector<long>& b) const {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
};
}  // namespace

TEST_CASE("map_reduce: a held partial that cannot be sent costs a rerun, not the job or a loop") {
  SECTION("its worker dies encoding it: the batches run again, their partials sent one by one") {
    with_pool({.workers = 2}, [](coshard::process_pool& pool) {
      coshard::job_options o;
      o.batch_size = 10;
      o.hold_partials = true;
      std::size_t replaced = 0;
      o.progress = [&replaced](const coshard::job_progress& p) { replaced = p.workers_replaced; };
      const fragile_sum s = pool.map_reduce(iota_vector(100), [](long x) { return x; }, add_fragile{},
                                            fragile_sum{}, o);
      CHECK(s.value == 99L * 100 / 2);
      CHECK(s.items == 100);
      CHECK(replaced >= 1);
      CHECK(replaced <= 2);  // one death per worker that held two batches, then no more holding
    });
  }
  SECTION("it is larger than max_frame_bytes: the same, with no death") {
    with_pool({.workers = 2, .max_frame_bytes = 64 * 1024}, [](coshard::process_pool& pool) {
      coshard::job_options o;
      o.hold_partials = true;
      o.batch_size = 200;  // one batch's partial: 1.6 KB; 64 of them held: 100 KB
      coshard::job_progress last{};
      o.progress = [&last](const coshard::job_progress& p) { last = p; };
      const auto all = pool.map_reduce(iota_vector(40'000), [](long x) { return x; }, concatenate{},
                                       std::vector<long>{}, o);
      REQUIRE(all.size() == 40'000);
      CHECK(std::accumulate(all.begin(), all.end(), 0L) == 39'999L * 40'000 / 2);
      CHECK(last.workers_replaced == 0);
      CHECK(last.items_done == 40'000);
    });
  }
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
      // cancel() reaches only a job that has started: repeated until it ends.
      std::atomic<bool> ended{false};
      std::jthread canceller([&] {
        while (!ended.load()) {
          std::this_thread::sleep_for(50ms);
          pool.cancel();
        }
      });
      CHECK_THROWS_AS(pool.map(iota_vector(10'000), slow), std::system_error);
      ended.store(true);
      canceller.join();
    }
    CHECK(pool.map(iota_vector(10), [](long x) { return x; }).back() == 9);
    CHECK(coshard_test::workers_once_settled(2) == 2);
  });
}

TEST_CASE("cancel lets plain functions finish the batch they run; the job gives operation_aborted") {
  with_pool({.workers = 2, .batch_size = 10}, [](coshard::process_pool& pool) {
    items_run->store(0);
    // Cancelled once the first item runs, so a batch is under way; repeated
    // until the job ends.
    std::atomic<bool> ended{false};
    std::jthread canceller([&] {
      for (int waited = 0; items_run->load() == 0 && waited < 10'000 && !ended.load(); ++waited)
        std::this_thread::sleep_for(1ms);
      while (!ended.load()) {
        pool.cancel();
        std::this_thread::sleep_for(50ms);
      }
    });
    std::exception_ptr error;
    try {
      (void)pool.map(iota_vector(10'000), [](long x) {
        std::this_thread::sleep_for(10ms);  // a batch takes 100 ms
        items_run->fetch_add(1);
        return x;
      });
    } catch (...) {
      error = std::current_exception();
    }
    ended.store(true);
    canceller.join();
    REQUIRE(error);
    try {
      std::rethrow_exception(error);
    } catch (const std::system_error& e) {
      CHECK(e.code() == asio::error::operation_aborted);
    }
    // Whole batches only: a worker runs a plain function's batch to its end
    // (it reads the cancel frame only between batches). Far fewer than all.
    const long ran = items_run->load();
    INFO(ran << " items ran");
    CHECK(ran % 10 == 0);
    CHECK(ran >= 10);
    CHECK(ran < 10'000);
  });
}

// ---------------------------------------------------------------------------
// What a worker writes on its channel: a result and then its death, and
// frames the parent must not trust.
// ---------------------------------------------------------------------------

namespace {
// The channel of the worker running the calling task: its only socket.
int own_channel() {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec).string().rfind("socket:", 0) == 0)
      return std::stoi(e.path().filename().string());
  }
  return -1;
}

// Per-input run counts, shared with every worker (mapped before the pools).
std::atomic<int>* const runs_of = coshard_test::shared_with_forks<std::atomic<int>>(64);
}  // namespace

TEST_CASE("a worker that dies right after sending a result: the result is kept, not run again") {
  for (int i = 0; i < 64; ++i) runs_of[i].store(0);
  with_pool({.workers = 1, .batch_size = 1, .batches_in_flight = 1}, [](coshard::process_pool& pool) {
    // One worker, one batch of one item at a time: input 4's result is sent,
    // then the worker takes input 5 and dies at once (first time only).
    const auto out = pool.map(iota_vector(10), [](long x) {
      if (runs_of[x].fetch_add(1) == 0 && x == 5) ::raise(SIGKILL);
      return x * 10;
    });
    for (long x = 0; x < 10; ++x) CHECK(out[static_cast<std::size_t>(x)] == x * 10);
    CHECK(runs_of[4].load() == 1);  // read before the EOF, so never retried
    CHECK(runs_of[5].load() == 2);  // the death's own item: retried once
  });
}

TEST_CASE("a frame from a worker the parent cannot trust: the worker is replaced, its batch retried") {
  struct bad_frame {
    const char* name;
    int kind;
  };
  const auto bad = GENERATE(bad_frame{"bad magic", 0}, bad_frame{"payload above max_frame_bytes", 1},
                            bad_frame{"truncated: a header, then the worker exits", 2},
                            bad_frame{"an unknown frame type", 3});
  INFO(bad.name);
  static int kind = 0;
  kind = bad.kind;  // before the pool forks its workers
  for (int i = 0; i < 64; ++i) runs_of[i].store(0);
  with_pool({.workers = 2, .batch_size = 4, .max_frame_bytes = 1 << 20}, [](coshard::process_pool& pool) {
    const auto before = pool.worker_pids();
    const auto out = pool.map(iota_vector(40), [](long x) {
      if (x == 21 && runs_of[x].fetch_add(1) == 0) {
        coshard::detail::frame_header h;
        h.type = coshard::detail::frame_type::result;
        h.payload_size = 1000;
        if (kind == 0) h.magic = 0x12345678;
        if (kind == 1) h.payload_size = std::uint64_t{1} << 40;
        if (kind == 3) h.type = static_cast<coshard::detail::frame_type>(200);
        (void)!::write(own_channel(), &h, sizeof h);
        if (kind == 2) ::_exit(0);
        for (;;) ::pause();  // the parent must not wait on this worker: it kills it
      }
      return x + 1;
    });
    for (long x = 0; x < 40; ++x) CHECK(out[static_cast<std::size_t>(x)] == x + 1);
    CHECK(runs_of[21].load() == 2);  // the bad frame, then the retry
    CHECK(coshard_test::workers_once_settled(2) == 2);
    CHECK(pool.worker_pids() != before);
  });
}

TEST_CASE("a worker that dies before every batch reaches it fails the job after 50 deaths in a row") {
  for (int i = 0; i < 64; ++i) runs_of[i].store(0);
  // Each worker closes the reading side of its channel in its initializer:
  // its ready frame still arrives, then it sees end-of-file and leaves, and
  // every batch written to it fails (EPIPE) before it holds anything. The
  // supervisor's replacements do the same, so the slot never stops dying.
  with_pool({.workers = 1, .initializer = [] { ::shutdown(own_channel(), SHUT_RD); }},
            [](coshard::process_pool& pool) {
    const auto run_job = [&] {
      return pool.map(iota_vector(10), [](long x) {
        runs_of[x].fetch_add(1);
        return x;
      });
    };
    CHECK_THROWS_AS(run_job(), coshard::pool_error);
    CHECK_THROWS_WITH(run_job(), Catch::Contains("worker slot 0 died 50 times in a row while idle") &&
                                     Catch::Contains("exited with code 0"));
    for (int x = 0; x < 10; ++x) CHECK(runs_of[x].load() == 0);  // no batch ever reached a worker
  });
}

TEST_CASE("a job the workers do not know (a plugin loaded after the pool): pool_error, not a jump") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    void* plugin = ::dlopen(COSHARD_LATE_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    REQUIRE(plugin);
    auto job = reinterpret_cast<long (*)(coshard::process_pool&)>(::dlsym(plugin, "coshard_late_plugin_job"));
    REQUIRE(job);
    CHECK_THROWS_AS(job(pool), coshard::pool_error);
    CHECK_THROWS_WITH(job(pool), Catch::Contains("could not run the job") &&
                                     Catch::Contains("unknown entry id") &&
                                     Catch::Contains("not run the same binary"));
    // The workers are untouched and the pool runs jobs it knows.
    CHECK(pool.map(iota_vector(5), [](long x) { return x; }).back() == 4);
    // Never unloaded: the entry registry keeps pointers into it.
  });
}

// ---------------------------------------------------------------------------
// Worker lifecycle: initializers, recycling, memory cap, shutdown.
// ---------------------------------------------------------------------------

int initialized_in = 0;  // set by the initializer, in each worker
std::vector<std::vector<char>> hoard;  // grown by a task, in its worker

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
                // Hoards 16 MB per item, touched so that it is resident (kept
                // reachable: a worker's leak check at its exit would report
                // a block it lost).
                hoard.emplace_back(std::size_t{16} << 20, 1).back() = 2;
                return ::getpid();
              });
              std::map<pid_t, int> per_worker;
              for (pid_t p : pids) ++per_worker[p];
              CHECK(per_worker.size() >= 3);  // 20 x 16 MB through a 96 MB cap
              for (auto& [pid, n] : per_worker) CHECK(n <= 7);
            });
}

namespace {
// What a job cut short by shutdown(mode) must end with, as documented:
// operation_aborted after a graceful shutdown, pool_error after a forced one.
void check_ended_by_shutdown(std::exception_ptr e, coshard::shutdown_mode mode) {
  REQUIRE(e);
  try {
    std::rethrow_exception(e);
  } catch (const coshard::pool_error& err) {
    INFO(err.what());
    CHECK(mode == coshard::shutdown_mode::forced);
    CHECK_THAT(err.what(), Catch::Contains("shut down"));
  } catch (const std::system_error& err) {
    INFO(err.what());
    CHECK(mode == coshard::shutdown_mode::graceful);
    CHECK(err.code() == asio::error::operation_aborted);
  } catch (const std::exception& err) {
    FAIL("unexpected error: " << err.what());
  }
}

// The documented bound of shutdown(): about two shutdown_timeouts plus a second.
std::chrono::milliseconds shutdown_bound(std::chrono::milliseconds timeout) { return 2 * timeout + 1s; }
}  // namespace

TEST_CASE("shutdown with queued work is bounded, graceful or forced, and leaves no child") {
  const auto mode = GENERATE(coshard::shutdown_mode::graceful, coshard::shutdown_mode::forced);
  coshard_test::fd_baseline fds;
  {
    coshard::process_pool pool{{.workers = 2, .concurrency = 4, .shutdown_timeout = 1500ms}};
    std::exception_ptr job_error;
    items_run->store(0);
    std::thread caller([&] {
      try {
        (void)pool.map(iota_vector(100'000), [](long x) -> asio::awaitable<long> {
          items_run->fetch_add(1);
          asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
          co_await t.async_wait(asio::use_awaitable);
          co_return x;
        });
      } catch (...) {
        job_error = std::current_exception();
      }
    });
    // Shut down once the job runs (a shutdown before it starts refuses it).
    for (int waited = 0; items_run->load() == 0 && waited < 10'000; ++waited) std::this_thread::sleep_for(1ms);
    const auto t0 = std::chrono::steady_clock::now();
    pool.shutdown(mode);
    CHECK(std::chrono::steady_clock::now() - t0 < shutdown_bound(1500ms));
    caller.join();
    check_ended_by_shutdown(job_error, mode);
    CHECK(child_pids().empty());
    CHECK_THROWS_WITH(pool.map(iota_vector(3), [](long x) { return x; }), Catch::Contains("shut down"));
  }
  CHECK(child_pids().empty());
  CHECK(fds.leaked() == 0);
}

TEST_CASE("graceful shutdown escalates when a plain function never returns") {
  coshard::process_pool pool{{.workers = 1, .shutdown_timeout = 300ms}};
  std::exception_ptr job_error;
  items_run->store(0);
  std::thread caller([&] {
    try {
      (void)pool.map(iota_vector(4), [](long x) {
        items_run->fetch_add(1);
        for (volatile bool forever = true; forever;) {
        }
        return x;
      });
    } catch (...) {
      job_error = std::current_exception();
    }
  });
  for (int waited = 0; items_run->load() == 0 && waited < 10'000; ++waited) std::this_thread::sleep_for(1ms);
  const auto t0 = std::chrono::steady_clock::now();
  pool.shutdown();
  CHECK(std::chrono::steady_clock::now() - t0 < shutdown_bound(300ms));
  caller.join();
  check_ended_by_shutdown(job_error, coshard::shutdown_mode::graceful);
  CHECK(child_pids().empty());
}

// Parent death: tests/test_supervision.cpp ("the supervisor and workers exit soon
// after the owner dies"), for pools built in main and in a thread that ended.

// Planted faults, run only by the sanitizer_canary_* ctests of sanitizer
// builds (hidden tags): a worker hits a real memory error or undefined
// behaviour on its first try only, so the pool retries the batch and the
// answer is right. Those ctests pass only if the sanitizer's report from the
// worker was written anyway.
namespace {
std::vector<long> run_planted(void (*fault)()) {
  static void (*planted)() = nullptr;
  planted = fault;  // before the pool forks: the workers see it
  const std::string marker = "/tmp/coshard-canary-" + std::to_string(::getpid());
  ::unlink(marker.c_str());
  coshard::process_pool pool{{.workers = 2, .batch_size = 4}};
  auto out = pool.map(
      iota_vector(40),
      [](const std::string& path, long x) {
        if (x == 13 && ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600) >= 0) planted();
        return x;
      },
      marker);
  CHECK(::unlink(marker.c_str()) == 0);  // the fault was reached
  return out;
}
}  // namespace

TEST_CASE("planted: a worker overflows a heap array once", "[.asan-canary]") {
  CHECK(run_planted([] {
          // Through memset, which ASan intercepts (UBSan's object-size check
          // would catch a plain store first).
          int* array = new int[4];
          volatile std::size_t bytes = 5 * sizeof(int);
          std::memset(array, 0, bytes);
          asm volatile("" : : "r"(array) : "memory");  // the store is not optimised away
          delete[] array;
        }) == iota_vector(40));
}

TEST_CASE("planted: a worker overflows a signed integer once", "[.ubsan-canary]") {
  CHECK(run_planted([] {
          volatile int big = std::numeric_limits<int>::max();
          volatile int sum = big + 1;
          (void)sum;
        }) == iota_vector(40));
}

TEST_CASE("planted: a worker leaks memory once, then leaves cleanly", "[.lsan-canary]") {
  // Reported by the leak check a worker runs when it leaves at the pool's
  // shutdown (its owner ran one thread when the pool was built).
  CHECK(run_planted([] {
          for (int i = 0; i < 100; ++i) {  // a stale copy of one pointer may linger; not of 100
            volatile char* block = new char[24];
            block[0] = 1;
          }
        }) == iota_vector(40));
}

namespace {
// Deaths planted by the progress test (mapped before any pool forks).
std::atomic<int>* const progress_kills = coshard_test::shared_with_forks<std::atomic<int>>();
}  // namespace

TEST_CASE("progress: counts move as batches return and add up to the job's items, with workers killed") {
  with_pool({.workers = 2, .batch_size = 16, .max_retries = 2}, [](coshard::process_pool& pool) {
    progress_kills->store(0);
    std::vector<coshard::job_progress> seen;
    const auto caller = std::this_thread::get_id();
    bool on_caller_thread = true;
    coshard::job_options options;
    options.progress = [&](const coshard::job_progress& p) {
      seen.push_back(p);
      on_caller_thread = on_caller_thread && std::this_thread::get_id() == caller;
    };
    // 3000 items of 200 us over 2 workers (~0.3 s, so several reports); the
    // first two runs of item 500 kill their worker; item 2999 throws.
    auto out = pool.map_settled(iota_vector(3000), [](long x) {
      if (x == 500 && progress_kills->fetch_add(1) < 2) ::raise(SIGKILL);
      if (x == 2999) throw std::runtime_error("poison 2999");
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      return x;
    }, options);
    REQUIRE(out.size() == 3000);
    CHECK(out[500].value() == 500);
    REQUIRE(!seen.empty());
    const coshard::job_progress& last = seen.back();
    CHECK(last.finished);
    CHECK(last.items_total == std::optional<std::size_t>(3000));
    CHECK(last.items_done + last.items_failed == 3000);
    CHECK(last.items_failed == 1);
    CHECK(last.workers_replaced >= 2);
    CHECK(last.items_retried >= 2);
    CHECK(last.bytes_sent >= 3000 * sizeof(long));
    CHECK(last.bytes_received > 0);
    CHECK(std::count_if(seen.begin(), seen.end(), [](const auto& p) { return p.finished; }) == 1);
    for (std::size_t i = 1; i < seen.size(); ++i) {
      CHECK(seen[i].items_done >= seen[i - 1].items_done);
      CHECK(seen[i].elapsed >= seen[i - 1].elapsed);
      CHECK(seen[i].elapsed - seen[i - 1].elapsed >= (seen[i].finished ? std::chrono::nanoseconds(0)
                                                                         : std::chrono::nanoseconds(100'000'000)));
    }
    CHECK(on_caller_thread);
    WARN(seen.size() << " progress calls over " << std::chrono::duration<double>(last.elapsed).count() << " s");
  });
}

TEST_CASE("progress: an exception from the callback ends the job with it") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    coshard::job_options options;
    options.progress = [](const coshard::job_progress& p) {
      if (p.finished) throw std::logic_error("the progress callback gave up");
    };
    CHECK_THROWS_AS(pool.map(iota_vector(100), [](long x) { return x; }, options), std::logic_error);
    // Thrown while replies still come (even an exception type the engine
    // treats as a corrupt channel): the job fails with it; no batch counts
    // twice, no worker is blamed.
    const auto before = pool.worker_pids();
    int calls = 0;
    options.progress = [&calls](const coshard::job_progress&) {
      ++calls;
      throw coshard::serialization_error("the progress callback gave up early");
    };
    CHECK_THROWS_WITH(pool.map_reduce(iota_vector(2000), [](long x) {
                        std::this_thread::sleep_for(std::chrono::microseconds(200));
                        return x;
                      }, std::plus<>{}, 0L, options),
                      Catch::Contains("gave up early"));
    CHECK(calls == 1);
    CHECK(pool.worker_pids() == before);
    // The pool is fine afterwards.
    CHECK(pool.map(iota_vector(10), [](long x) { return x + 1; }).back() == 10);
  });
}

namespace {

// What a terminal shows after `bytes`: '\r' returns to the line's start,
// "\x1b[K" erases to its end, '\n' starts a new line.
std::vector<std::string> render_terminal(const std::string& bytes) {
  std::vector<std::string> lines(1);
  std::size_t col = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (c == '\r') {
      col = 0;
    } else if (c == '\n') {
      lines.emplace_back();
      col = 0;
    } else if (c == '\x1b' && bytes.compare(i, 3, "\x1b[K") == 0) {
      lines.back().resize(std::min(lines.back().size(), col));
      i += 2;
    } else {
      std::string& line = lines.back();
      if (line.size() <= col) line.resize(col + 1, ' ');
      line[col++] = c;
    }
  }
  if (lines.back().empty()) lines.pop_back();
  return lines;
}

std::string read_available(int fd) {
  std::string out;
  char buf[4096];
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

// A job of ~0.8 s over 2 workers, with one failing item.
template <class Bar>
void run_barred_job(coshard::process_pool& pool, Bar bar) {
  coshard::job_options options;
  options.progress = std::move(bar);
  auto out = pool.map_settled(iota_vector(4000), [](long x) {
    if (x == 7) throw std::runtime_error("seven");
    std::this_thread::sleep_for(std::chrono::microseconds(400));
    return x;
  }, options);
  CHECK(out.size() == 4000);
}

}  // namespace

TEST_CASE("progress_bar: in a pseudo-terminal it is one line, redrawn, ending at 100%") {
  int master = -1, slave = -1;
  REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
  with_pool({.workers = 2}, [&](coshard::process_pool& pool) {
    run_barred_job(pool, coshard::progress_bar({.label = "test", .fd = slave, .show_after = std::chrono::milliseconds(0)}));
  });
  const std::string bytes = read_available(master);
  ::close(slave);
  ::close(master);
  INFO(bytes);
  CHECK(std::count(bytes.begin(), bytes.end(), '\r') >= 3);  // redrawn in place (the pty adds one before '\n')
  const auto screen = render_terminal(bytes);
  REQUIRE(screen.size() == 1);
  CHECK(screen[0].rfind("test  100% [########################]  4,000/4,000 items  ", 0) == 0);
  CHECK(screen[0].find(" in 0:0") != std::string::npos);
  CHECK(screen[0].find("1 failed") != std::string::npos);
}

TEST_CASE("progress_bar: clear() lets a sink print whole lines above the bar") {
  int master = -1, slave = -1;
  REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
  with_pool({.workers = 2, .batch_size = 1}, [&](coshard::process_pool& pool) {
    coshard::progress_bar bar({.label = "sink", .fd = slave, .show_after = std::chrono::milliseconds(0)});
    coshard::job_options options;
    options.progress = bar;  // a copy: both draw and clear the same line
    pool.for_each_result(std::vector<long>{250, 500, 750, 1000}, [](long ms) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      return ms;
    }, [&](std::size_t, long ms) {
      bar.clear();
      const std::string line = "done " + std::to_string(ms) + "\n";
      (void)!::write(slave, line.data(), line.size());
    }, options);
  });
  const std::string bytes = read_available(master);
  ::close(slave);
  ::close(master);
  INFO(bytes);
  const auto screen = render_terminal(bytes);
  REQUIRE(screen.size() == 5);
  for (int i = 0; i < 4; ++i) CHECK(screen[static_cast<std::size_t>(i)] == "done " + std::to_string(250 * (i + 1)));
  CHECK(screen[4].rfind("sink  100% ", 0) == 0);
}

TEST_CASE("progress_bar: elsewhere it writes plain lines, periodically and at the end; a quick job stays silent") {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  with_pool({.workers = 2}, [&](coshard::process_pool& pool) {
    const auto t0 = std::chrono::steady_clock::now();
    run_barred_job(pool, coshard::progress_bar({.label = "plain",
                                                .fd = pipe_fds[1],
                                                .show_after = std::chrono::milliseconds(0),
                                                .plain_interval = std::chrono::milliseconds(200)}));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string bytes = read_available(pipe_fds[0]);
    INFO(bytes);
    CHECK(bytes.find('\r') == std::string::npos);
    CHECK(bytes.find('\x1b') == std::string::npos);
    const auto lines = render_terminal(bytes);
    CHECK(lines.size() >= 2);
    // At most one per 200 ms and the last one; not one per report (every 100 ms).
    CHECK(static_cast<double>(lines.size()) <= seconds / 0.2 + 2);
    for (const auto& l : lines) CHECK(l.rfind("plain  ", 0) == 0);
    CHECK(lines.back().find("100%") != std::string::npos);
    // The default show_after (1 s): a 10 ms job writes nothing.
    coshard::job_options quick;
    quick.progress = coshard::progress_bar({.label = "quick", .fd = pipe_fds[1]});
    CHECK(pool.map(iota_vector(100), [](long x) { return x; }, quick).size() == 100);
    CHECK(read_available(pipe_fds[0]).empty());
  });
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

TEST_CASE("progress_bar: one bar draws several jobs one after another; a quick one stays silent") {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  coshard::progress_bar bar({.label = "again", .fd = pipe_fds[1], .plain_interval = std::chrono::seconds(1)});
  coshard::job_progress p;
  p.items_total = 10;
  auto report = [&](double seconds, std::size_t done, bool finished) {
    p.elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(seconds));
    p.items_done = done;
    p.finished = finished;
    bar(p);
  };
  for (double t = 1.5; t < 5; t += 0.5) report(t, 3, false);  // job 1: lines at 1.5, 2.5, 3.5, 4.5 s
  report(5, 10, true);
  for (double t = 1.5; t < 3; t += 0.5) report(t, 3, false);  // job 2: lines at 1.5, 2.5 s
  report(3, 10, true);
  report(0.3, 10, true);  // job 3: under show_after
  ::close(pipe_fds[1]);
  const auto lines = render_terminal(read_available(pipe_fds[0]));
  ::close(pipe_fds[0]);
  CHECK(lines.size() == 5 + 3);
}

TEST_CASE("progress_bar: the line for an input of unknown size, and the ETA") {
  coshard::job_progress p;
  p.items_done = 1500;
  p.elapsed = std::chrono::seconds(3);
  CHECK(coshard::progress_bar::format(p, {.unit = "pages"}) == "1,500 pages  500 pages/s  0:03");
  p.items_done = 15'000;
  CHECK(coshard::progress_bar::format(p, {.unit = "pages"}) == "15,000 pages  5,000 pages/s  0:03");
  p.items_done = 1500;
  p.items_total = 4500;
  p.items_retried = 12;
  CHECK(coshard::progress_bar::format(p, {.label = "crawl", .width = 10}) ==
        "crawl   33% [###-------]  1,500/4,500 items  500 items/s  ETA 0:06  12 retried");
}

TEST_CASE("stats: cumulative jobs, items, batches, retries, timeouts, replacements and busy time") {
  with_pool({.workers = 2, .timeout_grace = std::chrono::milliseconds(100)}, [](coshard::process_pool& pool) {
    progress_kills->store(0);
    auto before = pool.stats();
    CHECK(before.jobs_started == 0);
    CHECK(before.busy_per_worker == std::vector<std::chrono::nanoseconds>(2));
    // 1: 3000 items, two worker deaths, one poison item.
    auto settled = pool.map_settled(iota_vector(3000), [](long x) {
      if (x == 500 && progress_kills->fetch_add(1) < 2) ::raise(SIGKILL);
      if (x == 2999) throw std::runtime_error("poison 2999");
      return x;
    }, coshard::job_options{.batch_size = 16});
    // 2: an awaitable item cancelled at item_timeout.
    auto awaited = pool.map_settled(iota_vector(10), [](long x) -> asio::awaitable<long> {
      if (x == 5) {
        asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::seconds(30));
        co_await t.async_wait(asio::use_awaitable);
      }
      co_return x;
    }, coshard::job_options{.item_timeout = std::chrono::milliseconds(200)});
    // 3: a plain item stuck past item_timeout + timeout_grace: its worker is replaced.
    auto stuck = pool.map_settled(iota_vector(10), [](long x) {
      if (x == 3) std::this_thread::sleep_for(std::chrono::seconds(30));
      return x;
    }, coshard::job_options{.item_timeout = std::chrono::milliseconds(200)});
    // 4: cancelled before it starts; 5: fails.
    std::stop_source stop;
    stop.request_stop();
    CHECK_THROWS(pool.map(iota_vector(10), [](long x) { return x; }, coshard::job_options{.stop_token = stop.get_token()}));
    CHECK_THROWS_AS(pool.map(iota_vector(10), [](long x) { return x == 4 ? throw std::domain_error("d") : x; }),
                    std::domain_error);
    CHECK(!settled[2999].ok());
    CHECK(!awaited[5].ok());
    CHECK(!stuck[3].ok());

    const auto s = pool.stats();
    CHECK(s.jobs_started == 5);
    CHECK(s.jobs_succeeded == 3);
    CHECK(s.jobs_cancelled == 1);
    CHECK(s.jobs_failed == 1);
    CHECK(s.items_failed == 4);  // poison, two timeouts, the domain_error
    CHECK(s.items_done + s.items_failed >= 3020);  // job 5 may stop before all its items ran
    CHECK(s.items_done + s.items_failed <= 3030);
    CHECK(s.timeouts == 2);
    CHECK(s.workers_replaced >= 3);
    CHECK(s.items_retried >= 2);
    CHECK(s.batches >= 3000 / 16);
    CHECK(s.bytes_sent >= 3000 * sizeof(long));
    CHECK(s.bytes_received >= 3000 * sizeof(long));
    REQUIRE(s.busy_per_worker.size() == 2);
    std::chrono::nanoseconds busy_total{0};
    for (auto busy : s.busy_per_worker) {
      CHECK(busy > std::chrono::nanoseconds(0));
      CHECK(busy <= s.uptime);
      busy_total += busy;
    }
    CHECK(busy_total >= std::chrono::milliseconds(200 + 300));  // the two timed-out items at least
    CHECK(s.uptime > before.uptime);
  });
}
