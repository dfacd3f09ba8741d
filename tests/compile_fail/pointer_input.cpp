// expect: the input type holds an address
#include <coshard/coshard.hpp>

int main() {
  coshard::process_pool pool{{.workers = 1}};
  static int values[3] = {1, 2, 3};
  std::vector<const int*> in{&values[0], &values[1], &values[2]};
  (void)pool.map(in, [](const int* p) { return *p; });
}
