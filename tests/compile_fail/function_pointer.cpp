// expect: pass a lambda or function object, not a function pointer
#include <coshard/coshard.hpp>

int twice(int x) { return 2 * x; }

int main() {
  coshard::process_pool pool{{.workers = 1}};
  std::vector<int> in{1, 2, 3};
  (void)pool.map(in, twice);
}
