// Tests of coshard::mpi::cluster, run by mpirun as root + 2 ranks with one
// worker each (tests/CMakeLists.txt): the local pool's behaviour tests for
// every job kind, across ranks. Only the root runs Catch; the other ranks
// serve until the root's cluster is destroyed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "coshard/mpi.hpp"
#include "../test_support.hpp"

#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_future.hpp>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

coshard::mpi::cluster* the_cluster = nullptr;

std::vector<long> iota_vector(long n) {
  std::vector<long> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0L);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  // Cluster options, taken out of argv before Catch sees it:
  // --no-root-workers (test_mpi_no_root_workers): the root forks no worker;
  // --remote-batch-bytes N (test_mpi_bad_remote_batch_bytes).
  coshard::mpi::cluster_options options{.workers_per_rank = 1, .concurrency = 16};
  for (int i = 1; i < argc;) {
    int used = 0;
    if (std::strcmp(argv[i], "--no-root-workers") == 0) {
      options.root_workers = false;
      used = 1;
    } else if (std::strcmp(argv[i], "--remote-batch-bytes") == 0 && i + 1 < argc) {
      options.remote_batch_bytes = std::strtoull(argv[i + 1], nullptr, 10);
      used = 2;
    }
    if (used == 0) {
      ++i;
      continue;
    }
    for (int j = i; j + used < argc; ++j) argv[j] = argv[j + used];
    argc -= used;
  }
  coshard::mpi::cluster cluster{argc, argv, options};
  if (!cluster.is_root()) {
    // Job functions belong to the root: elsewhere a clear error, not a crash.
    try {
      (void)cluster.stats();
      std::fprintf(stderr, "rank %d: stats() on a non-root rank did not throw\n", cluster.rank());
      return 1;
    } catch (const coshard::pool_error&) {
    }
    return cluster.serve();
  }
  the_cluster = &cluster;
  return Catch::Session().run(argc, argv);
}

TEST_CASE("cluster: one worker slot per rank; map returns results in input order") {
  auto& c = *the_cluster;
  REQUIRE(c.ranks() == 3);
  CHECK(c.size() == 3);
  auto out = c.map(iota_vector(100'000), [](long x) { return x * x; });
  REQUIRE(out.size() == 100'000);
  for (long i = 0; i < 100'000; ++i) REQUIRE(out[static_cast<std::size_t>(i)] == i * i);
}

// The teardown after a lost rank ends only if Open MPI skips its finalize
// fence; a misspelt MCA name is ignored without a word (it was, once), so
// read the setting back through MPI's tool interface.
TEST_CASE("cluster: Open MPI's finalize fence is off (async_mpi_finalize), so a lost rank cannot hold up the end") {
  int provided = 0;
  REQUIRE(MPI_T_init_thread(MPI_THREAD_SINGLE, &provided) == MPI_SUCCESS);
  int index = -1;
  REQUIRE(MPI_T_cvar_get_index("async_mpi_finalize", &index) == MPI_SUCCESS);
  MPI_T_cvar_handle handle{};
  int count = 0;
  REQUIRE(MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count) == MPI_SUCCESS);
  REQUIRE(count == 1);
  int value = 0;
  CHECK(MPI_T_cvar_read(handle, &value) == MPI_SUCCESS);
  CHECK(value != 0);
  MPI_T_cvar_handle_free(&handle);
  MPI_T_finalize();
}

TEST_CASE("cluster: every rank's workers take part") {
  auto& c = *the_cluster;
  // Items of 2 ms: enough to keep all three workers busy.
  auto hosts = c.map(iota_vector(300), [](long) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return static_cast<long>(::getppid());  // the worker's supervisor: one per rank
  });
  std::set<long> supervisors(hosts.begin(), hosts.end());
  CHECK(supervisors.size() == 3);
}

TEST_CASE("cluster: map with a shared value, map_reduce, map_reduce_by_key") {
  auto& c = *the_cluster;
  const std::string prefix = "n";
  auto named = c.map(iota_vector(1000), [](const std::string& p, long x) { return p + std::to_string(x); }, prefix);
  CHECK(named[999] == "n999");
  CHECK(c.map_reduce(iota_vector(100'000), [](long x) { return x; }, std::plus<>{}, 0L) == 99'999L * 100'000 / 2);
  std::vector<std::string> lines(3000, "the cat sat on the mat");
  auto counts = c.map_reduce_by_key(lines, [](const std::string& line) {
    std::unordered_map<std::string, long> words;
    std::size_t at = 0;
    while (at < line.size()) {
      const std::size_t end = std::min(line.find(' ', at), line.size());
      ++words[line.substr(at, end - at)];
      at = end + 1;
    }
    return words;
  });
  CHECK(counts["the"] == 6000);
  CHECK(counts["mat"] == 3000);
}

TEST_CASE("cluster: reduce partials are combined in each rank's workers before they travel to the root") {
  const auto [batches, received] = coshard_test::run_fixed_size_partials(*the_cluster, 3000, true);
  CHECK(batches == 300);
  // 300 partials of about 1.6 KB if each batch's travelled; held, each of
  // the 3 workers sends one per 64 batches it answers and one at the end.
  CHECK(received < 10 * 1700);
}

TEST_CASE("cluster: map_settled keeps every success beside a poison item; map raises the lowest index") {
  auto& c = *the_cluster;
  auto settled = c.map_settled(iota_vector(5000), [](long x) {
    if (x % 1000 == 777) throw std::invalid_argument("poison " + std::to_string(x));
    return x;
  });
  int failed = 0;
  for (std::size_t i = 0; i < settled.size(); ++i) {
    if (settled[i].ok()) {
      CHECK(settled[i].value() == static_cast<long>(i));
      continue;
    }
    ++failed;
    try {
      std::rethrow_exception(settled[i].error());
    } catch (const std::invalid_argument& e) {
      CHECK(coshard::task_error_of(e)->index() == i);
    }
  }
  CHECK(failed == 5);
  try {
    (void)c.map(iota_vector(5000), [](long x) { return x % 1000 == 777 ? throw std::out_of_range("no") : x; });
    FAIL("no exception");
  } catch (const std::out_of_range& e) {
    CHECK(coshard::task_error_of(e)->index() == 777);
  }
}

TEST_CASE("cluster: for_each_result, submit, async_submit and an async_map through use_future") {
  auto& c = *the_cluster;
  std::vector<bool> seen(2000, false);
  const std::size_t n = c.for_each_result(iota_vector(2000), [](long x) { return x * 2; },
                                          [&](std::size_t i, long v) { seen[i] = v == static_cast<long>(i) * 2; });
  CHECK(n == 2000);
  CHECK(std::all_of(seen.begin(), seen.end(), [](bool b) { return b; }));
  CHECK(c.submit([](long x) { return x + 1; }, 41L).get() == 42);
  std::vector<std::future<long>> futures;
  for (long i = 0; i < 500; ++i) futures.push_back(c.async_submit([](long x) { return 3 * x; }, i, asio::use_future));
  long sum = 0;
  for (auto& f : futures) sum += f.get();
  CHECK(sum == 3 * 499 * 500 / 2);
  auto f = c.async_map(iota_vector(10'000), [](long x) -> asio::awaitable<long> { co_return x + 1; }, asio::use_future);
  CHECK(f.get().back() == 10'000);
}

namespace {
// Marks in /tmp shared by every rank of this machine: an item kills its
// worker only the first time it runs (the file exists afterwards).
bool first_time(const std::string& what) {
  const std::string path = "/tmp/coshard-mpi-test-" + std::to_string(::getpgrp()) + "-" + what;
  const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}
}  // namespace

TEST_CASE("cluster: a crashing item is retried, a poison crash fails alone, on whichever rank it ran") {
  auto& c = *the_cluster;
  auto out = c.map_settled(iota_vector(3000), [](long x) {
    if (x == 1234 && first_time("crash-once")) ::raise(SIGKILL);
    if (x == 2345) {
      ::signal(SIGSEGV, SIG_DFL);  // a sanitizer's handler would report it as a memory error
      ::raise(SIGSEGV);
    }
    return x;
  }, coshard::job_options{.batch_size = 50});
  CHECK(out[1234].ok());
  CHECK(out[2999].value() == 2999);
  REQUIRE(!out[2345].ok());
  CHECK_THROWS_AS(std::rethrow_exception(out[2345].error()), coshard::worker_crashed);
  const auto stats = c.stats();
  CHECK(stats.workers_replaced >= 3);
  // Every rank still serves.
  CHECK(c.map(iota_vector(3000), [](long x) { return x; }).back() == 2999);
}

TEST_CASE("cluster: a cancelled job ends with operation_aborted; jobs from two threads run at once") {
  auto& c = *the_cluster;
  std::stop_source stop;
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    stop.request_stop();
  });
  try {
    (void)c.map(iota_vector(100'000), [](long x) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      return x;
    }, coshard::job_options{.stop_token = stop.get_token()});
    FAIL("not cancelled");
  } catch (const std::system_error& e) {
    CHECK(e.code() == asio::error::operation_aborted);
  }
  canceller.join();
  std::vector<long> a, b;
  std::thread other([&] { a = c.map(iota_vector(20'000), [](long x) { return x + 1; }); });
  b = c.map(iota_vector(20'000), [](long x) { return x + 2; });
  other.join();
  CHECK(a.back() == 20'000);
  CHECK(b.back() == 20'001);
}

namespace {
pid_t parent_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  char state;
  pid_t ppid = -1;
  rest >> state >> ppid;
  return ppid;
}

// The pids of the processes running the cluster's ranks, the root's
// included: each worker's supervisor is a child of its rank. Items of 2 ms
// keep every worker busy long enough to take some.
std::set<pid_t> rank_pids(coshard::mpi::cluster& c) {
  auto supervisors = c.map(iota_vector(300), [](long) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return static_cast<long>(::getppid());
  });
  std::set<pid_t> ranks;
  for (long s : supervisors) ranks.insert(parent_of(static_cast<pid_t>(s)));
  return ranks;
}
}  // namespace

// Run as test_mpi_no_root_workers (mpirun -np 3 ... --no-root-workers): the
// two other ranks' workers do every job, and the root forks none.
TEST_CASE("cluster: a root without workers of its own leaves every item to the other ranks", "[.no_root_workers]") {
  auto& c = *the_cluster;
  REQUIRE(c.size() == 2);
  std::set<pid_t> ranks = rank_pids(c);
  CHECK(ranks.size() == 2);
  CHECK(ranks.count(::getpid()) == 0);
  auto out = c.map(iota_vector(100'000), [](long x) { return x * x; });
  REQUIRE(out.size() == 100'000);
  for (long i = 0; i < 100'000; ++i) REQUIRE(out[static_cast<std::size_t>(i)] == i * i);
  CHECK(c.map_reduce(iota_vector(10'000), [](long x) { return x; }, std::plus<>{}, 0L) == 10'000L * 9'999 / 2);
  // A crashing item is still isolated (in a remote worker) and fails alone.
  auto settled = c.map_settled(iota_vector(200), [](long x) {
    if (x == 77) std::abort();
    return x;
  });
  REQUIRE(settled.size() == 200);
  CHECK(!settled[77].ok());
  for (std::size_t i = 0; i < settled.size(); ++i)
    if (i != 77) CHECK(settled[i].value() == static_cast<long>(i));
  // Workers on other ranks hold their reduce partials by default: a few
  // travel, not one per batch (300 of about 1.6 KB).
  const auto [batches, received] = coshard_test::run_fixed_size_partials(c, 3000);
  CHECK(batches == 300);
  CHECK(received < 10 * 1700);
  // Their batches are cut at remote_batch_bytes (128 KiB by default), below
  // the job's max_batch_bytes (1 MiB) and its fixed batch_size: 800,000
  // bytes of longs go in 7 batches, not 1.
  coshard::job_options one_batch;
  one_batch.batch_size = 100'000;
  const auto before = c.stats().batches;
  out = c.map(iota_vector(100'000), [](long x) { return -x; }, one_batch);
  CHECK(c.stats().batches - before == 7);
  for (long i = 0; i < 100'000; ++i) REQUIRE(out[static_cast<std::size_t>(i)] == -i);
  // Items encoded one by one (strings: an 8-byte length, then the bytes)
  // close a batch once it reaches the cap: 128 of 1 KiB each, so 1000 go
  // in 8 batches.
  const std::vector<std::string> pages(1000, std::string(1016, 'p'));
  const auto before_strings = c.stats().batches;
  const auto sizes = c.map(pages, [](const std::string& s) { return s.size(); }, one_batch);
  CHECK(c.stats().batches - before_strings == 8);
  CHECK(sizes == std::vector<std::size_t>(1000, 1016));
}

// Run on its own (it ends the cluster's usefulness): ctest runs it as
// test_mpi_rank_death, with Open MPI told to keep the job running when a
// process dies.
TEST_CASE("cluster: a rank killed mid-job fails the job with a pool_error naming the rank, within seconds",
          "[.rank_death]") {
  auto& c = *the_cluster;
  std::set<pid_t> ranks = rank_pids(c);
  ranks.erase(::getpid());
  REQUIRE(ranks.size() == 2);
  const pid_t victim = *ranks.rbegin();
  std::thread killer([victim] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ::kill(victim, SIGKILL);
  });
  const auto t0 = std::chrono::steady_clock::now();
  try {
    (void)c.map(iota_vector(1'000'000), [](long x) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      return x;
    });
    FAIL("the job survived its rank");
  } catch (const coshard::pool_error& e) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO(e.what());
    CHECK(std::string(e.what()).find("rank") != std::string::npos);
    CHECK(seconds < 15);
    WARN("the job failed " << seconds << " s after it started (the kill came at 0.5 s): " << e.what());
  }
  killer.join();
}

namespace {
double cpu_seconds(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15; ++i) {
    rest >> field;
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}
}  // namespace

// A measurement, not a pass/fail test (docs/BENCHMARKS.md): the CPU an idle
// rank uses (its MPI polling and heartbeats), over 10 s.
TEST_CASE("cluster: the CPU of idle ranks", "[.idle_cpu]") {
  auto& c = *the_cluster;
  const std::set<pid_t> ranks = rank_pids(c);
  std::map<pid_t, double> before;
  for (pid_t r : ranks) before[r] = cpu_seconds(r);
  std::this_thread::sleep_for(std::chrono::seconds(10));
  for (pid_t r : ranks)
    WARN((r == ::getpid() ? "root" : "rank") << " pid " << r << ": " << (cpu_seconds(r) - before[r]) * 100 / 10
                                             << "% of a core while idle");
}

// Started by tests/mpi/sigterm_test.sh, which signals mpirun meanwhile.
TEST_CASE("cluster: a long job, for the signal test", "[.long_job]") {
  auto& c = *the_cluster;
  (void)c.map(iota_vector(10'000'000), [](long x) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
    return x;
  });
}
