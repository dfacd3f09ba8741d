// Tests of coshard/process_pool.hpp: results, ordering, sizes, types,
// concurrency inside workers, shared values, reductions, errors, async
// completion tokens, and clean teardown.
#include "coshard/process_pool.hpp"

#include <sys/mman.h>
#include <sys/socket.h>

#include <asio/bind_executor.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/parallel_group.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_future.hpp>
#include <catch2/catch.hpp>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <new>
#include <numeric>
#include <ranges>
#include <sstream>
#include <string>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <functional>
#include <thread>
#include <unordered_map>

#include "test_support.hpp"

using namespace std::chrono_literals;
using coshard_test::child_pids;

namespace {

struct point {
  std::string name;
  std::vector<double> coords;
  std::map<std::string, int> tags;
  bool operator==(const point&) const = default;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, coords, tags);
  }
};

// Ends every test the same way: the pool is gone, so are its children and fds.
template <class Body>
void with_pool(const coshard::pool_options& opts, Body body) {
  coshard_test::with_pool_of<coshard::process_pool>(opts, [&](coshard::process_pool& pool) {
    REQUIRE(coshard_test::workers_once_settled(pool.size()) == pool.size());
    body(pool);
  });
}

int encodes = 0;
// Counts how often the parent encodes it.
struct dictionary {
  std::vector<std::string> words;
  template <class Archive>
  void save(Archive& ar) const {
    ++encodes;
    ar(words);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(words);
  }
};

std::vector<long> iota_vector(long n) {
  std::vector<long> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0L);
  return v;
}

}  // namespace

TEST_CASE("map returns results in input order for plain and awaitable functions") {
  with_pool({.workers = 3, .concurrency = 16}, [](coshard::process_pool& pool) {
    auto in = iota_vector(5000);
    auto sq = pool.map(in, [](long x) { return x * x; });
    REQUIRE(sq.size() == in.size());
    for (std::size_t i = 0; i < in.size(); ++i) REQUIRE(sq[i] == in[i] * in[i]);

    // Later items finish first inside a batch; order must still be by input.
    auto delayed = pool.map(iota_vector(300), [](long x) -> asio::awaitable<long> {
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::microseconds(3000 - 10 * x));
      co_await t.async_wait(asio::use_awaitable);
      co_return x + 1;
    });
    REQUIRE(delayed.size() == 300);
    for (long i = 0; i < 300; ++i) REQUIRE(delayed[static_cast<std::size_t>(i)] == i + 1);
  });
}

TEST_CASE("empty input and a single item") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    std::vector<int> none;
    CHECK(pool.map(none, [](int x) { return x; }).empty());
    CHECK(pool.map_reduce(none, [](int x) { return x; }, std::plus<>{}, 7) == 7);
    std::vector<int> one{41};
    CHECK(pool.map(one, [](int x) { return x + 1; }) == std::vector<int>{42});
    CHECK(pool.map_reduce(one, [](int x) { return x + 1; }, std::plus<>{}, 0) == 42);
  });
}

TEST_CASE("bool results land in a std::vector<bool>, which has no data() to copy into") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    const auto even = pool.map(iota_vector(3000), [](long x) { return x % 2 == 0; });
    REQUIRE(even.size() == 3000);
    for (std::size_t i = 0; i < even.size(); ++i) REQUIRE(even[i] == (i % 2 == 0));
  });
}

TEST_CASE("a million small items match the sequential result") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    auto in = iota_vector(1'000'000);
    auto out = pool.map(in, [](long x) { return x * 3 - 1; });
    REQUIRE(out.size() == in.size());
    bool all = true;
    for (std::size_t i = 0; i < in.size(); ++i) all = all && out[i] == in[i] * 3 - 1;
    CHECK(all);
  });
}

TEST_CASE("10 MB items cross in both directions") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    std::vector<std::string> big;
    for (char c : {'a', 'b', 'c', 'd'}) big.push_back(std::string(10 << 20, c));
    auto lens = pool.map(big, [](const std::string& s) {
      return static_cast<std::size_t>(std::count(s.begin(), s.end(), s[0]));
    });
    CHECK(lens == std::vector<std::size_t>(4, std::size_t{10} << 20));
    std::vector<int> sizes{10 << 20, 1, 10 << 20};
    auto made = pool.map(sizes, [](int n) { return std::vector<char>(static_cast<std::size_t>(n), 'z'); });
    REQUIRE(made.size() == 3);
    CHECK(made[0].size() == (10u << 20));
    CHECK(made[1] == std::vector<char>{'z'});
    CHECK(std::all_of(made[2].begin(), made[2].end(), [](char c) { return c == 'z'; }));
  });
}

TEST_CASE("strings, maps and user structs cross intact") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    std::vector<point> pts;
    for (int i = 0; i < 500; ++i)
      pts.push_back({"p" + std::to_string(i), {i * 0.5, -i * 1.0}, {{"i", i}, {"sq", i * i}}});
    auto moved = pool.map(pts, [](point p) {
      p.name += "!";
      p.coords.push_back(1.0);
      p.tags["seen"] = 1;
      return p;
    });
    REQUIRE(moved.size() == pts.size());
    for (std::size_t i = 0; i < pts.size(); ++i) {
      auto want = pts[i];
      want.name += "!";
      want.coords.push_back(1.0);
      want.tags["seen"] = 1;
      REQUIRE(moved[i] == want);
    }
    std::vector<std::map<std::string, int>> maps{{{"a", 1}}, {}, {{"b", 2}, {"c", 3}}};
    auto sums = pool.map(maps, [](const std::map<std::string, int>& m) {
      int s = 0;
      for (auto& [k, v] : m) s += v + static_cast<int>(k.size());
      return s;
    });
    CHECK(sums == std::vector<int>{2, 0, 7});
  });
}

namespace {
// Items that arrived in this worker process so far (each worker has its own).
int items_arrived = 0;
}  // namespace

TEST_CASE("awaitable items overlap up to `concurrency` per worker, never more") {
  struct span_ns {
    std::int64_t start, end;
  };
  // One worker, 64 lanes, 640 items in generations of 64 (one batch each,
  // two batches held, so 128 items are always queued): an item waits until
  // its whole generation has arrived. The pool must run 64 at once for any
  // generation to complete, whatever the machine's speed; a pool running
  // fewer leaves them waiting until the 10 s escape, and the peak shows it.
  with_pool({.workers = 1, .concurrency = 64, .batch_size = 64}, [](coshard::process_pool& pool) {
    const auto t0 = std::chrono::steady_clock::now();
    auto spans = pool.map(std::views::iota(0, 640), [](int) -> asio::awaitable<span_ns> {
      auto now = [] { return std::chrono::steady_clock::now().time_since_epoch().count(); };
      const auto start = now();
      const int generation_full = (items_arrived++ / 64 + 1) * 64;
      asio::steady_timer t(co_await asio::this_coro::executor);
      for (int waited = 0; items_arrived < generation_full && waited < 10'000; ++waited) {
        t.expires_after(1ms);
        co_await t.async_wait(asio::use_awaitable);
      }
      co_return span_ns{start, now()};
    });
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    REQUIRE(spans.size() == 640);
    // Peak number of items running at once in the worker.
    std::vector<std::pair<std::int64_t, int>> events;
    for (auto& s : spans) {
      events.push_back({s.start, +1});
      events.push_back({s.end, -1});
    }
    std::sort(events.begin(), events.end());  // an end sorts before a start at the same instant
    int running = 0, peak = 0;
    for (auto& [t, d] : events) peak = std::max(peak, running += d);
    CHECK(peak == 64);
    WARN("640 items in barriers of 64, 1 worker x 64: "
         << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms");
  });
}

TEST_CASE("the shared value is encoded once per job and reaches every item") {
  with_pool({.workers = 2, .batch_size = 10}, [](coshard::process_pool& pool) {
    dictionary dict{{"zero", "one", "two", "three"}};
    encodes = 0;
    auto out = pool.map(iota_vector(1000), [](const dictionary& d, long i) {
      return d.words[static_cast<std::size_t>(i) % d.words.size()];
    }, dict);
    CHECK(encodes == 1);
    REQUIRE(out.size() == 1000);
    for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == dict.words[i % 4]);
    const long total = pool.map_reduce(iota_vector(100), [](const dictionary& d, long i) {
      return static_cast<long>(d.words.size()) * i;
    }, std::plus<>{}, 0L, dict);
    CHECK(total == 4 * 4950);
  });
}

TEST_CASE("map_reduce and the keyed reduce equal a sequential fold") {
  with_pool({.workers = 3}, [](coshard::process_pool& pool) {
    auto in = iota_vector(200'000);
    const long want = std::accumulate(in.begin(), in.end(), 0L, [](long a, long x) { return a + x % 97; });
    CHECK(pool.map_reduce(in, [](long x) { return x % 97; }, std::plus<>{}, 0L) == want);
    const double prod = pool.map_reduce(std::views::iota(1, 21), [](int x) { return 1.0 + 1.0 / x; },
                                        std::multiplies<>{}, 1.0);
    CHECK(prod == Approx(21.0));  // telescoping product of (x+1)/x

    std::vector<std::string> lines;
    std::unordered_map<std::string, long> expected;
    const char* vocab[] = {"aardvark", "bee", "cat", "dog", "eel"};
    for (int i = 0; i < 3000; ++i) {
      std::string line;
      for (int j = 0; j <= i % 7; ++j) {
        std::string w = vocab[(i * 7 + j * 3) % 5];
        line += w + " ";
        ++expected[w];
      }
      lines.push_back(line);
    }
    auto counts = pool.map_reduce_by_key(lines, [](const std::string& line) {
      std::unordered_map<std::string, long> m;
      std::istringstream words(line);
      for (std::string w; words >> w;) ++m[w];
      return m;
    });
    CHECK(counts == expected);
  });
}

TEST_CASE("a task's exception arrives as task_error with its fields; the pool stays usable") {
  with_pool({.workers = 2, .batch_size = 50}, [](coshard::process_pool& pool) {
    auto in = iota_vector(1000);
    try {
      (void)pool.map(in, [](long x) {
        if (x == 617) throw std::out_of_range("no room for " + std::to_string(x));
        return x;
      });
      FAIL("no exception");
    } catch (const coshard::task_error& e) {
      CHECK(e.type_name() == "std::out_of_range");
      CHECK(e.message() == "no room for 617");
      CHECK(e.index() == 617);
      auto pids = pool.worker_pids();
      CHECK(std::find(pids.begin(), pids.end(), e.worker_pid()) != pids.end());
      CHECK(std::string(e.what()).find("617") != std::string::npos);
    }
    try {
      (void)pool.map_reduce(in, [](long x) -> asio::awaitable<long> {
        if (x % 300 == 299) throw 42;
        co_return x;
      }, std::plus<>{}, 0L);
      FAIL("no exception");
    } catch (const coshard::task_error& e) {
      CHECK(e.type_name() == "int");
      CHECK(e.message().empty());
      CHECK(e.index() == 299);  // the lowest failing index (599 and 899 fail too)
    }
    // Still usable, with the same workers.
    CHECK(pool.map_reduce(in, [](long x) { return x; }, std::plus<>{}, 0L) == 999 * 1000 / 2);
  });
}

namespace {
struct rate_limited : std::runtime_error {
  explicit rate_limited(const std::string& host) : std::runtime_error(host), host(host) {}
  std::string host;
};
}  // namespace

TEST_CASE("a task's exception can be caught by its own type, with the coshard details reachable") {
  coshard::register_exception<rate_limited>();  // before the pool: forked workers inherit it
  with_pool({.workers = 2, .batch_size = 50}, [](coshard::process_pool& pool) {
    auto in = iota_vector(1000);
    try {
      (void)pool.map(in, [](long x) {
        if (x == 617) throw std::invalid_argument("no " + std::to_string(x) + " please");
        return x;
      });
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      const coshard::task_error* details = coshard::task_error_of(e);
      REQUIRE(details != nullptr);
      CHECK(details->index() == 617);
      CHECK(details->message() == "no 617 please");
      CHECK(details->type_name() == "std::invalid_argument");
      auto pids = pool.worker_pids();
      CHECK(std::find(pids.begin(), pids.end(), details->worker_pid()) != pids.end());
    }
    // The code of a std::system_error survives (here a std::filesystem_error).
    try {
      (void)pool.map(in, [](long x) -> asio::awaitable<std::uintmax_t> {
        co_return x == 5 ? std::filesystem::file_size("/nonexistent/coshard") : 0;
      });
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::no_such_file_or_directory);
      CHECK(coshard::task_error_of(e)->index() == 5);
    }
    // A registered user type, in each outcome of map_settled.
    auto settled = pool.map_settled(in, [](long x) {
      if (x % 400 == 7) throw rate_limited("host" + std::to_string(x));
      return x;
    });
    int caught = 0;
    for (std::size_t i = 0; i < settled.size(); ++i) {
      if (settled[i].ok()) continue;
      try {
        std::rethrow_exception(settled[i].error());
      } catch (const rate_limited& e) {
        CHECK(e.host == "host" + std::to_string(i));
        CHECK(coshard::task_error_of(e)->index() == i);
        ++caught;
      }
    }
    CHECK(caught == 3);
    // catch (const coshard::task_error&) catches all of them, as before.
    CHECK_THROWS_AS(pool.map(in, [](long x) { return x == 3 ? throw rate_limited("h") : x; }), coshard::task_error);
  });
}

TEST_CASE("any worker count from 1 to 4 gives the same answer") {
  const auto workers = GENERATE(1, 2, 3, 4);
  with_pool({.workers = static_cast<std::size_t>(workers)}, [&](coshard::process_pool& pool) {
    CHECK(pool.size() == static_cast<std::size_t>(workers));
    auto out = pool.map(std::views::iota(0, 20'000), [](int x) { return x % 13; });
    long sum = std::accumulate(out.begin(), out.end(), 0L);
    long want = 0;
    for (int x = 0; x < 20'000; ++x) want += x % 13;
    CHECK(sum == want);
    // Every worker took part in a long enough job.
    auto pids = pool.map(std::views::iota(0, 400), [](int) -> asio::awaitable<pid_t> {
      asio::steady_timer t(co_await asio::this_coro::executor, 2ms);
      co_await t.async_wait(asio::use_awaitable);
      co_return ::getpid();
    });
    std::sort(pids.begin(), pids.end());
    CHECK(static_cast<int>(std::unique(pids.begin(), pids.end()) - pids.begin()) == workers);
  });
}

TEST_CASE("one pool runs many jobs in a row") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    const auto pids = pool.worker_pids();
    for (int job = 0; job < 300; ++job) {
      std::vector<int> in(static_cast<std::size_t>(job % 17));
      std::iota(in.begin(), in.end(), job);
      auto out = pool.map(in, [](int x) { return x * 2; });
      REQUIRE(out.size() == in.size());
      for (std::size_t i = 0; i < in.size(); ++i) REQUIRE(out[i] == in[i] * 2);
    }
    CHECK(pool.worker_pids() == pids);
  });
}

TEST_CASE("fixed batch sizes, captured values and same-looking lambdas") {
  const auto batch = GENERATE(std::size_t{1}, std::size_t{7}, std::size_t{4096});
  with_pool({.workers = 2, .batch_size = batch}, [](coshard::process_pool& pool) {
    const long k = 5;
    auto a = pool.map(iota_vector(999), [k](long x) { return x * k; });
    // g++ prints both closures as main()::<lambda(long)>: ids must still differ.
    auto b = pool.map(iota_vector(999), [](long x) { return x + 1; });
    auto c = pool.map(iota_vector(999), [](long x) { return x - 1; });
    for (long i = 0; i < 999; ++i) {
      REQUIRE(a[static_cast<std::size_t>(i)] == i * 5);
      REQUIRE(b[static_cast<std::size_t>(i)] == i + 1);
      REQUIRE(c[static_cast<std::size_t>(i)] == i - 1);
    }
  });
}

TEST_CASE("map_reduce: with hold_partials, workers hold their partials across batches, so few travel") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    const auto [batches, received] = coshard_test::run_fixed_size_partials(pool, 2000, true);
    CHECK(batches == 200);
    // One partial per batch would be 200 x 1.6 KB = 320 KB. Held, a worker
    // sends one per 64 batches it answers and one at the end: at most 7.
    CHECK(received < 7 * 1700);
    // Local workers do not hold by default: one partial per batch.
    const auto [batches2, received2] = coshard_test::run_fixed_size_partials(pool, 2000);
    CHECK(batches2 == 200);
    CHECK(received2 > 200 * 1500);
  });
}

TEST_CASE("lazy inputs are pulled in bounded memory") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    const long before = coshard_test::rss_bytes();
    REQUIRE(coshard_test::reset_peak_rss());
    auto lazy = std::views::iota(std::int64_t{0}, std::int64_t{30'000'000}) |
                std::views::transform([](std::int64_t x) { return x ^ 0x5555; });
    const auto sum = pool.map_reduce(lazy, [](std::int64_t x) { return x & 0xff; }, std::plus<>{},
                                     std::int64_t{0});
    std::int64_t want = 0;
    for (std::int64_t x = 0; x < 30'000'000; ++x) want += (x ^ 0x5555) & 0xff;
    CHECK(sum == want);
    // 30 million items are 240 MB if materialised; the pool keeps a few
    // batches. The peak during the job counts, not what is left after it.
    CHECK(coshard_test::peak_rss_bytes() - before < 64L << 20);
  });
}

namespace {
// Results the sink received, read by the workers: a page shared with every process
// the pools fork, mapped before any pool exists.
std::atomic<int>* const delivered_items = coshard_test::shared_with_forks<std::atomic<int>>();
}  // namespace

TEST_CASE("for_each_result delivers every result once, as batches complete") {
  delivered_items->store(0);
  with_pool({.workers = 2, .concurrency = 8, .batch_size = 1}, [](coshard::process_pool& pool) {
    std::vector<std::size_t> order;
    std::vector<int> seen(40, 0);
    const std::size_t delivered = pool.for_each_result(
        std::views::iota(0, 40),
        [](int x) -> asio::awaitable<int> {
          // Input 0, sent first, finishes only once the caller's sink has
          // received 20 other results (counted in a page shared with the
          // workers), whatever the speed.
          asio::steady_timer t(co_await asio::this_coro::executor);
          for (int waited = 0; x == 0 && delivered_items->load() < 20 && waited < 10'000; ++waited) {
            t.expires_after(1ms);
            co_await t.async_wait(asio::use_awaitable);
          }
          co_return x * 10;
        },
        [&](std::size_t index, int value) {
          CHECK(value == static_cast<int>(index) * 10);
          ++seen[index];
          order.push_back(index);
          delivered_items->fetch_add(1);
        });
    CHECK(delivered == 40);
    CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
    // Input 0 was sent first but delivered after 20 others: completion
    // order, not input order.
    CHECK(std::find(order.begin(), order.end(), 0u) - order.begin() >= 20);
  });
}

TEST_CASE("async_map completes through any completion token") {
  with_pool({.workers = 2}, [](coshard::process_pool& pool) {
    auto in = iota_vector(10'000);
    auto square = [](long x) { return x * x; };
    long want = 0;
    for (long x : in) want += x * x;
    auto total = [](const std::vector<long>& v) { return std::accumulate(v.begin(), v.end(), 0L); };

    SECTION("use_awaitable on the caller's io_context") {
      asio::io_context io;
      long got = 0;
      // The caller's loop stays free for other work while a job runs: a 1 ms
      // ticker on it must fire while a job that takes at least 30 ms (its
      // items sleep in the workers) is awaited. A job that blocked the loop
      // would let it fire only afterwards.
      asio::steady_timer tick(io);
      int ticks = 0;
      bool stop_ticking = false;  // cancel() misses an expiry already queued
      std::function<void()> arm = [&] {
        tick.expires_after(1ms);
        tick.async_wait([&](asio::error_code ec) {
          if (ec || stop_ticking) return;
          ++ticks;
          arm();
        });
      };
      int ticks_during_job = -1;
      auto sleepy = [](long x) {
        std::this_thread::sleep_for(30ms);
        return x;
      };
      const std::vector<long> two{1, 2};
      asio::co_spawn(io, [&]() -> asio::awaitable<void> {
        auto v = co_await pool.async_map(in, square, asio::use_awaitable);
        got = total(v);
        got += co_await pool.async_map_reduce(in, square, std::plus<>{}, 0L, asio::use_awaitable) - want;
        arm();
        const int before = ticks;
        co_await pool.async_map(two, sleepy, asio::use_awaitable);
        ticks_during_job = ticks - before;
        stop_ticking = true;
        tick.cancel();
      }, asio::detached);
      io.run();
      CHECK(got == want);
      CHECK(ticks_during_job >= 1);
    }
    SECTION("use_future") {
      auto fut = pool.async_map(in, square, asio::use_future);
      CHECK(total(fut.get()) == want);
    }
    SECTION("a callback") {
      std::promise<long> p;
      pool.async_map_reduce(in, square, std::plus<>{}, 0L, [&](std::exception_ptr e, long v) {
        if (e) p.set_exception(e); else p.set_value(v);
      });
      CHECK(p.get_future().get() == want);
    }
    SECTION("deferred, and errors in the exception_ptr") {
      asio::io_context io;
      auto op = pool.async_map(std::vector<int>{1, 2, 3}, [](int x) {
        if (x == 2) throw std::invalid_argument("two");
        return x;
      }, asio::experimental::deferred);
      std::exception_ptr error;
      std::move(op)(asio::bind_executor(io, [&](std::exception_ptr e, std::vector<int>) { error = e; }));
      io.run();
      REQUIRE(error);
      CHECK_THROWS_AS(std::rethrow_exception(error), coshard::task_error);
    }
  });
}

TEST_CASE("two jobs started together on a one-worker pool both complete, sharing the worker") {
  with_pool({.workers = 1}, [](coshard::process_pool& pool) {
    asio::io_context io;
    bool checked = false;
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      auto slow = [](int x) -> asio::awaitable<int> {
        asio::steady_timer t(co_await asio::this_coro::executor, 20ms);
        co_await t.async_wait(asio::use_awaitable);
        co_return x * 10;
      };
      auto first = pool.async_map(std::vector<int>{1, 2}, slow, asio::experimental::deferred);
      auto second = pool.async_map(std::vector<int>{3}, slow, asio::experimental::deferred);
      auto [order, e1, r1, e2, r2] =
          co_await asio::experimental::make_parallel_group(std::move(first), std::move(second))
              .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
      CHECK(!e1);
      CHECK(!e2);
      CHECK(r1 == std::vector<int>{10, 20});
      CHECK(r2 == std::vector<int>{30});
      checked = true;
    }, asio::detached);
    io.run();
    CHECK(checked);
  });
}

TEST_CASE("an item that kills its worker is reported by index; the pool stays whole") {
  with_pool({.workers = 2, .batch_size = 10, .max_retries = 1}, [](coshard::process_pool& pool) {
    const auto pids = pool.worker_pids();
    try {
      (void)pool.map(iota_vector(200), [](long x) {
        if (x == 55) ::raise(SIGKILL);
        return x;
      });
      FAIL("no exception");
    } catch (const coshard::worker_crashed& e) {
      CHECK(e.index() == 55);
      CHECK(e.term_signal() == SIGKILL);
      CHECK(std::string(e.what()).find("killed by signal 9") != std::string::npos);
    }
    auto out = pool.map(iota_vector(100), [](long x) { return x + 1; });
    CHECK(out.back() == 100);
    CHECK(coshard_test::workers_once_settled(2) == 2);
    CHECK(pool.worker_pids() != pids);
  });
}

TEST_CASE("invalid options are refused before any worker starts") {
  CHECK_THROWS_WITH(coshard::process_pool({.workers = 1, .concurrency = 0}),
                    Catch::Contains("concurrency"));
  CHECK_THROWS_WITH(coshard::process_pool({.workers = 1, .batches_in_flight = 0}),
                    Catch::Contains("batches_in_flight"));
  CHECK(child_pids().empty());
}

TEST_CASE("workers = 0 starts one worker per hardware thread") {
  coshard::process_pool pool;
  CHECK(pool.size() == std::max(1u, std::thread::hardware_concurrency()));
}

TEST_CASE("single-pass input ranges are consumed once, lazily") {
  with_pool({.workers = 2, .batch_size = 100}, [](coshard::process_pool& pool) {
    std::string text;
    for (int i = 0; i < 5000; ++i) text += std::to_string(i) + " ";
    std::istringstream stream(text);
    auto squares = pool.map(std::ranges::istream_view<long>(stream), [](long x) { return x * x; });
    REQUIRE(squares.size() == 5000);
    for (long i = 0; i < 5000; ++i) REQUIRE(squares[static_cast<std::size_t>(i)] == i * i);
  });
}

namespace {

// A worker loop on a thread of this process, talking over a socketpair: the
// test plays the parent on `parent_fd`.
struct in_process_worker {
  int sv[2] = {-1, -1};
  int exit_code = -1;
  std::thread thread;

  in_process_worker() {
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    thread = std::thread([this] {
      coshard::detail::worker_process w(sv[1], {});
      exit_code = w.run();
    });
  }
  [[nodiscard]] int parent_fd() const { return sv[0]; }
  int join() {
    thread.join();
    return exit_code;
  }
  ~in_process_worker() {
    if (sv[0] >= 0) ::close(sv[0]);
    if (thread.joinable()) thread.join();
  }
};

}  // namespace

TEST_CASE("a worker refuses an entry id it does not know, by name, without crashing") {
  in_process_worker worker;
  const int fd = worker.parent_fd();
  coshard::detail::frame_header ready;
  REQUIRE(::recv(fd, &ready, sizeof ready, MSG_WAITALL) == static_cast<ssize_t>(sizeof ready));
  REQUIRE(ready.type == coshard::detail::frame_type::worker_ready);
  coshard::detail::byte_buffer payload;
  coshard::detail::encode_value(payload, std::uint64_t{0xdeadbeef});  // no such entry
  coshard::detail::encode_value(payload, std::uint64_t{0});                          // no item_timeout
  for (int part = 0; part < 4; ++part) coshard::detail::encode_value(payload, std::uint64_t{0});  // empty parts
  coshard::detail::frame_header h;
  h.type = coshard::detail::frame_type::job_start;
  h.job = 1;
  h.payload_size = payload.size();
  REQUIRE(::write(fd, &h, sizeof h) == static_cast<ssize_t>(sizeof h));
  REQUIRE(::write(fd, payload.data(), payload.size()) == static_cast<ssize_t>(payload.size()));
  coshard::detail::frame_header reply;
  REQUIRE(::recv(fd, &reply, sizeof reply, MSG_WAITALL) == static_cast<ssize_t>(sizeof reply));
  CHECK(reply.type == coshard::detail::frame_type::job_failed);
  std::vector<std::byte> body(reply.payload_size);
  REQUIRE(::recv(fd, body.data(), body.size(), MSG_WAITALL) == static_cast<ssize_t>(body.size()));
  const auto message = coshard::decode<std::string>(body);
  CHECK(message.find("unknown entry id 3735928559") != std::string::npos);
  ::shutdown(fd, SHUT_WR);  // EOF: the worker loop ends cleanly
  CHECK(worker.join() == 0);
}

namespace {
// Sends what this process writes to stderr (fd 2) to a file until text() is
// called, which restores fd 2 and returns what was written.
struct stderr_capture {
  int saved = ::dup(2);
  std::FILE* file = std::tmpfile();
  stderr_capture() {
    std::fflush(stderr);
    ::dup2(::fileno(file), 2);
  }
  std::string text() {
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::rewind(file);
    std::string out;
    for (int c; (c = std::fgetc(file)) != EOF;) out.push_back(static_cast<char>(c));
    std::fclose(file);
    return out;
  }
};
}  // namespace

TEST_CASE("a corrupt frame from the parent ends the worker with a named cause") {
  stderr_capture err;
  int code = -1;
  {
    in_process_worker worker;
    std::vector<char> junk(sizeof(coshard::detail::frame_header), 'x');
    REQUIRE(::write(worker.parent_fd(), junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
    code = worker.join();
  }
  const std::string said = err.text();
  CHECK(code == 3);
  CHECK_THAT(said, Catch::Contains("coshard worker") && Catch::Contains("corrupt frame: bad magic number"));
}
