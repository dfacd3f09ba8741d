// Supervision tests of coshard/process_pool.hpp: the pool inside a real
// program (threads, several pools, signal handlers, a user's own fork). Each
// scenario failed before the pool had a supervisor; see issue 9.
#include "coshard/process_pool.hpp"

#include <asio/bind_executor.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <ios>
#include <iterator>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "test_support.hpp"

using namespace std::chrono_literals;
using coshard_test::alive;
using coshard_test::child_pids;
using coshard_test::descendants;
using coshard_test::fd_targets;

namespace {

std::vector<long> iota_vector(long n) {
  std::vector<long> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0L);
  return v;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string fd_target(int fd) {
  return std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd)).string();
}

// Waits for a forked test child, up to `limit`; -1 if it did not exit by then (it is killed).
int wait_child(pid_t pid, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(5ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return -1;
}

// Read by initializers in the workers: a file's presence switches behaviour
// for workers started after the test created it (replacements).
char switch_file[128];
void set_switch_file(const char* what) {
  std::snprintf(switch_file, sizeof switch_file, "/tmp/coshard-test-%d-%s", static_cast<int>(::getpid()), what);
  ::unlink(switch_file);
}
bool switch_on() { return ::access(switch_file, F_OK) == 0; }
void turn_switch(bool on) {
  if (on)
    std::ofstream(switch_file) << "on";
  else
    ::unlink(switch_file);
}

}  // namespace

TEST_CASE("the caller forks only the supervisor; it forks every worker, replacements included") {
  coshard_test::fd_baseline fds;
  {
    coshard::process_pool pool{{.workers = 2, .batch_size = 10, .max_retries = 0}};
    auto check_tree = [&] {
      const auto all = descendants();
      std::size_t direct = 0;
      for (const auto& p : all)
        if (p.ppid == ::getpid()) {
          ++direct;
          CHECK(p.name == "coshard-sup");
          CHECK(p.pid == pool.supervisor_pid());
        } else {
          CHECK(p.ppid == pool.supervisor_pid());
          CHECK(p.name == "coshard-worker");
        }
      CHECK(direct == 1);
    };
    REQUIRE(coshard_test::workers_once_settled(2) == 2);
    check_tree();
    auto out = pool.map_settled(iota_vector(100), [](long x) {
      if (x == 42) ::raise(SIGKILL);
      return x;
    });
    CHECK_THROWS_AS(out[42].value(), coshard::worker_crashed);
    REQUIRE(coshard_test::workers_once_settled(2) == 2);
    check_tree();
  }
  CHECK(child_pids().empty());
  CHECK(fds.leaked() == 0);
}

TEST_CASE("workers hold no descriptor of the caller's but their channel and stdio") {
  int user_pipe[2];
  REQUIRE(::pipe(user_pipe) == 0);  // not close-on-exec: a fork would copy it
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(listener >= 0);
  const std::set<std::string> mine{fd_target(user_pipe[0]), fd_target(user_pipe[1]), fd_target(listener)};
  {
    coshard::process_pool other{{.workers = 1}};  // a second pool's channels are the caller's too
    coshard::process_pool pool{{.workers = 2}};
    const auto seen = pool.map(iota_vector(4), [](long) {
      auto t = fd_targets();
      return std::vector<std::string>(t.begin(), t.end());
    });
    // The supervisor keeps stdio, its control socket, the owner's pidfd, its
    // signalfd and the read ends of the workers' output pipes: nothing of the
    // caller's, and one socket.
    const auto sup = fd_targets(std::to_string(pool.supervisor_pid()));
    for (const auto& t : sup) {
      INFO("supervisor: " << t);
      CHECK(mine.count(t) == 0);
    }
    CHECK(std::count_if(sup.begin(), sup.end(), [](const std::string& t) { return t.rfind("socket:", 0) == 0; }) == 1);
    // (Not counting this process's stdio, which may be pipes too, e.g. under ctest.)
    const std::set<std::string> stdio{fd_target(0), fd_target(1), fd_target(2)};
    CHECK(std::count_if(sup.begin(), sup.end(), [&](const std::string& t) {
            return t.rfind("pipe:", 0) == 0 && stdio.count(t) == 0;
          }) == 2 * 2);
    CHECK(sup.size() <= 6 + 2 * 2);
    for (const auto& targets : seen) {
      for (const auto& t : targets) {
        INFO(t);
        CHECK(mine.count(t) == 0);
      }
      std::size_t sockets = 0;
      for (const auto& t : targets) sockets += t.rfind("socket:", 0) == 0;
      CHECK(sockets == 1);  // its own channel, nothing of `other`
    }
  }
  ::close(user_pipe[0]);
  ::close(user_pipe[1]);
  ::close(listener);
}

TEST_CASE("destroying one pool while another exists does not wait for its shutdown_timeout") {
  // Before the supervisor, the second pool's workers held the first pool's
  // sockets, so the first pool's workers never saw EOF and were killed only
  // once shutdown_timeout ran out.
  coshard::process_pool second{{.workers = 2}};
  std::optional<coshard::process_pool> first;
  first.emplace(coshard::pool_options{.workers = 2, .shutdown_timeout = 20s});
  coshard::process_pool third{{.workers = 2}};
  REQUIRE(first->map(iota_vector(10), [](long x) { return x; }).size() == 10);
  const auto t0 = std::chrono::steady_clock::now();
  first.reset();
  const double took = seconds_since(t0);
  WARN("destroying the first pool took " << took << " s");
  CHECK(took < 10);  // 20 s if its workers never saw EOF
  CHECK(second.map(iota_vector(10), [](long x) { return x; }).size() == 10);
  CHECK(third.map(iota_vector(10), [](long x) { return x; }).size() == 10);
}

TEST_CASE("max_items_per_worker retirements do not wait for shutdown_timeout") {
  coshard::process_pool pool{{.workers = 1, .shutdown_timeout = 20s, .max_items_per_worker = 2}};
  const auto t0 = std::chrono::steady_clock::now();
  auto pids = pool.map(iota_vector(12), [](long) { return ::getpid(); });
  const double took = seconds_since(t0);
  WARN("6 retirements took " << took << " s");
  CHECK(std::set<pid_t>(pids.begin(), pids.end()).size() == 6);
  CHECK(took < 10);  // each one waited for its worker's exit before
}

TEST_CASE("a pool built in a short-lived thread keeps its workers when the thread ends") {
  std::optional<coshard::process_pool> pool;
  std::thread([&] { pool.emplace(coshard::pool_options{.workers = 2}); }).join();
  std::this_thread::sleep_for(100ms);  // PR_SET_PDEATHSIG of the old design fired by now
  const auto pids = pool->worker_pids();
  for (pid_t p : pids) CHECK(alive(p));
  // A crash whose replacement is requested from a thread that then exits.
  std::thread([&] {
    auto out = pool->map_settled(iota_vector(50), [](long x) {
      if (x == 7) ::raise(SIGKILL);
      return x;
    });
    CHECK_FALSE(out[7].ok());
  }).join();
  std::this_thread::sleep_for(100ms);
  auto out = pool->map_settled(iota_vector(1000), [](long x) { return x * 2; });
  for (long i = 0; i < 1000; ++i) REQUIRE(out[static_cast<std::size_t>(i)].value() == 2 * i);
  pool.reset();
  CHECK(child_pids().empty());
}

TEST_CASE("the supervisor and workers exit soon after the owner dies, even by SIGKILL") {
  const bool from_thread = GENERATE(false, true);
  INFO((from_thread ? "pool built in a thread that has ended" : "pool built in main"));
  const auto [pids, seconds] = coshard_test::pool_pids_after_owner_sigkill(4, [&] {
    static std::optional<coshard::process_pool> pool;  // kept until the owner is killed
    if (from_thread)
      std::thread([&] { pool.emplace(coshard::pool_options{.workers = 3}); }).join();
    else
      pool.emplace(coshard::pool_options{.workers = 3});
    std::vector<pid_t> out = pool->worker_pids();
    out.push_back(pool->supervisor_pid());
    return out;
  });
  REQUIRE(pids.size() == 4);
  WARN("all gone " << seconds << " s after the owner's death");
  for (pid_t p : pids) CHECK_FALSE(alive(p));
}

namespace {
// Context switches so far of every thread of process `pid` but `except_tid`.
long context_switches(pid_t pid, pid_t except_tid = 0) {
  long total = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
    if (std::stoi(task.path().filename().string()) == except_tid) continue;
    std::ifstream status(task.path() / "status");
    std::string line;
    while (std::getline(status, line))
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0 || line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
        total += std::stol(line.substr(line.find(':') + 1));
  }
  return total;
}
}  // namespace

TEST_CASE("an idle pool sleeps: no process or thread of it wakes on a timer") {
  // item_timeout starts every worker's watchdog thread; the items make sure
  // it has seen work. A 5 ms watchdog tick or a 1 ms waitpid loop would show
  // as hundreds of switches in the second below.
  coshard::process_pool pool{{.workers = 2, .item_timeout = 10s}};
  CHECK(pool.map(iota_vector(1000), [](long x) { return x; }).size() == 1000);
  std::vector<pid_t> pids = pool.worker_pids();
  pids.push_back(pool.supervisor_pid());
  std::this_thread::sleep_for(100ms);  // let the job's wake-ups settle first
  auto total = [&] {
    long n = context_switches(::getpid(), ::getpid());  // the pool's threads in this process
    for (pid_t p : pids) n += context_switches(p);
    return n;
  };
  const long before = total();
  std::this_thread::sleep_for(1s);
  const long woke = total() - before;
  WARN("context switches of an idle pool (owner's threads, supervisor, 2 workers) in 1 s: " << woke);
  CHECK(woke < 20);
}

TEST_CASE("a killed supervisor takes its workers along; later jobs fail with pool_error") {
  coshard::process_pool pool{{.workers = 2, .shutdown_timeout = 500ms}};
  auto pids = pool.worker_pids();
  ::kill(pool.supervisor_pid(), SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  while (seconds_since(t0) < 10 && std::any_of(pids.begin(), pids.end(), alive)) std::this_thread::sleep_for(2ms);
  for (pid_t p : pids) CHECK_FALSE(alive(p));  // PR_SET_PDEATHSIG on the supervisor
  // The next job finds its workers gone and no one to start replacements.
  CHECK_THROWS_WITH(pool.map(iota_vector(100), [](long x) { return x; }),
                    Catch::Contains("supervisor process is gone"));
  CHECK_THROWS_AS(pool.map(iota_vector(100), [](long x) { return x; }), coshard::pool_error);
}

TEST_CASE("a process forked from the owner leaves the owner's pool alone") {
  std::optional<coshard::process_pool> pool;
  pool.emplace(coshard::pool_options{.workers = 2});
  // A blocking job first: the channels' sockets are then registered with the
  // pool's own epoll instance, which the forked child shares.
  REQUIRE(pool->map(iota_vector(100), [](long x) { return x; }).size() == 100);
  const auto before = pool->worker_pids();
  const auto how = GENERATE(0, 1, 2);
  INFO("the forked child " << (how == 0   ? "destroys its copy and exits"
                               : how == 1 ? "shuts its copy down (forced) and exits"
                                          : "tries to run a job, then exits"));
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    int code = 0;
    if (how == 1) pool->shutdown(coshard::shutdown_mode::forced);
    if (how == 2) {
      try {
        (void)pool->map(iota_vector(3), [](long x) { return x; });
        code = 10;
      } catch (const coshard::pool_error& e) {
        if (std::string(e.what()).find("belongs to process") == std::string::npos) code = 11;
      }
    }
    pool.reset();
    std::exit(code);  // exit, not _exit: static destructors and atexit handlers run
  }
  const int status = wait_child(child, 20s);
  REQUIRE(status != -1);  // it did not hang
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(pool->worker_pids() == before);
  for (pid_t p : before) CHECK(alive(p));
  auto out = pool->map_settled(iota_vector(1000), [](long x) { return x + 1; });
  for (long i = 0; i < 1000; ++i) REQUIRE(out[static_cast<std::size_t>(i)].value() == i + 1);
  CHECK(pool->worker_pids() == before);  // no worker was lost
  pool.reset();
  CHECK(child_pids().empty());
}

TEST_CASE("SIGCHLD ignored, or a user's waitpid(-1) loop, cannot mislead the pool") {
  const bool ignore = GENERATE(true, false);
  INFO((ignore ? "SIGCHLD set to SIG_IGN" : "a thread reaping with waitpid(-1)"));
  struct sigaction old {};
  std::jthread reaper;
  if (ignore) {
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    ::sigaction(SIGCHLD, &ign, &old);
  } else {
    reaper = std::jthread([](std::stop_token stop) {
      while (!stop.stop_requested()) {
        int st;
        if (::waitpid(-1, &st, WNOHANG) <= 0) std::this_thread::sleep_for(1ms);
      }
    });
  }
  {
    coshard::process_pool pool{{.workers = 2, .batch_size = 8, .max_retries = 1}};
    auto out = pool.map_settled(iota_vector(200), [](long x) {
      if (x == 99) ::raise(SIGABRT);  // (a sanitizer does not report an abort)
      return x;
    });
    try {
      std::rethrow_exception(out[99].error());
    } catch (const coshard::worker_crashed& e) {
      CHECK(e.term_signal() == SIGABRT);  // not "exited with code 0"
      CHECK(e.index() == 99);
    }
    for (long i = 0; i < 200; ++i)
      if (i != 99) REQUIRE(out[static_cast<std::size_t>(i)].value() == i);
  }
  if (ignore) ::sigaction(SIGCHLD, &old, nullptr);
  reaper = {};
  CHECK(coshard_test::worker_pids().empty());
}

char crash_marker[128];

TEST_CASE("a replacement starts while the job goes on, and never blocks the caller's loop") {
  set_switch_file("slow-start");
  std::snprintf(crash_marker, sizeof crash_marker, "/tmp/coshard-test-%d-crashed", static_cast<int>(::getpid()));
  ::unlink(crash_marker);
  coshard::process_pool pool{{.workers = 2,
                              .concurrency = 4,
                              .batch_size = 4,
                              .max_retries = 0,
                              .initializer = [] {
                                if (switch_on()) std::this_thread::sleep_for(std::chrono::seconds(6));
                              }}};
  turn_switch(true);  // replacements from now on take 6 s to start
  asio::io_context io;
  std::chrono::steady_clock::duration longest_gap{};
  auto last = std::chrono::steady_clock::now();
  bool done = false;
  asio::steady_timer tick(io);
  std::function<void()> arm = [&] {
    tick.expires_after(5ms);
    tick.async_wait([&](asio::error_code) {
      const auto now = std::chrono::steady_clock::now();
      longest_gap = std::max(longest_gap, now - last);
      last = now;
      if (!done) arm();
    });
  };
  arm();
  std::vector<coshard::outcome<long>> out;
  const auto t0 = std::chrono::steady_clock::now();
  double job_seconds = 0;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    out = co_await pool.async_map_settled(iota_vector(400), [](long x) -> asio::awaitable<long> {
      if (x == 3 && ::open(crash_marker, O_CREAT | O_EXCL | O_WRONLY, 0600) >= 0) ::raise(SIGKILL);  // once
      asio::steady_timer t(co_await asio::this_coro::executor, 2ms);
      co_await t.async_wait(asio::use_awaitable);
      co_return x;
    }, asio::use_awaitable);
    job_seconds = seconds_since(t0);
    done = true;
  }, asio::detached);
  io.run();
  turn_switch(false);
  REQUIRE(out.size() == 400);
  for (long i = 0; i < 400; ++i) REQUIRE(out[static_cast<std::size_t>(i)].value() == i);
  CHECK(::unlink(crash_marker) == 0);  // the crash happened
  const double gap_ms = std::chrono::duration<double, std::milli>(longest_gap).count();
  WARN("job " << job_seconds << " s; longest gap between 5 ms ticks " << gap_ms << " ms");
  CHECK(job_seconds < 5);  // it did not wait for the 6 s replacement
  CHECK(gap_ms < 3000);    // the loop was never blocked for the replacement's start
}

TEST_CASE("an exception from the input range ends the job with it; nothing shifts, no worker dies") {
  coshard::process_pool pool{{.workers = 2, .batch_size = 4}};
  const auto before = pool.worker_pids();
  struct failing_range {
    struct iterator {
      using value_type = long;
      using difference_type = std::ptrdiff_t;
      long i = 0;
      long operator*() const { return i; }
      iterator& operator++() {
        if (++i == 7) throw std::ios_base::failure("disk read failed at item 7");
        return *this;
      }
      void operator++(int) { ++*this; }
      bool operator==(const iterator& o) const { return i == o.i; }
    };
    iterator begin() const { return {}; }
    iterator end() const { return {40}; }
  };
  static_assert(std::ranges::input_range<failing_range>);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(pool.map(failing_range{}, [](long x) { return x; }), std::ios_base::failure);
  CHECK_THROWS_WITH(pool.map_settled(failing_range{}, [](long x) { return x; }),
                    Catch::Contains("disk read failed at item 7"));
  CHECK(seconds_since(t0) < 1.5);  // no worker was killed after 2 s
  CHECK(pool.worker_pids() == before);
  CHECK(pool.map(iota_vector(5), [](long x) { return x; }) == iota_vector(5));
}

TEST_CASE("a replacement whose initializer fails fails the job; the slot starts again later") {
  set_switch_file("init-fails");
  coshard::process_pool pool{{.workers = 2, .batch_size = 4, .max_retries = 0, .initializer = [] {
                                if (switch_on()) throw std::runtime_error("config missing");
                              }}};
  turn_switch(true);
  CHECK_THROWS_WITH(pool.map(iota_vector(100), [](long x) {
                      if (x == 10) ::raise(SIGKILL);
                      return x;
                    }),
                    Catch::Contains("config missing"));
  turn_switch(false);
  for (int round = 0; round < 3; ++round) {
    INFO("round " << round);
    auto out = pool.map(iota_vector(1000), [](long x) { return x * 3; });
    REQUIRE(out.size() == 1000);
    CHECK(out[999] == 2997);
  }
  CHECK(coshard_test::workers_once_settled(2) == 2);
}

TEST_CASE("shutdown from the thread that runs the job returns and ends the job") {
  SECTION("a Ctrl-C handler coroutine on the io_context of an async_map") {
    coshard::process_pool pool{{.workers = 2, .concurrency = 4, .shutdown_timeout = 1s}};
    asio::io_context io;
    asio::signal_set ctrl_c(io, SIGUSR1);
    std::exception_ptr job_error;
    bool completed = false;
    pool.async_map(iota_vector(10'000), [](long x) -> asio::awaitable<long> {
      asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
      co_await t.async_wait(asio::use_awaitable);
      co_return x;
    }, asio::bind_executor(io, [&](std::exception_ptr e, std::vector<long>) {
      job_error = e;
      completed = true;
    }));
    double shutdown_seconds = -1;
    ctrl_c.async_wait([&](asio::error_code, int) {
      const auto t0 = std::chrono::steady_clock::now();
      pool.shutdown();
      shutdown_seconds = seconds_since(t0);
    });
    std::jthread press([] {
      std::this_thread::sleep_for(200ms);
      ::kill(::getpid(), SIGUSR1);
    });
    io.run();  // returns only if both the handler and the job completed
    CHECK(completed);
    CHECK(shutdown_seconds >= 0);
    CHECK(shutdown_seconds < 4);  // two shutdown_timeouts and a second at most
    REQUIRE(job_error);
    try {
      std::rethrow_exception(job_error);
    } catch (const std::system_error& e) {
      CHECK(e.code() == asio::error::operation_aborted);
    }
    CHECK(coshard_test::worker_pids().empty());
  }
  SECTION("from inside a for_each_result sink") {
    coshard::process_pool pool{{.workers = 2, .batch_size = 1, .shutdown_timeout = 1s}};
    std::size_t seen = 0;
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(pool.for_each_result(iota_vector(100'000), [](long x) { return x; },
                                         [&](std::size_t, long) {
                                           if (++seen == 10) pool.shutdown();
                                         }),
                    std::system_error);
    CHECK(seconds_since(t0) < 4);
    CHECK_THROWS_WITH(pool.map(iota_vector(3), [](long x) { return x; }), Catch::Contains("shut down"));
  }
  CHECK(child_pids().empty());
}

TEST_CASE("a pool destroyed while its async job waits in a stopped io_context returns, bounded") {
  coshard_test::fd_baseline fds;
  std::chrono::steady_clock::time_point t0;
  {
    asio::io_context io;
    {
      coshard::process_pool pool{{.workers = 2, .shutdown_timeout = 500ms}};
      pool.async_map(iota_vector(100), [](long x) -> asio::awaitable<long> {
        asio::steady_timer t(co_await asio::this_coro::executor, 10s);
        co_await t.async_wait(asio::use_awaitable);
        co_return x;
      }, asio::bind_executor(io, [](std::exception_ptr, std::vector<long>) {}));
      io.run_for(200ms);  // the job is under way; then the loop stops for good
      t0 = std::chrono::steady_clock::now();
    }  // ~process_pool here
    const double took = seconds_since(t0);
    WARN("destructor returned after " << took << " s");
    CHECK(took < 2 * 0.5 + 1.5);  // two shutdown_timeouts and the supervisor's margin
    CHECK(coshard_test::worker_pids().empty());
    CHECK(child_pids().empty());
  }  // the io_context and the job's frame go here
  CHECK(fds.leaked() == 0);
}

TEST_CASE("async_* after shutdown completes at once with pool_error, for every kind of handler") {
  coshard::process_pool pool{{.workers = 1}};
  (void)pool.map(iota_vector(3), [](long x) { return x; });
  std::promise<void> warmed;  // starts the pool's background loop before the shutdown
  pool.async_map(iota_vector(3), [](long x) { return x; },
                 [&](std::exception_ptr, std::vector<long>) { warmed.set_value(); });
  warmed.get_future().get();
  pool.shutdown();
  std::promise<std::exception_ptr> got;
  pool.async_map(iota_vector(3), [](long x) { return x; },
                 [&](std::exception_ptr e, std::vector<long>) { got.set_value(e); });
  auto f = got.get_future();
  REQUIRE(f.wait_for(10s) == std::future_status::ready);
  CHECK_THROWS_WITH(std::rethrow_exception(f.get()), Catch::Contains("shut down"));
  auto fut = pool.async_map(iota_vector(3), [](long x) { return x; }, asio::use_future);
  REQUIRE(fut.wait_for(10s) == std::future_status::ready);
  CHECK_THROWS_AS(fut.get(), coshard::pool_error);
}

TEST_CASE("a hanging initializer is given up on within 1.5x startup_timeout") {
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(coshard::process_pool({.workers = 2,
                                           .initializer = [] { std::this_thread::sleep_for(60s); },
                                           .startup_timeout = 1000ms}),
                    Catch::Contains("did not start within startup_timeout (1000 ms)"));
  const double took = seconds_since(t0);
  WARN("gave up after " << took << " s");
  CHECK(took < 1.5);
  CHECK(child_pids().empty());
}

TEST_CASE("options that would overflow internal widths are refused with the option's name") {
  using o = coshard::pool_options;
  CHECK_THROWS_WITH(coshard::process_pool(o{.max_frame_bytes = ~std::uint64_t{0}}), Catch::Contains("max_frame_bytes"));
  CHECK_THROWS_WITH(coshard::process_pool(o{.max_batch_bytes = std::size_t{1} << 33}), Catch::Contains("max_batch_bytes"));
  CHECK_THROWS_WITH(coshard::process_pool(o{.batch_size = std::size_t{1} << 32}), Catch::Contains("batch_size"));
  CHECK_THROWS_WITH(coshard::process_pool(o{.shutdown_timeout = std::chrono::milliseconds(std::int64_t{1} << 40)}),
                    Catch::Contains("shutdown_timeout"));
  CHECK_THROWS_WITH(coshard::process_pool(o{.startup_timeout = std::chrono::milliseconds(-1)}),
                    Catch::Contains("startup_timeout"));
  CHECK(child_pids().empty());
}

namespace {
// A result whose decoding fails in the caller (the parent) only: the worker
// has encoded it, the caller's load throws for the marked value.
struct fragile {
  long value = 0;
  template <class Archive>
  void save(Archive& ar) const {
    ar(value);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(value);
    if (value == -13) throw std::runtime_error("cannot load -13");
  }
};
}  // namespace

TEST_CASE("map_settled: a result the caller cannot decode fails alone; the rest are delivered") {
  coshard::process_pool pool{{.workers = 2, .batch_size = 16}};
  auto out = pool.map_settled(iota_vector(100), [](long x) { return fragile{x == 13 ? -13 : x}; });
  REQUIRE(out.size() == 100);
  CHECK_THROWS_WITH(out[13].value(), Catch::Contains("could not be decoded in the caller") &&
                                         Catch::Contains("cannot load -13"));
  for (long i = 0; i < 100; ++i)
    if (i != 13) REQUIRE(out[static_cast<std::size_t>(i)].value().value == i);
}

TEST_CASE("values above max_frame_bytes fail as what they are, alone") {
  coshard::process_pool pool{{.workers = 2, .batch_size = 8, .max_frame_bytes = 64 * 1024}};
  const auto before = pool.worker_pids();
  SECTION("an input: refused before it is sent, naming its index and size") {
    std::vector<std::string> in(40, "small");
    in[17] = std::string(100'000, 'x');
    auto out = pool.map_settled(in, [](const std::string& s) { return s.size(); });
    REQUIRE(out.size() == 40);
    CHECK_THROWS_WITH(out[17].value(), Catch::Contains("input index 17 is 100008 bytes") &&
                                           Catch::Contains("max_frame_bytes (65536)"));
    for (std::size_t i = 0; i < 40; ++i)
      if (i != 17) REQUIRE(out[i].value() == 5);
    CHECK_THROWS_WITH(pool.map(in, [](const std::string& s) { return s.size(); }),
                      Catch::Contains("input index 17"));
  }
  SECTION("inputs that fit alone but not together travel in separate batches") {
    std::vector<std::string> in(20, std::string(30'000, 'y'));
    auto out = pool.map(in, [](const std::string& s) { return s.size(); });
    CHECK(out == std::vector<std::size_t>(20, 30'000));
  }
  SECTION("a result: refused in the worker, not taken for a corrupt channel") {
    auto out = pool.map_settled(iota_vector(30), [](long x) {
      return std::string(x == 9 ? 100'000 : 10, 'r');
    });
    CHECK_THROWS_WITH(out[9].value(), Catch::Contains("the result is") && Catch::Contains("max_frame_bytes (65536)"));
    for (std::size_t i = 0; i < 30; ++i)
      if (i != 9) REQUIRE(out[i].value().size() == 10);
  }
  SECTION("a shared value: the job fails before it starts") {
    CHECK_THROWS_WITH(pool.map(iota_vector(3), [](const std::string& s, long x) { return x + long(s.size()); },
                               std::string(100'000, 's')),
                      Catch::Contains("above max_frame_bytes (65536)"));
  }
  CHECK(pool.worker_pids() == before);  // no worker was blamed for any of it
}

TEST_CASE("item_timeout bounds an awaitable that blocks its worker's loop") {
  coshard::process_pool pool{{.workers = 2, .concurrency = 4, .item_timeout = 300ms, .timeout_grace = 300ms}};
  const auto t0 = std::chrono::steady_clock::now();
  auto out = pool.map_settled(iota_vector(40), [](long x) -> asio::awaitable<long> {
    if (x == 5)
      for (volatile bool forever = true; forever;) {  // never yields to the loop
      }
    asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
    co_await t.async_wait(asio::use_awaitable);
    co_return x;
  });
  WARN("took " << seconds_since(t0) << " s");
  REQUIRE(out.size() == 40);
  try {
    std::rethrow_exception(out[5].error());
  } catch (const coshard::timeout_error& e) {
    CHECK(e.index() == 5);
  }
  for (long i = 0; i < 40; ++i)
    if (i != 5) REQUIRE(out[static_cast<std::size_t>(i)].value() == i);
}

namespace {

// The output test's task: both items wait (up to 5 s) until both have
// started, so that two workers print at once.
struct print_together {
  std::atomic<int>* started;
  long operator()(long item) const {
    started->fetch_add(1);
    const auto give_up = std::chrono::steady_clock::now() + 5s;
    while (started->load() < 2 && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(1ms);
    return coshard_test::output_lines::print_lines(item);
  }
};

}  // namespace

TEST_CASE("worker output: 2 workers printing 10,000 lines each at once give 20,000 whole, attributed lines") {
  namespace out = coshard_test::output_lines;
  auto* started = coshard_test::shared_with_forks<std::atomic<int>>();
  started->store(0);
  std::vector<long> items{0, 1};

  SECTION("to a sink, each line with its slot, pid and stream, all delivered once shutdown returns") {
    std::mutex mutex;
    std::vector<out::arrived> lines;
    std::set<std::thread::id> threads;
    {
      coshard::process_pool pool{{.workers = 2,
                                  .batch_size = 1,
                                  .worker_output = [&](const coshard::worker_output_line& l) {
                                    std::lock_guard lock(mutex);
                                    threads.insert(std::this_thread::get_id());
                                    lines.push_back({static_cast<long>(l.slot), l.pid, l.stream, std::string(l.text)});
                                  }}};
      CHECK(pool.map(items, print_together{started}) == items);
      pool.shutdown();
      std::lock_guard lock(mutex);
      out::check_lines(lines, 2, 2);
      CHECK(threads.size() == 1);  // one line at a time, from one thread of the pool
      CHECK(threads.count(std::this_thread::get_id()) == 0);
    }
    // Both printed at once, each in its own worker.
    std::set<long> pids;
    for (const auto& l : lines) pids.insert(l.pid);
    CHECK(pids.size() == 2);
  }

  SECTION("to the caller's stderr, each line whole and prefixed with its worker's slot and pid") {
    const std::string path = (std::filesystem::temp_directory_path() / ("coshard-out-" + std::to_string(::getpid()))).string();
    {
      coshard_test::output_lines::stderr_to_file redirect(path);
      coshard::process_pool pool{{.workers = 2, .batch_size = 1}};
      CHECK(pool.map(items, print_together{started}) == items);
    }  // the destructor returns after the last line is written
    const auto lines = out::parse_prefixed(path);
    std::filesystem::remove(path);
    out::check_lines(lines, 2, 2);
  }
}

TEST_CASE("worker output: a last line without a newline arrives when its worker dies; capture can be turned off") {
  const std::string path = (std::filesystem::temp_directory_path() / ("coshard-out-" + std::to_string(::getpid()))).string();
  pid_t crashed_pid = 0;
  {
    coshard_test::output_lines::stderr_to_file redirect(path);
    coshard::process_pool pool{{.workers = 1, .max_retries = 0}};
    try {
      (void)pool.map(std::vector<long>{1}, [](long x) {
        const std::string words = "last words of " + std::to_string(::getpid());
        (void)!::write(2, words.data(), words.size());
        std::abort();
        return x;
      });
      FAIL("no exception");
    } catch (const coshard::worker_crashed& e) {
      crashed_pid = e.worker_pid();
    }
  }
  {
    std::ifstream in(path);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(all == "[worker 0 pid " + std::to_string(crashed_pid) + "] last words of " + std::to_string(crashed_pid) +
                     "\n");
  }
  {
    coshard_test::output_lines::stderr_to_file redirect(path);
    coshard::process_pool pool{{.workers = 1, .capture_worker_output = false}};
    (void)pool.map(std::vector<long>{1}, [](long x) {
      std::fprintf(stderr, "plain %d\n", static_cast<int>(::getpid()));
      return x;
    });
    const auto pids = pool.worker_pids();
    pool.shutdown();
    std::ifstream in(path);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(all == "plain " + std::to_string(pids.at(0)) + "\n");
  }
  std::filesystem::remove(path);
}

TEST_CASE("worker output: a sink with capture turned off is refused, naming both options") {
  CHECK_THROWS_WITH(coshard::process_pool({.workers = 1,
                                           .capture_worker_output = false,
                                           .worker_output = [](const coshard::worker_output_line&) {}}),
                    Catch::Contains("worker_output") && Catch::Contains("capture_worker_output"));
}

TEST_CASE("worker output: a line with no end arrives in 32 KiB pieces; a throwing sink loses no other line") {
  std::mutex mutex;
  std::vector<std::string> lines;
  {
    coshard::process_pool pool{{.workers = 1, .worker_output = [&](const coshard::worker_output_line& l) {
                                  std::lock_guard lock(mutex);
                                  lines.emplace_back(l.text);
                                  if (l.text == "throw") throw std::runtime_error("a sink that throws");
                                }}};
    (void)pool.map(std::vector<long>{1}, [](long x) {
      std::printf("throw\nafter\n");
      std::fflush(stdout);
      const std::string endless(100 * 1024, 'y');
      (void)!::write(1, endless.data(), endless.size());
      return x;
    });
  }  // the worker exits at shutdown: the unfinished line is passed on
  std::lock_guard lock(mutex);
  REQUIRE(lines.size() == 6);
  CHECK(lines[0] == "throw");
  CHECK(lines[1] == "after");
  for (std::size_t i = 2; i < 5; ++i) CHECK(lines[i] == std::string(32 * 1024, 'y'));
  CHECK(lines[5] == std::string(100 * 1024 - 3 * 32 * 1024, 'y'));
}

TEST_CASE("worker output: stderr nobody reads holds up the workers that print, not the supervisor's work") {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  std::fflush(stderr);
  const int saved = ::dup(2);
  ::dup2(p[1], 2);
  ::close(p[1]);
  std::vector<coshard::outcome<long>> out;
  std::string drained;
  {
    coshard::process_pool pool{{.workers = 2, .batch_size = 1, .max_retries = 0}};
    ::dup2(saved, 2);  // the supervisor has the pipe; this process writes to its own stderr again
    ::close(saved);
    std::thread job([&] {
      out = pool.map_settled(std::vector<long>{0, 1}, [](long x) {
        if (x == 0) {
          const std::string line(99, 'z');
          for (int i = 0; i < 100'000; ++i) std::printf("%s\n", line.c_str());  // 10 MB: blocks for a while
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
          std::abort();
        }
        return x;
      });
    });
    // Nobody reads for 2 s: meanwhile the abort must be reaped and reported
    // by the supervisor as what it was.
    std::this_thread::sleep_for(std::chrono::seconds(2));
    std::thread reader([&] {
      char buf[65536];
      ssize_t n;
      while ((n = ::read(p[0], buf, sizeof buf)) > 0) drained.append(buf, static_cast<std::size_t>(n));
    });
    job.join();
    pool.shutdown();
    reader.join();  // EOF once the supervisor is gone
  }
  ::close(p[0]);
  REQUIRE(out.size() == 2);
  CHECK(out[0].ok());
  REQUIRE(!out[1].ok());
  try {
    std::rethrow_exception(out[1].error());
  } catch (const coshard::worker_crashed& e) {
    CHECK(e.term_signal() == SIGABRT);  // not "killed with its supervisor"
  }
  // Every line came through whole.
  std::size_t lines = 0, bad = 0;
  std::size_t at = 0;
  while (at < drained.size()) {
    const std::size_t nl = drained.find('\n', at);
    if (nl == std::string::npos) break;
    const std::string line = drained.substr(at, nl - at);
    at = nl + 1;
    ++lines;
    const std::size_t close = line.find("] ");
    if (line.rfind("[worker ", 0) != 0 || close == std::string::npos || line.substr(close + 2) != std::string(99, 'z'))
      ++bad;
  }
  CHECK(lines == 100'000);
  CHECK(bad == 0);
}

TEST_CASE("worker output: a line of exactly 32 KiB whose newline comes later is one line") {
  std::vector<std::string> lines;
  const auto keep = [&](std::string_view l) { lines.emplace_back(l); };
  const std::string piece(coshard::detail::max_output_line, 'x');
  CHECK(coshard::detail::split_output_lines(piece, false, keep) == 0);  // waits: its newline may follow
  CHECK(lines.empty());
  CHECK(coshard::detail::split_output_lines(piece + "\nnext\n", false, keep) == piece.size() + 6);
  CHECK(lines == std::vector<std::string>{piece, "next"});
  lines.clear();
  CHECK(coshard::detail::split_output_lines(piece + "y", false, keep) == piece.size());  // longer: cut
  CHECK(lines == std::vector<std::string>{piece});
}
