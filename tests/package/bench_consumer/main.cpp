// A user's own benchmark over coshard::benchmark: register.cpp (the README's
// snippet) registers a task with register_map / register_map_reduce /
// register_round_trip; this main runs every case briefly and fails (exit 1)
// unless each expected case ran without error and reported its counters.
#include <coshard/benchmark.hpp>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <set>
#include <string>
#include <vector>

namespace {

// Collects what ran; prints nothing but a summary.
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
      ran.insert(r.run_name.function_name);
      if (r.counters.count("speedup")) with_speedup.insert(r.run_name.function_name);
      if (r.counters.count("p50_us")) with_latency.insert(r.run_name.function_name);
    }
  }
  std::set<std::string> ran, with_speedup, with_latency;
  bool failed = false;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  checking_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  const std::vector<std::string> expected = {
      "cube/sequential",
      "cube/workers:1/batch:adaptive/concurrency:64",
      "cube/workers:2/batch:64/concurrency:64",
      "sum/sequential",
      "sum/workers:2/batch:adaptive/concurrency:64",
      "one",
  };
  bool ok = !reporter.failed;
  for (const auto& name : expected)
    if (!reporter.ran.count(name)) {
      std::fprintf(stderr, "missing benchmark %s\n", name.c_str());
      ok = false;
    }
  if (!reporter.with_speedup.count("cube/workers:2/batch:64/concurrency:64")) {
    std::fprintf(stderr, "no speedup counter on the pool runs\n");
    ok = false;
  }
  if (!reporter.with_latency.count("one")) {
    std::fprintf(stderr, "no p50_us counter on the round trip\n");
    ok = false;
  }
  std::printf("%s\n", ok ? "bench consumer: ok" : "bench consumer: FAILED");
  return ok ? 0 : 1;
}
