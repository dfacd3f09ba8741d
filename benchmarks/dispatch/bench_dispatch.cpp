// bench_dispatch - dispatch overhead of process_pool::map, beside its physical
// limit.
//
// Maps a trivial function (x -> x*x on std::int64_t), so what is measured is
// the pool's own cost per item and per batch: cutting batches, the socket
// round trips, encoding/decoding in the workers and placing the results in
// input order. Reported as items/s of wall-clock time (the work runs in child
// processes, so the parent's CPU time means nothing here).
//
//   map/x*x/workers:W/batch:B/concurrency:64   process_pool::map, batch_size B
//                                              (B = adaptive: batch_size 0)
//   map/x*x/sequential                         the loop in this process, into a
//                                              fresh vector per pass, as map returns
//   raw/socketpair/batch:B                     the physical limit (B up to 131072 =
//                                              1 MiB, the pool's largest batch): the same items
//                                              pushed by a bare loop through one
//                                              socketpair per forked child (memcpy +
//                                              one write and one read per batch),
//                                              children squaring in place
//   latency/one_item                           map of one item, p50/p99 in us
//   raw/socketpair/latency                     one 8-byte item to a bare child and
//                                              back, p50/p99 in us
//   map_reduce/lazy_iota                       10^9 lazily generated items through
//                                              map_reduce; parent_peak_growth_MB
//   submit/coroutines:C/each:E                 C coroutines on one io_context, each
//                                              awaiting E async_submit(x*x) in turn
//                                              (tasks coalesced into batches);
//                                              items_per_second, and cpu_us_per_task
//                                              of this process and the workers
//   submit/latency/one_task                    one coroutine awaiting async_submit,
//                                              one task at a time: p50/p99 in us
//
// Every pass of map returns a new result vector. At 10^7 items that is 80 MB,
// which glibc maps fresh from the kernel each time (above its mmap threshold),
// so the page faults of that vector are part of each pass (the pool asks for
// transparent huge pages for large results; the sequential baseline pays them
// in full). The raw baseline reads into one vector allocated before timing:
// it is the floor, with no memory cost at all.
//
// Environment:
//   COSHARD_BENCH_ITEMS       items per pass (default 10^7). Batch sizes 1 and
//                             16 map at most 10^5 batches per pass (10^5 and
//                             1.6*10^6 items) so that they finish in seconds.
//   COSHARD_BENCH_WORKERS     worker processes (default 2).
//   COSHARD_BENCH_LAZY_ITEMS  items of the lazy case (default 10^9).
//   COSHARD_BENCH_SUBMIT_COROUTINES, COSHARD_BENCH_SUBMIT_EACH
//                             C and E of the submit case (default 1000 x 1000).
//
// Example (about a minute on 2 cores):
//   build/benchmarks/bench_dispatch --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <coshard/benchmark.hpp>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace {

using coshard::bench::env_size;

std::size_t bench_items() { return env_size("COSHARD_BENCH_ITEMS", 10'000'000); }
std::size_t bench_workers() { return env_size("COSHARD_BENCH_WORKERS", 2); }

// Every batch costs a round trip, so small batch sizes get at most this many
// batches per pass.
constexpr std::size_t max_batches = 100'000;

std::size_t items_for(std::size_t batch_size) {
  return batch_size ? std::min(bench_items(), batch_size * max_batches) : bench_items();
}

std::vector<std::int64_t> iota_input(std::size_t n) {
  std::vector<std::int64_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::int64_t>(i);
  return v;
}

constexpr auto square = [](std::int64_t x) { return x * x; };

// ---------------------------------------------------------------------------
// The raw socketpair baseline: forked children that square batches in place.
// ---------------------------------------------------------------------------

void write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw std::system_error(errno, std::generic_category(), "raw baseline: write");
    c += w;
    n -= static_cast<std::size_t>(w);
  }
}

// False on EOF before the first byte.
bool read_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  const std::size_t want = n;
  while (n) {
    const ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0 && n == want) return false;
    if (r <= 0) throw std::system_error(r ? errno : EPIPE, std::generic_category(), "raw baseline: read");
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// A batch on the wire: an 8-byte item count, then the items.
[[noreturn]] void raw_child_main(int fd) {
  std::vector<std::int64_t> buf;
  try {
    for (;;) {
      std::uint64_t n = 0;
      if (!read_all(fd, &n, sizeof n)) ::_exit(0);
      buf.resize(n);
      read_all(fd, buf.data(), n * sizeof(std::int64_t));
      for (auto& x : buf) x = square(x);
      write_all(fd, buf.data(), n * sizeof(std::int64_t));
    }
  } catch (...) {
    ::_exit(1);
  }
}

class raw_children {
 public:
  explicit raw_children(std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        throw std::system_error(errno, std::generic_category(), "raw baseline: socketpair");
      // The same socket buffer sizes as coshard's channels (1 MiB).
      for (int fd : sv) {
        const int size = 1 << 20;
        ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
      }
      const pid_t pid = ::fork();
      if (pid < 0) throw std::system_error(errno, std::generic_category(), "raw baseline: fork");
      if (pid == 0) {
        // Keep no copy of other channels (the pools' or the other children's):
        // their peers must see EOF when their owners close them.
        for (int fd = 3; fd < 4096; ++fd)
          if (fd != sv[1]) ::close(fd);
        raw_child_main(sv[1]);
      }
      ::close(sv[1]);
      fds_.push_back(sv[0]);
      pids_.push_back(pid);
    }
  }
  ~raw_children() {
    for (int fd : fds_) ::close(fd);
    // Pool workers forked after these children hold copies of their channels,
    // so EOF may never reach them: end them outright.
    for (pid_t pid : pids_) ::kill(pid, SIGKILL);
    for (pid_t pid : pids_) ::waitpid(pid, nullptr, 0);
  }
  raw_children(const raw_children&) = delete;
  raw_children& operator=(const raw_children&) = delete;

  /// One pass: x*x of every input through the children, batch_size items per
  /// write and, like the pool (batches_in_flight = 2), two batches in flight
  /// per child, so that a child always has the next batch waiting. Results
  /// are read straight into `out`, in input order. A floor, not a rival
  /// library: `out` is allocated once by the caller and reused, so no pass
  /// pays for fresh memory (on this VM the page faults of a fresh 80 MB
  /// vector cost about as much as the whole transfer).
  void map(std::span<const std::int64_t> in, std::size_t batch_size, std::vector<std::int64_t>& out) {
    constexpr std::size_t in_flight = 2;
    out.resize(in.size());
    struct sent {
      std::size_t child, start, count;
    };
    std::deque<sent> pending;  // send order; each child answers its batches in order
    std::vector<std::int64_t> buf;
    std::size_t next = 0;
    const auto send = [&](std::size_t child) {
      const std::size_t n = std::min(batch_size, in.size() - next);
      buf.resize(1 + n);
      buf[0] = static_cast<std::int64_t>(n);
      std::memcpy(buf.data() + 1, in.data() + next, n * sizeof(std::int64_t));
      write_all(fds_[child], buf.data(), buf.size() * sizeof(std::int64_t));
      pending.push_back({child, next, n});
      next += n;
    };
    for (std::size_t round = 0; round < in_flight; ++round)
      for (std::size_t c = 0; c < fds_.size() && next < in.size(); ++c) send(c);
    while (!pending.empty()) {
      const sent s = pending.front();
      pending.pop_front();
      if (!read_all(fds_[s.child], out.data() + s.start, s.count * sizeof(std::int64_t)))
        throw std::runtime_error("raw baseline: a child exited");
      if (next < in.size()) send(s.child);
    }
  }

 private:
  std::vector<int> fds_;
  std::vector<pid_t> pids_;
};

raw_children& children() {
  static raw_children c(bench_workers());
  return c;
}

bool squares_of(std::span<const std::int64_t> in, const std::vector<std::int64_t>& out) {
  if (in.size() != out.size()) return false;
  for (std::size_t i = 0; i < in.size(); ++i)
    if (out[i] != in[i] * in[i]) return false;
  return true;
}

void bm_raw(benchmark::State& state, std::size_t batch_size) {
  static const std::vector<std::int64_t> input = iota_input(bench_items());
  const std::span<const std::int64_t> in(input.data(), items_for(batch_size));
  std::vector<std::int64_t> out(in.size());
  try {
    children().map(in, batch_size, out);  // warm-up: also touches every page of `out`
    for (auto _ : state) {
      children().map(in, batch_size, out);
      benchmark::DoNotOptimize(out.data());
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  if (!squares_of(in, out)) {
    state.SkipWithError("raw baseline: wrong results");
    return;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * in.size()));
  state.counters["items"] = static_cast<double>(in.size());
  state.counters["workers"] = static_cast<double>(bench_workers());
}

// One item to one bare child and back: the floor under latency/one_item.
void bm_raw_latency(benchmark::State& state) {
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(state.max_iterations));
  const std::int64_t one[1] = {12345};
  std::vector<std::int64_t> out(1);
  try {
    for (int i = 0; i < 1000; ++i) children().map(one, 1, out);
    for (auto _ : state) {
      const auto t0 = std::chrono::steady_clock::now();
      children().map(one, 1, out);
      benchmark::DoNotOptimize(out.data());
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  coshard::bench::set_latency_counters(state, std::move(us));
}

// ---------------------------------------------------------------------------
// A lazy input that is never materialised.
// ---------------------------------------------------------------------------

// Reports parent_peak_growth_MB: how far the parent's peak RSS rose above its
// RSS before the job (the other cases' vectors may already be resident).
void bm_lazy_map_reduce(benchmark::State& state) {
  const std::size_t n = env_size("COSHARD_BENCH_LAZY_ITEMS", 1'000'000'000);
  const auto count = static_cast<std::int64_t>(n);
  std::int64_t sum = 0;
  try {
    coshard::process_pool pool({.workers = bench_workers()});
    coshard::bench::reset_peak_rss();
    const double before = coshard::bench::rss_bytes();
    for (auto _ : state) {
      sum = pool.map_reduce(std::views::iota(std::int64_t{0}, count), [](std::int64_t x) { return x & 1023; },
                            std::plus<>{}, std::int64_t{0});
      benchmark::DoNotOptimize(sum);
    }
    state.counters["parent_peak_growth_MB"] = (coshard::bench::peak_rss_bytes() - before) / (1 << 20);
    state.counters["parent_peak_rss_MB"] = coshard::bench::peak_rss_bytes() / (1 << 20);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  std::int64_t want = (count / 1024) * (1023 * 1024 / 2);
  for (std::int64_t x = count / 1024 * 1024; x < count; ++x) want += x & 1023;
  if (sum != want) {
    state.SkipWithError("lazy map_reduce: wrong sum");
    return;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * count);
  state.counters["items"] = static_cast<double>(n);
}

// ---------------------------------------------------------------------------
// Single tasks: async_submit from many coroutines, and one at a time.
// ---------------------------------------------------------------------------

// CPU seconds (user + system) a live process has used, from /proc.
double process_cpu_seconds(pid_t pid) {
  std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (!f) return 0;
  char buf[1024];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* p = std::strrchr(buf, ')');  // the command name may hold spaces
  unsigned long utime = 0, stime = 0;
  if (!p || std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2) return 0;
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double pool_cpu_seconds(const coshard::process_pool& pool) {
  double s = process_cpu_seconds(::getpid()) + process_cpu_seconds(pool.supervisor_pid());
  for (pid_t w : pool.worker_pids()) s += process_cpu_seconds(w);
  return s;
}

void bm_submit_coroutines(benchmark::State& state) {
  const std::size_t coroutines = env_size("COSHARD_BENCH_SUBMIT_COROUTINES", 1000);
  const std::size_t each = env_size("COSHARD_BENCH_SUBMIT_EACH", 1000);
  try {
    coshard::process_pool pool({.workers = bench_workers()});
    double cpu = 0;
    for (auto _ : state) {
      state.PauseTiming();
      const double cpu0 = pool_cpu_seconds(pool);
      state.ResumeTiming();
      asio::io_context io;
      std::size_t wrong = 0;
      for (std::size_t c = 0; c < coroutines; ++c)
        asio::co_spawn(io, [&, c]() -> asio::awaitable<void> {
          for (std::size_t k = 0; k < each; ++k) {
            const auto x = static_cast<std::int64_t>(c * each + k);
            wrong += co_await pool.async_submit(square, x, asio::use_awaitable) != x * x;
          }
        }, asio::detached);
      io.run();
      state.PauseTiming();
      cpu += pool_cpu_seconds(pool) - cpu0;
      state.ResumeTiming();
      if (wrong) {
        state.SkipWithError("submit: wrong results");
        return;
      }
    }
    const double tasks = static_cast<double>(state.iterations() * coroutines * each);
    state.SetItemsProcessed(static_cast<std::int64_t>(tasks));
    state.counters["cpu_us_per_task"] = cpu / tasks * 1e6;
    state.counters["workers"] = static_cast<double>(bench_workers());
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void bm_submit_latency(benchmark::State& state) {
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(state.max_iterations));
  try {
    coshard::process_pool pool({.workers = bench_workers()});
    asio::io_context io;
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      for (int i = 0; i < 1000; ++i) (void)co_await pool.async_submit(square, std::int64_t{i}, asio::use_awaitable);
      for (auto _ : state) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto r = co_await pool.async_submit(square, std::int64_t{12345}, asio::use_awaitable);
        benchmark::DoNotOptimize(r);
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      }
    }, [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io.run();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  coshard::bench::set_latency_counters(state, std::move(us));
}

[[maybe_unused]] const bool registered = [] {
  const std::size_t workers = bench_workers();
  const auto sweep_for = [&](std::vector<std::size_t> batches, bool sequential) {
    return coshard::bench::sweep{.workers = {workers},
                                 .batch_sizes = std::move(batches),
                                 .sequential = sequential,
                                 .warmup_items = 1'000'000};
  };
  // The full input with the adaptive sizer and large batches, and the
  // sequential baseline; small batch sizes on shorter inputs.
  coshard::bench::register_map("map/x*x", iota_input(items_for(0)), square, sweep_for({0, 131072, 4096, 256}, true));
  coshard::bench::register_map("map/x*x", iota_input(items_for(16)), square, sweep_for({16}, false));
  coshard::bench::register_map("map/x*x", iota_input(items_for(1)), square, sweep_for({1}, false));

  // 131072 items = 1 MiB, the pool's largest batch (max_batch_bytes): what
  // the adaptive sizer moves toward on a long input of cheap items.
  for (const std::size_t b : {131072, 4096, 256, 16, 1})
    benchmark::RegisterBenchmark(("raw/socketpair/batch:" + std::to_string(b)).c_str(), bm_raw, b)
        ->UseRealTime()
        ->MinTime(0.5)
        ->Unit(benchmark::kMillisecond);

  coshard::bench::register_round_trip("latency/one_item", std::int64_t{12345}, square,
                                      {.workers = workers});
  benchmark::RegisterBenchmark("raw/socketpair/latency", bm_raw_latency)
      ->UseRealTime()
      ->Iterations(20'000)
      ->Unit(benchmark::kMicrosecond);

  const std::string submit_name = "submit/coroutines:" +
                                  std::to_string(env_size("COSHARD_BENCH_SUBMIT_COROUTINES", 1000)) +
                                  "/each:" + std::to_string(env_size("COSHARD_BENCH_SUBMIT_EACH", 1000));
  benchmark::RegisterBenchmark(submit_name.c_str(), bm_submit_coroutines)
      ->UseRealTime()
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("submit/latency/one_task", bm_submit_latency)
      ->UseRealTime()
      ->Iterations(20'000)
      ->Unit(benchmark::kMicrosecond);

  benchmark::RegisterBenchmark("map_reduce/lazy_iota", bm_lazy_map_reduce)
      ->UseRealTime()
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond);
  return true;
}();

}  // namespace
