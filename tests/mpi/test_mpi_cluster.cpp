// Tests of coshard::mpi::cluster, run by mpirun as root + 2 ranks with one
// worker each (tests/CMakeLists.txt): the local pool's behaviour tests for
// every job kind, across ranks. Only the root runs Catch; the other ranks
// serve until the root's cluster is destroyed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "coshard/mpi.hpp"

#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_future.hpp>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <numeric>
#include <set>
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
  coshard::mpi::cluster cluster{argc, argv, {.workers_per_rank = 1, .concurrency = 16}};
  if (!cluster.is_root()) return cluster.serve();
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
