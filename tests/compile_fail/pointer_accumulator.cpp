// expect: the accumulator type holds an address
#include <coshard/coshard.hpp>

int main() {
  coshard::process_pool pool{{.workers = 1}};
  std::vector<long> in{1, 2, 3};
  (void)pool.map_reduce(in, [](long x) { return x; },
                        [](const long* acc, long) { return acc; }, static_cast<const long*>(nullptr));
}
