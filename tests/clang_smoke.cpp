// Built and run with clang++-14 by ctest (compile_and_run_with_clang): every
// public entry point instantiated under the second supported compiler.
// Plain containers only: clang 14 cannot instantiate libstdc++ 12's std::views.
#include <coshard/coshard.hpp>

#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_future.hpp>

#include <cstdio>
#include <numeric>
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

int main() {
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
  std::puts("clang smoke: ok");
  return 0;
}
