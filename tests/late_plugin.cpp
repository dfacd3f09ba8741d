// A plugin the tests load with dlopen after their program started: what it
// registers (a job's entry point, an initializer's entry id) exists in the
// caller only. Workers forked before do not know its job, and a program run
// again as a supervisor (start_method::exec) never loads it.
#include "coshard/process_pool.hpp"

#include <vector>

extern "C" long coshard_late_plugin_job(coshard::process_pool& pool) {
  const auto out = pool.map(std::vector<long>{1, 2, 3}, [](long x) { return x * 1000 + 7; });
  return out.back();
}

// Builds a pool whose initializer is defined here: with start_method::exec the
// supervisor (the program run again, without this plugin) cannot rebuild it.
extern "C" void coshard_late_plugin_exec_pool() {
  coshard::process_pool pool{{.workers = 1, .initializer = [] {}, .start = coshard::start_method::exec}};
}
