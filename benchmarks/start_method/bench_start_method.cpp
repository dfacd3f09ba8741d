// What each start method costs: a pool of 2 workers built, given a 2-item
// job and destroyed, with the fork server and with start_method::exec (this
// binary run again as the supervisor). Wall time per pass is the benchmark's
// time; counter cpu_ms adds the CPU of this process and of every child it
// reaped (supervisors and workers) per pass.
//
//   build/benchmarks/bench_start_method [--benchmark_repetitions=N]
#include <coshard/coshard.hpp>

#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <vector>

namespace {

double cpu_seconds() {
  rusage self{}, children{};
  ::getrusage(RUSAGE_SELF, &self);
  ::getrusage(RUSAGE_CHILDREN, &children);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return s(self.ru_utime) + s(self.ru_stime) + s(children.ru_utime) + s(children.ru_stime);
}

void pool_lifetime(benchmark::State& state, coshard::start_method method) {
  const std::vector<int> two{1, 2};
  const double cpu0 = cpu_seconds();
  for (auto _ : state) {
    coshard::process_pool pool{{.workers = 2, .start = method}};
    benchmark::DoNotOptimize(pool.map(two, [](int x) { return x + 1; }));
  }
  state.counters["cpu_ms"] = (cpu_seconds() - cpu0) * 1000 / static_cast<double>(state.iterations());
}

}  // namespace

BENCHMARK_CAPTURE(pool_lifetime, fork_server, coshard::start_method::fork_server)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
BENCHMARK_CAPTURE(pool_lifetime, exec, coshard::start_method::exec)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);

int main(int argc, char** argv) {
  coshard::serve_if_worker(argc, argv);  // the exec pools run this binary again
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
