// A plugin the fault tests load with dlopen after a pool exists: its job's
// entry point registers itself when the plugin loads, in the caller only, so
// the pool's workers (forked before) do not know it.
#include "coshard/process_pool.hpp"

#include <vector>

extern "C" long coshard_late_plugin_job(coshard::process_pool& pool) {
  const auto out = pool.map(std::vector<long>{1, 2, 3}, [](long x) { return x * 1000 + 7; });
  return out.back();
}
