// A user's own benchmark over coshard::benchmark: register.cpp (the README's
// snippet) registers a task with register_map / register_map_reduce /
// register_round_trip; this main runs every case briefly and fails (exit 1)
// unless each expected case ran without error and reported its counters.
#include <coshard/benchmark.hpp>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

// Collects what ran and the counters each run reported.
class checking_reporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      const std::string name = r.benchmark_name();
      if (r.error_occurred) {
        std::fprintf(stderr, "FAILED %s: %s\n", name.c_str(), r.error_message.c_str());
        failed = true;
        continue;
      }
      std::printf("ran %s\n", name.c_str());
      auto& counters = ran[r.run_name.function_name];
      for (const auto& [counter, value] : r.counters) counters[counter] = value;
    }
  }
  std::map<std::string, std::map<std::string, double>> ran;
  bool failed = false;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  checking_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  bool ok = !reporter.failed;
  auto expect = [&](const std::string& name, const std::map<std::string, double>& counters) {
    auto it = reporter.ran.find(name);
    if (it == reporter.ran.end()) {
      std::fprintf(stderr, "missing benchmark %s\n", name.c_str());
      ok = false;
      return;
    }
    for (const auto& [counter, want] : counters) {
      auto got = it->second.find(counter);
      // want < 0: the counter must exist and be positive; else equal to want.
      if (got == it->second.end() || (want < 0 ? !(got->second > 0) : got->second != want)) {
        std::fprintf(stderr, "%s: counter %s is %s\n", name.c_str(), counter.c_str(),
                     got == it->second.end() ? "missing" : std::to_string(got->second).c_str());
        ok = false;
      }
    }
  };
  // Every case register.cpp's sweep produces (2 tasks x (sequential + 2
  // worker counts x 2 batch sizes), and the round trip), with its counters.
  for (const std::string task : {"cube", "sum"}) {
    expect(task + "/sequential", {{"items", 20'000}});
    for (int workers : {1, 2})
      for (const std::string batch : {"adaptive", "64"})
        expect(task + "/workers:" + std::to_string(workers) + "/batch:" + batch + "/concurrency:64",
               {{"items", 20'000},
                {"workers", workers},
                {"batch_size", batch == "adaptive" ? 0 : 64},
                {"concurrency", 64},
                {"speedup", -1}});
  }
  expect("one", {{"p50_us", -1}, {"p99_us", -1}, {"max_us", -1}});
  if (reporter.ran.size() != 11) {
    std::fprintf(stderr, "expected 11 benchmarks, %zu ran\n", reporter.ran.size());
    ok = false;
  }
  std::printf("%s\n", ok ? "bench consumer: ok" : "bench consumer: FAILED");
  return ok ? 0 : 1;
}
