// coshard/benchmark.hpp - measure your own task through coshard's process pool
// with Google Benchmark (link coshard::benchmark).
//
//   #include <coshard/benchmark.hpp>
//   const bool registered = [] {
//     coshard::bench::register_map("parse", pages, [](std::string page) { return parse(page); },
//                                  {.workers = {1, 2, 4}, .batch_sizes = {0, 64}});
//     return true;
//   }();
//   // link benchmark::benchmark_main (or call benchmark::RunSpecifiedBenchmarks)
#pragma once

#include "coshard/bench/process_stats.hpp"
#include "coshard/bench/register.hpp"
#include "coshard/bench/sweep.hpp"
