// The registration code shown in README.md ("Benchmark your own task"),
// verbatim; main.cpp runs it and checks what ran.
#include <coshard/benchmark.hpp>

#include <cstdint>
#include <functional>
#include <vector>

// Runs at start-up, before benchmark_main's main().
const bool registered = [] {
  std::vector<std::int64_t> inputs(20'000);
  for (std::size_t i = 0; i < inputs.size(); ++i) inputs[i] = static_cast<std::int64_t>(i);
  const coshard::bench::sweep quick{.workers = {1, 2}, .batch_sizes = {0, 64}, .min_time_s = 0.01};
  coshard::bench::register_map("cube", inputs, [](std::int64_t x) { return x * x * x; }, quick);
  coshard::bench::register_map_reduce("sum", inputs, [](std::int64_t x) { return x % 7; }, std::plus<>{},
                                      std::int64_t{0}, quick);
  coshard::bench::register_round_trip("one", std::int64_t{3}, [](std::int64_t x) { return x + 1; },
                                      {.workers = 1}, 200);
  return true;
}();
