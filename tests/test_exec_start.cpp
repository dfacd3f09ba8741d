// Tests of start_method::exec: the pool's supervisor is this test binary run
// again (its main calls coshard::serve_if_worker first), so nothing of the
// caller's memory, threads, locks or descriptors reaches the workers.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "coshard/process_pool.hpp"

#include <asio/bind_executor.hpp>
#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;
using coshard::start_method;
using coshard_test::alive;
using coshard_test::child_pids;

int main(int argc, char** argv) {
  // "main forgot to call it" is simulated by the environment (a test below).
  if (!std::getenv("COSHARD_TEST_SKIP_SERVE")) coshard::serve_if_worker(argc, argv);
  return Catch::Session().run(argc, argv);
}

namespace {

// Set by the initializers, in the workers only.
long initialized_with = 0;
bool async_initialized = false;
// Locked by a thread of the caller while a pool is built.
std::mutex held_by_a_thread;

void plain_initializer() {}

std::vector<long> iota_vector(long n) {
  std::vector<long> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0L);
  return v;
}

std::string read_all(const std::string& path) {
  std::ifstream f(path);
  std::string s((std::istreambuf_iterator<char>(f)), {});
  std::replace(s.begin(), s.end(), '\0', ' ');
  return s;
}

pid_t parent_of(pid_t pid) {
  for (const auto& p : coshard_test::all_processes())
    if (p.pid == pid) return p.ppid;
  return -1;
}

}  // namespace

TEST_CASE("exec: the supervisor is this binary run again; map, shared, reduce and awaitable map work") {
  const long factor = 3;
  coshard::process_pool pool{{.workers = 2,
                              .concurrency = 8,
                              .initializer = [factor] { initialized_with = factor; },
                              .async_initializer = []() -> asio::awaitable<void> {
                                asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
                                co_await t.async_wait(asio::use_awaitable);
                                async_initialized = true;
                              },
                              .start = start_method::exec}};
  const pid_t sup = pool.supervisor_pid();
  CHECK(std::filesystem::read_symlink("/proc/" + std::to_string(sup) + "/exe") ==
        std::filesystem::read_symlink("/proc/self/exe"));
  CHECK_THAT(read_all("/proc/" + std::to_string(sup) + "/cmdline"), Catch::Contains("--coshard-supervisor"));
  const auto workers = pool.worker_pids();
  REQUIRE(workers.size() == 2);
  for (pid_t w : workers) CHECK(parent_of(w) == sup);
  CHECK(initialized_with == 0);  // the initializers ran over there, not here

  // Both initializers ran in every worker before its first item: an item
  // seeing either undone is off by one from 3x^2.
  const auto got = pool.map(iota_vector(1000), [](long x) {
    return x * x * initialized_with + (async_initialized ? 0 : 1);
  });
  for (long x = 0; x < 1000; ++x) REQUIRE(got[static_cast<std::size_t>(x)] == 3 * x * x);

  const auto named = pool.map(
      iota_vector(50), [](const std::string& prefix, long x) { return prefix + std::to_string(x); },
      std::string("item-"));
  CHECK(named.front() == "item-0");
  CHECK(named.back() == "item-49");
  CHECK(pool.map_reduce(iota_vector(1000), [](long x) { return x; }, std::plus<>{}, 0L) == 499'500);

  asio::io_context io;
  std::vector<long> awaited;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        awaited = co_await pool.async_map(
            iota_vector(200),
            [](long x) -> asio::awaitable<long> {
              asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
              co_await t.async_wait(asio::use_awaitable);
              co_return x + 1;
            },
            asio::use_awaitable);
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  io.run();
  REQUIRE(awaited.size() == 200);
  for (long x = 0; x < 200; ++x) CHECK(awaited[static_cast<std::size_t>(x)] == x + 1);
}

TEST_CASE("exec: a crashing item is retried, a poison item fails alone, replacements come from the supervisor") {
  coshard::process_pool pool{{.workers = 2, .batch_size = 4, .max_retries = 2, .start = start_method::exec}};
  const pid_t sup = pool.supervisor_pid();
  const std::string marker = "/tmp/coshard-exec-test-" + std::to_string(::getpid()) + "-crashed";
  ::unlink(marker.c_str());
  const auto first_workers = pool.worker_pids();

  // Item 7 crashes its worker the first time only (the marker file remembers).
  const auto doubled = pool.map(
      iota_vector(40),
      [](const std::string& path, long x) {
        if (x == 7) {
          const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
          if (fd >= 0) std::abort();
        }
        return 2 * x;
      },
      marker);
  for (long x = 0; x < 40; ++x) CHECK(doubled[static_cast<std::size_t>(x)] == 2 * x);
  CHECK(::unlink(marker.c_str()) == 0);  // the crash did happen

  const auto settled = pool.map_settled(iota_vector(20), [](long x) {
    if (x == 13) std::abort();
    return x;
  });
  REQUIRE(settled.size() == 20);
  for (long x = 0; x < 20; ++x) {
    const auto& o = settled[static_cast<std::size_t>(x)];
    if (x == 13) {
      REQUIRE_FALSE(o.ok());
      CHECK_THROWS_AS(std::rethrow_exception(o.error()), coshard::worker_crashed);
    } else {
      REQUIRE(o.ok());
      CHECK(o.value() == x);
    }
  }
  REQUIRE(coshard_test::workers_once_settled(2) == 2);
  std::size_t replaced = 0;
  for (const auto& p : coshard_test::descendants())
    if (p.name == "coshard-worker" && p.state != 'Z') {
      CHECK(p.ppid == sup);
      replaced += std::count(first_workers.begin(), first_workers.end(), p.pid) == 0;
    }
  CHECK(replaced >= 1);
}

TEST_CASE("exec: shutdown ends a running job and every process of the pool") {
  SECTION("graceful shutdown during an async_map") {
    coshard::process_pool pool{{.workers = 2, .concurrency = 4, .shutdown_timeout = 1s, .start = start_method::exec}};
    asio::io_context io;
    std::exception_ptr job_error;
    bool completed = false;
    pool.async_map(
        iota_vector(10'000),
        [](long x) -> asio::awaitable<long> {
          asio::steady_timer t(co_await asio::this_coro::executor, 50ms);
          co_await t.async_wait(asio::use_awaitable);
          co_return x;
        },
        asio::bind_executor(io, [&](std::exception_ptr e, std::vector<long>) {
          job_error = e;
          completed = true;
        }));
    asio::steady_timer later(io, 200ms);
    later.async_wait([&](asio::error_code) { pool.shutdown(); });
    io.run();
    CHECK(completed);
    REQUIRE(job_error);
    try {
      std::rethrow_exception(job_error);
    } catch (const std::system_error& e) {
      CHECK(e.code() == asio::error::operation_aborted);
    }
    CHECK(child_pids().empty());
  }
  SECTION("the destructor") {
    std::vector<pid_t> pids;
    {
      coshard::process_pool pool{{.workers = 3, .start = start_method::exec}};
      pids = pool.worker_pids();
      pids.push_back(pool.supervisor_pid());
      CHECK(pool.map(iota_vector(10), [](long x) { return x; }).size() == 10);
    }
    for (pid_t p : pids) CHECK_FALSE(alive(p));
  }
  CHECK(child_pids().empty());
}

TEST_CASE("exec: an initializer that cannot be sent is refused at construction, saying why") {
  using Catch::Contains;
  auto build = [](coshard::pool_options o) {
    o.workers = 1;
    o.start = start_method::exec;
    coshard::process_pool pool{o};
  };
  CHECK_THROWS_WITH(build({.initializer = [name = std::string("db")] { (void)name; }}),
                    Contains("initializer cannot be sent") && Contains("not trivially copyable"));
  CHECK_THROWS_WITH(build({.initializer = std::function<void()>([] {})}), Contains("std::function"));
  CHECK_THROWS_WITH(build({.initializer = &plain_initializer}), Contains("function pointer"));
  CHECK_THROWS_WITH(build({.async_initializer = [v = std::vector<int>{1}]() -> asio::awaitable<void> {
                      (void)v;
                      co_return;
                    }}),
                    Contains("async_initializer cannot be sent"));
  CHECK(child_pids().empty());  // refused before anything started
  // The fork server copies the caller instead, so any callable is fine there.
  coshard::process_pool forked{{.workers = 1, .initializer = [name = std::string("db")] { (void)name; }}};
  CHECK(forked.map(iota_vector(3), [](long x) { return x; }).size() == 3);
}

TEST_CASE("exec: a program whose main does not call serve_if_worker gets a clear error, not a hang") {
  SECTION("the re-executed program exits without serving") {
    ::setenv("COSHARD_TEST_SKIP_SERVE", "1", 1);
    CHECK_THROWS_WITH(coshard::process_pool({.workers = 1, .startup_timeout = 30s, .start = start_method::exec}),
                      Catch::Contains("ended before it served") && Catch::Contains("serve_if_worker(argc, argv)"));
    ::unsetenv("COSHARD_TEST_SKIP_SERVE");
  }
  SECTION("a re-executed program that runs on into its own code starts no pool") {
    ::setenv("COSHARD_SUPERVISOR_OF", "1", 1);
    CHECK_THROWS_WITH(coshard::process_pool({.workers = 1}), Catch::Contains("did not call coshard::serve_if_worker"));
    ::unsetenv("COSHARD_SUPERVISOR_OF");
  }
  CHECK(child_pids().empty());
}

TEST_CASE("exec: an initializer the re-run program lacks (defined in a plugin) is a clear pool_error") {
  void* plugin = ::dlopen(COSHARD_LATE_PLUGIN, RTLD_NOW | RTLD_LOCAL);
  REQUIRE(plugin);
  auto build = reinterpret_cast<void (*)()>(::dlsym(plugin, "coshard_late_plugin_exec_pool"));
  REQUIRE(build);
  CHECK_THROWS_AS(build(), coshard::pool_error);
  CHECK_THROWS_WITH(build(), Catch::Contains("the supervisor process could not start") &&
                                 Catch::Contains("unknown initializer entry id") &&
                                 Catch::Contains("not the same binary"));
  CHECK(child_pids().empty());
  // Never unloaded: the registries keep pointers into it.
}

TEST_CASE("exec: a lock another thread of the caller holds does not reach the workers") {
  std::promise<void> locked, release;
  std::thread holder([&] {
    std::lock_guard lock(held_by_a_thread);
    locked.set_value();
    release.get_future().wait();
  });
  locked.get_future().wait();
  SECTION("exec: the initializer takes the lock of a fresh image") {
    coshard::process_pool pool{{.workers = 2,
                                .initializer = [] { std::lock_guard lock(held_by_a_thread); },
                                .startup_timeout = 30s,
                                .start = start_method::exec}};
    CHECK(pool.map(iota_vector(10), [](long x) { return x; }) == iota_vector(10));
  }
  SECTION("fork_server, for contrast: the forked copy of the lock stays held forever") {
    CHECK_THROWS_WITH(coshard::process_pool({.workers = 1,
                                             .initializer = [] { std::lock_guard lock(held_by_a_thread); },
                                             .startup_timeout = 1s}),
                      Catch::Contains("startup_timeout"));
  }
  release.set_value();
  holder.join();
  CHECK(child_pids().empty());
}

TEST_CASE("exec: the supervisor and workers inherit no descriptor and no marker of their start") {
  int user_pipe[2];
  REQUIRE(::pipe(user_pipe) == 0);  // deliberately without O_CLOEXEC
  const int user_file = ::open("/proc/self/exe", O_RDONLY);  // likewise
  REQUIRE(user_file >= 0);
  {
    coshard::process_pool pool{{.workers = 2, .start = start_method::exec}};
    const std::set<std::string> mine{std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(user_pipe[0])),
                                     std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(user_pipe[1]))};
    auto pids = pool.worker_pids();
    pids.push_back(pool.supervisor_pid());
    for (pid_t p : pids) {
      // Above stdio only what coshard made there: its sockets, and event,
      // signal, pid and epoll descriptors, and in the supervisor the read
      // ends of the workers' output pipes. Nothing of the caller's.
      std::size_t pipes = 0;
      for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(p) + "/fd")) {
        if (std::stoi(e.path().filename().string()) <= 2) continue;
        std::error_code ec;
        const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
        if (ec) continue;  // closed meanwhile
        INFO("pid " << p << " holds " << target);
        CHECK(mine.count(target) == 0);
        const bool pipe = target.rfind("pipe:", 0) == 0;
        pipes += pipe;
        CHECK((target.rfind("socket:", 0) == 0 || target.rfind("anon_inode:", 0) == 0 || pipe));
      }
      CHECK(pipes == (p == pool.supervisor_pid() ? 2 * 2 : 0));
    }
    // (/proc/<pid>/environ shows the image's first environment, so ask the
    // workers what they and the programs they start would see.)
    const auto seen = pool.map(iota_vector(8), [](long) { return std::getenv("COSHARD_SUPERVISOR_OF") != nullptr; });
    CHECK(std::count(seen.begin(), seen.end(), true) == 0);
  }
  ::close(user_file);
  ::close(user_pipe[0]);
  ::close(user_pipe[1]);
}

TEST_CASE("exec: the supervisor and workers exit soon after the owner dies by SIGKILL") {
  const auto [pids, seconds] = coshard_test::pool_pids_after_owner_sigkill(3, [] {
    static std::optional<coshard::process_pool> pool;  // kept until the owner is killed
    pool.emplace(coshard::pool_options{.workers = 2, .start = start_method::exec});
    std::vector<pid_t> out = pool->worker_pids();
    out.push_back(pool->supervisor_pid());
    return out;
  });
  REQUIRE(pids.size() == 3);
  WARN("all gone " << seconds << " s after the owner's death");
  for (pid_t p : pids) CHECK_FALSE(alive(p));
}

TEST_CASE("exec: workers' lines reach the caller's stderr whole and prefixed, or its sink") {
  namespace out = coshard_test::output_lines;
  const std::vector<long> items{0, 1};
  const auto print = [](long item) { return out::print_lines(item); };
  {
    const std::string path =
        (std::filesystem::temp_directory_path() / ("coshard-exec-out-" + std::to_string(::getpid()))).string();
    {
      out::stderr_to_file redirect(path);
      coshard::process_pool pool{{.workers = 2, .batch_size = 1, .start = start_method::exec}};
      CHECK(pool.map(items, print) == items);
    }
    const auto lines = out::parse_prefixed(path);
    std::filesystem::remove(path);
    out::check_lines(lines, 2, 2);
  }
  std::mutex mutex;
  std::vector<out::arrived> lines;
  {
    coshard::process_pool pool{{.workers = 2,
                                .batch_size = 1,
                                .start = start_method::exec,
                                .worker_output = [&](const coshard::worker_output_line& l) {
                                  std::lock_guard lock(mutex);
                                  lines.push_back({static_cast<long>(l.slot), l.pid, l.stream, std::string(l.text)});
                                }}};
    CHECK(pool.map(items, print) == items);
  }
  out::check_lines(lines, 2, 2);
}
