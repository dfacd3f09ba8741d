// expect: the input type holds an address
#include <coshard/coshard.hpp>

#include <functional>

int main() {
  coshard::process_pool pool{{.workers = 1}};
  long a = 1, b = 2;
  std::vector<std::reference_wrapper<long>> in{std::ref(a), std::ref(b)};
  (void)pool.map(in, [](long x) { return x; });
}
