#include <coshard/coshard.hpp>
#include <vector>
int main() {
  coshard::process_pool pool{{.workers = 2}};
  std::vector<int> in{1, 2, 3, 4, 5};
  auto out = pool.map(in, [](int x) { return x * 2; });
  return out == std::vector<int>{2, 4, 6, 8, 10} ? 0 : 1;
}
