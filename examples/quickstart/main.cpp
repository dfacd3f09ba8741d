// The README's quick start as a program: every kind of job a coshard pool runs.
#include <coshard/coshard.hpp>

#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <future>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

using namespace std::chrono_literals;

int main() {
  // Two worker processes, each running up to 64 awaitable items at once.
  coshard::process_pool pool{{.workers = 2, .concurrency = 64}};

  std::vector<int> numbers(1'000'000);
  std::iota(numbers.begin(), numbers.end(), 1);

  // A plain function runs inline in the workers; results come back in input order.
  std::vector<long> squares = pool.map(numbers, [](int x) { return long(x) * x; });
  std::printf("squares: %zu results, last = %ld\n", squares.size(), squares.back());

  // map_reduce combines inside each worker first; one partial per batch crosses back.
  long sum = pool.map_reduce(numbers, [](int x) { return long(x); }, std::plus<>{}, 0L);
  std::printf("sum 1..%zu = %ld\n", numbers.size(), sum);

  // An awaitable function: I/O-style waits overlap inside every worker.
  std::vector<std::string> names(2000, "page");
  const auto t0 = std::chrono::steady_clock::now();
  auto lengths = pool.map(names, [](std::string name) -> asio::awaitable<std::size_t> {
    asio::steady_timer io_wait(co_await asio::this_coro::executor, 20ms);  // stands in for a fetch
    co_await io_wait.async_wait(asio::use_awaitable);
    co_return name.size();
  });
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - t0);
  std::printf("2000 waits of 20 ms: %zu results in %lld ms (one at a time: 40000 ms)\n",
              lengths.size(), static_cast<long long>(ms.count()));

  // Progress as batches return: one redrawn line on a terminal; in a log, a
  // plain line every 5 s and at the end (with show_after 0, also the first).
  std::vector<std::string> urls(4000, "https://example.org/");
  auto pages = pool.map(urls, [](std::string url) -> asio::awaitable<std::size_t> {
    asio::steady_timer io_wait(co_await asio::this_coro::executor, 40ms);
    co_await io_wait.async_wait(asio::use_awaitable);
    co_return url.size();
  }, {.progress = coshard::progress_bar({.label = "fetch", .show_after = 0ms, .unit = "pages"})});

  // A keyed reduce: word counts merged per key, in the workers and then here.
  std::vector<std::string> lines{"the cat sat", "the dog sat", "a cat ran"};
  auto counts = pool.map_reduce_by_key(lines, [](const std::string& line) {
    std::unordered_map<std::string, long> words;
    std::istringstream in(line);
    for (std::string w; in >> w;) ++words[w];
    return words;
  });
  std::printf("'the' x%ld, 'cat' x%ld, 'sat' x%ld\n", counts["the"], counts["cat"], counts["sat"]);

  // A broadcast value: sent to each worker once per job, not once per item.
  const std::string greeting = "hello #";
  auto greetings = pool.map(std::vector<int>{1, 2, 3},
                            [](const std::string& g, int i) { return g + std::to_string(i); },
                            greeting);
  std::printf("%s, %s, %s\n", greetings[0].c_str(), greetings[1].c_str(), greetings[2].c_str());

  // Results in completion order, as Python's asyncio.as_completed gives them.
  std::vector<int> delays{300, 100, 200};
  std::vector<std::size_t> finish_order;
  pool.for_each_result(
      delays,
      [](int delay_ms) -> asio::awaitable<int> {
        asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(delay_ms));
        co_await t.async_wait(asio::use_awaitable);
        co_return delay_ms;
      },
      [&](std::size_t index, int delay_ms) {
        std::printf("finished: input %zu (%d ms)\n", index, delay_ms);
        if (delays[index] == delay_ms) finish_order.push_back(index);
      });

  // The same pool from coroutines on the caller's own io_context, and from
  // another thread: any number of jobs run at once, sharing the workers. An
  // exception in a coroutine is rethrown here, not dropped.
  asio::io_context io;
  std::vector<int> remainders;
  std::vector<long> doubled, cubes;
  std::thread other([&] { cubes = pool.map(numbers, [](int x) { return long(x) * x * x; }); });
  auto rethrow = [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  };
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    remainders = co_await pool.async_map(numbers, [](int x) { return x % 7; }, asio::use_awaitable);
    std::printf("async_map: %zu results, v[10] = %d\n", remainders.size(), remainders[10]);
  }, rethrow);
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    // Per-job options override the pool's for this job only.
    doubled = co_await pool.async_map(numbers, [](int x) { return 2L * x; }, {.batch_size = 4096}, asio::use_awaitable);
  }, rethrow);
  io.run();
  other.join();
  std::printf("at once: %zu doubled, %zu cubes, last cube = %ld\n", doubled.size(), cubes.size(), cubes.back());

  // Single tasks: 100 coroutines each awaiting one task at a time; the pool
  // coalesces the tasks submitted close together into batches.
  long submitted_sum = 0;
  for (int c = 0; c < 100; ++c)
    asio::co_spawn(io, [&, c]() -> asio::awaitable<void> {
      for (int k = 0; k < 100; ++k)
        submitted_sum += co_await pool.async_submit([](int x) { return 2L * x; }, c * 100 + k, asio::use_awaitable);
    }, rethrow);
  io.restart();
  io.run();
  std::future<long> one = pool.submit([](int x) { return x + 1L; }, 41);
  const long one_result = one.get();
  std::printf("async_submit: 10000 tasks from 100 coroutines, sum = %ld; submit: %ld\n", submitted_sum, one_result);

  // A task's exception comes back as its own type, and as a coshard::task_error
  // with its message, input index and worker.
  bool caught = false;
  try {
    (void)pool.map(numbers, [](int x) {
      if (x == 4242) throw std::invalid_argument("no 4242 please");
      return x;
    });
  } catch (const std::invalid_argument& e) {
    std::printf("std::invalid_argument: %s\n", e.what());
    caught = coshard::task_error_of(e)->index() == 4241;
  }

  // What a task prints reaches stderr as whole lines, each naming its worker.
  (void)pool.map(std::vector<int>{1, 2}, [](int x) {
    std::printf("hello from a task: input %d\n", x);
    return x;
  }, {.batch_size = 1});

  // The pool's running totals.
  const coshard::pool_stats stats = pool.stats();
  std::chrono::nanoseconds busy{0};
  for (auto b : stats.busy_per_worker) busy += b;
  std::printf("stats: %zu jobs (%zu failed), %zu items in %zu batches, workers busy %.0f%% of %.1f s\n",
              stats.jobs_started, stats.jobs_failed, stats.items_done + stats.items_failed, stats.batches,
              100.0 * std::chrono::duration<double>(busy).count() /
                  (std::chrono::duration<double>(stats.uptime).count() * static_cast<double>(stats.busy_per_worker.size())),
              std::chrono::duration<double>(stats.uptime).count());

  // The answers, checked against what they must be (ctest runs this program).
  const long n = static_cast<long>(numbers.size());
  bool right = squares.back() == n * n && sum == n * (n + 1) / 2 && caught;
  right = right && pages.size() == urls.size() && stats.jobs_failed == 1;
  right = right && lengths.size() == 2000 && std::all_of(lengths.begin(), lengths.end(), [](std::size_t l) {
            return l == 4;
          });
  right = right && counts["the"] == 2 && counts["cat"] == 2 && counts["sat"] == 2 && greetings[2] == "hello #3";
  // Completion order: the 100 ms item, then 200, then 300 (ends 100 ms apart).
  right = right && finish_order == std::vector<std::size_t>{1, 2, 0};
  right = right && submitted_sum == 2L * 9999 * 10000 / 2 && one_result == 42;
  right = right && remainders.size() == numbers.size() && doubled.size() == numbers.size() &&
          cubes.size() == numbers.size();
  for (std::size_t i = 0; right && i < numbers.size(); ++i) {
    const long x = numbers[i];
    right = remainders[i] == x % 7 && doubled[i] == 2 * x && cubes[i] == x * x * x;
  }
  if (!right) std::fprintf(stderr, "quickstart: a result is wrong\n");
  return right ? 0 : 1;
}
