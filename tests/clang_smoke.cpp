// Built and run with clang++-14 by ctest (compile_and_run_with_clang): every
// public entry point of process_pool (each job function and its async_ form,
// the shared overloads, cancel, shutdown, both start methods) instantiated
// and checked under the second supported compiler.
// Plain containers only: clang 14 cannot instantiate libstdc++ 12's std::views.
#include <coshard/coshard.hpp>

#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_future.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <thread>
#include <string>
#include <unordered_map>
#include <vector>

#define EXPECT(cond)                                                     \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      return 1;                                                          \
    }                                                                    \
  } while (0)

// In a thread: remembered, checked by main after the join.
std::atomic<bool> thread_check_failed{false};
#define EXPECT_IN_THREAD(cond)                                                  \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      thread_check_failed = true;                                              \
    }                                                                          \
  } while (0)

int main(int argc, char** argv) {
  coshard::serve_if_worker(argc, argv);
  coshard::process_pool pool{{.workers = 2, .concurrency = 16}};
  std::vector<int> in(1000);
  std::iota(in.begin(), in.end(), 0);

  auto sq = pool.map(in, [](int x) { return x * x; });
  EXPECT(sq[999] == 999 * 999);

  auto waited = pool.map(in, [](int x) -> asio::awaitable<int> {
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::microseconds(50));
    co_await t.async_wait(asio::use_awaitable);
    co_return x + 1;
  });
  EXPECT(waited[10] == 11);

  const std::string sep = "-";
  auto joined = pool.map(in, [](const std::string& s, int x) { return s + std::to_string(x); }, sep);
  EXPECT(joined[5] == "-5");

  EXPECT(pool.map_reduce(in, [](int x) { return long(x); }, std::plus<>{}, 0L) == 999L * 1000 / 2);

  std::vector<std::string> words{"a", "b", "a"};
  auto counts = pool.map_reduce_by_key(words, [](const std::string& w) {
    return std::unordered_map<std::string, int>{{w, 1}};
  });
  EXPECT(counts["a"] == 2 && counts["b"] == 1);

  std::size_t seen = 0;
  pool.for_each_result(in, [](int x) { return x; }, [&](std::size_t, int) { ++seen; });
  EXPECT(seen == in.size());

  auto fut = pool.async_map(in, [](int x) { return x - 1; }, asio::use_future);
  EXPECT(fut.get()[0] == -1);

  asio::io_context io;
  long total = 0;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    total = co_await pool.async_map_reduce(in, [](int x) { return long(x); }, std::plus<>{}, 0L,
                                           asio::use_awaitable);
  }, asio::detached);
  io.run();
  EXPECT(total == 999L * 1000 / 2);

  try {
    (void)pool.map(in, [](int x) {
      if (x == 3) throw std::runtime_error("three");
      return x;
    });
    return 1;
  } catch (const coshard::task_error& e) {
    EXPECT(e.index() == 3 && e.message() == "three");
  }
  EXPECT(pool.map_reduce(in, [](int s, int x) { return long(s + x); }, std::plus<>{}, 0L, 1) ==
         999L * 1000 / 2 + 1000);

  auto settled = pool.map_settled(in, [](int x) {
    if (x == 7) throw std::runtime_error("seven");
    return x;
  });
  EXPECT(!settled[7].ok() && settled[8].value() == 8);
  auto settled_fut = pool.async_map_settled(in, [](int x) { return x; }, asio::use_future);
  EXPECT(settled_fut.get()[9].value() == 9);

  auto shared_fut = pool.async_map(in, [](int s, int x) { return s * x; }, 3, asio::use_future);
  EXPECT(shared_fut.get()[4] == 12);

  std::size_t streamed = 0;
  auto count_fut = pool.async_for_each_result(in, [](int x) { return x; }, [&](std::size_t, int) { ++streamed; },
                                              asio::use_future);
  EXPECT(count_fut.get() == in.size() && streamed == in.size());

  // The forms added with concurrent jobs: job_options, the shared overloads of
  // every operation, async_map_reduce_by_key, jobs from two threads at once,
  // and single tasks.
  EXPECT(pool.map(in, [](int x) { return x; }, {.batch_size = 7, .max_retries = 1})[999] == 999);
  EXPECT(pool.map_settled(in, [](int s, int x) { return s + x; }, 1)[0].value() == 1);
  auto keyed = pool.map_reduce_by_key(words, [](const std::string& s, const std::string& w) {
    return std::unordered_map<std::string, int>{{s + w, 1}};
  }, std::plus<>{}, sep);
  EXPECT(keyed["-a"] == 2);
  std::size_t shared_seen = 0;
  pool.for_each_result(in, [](int s, int x) { return s + x; }, [&](std::size_t, int) { ++shared_seen; }, 5);
  EXPECT(shared_seen == in.size());
  auto keyed_fut = pool.async_map_reduce_by_key(words, [](const std::string& w) {
    return std::unordered_map<std::string, int>{{w, 1}};
  }, std::plus<>{}, asio::use_future);
  EXPECT(keyed_fut.get()["a"] == 2);
  auto reduce_shared = pool.async_map_reduce(in, [](int s, int x) { return long(s + x); }, std::plus<>{}, 0L, 1,
                                             coshard::job_options{.batch_size = 10}, asio::use_future);
  EXPECT(reduce_shared.get() == 999L * 1000 / 2 + 1000);
  std::thread beside([&] { EXPECT_IN_THREAD(pool.map(in, [](int x) { return -x; })[5] == -5); });
  EXPECT(pool.map(in, [](int x) { return 2 * x; })[5] == 10);
  beside.join();
  EXPECT(pool.submit([](int x) { return x * 3; }, 7).get() == 21);
  int submitted = 0;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    submitted = co_await pool.async_submit([](int x) { return x + 1; }, 41, asio::use_awaitable);
  }, asio::detached);
  io.restart();
  io.run();
  EXPECT(submitted == 42);

  // cancel() from another thread ends a running job with operation_aborted
  // (it reaches only a job that has started: repeated until the job ends).
  std::atomic<bool> ended{false};
  std::thread canceller([&] {
    while (!ended.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      pool.cancel();
    }
  });
  bool aborted = false;
  try {
    (void)pool.map(std::vector<int>(100'000, 1), [](int x) -> asio::awaitable<int> {
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(5));
      co_await t.async_wait(asio::use_awaitable);
      co_return x;
    });
  } catch (const std::system_error& e) {
    aborted = e.code() == asio::error::operation_aborted;
  }
  ended.store(true);
  canceller.join();
  EXPECT(aborted);

  pool.shutdown(coshard::shutdown_mode::forced);
  bool refused = false;
  try {
    (void)pool.map(in, [](int x) { return x; });
  } catch (const coshard::pool_error&) {
    refused = true;
  }
  EXPECT(refused);

  coshard::process_pool exec_pool{{.workers = 1, .initializer = [] {}, .start = coshard::start_method::exec}};
  EXPECT(exec_pool.map(in, [](int x) { return x + 2; })[0] == 2);

  EXPECT(!thread_check_failed.load());
  std::puts("clang smoke: ok");
  return 0;
}
