// bench_io_fanout - many awaitable items per worker: do `concurrency` items
// really overlap?
//
//   io_fanout/timer/...     each item awaits a 1 ms steady_timer
//   io_fanout/loopback/...  each item connects to a TCP server on 127.0.0.1
//                           (a thread of this process), sends its id, and reads
//                           a 4 KiB reply that the server sends after 1 ms;
//                           the item returns a checksum of the reply
//
// For each: "<case>/workers:W/batch:adaptive/concurrency:C" through the pool,
// and "<case>/one_process/concurrency:C", the same coroutines on one
// io_context in this process. With perfect overlap a worker completes C items
// per millisecond of waiting: items_per_second ~ W * C * 1000 until the CPU
// (connect/accept/close on loopback) becomes the limit.
//
// Environment:
//   COSHARD_FANOUT_ITEMS   items per pass (default 2000)
//   COSHARD_BENCH_WORKERS  worker processes (default 2)
//
// Example:
//   build/benchmarks/bench_io_fanout --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <coshard/benchmark.hpp>

#include <asio/buffer.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

namespace {

using coshard::bench::env_size;
using namespace std::chrono_literals;
using asio::ip::tcp;

constexpr std::size_t reply_bytes = 4096;

/// The reply for request `id`: deterministic bytes, so results can be checked.
std::array<std::uint8_t, reply_bytes> reply_for(std::uint64_t id) {
  std::array<std::uint8_t, reply_bytes> r{};
  for (std::size_t i = 0; i < r.size(); ++i) r[i] = static_cast<std::uint8_t>((id * 31 + i * 7) & 0xff);
  return r;
}

/// A slow loopback server: answers each connection's 8-byte id with
/// reply_for(id) after 1 ms, then closes (the server closes first, so
/// TIME_WAIT stays on its side and clients never run out of ports).
class loopback_server {
 public:
  loopback_server() : acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    acceptor_.listen(4096);
    asio::co_spawn(io_, accept_loop(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~loopback_server() {
    io_.stop();
    thread_.join();
  }
  loopback_server(const loopback_server&) = delete;
  loopback_server& operator=(const loopback_server&) = delete;
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }

 private:
  asio::awaitable<void> accept_loop() {
    for (;;) {
      tcp::socket s = co_await acceptor_.async_accept(asio::use_awaitable);
      asio::co_spawn(io_, serve(std::move(s)), asio::detached);
    }
  }
  static asio::awaitable<void> serve(tcp::socket s) {
    std::uint64_t id = 0;
    co_await asio::async_read(s, asio::buffer(&id, sizeof id), asio::use_awaitable);
    asio::steady_timer delay(s.get_executor(), 1ms);
    co_await delay.async_wait(asio::use_awaitable);
    const auto reply = reply_for(id);
    co_await asio::async_write(s, asio::buffer(reply), asio::use_awaitable);
  }

  asio::io_context io_{1};
  tcp::acceptor acceptor_;
  std::thread thread_;
};

std::uint64_t checksum(const std::uint8_t* p, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

[[maybe_unused]] const bool registered = [] {
  const std::size_t items = env_size("COSHARD_FANOUT_ITEMS", 2000);
  std::vector<std::uint64_t> ids(items);
  std::iota(ids.begin(), ids.end(), std::uint64_t{0});
  const coshard::bench::sweep sweep{.workers = {env_size("COSHARD_BENCH_WORKERS", 2)},
                                    .batch_sizes = {0},
                                    .concurrency = {1, 16, 64, 256},
                                    .warmup_items = 256};

  coshard::bench::register_map(
      "io_fanout/timer", ids,
      [](std::uint64_t id) -> asio::awaitable<std::uint64_t> {
        asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
        co_await t.async_wait(asio::use_awaitable);
        co_return id;
      },
      sweep);

  // Started before any pool, so the workers fork with the server's port known;
  // they never touch the server's thread or sockets.
  static loopback_server server;
  const std::uint16_t port = server.port();
  coshard::bench::register_map(
      "io_fanout/loopback", ids,
      [port](std::uint64_t id) -> asio::awaitable<std::uint64_t> {
        tcp::socket s(co_await asio::this_coro::executor);
        co_await s.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), asio::use_awaitable);
        co_await asio::async_write(s, asio::buffer(&id, sizeof id), asio::use_awaitable);
        std::array<std::uint8_t, reply_bytes> reply;
        co_await asio::async_read(s, asio::buffer(reply), asio::use_awaitable);
        co_return checksum(reply.data(), reply.size());
      },
      sweep);
  return true;
}();

}  // namespace
