// coshard/pool_options.hpp - the knobs of a process_pool, one aggregate.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "coshard/errors.hpp"
#include "coshard/shippable_function.hpp"
#include "coshard/worker_output.hpp"

namespace coshard {

/// How a pool starts its supervisor, which forks every worker.
enum class start_method {
  /// Fork the constructing process. Cheap and needs nothing from main; the
  /// supervisor is a copy of the caller at that moment (its memory, not its
  /// other threads).
  fork_server,
  /// Re-run the program's own binary (/proc/self/exe) as the supervisor, so
  /// nothing of the caller's state is copied: for programs whose threads or
  /// libraries (OpenMP, CUDA, some TLS libraries) do not survive a fork. main
  /// must call coshard::serve_if_worker(argc, argv) first, and initializers
  /// must be sendable (see shippable_function).
  exec,
};

/// Options of a process_pool, meant for designated initializers:
/// `coshard::process_pool pool{{.workers = 4, .concurrency = 128}};`
struct pool_options {
  /// Worker processes; 0 starts one per hardware thread.
  std::size_t workers = 0;
  /// Awaitable items running at once inside one worker (plain functions run
  /// one at a time, inline).
  std::size_t concurrency = 64;
  /// Items per batch; 0 adapts the size toward `target_batch_time`.
  std::size_t batch_size = 0;
  /// Batches sent ahead to each worker so it never waits for the parent.
  std::size_t batches_in_flight = 2;
  /// Adaptive batching aims for batches that take this long in a worker.
  std::chrono::microseconds target_batch_time{2000};
  /// A batch is closed once its encoded inputs reach this size (a single
  /// larger item still travels alone).
  std::size_t max_batch_bytes = std::size_t{1} << 20;
  /// Largest frame either side accepts; bigger frames are a protocol error.
  std::uint64_t max_frame_bytes = std::uint64_t{1} << 31;
  /// How long the destructor waits for workers to exit before killing them.
  std::chrono::milliseconds shutdown_timeout{2000};
  /// Attempts after the first for an item whose worker died while running it
  /// alone; then it fails with worker_crashed.
  std::size_t max_retries = 2;
  /// Per-item time limit; zero means none. An awaitable item is cancelled
  /// through Asio cancellation at the limit; a plain function still running at
  /// item_timeout + timeout_grace has its worker killed and replaced. Either
  /// way the item fails with timeout_error.
  std::chrono::milliseconds item_timeout{0};
  /// See item_timeout.
  std::chrono::milliseconds timeout_grace{1000};
  /// Runs once in every worker process (also in replacements) before it takes
  /// work, e.g. to open connections into globals the tasks use. If it throws,
  /// the pool constructor (or the job that needed a replacement) fails with
  /// pool_error naming the exception.
  /// With start_method::exec it is sent to the re-executed program, so it
  /// must be an empty or trivially copyable lambda or function object; the
  /// constructor refuses another one with pool_error saying why. (A captured
  /// pointer, reference or string_view is sent too, but means nothing there.)
  shippable_function<void()> initializer{};
  /// As `initializer`, as a coroutine on the worker's io_context; runs after it.
  shippable_function<asio::awaitable<void>()> async_initializer{};
  /// How long a starting worker may take (its initializers included).
  std::chrono::milliseconds startup_timeout{30'000};
  /// A worker that has run this many items is replaced once its held batches
  /// are answered (0: never). Batches are cut so that no worker exceeds it.
  std::size_t max_items_per_worker = 0;
  /// A worker whose resident memory exceeds this after a batch is replaced
  /// once its held batches are answered (0: no cap).
  std::size_t max_worker_rss_bytes = 0;
  /// How the supervisor (and so every worker) is started; see start_method.
  start_method start = start_method::fork_server;
  /// Whether lines that workers write to stdout and stderr are collected:
  /// each reaches the caller's stderr whole (lines of two workers never
  /// tear), prefixed "[worker SLOT pid PID] ", or goes to `worker_output`
  /// when that is set. Workers' stdout is line-buffered, as on a terminal
  /// (for stdio and std::cout unless the program calls
  /// sync_with_stdio(false)). A reader that does not keep up slows only the
  /// workers that print. false: workers write straight to the caller's
  /// stdout and stderr, as forked processes do.
  bool capture_worker_output = true;
  /// Receives each collected line instead of the caller's stderr: on a thread
  /// of the pool, one line at a time, each stream's lines (a worker's stdout,
  /// its stderr) in the order written. What it throws is dropped. A slow sink
  /// delays only the lines (up to 16 MiB wait for it, then the workers that
  /// print). Lines written before the workers exit are delivered before
  /// shutdown() (or the destructor) returns, unless passing them on takes
  /// more than half a second after the last worker's exit.
  std::function<void(const worker_output_line&)> worker_output{};
};

/// How process_pool::shutdown treats a running job.
enum class shutdown_mode {
  /// Stop dispatching, cancel running coroutines, let workers answer what they
  /// hold, then let them exit; escalates to `forced` after shutdown_timeout.
  graceful,
  /// Kill every worker now.
  forced,
};

namespace detail {

/// Throws pool_error naming the first option that is out of range, including
/// values that would overflow the widths used inside (32-bit item counts and
/// offsets in a batch, millisecond waits passed to poll as an int).
inline void validate_options(const pool_options& o) {
  auto fail = [](const std::string& what) { throw pool_error("coshard: pool_options." + what); };
  constexpr std::uint64_t u32_max = 0xffff'ffffu;
  constexpr std::int64_t longest_wait_ms = 0x7fff'ffff;  // about 24 days
  if (o.workers > 4096) fail("workers must be at most 4096");
  if (o.concurrency == 0) fail("concurrency must be at least 1");
  if (o.concurrency > u32_max) fail("concurrency must be below 2^32");
  if (o.batches_in_flight == 0) fail("batches_in_flight must be at least 1");
  if (o.batches_in_flight > 65536) fail("batches_in_flight must be at most 65536");
  if (o.batch_size > u32_max) fail("batch_size must be below 2^32 (a batch counts its items in 32 bits)");
  if (o.max_batch_bytes == 0) fail("max_batch_bytes must be at least 1");
  if (o.max_batch_bytes > u32_max)
    fail("max_batch_bytes must be below 4 GiB (items are located in a batch by 32-bit offsets)");
  if (o.max_frame_bytes < 4096) fail("max_frame_bytes must be at least 4096");
  if (o.max_frame_bytes > (std::uint64_t{1} << 48)) fail("max_frame_bytes must be at most 2^48");
  auto wait = [&](std::chrono::milliseconds d, const char* name) {
    if (d.count() < 0) fail(std::string(name) + " must not be negative");
    if (d.count() > longest_wait_ms) fail(std::string(name) + " must be at most 2^31-1 ms");
  };
  wait(o.shutdown_timeout, "shutdown_timeout");
  wait(o.item_timeout, "item_timeout");
  wait(o.timeout_grace, "timeout_grace");
  wait(o.startup_timeout, "startup_timeout");
  if (o.target_batch_time.count() <= 0) fail("target_batch_time must be positive");
  if (o.target_batch_time > std::chrono::hours(1)) fail("target_batch_time must be at most an hour");
  if (o.start != start_method::fork_server && o.start != start_method::exec) fail("start is not a start_method");
  if (o.worker_output && !o.capture_worker_output)
    fail("worker_output is set but capture_worker_output is false: lines that are not collected cannot be delivered");
  if (o.start == start_method::exec) {
    if (o.initializer && !o.initializer.sendable())
      fail("initializer cannot be sent to workers started with start_method::exec: " +
           o.initializer.why_not_sendable());
    if (o.async_initializer && !o.async_initializer.sendable())
      fail("async_initializer cannot be sent to workers started with start_method::exec: " +
           o.async_initializer.why_not_sendable());
  }
}

}  // namespace detail

}  // namespace coshard
