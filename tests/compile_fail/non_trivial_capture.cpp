// expect: must be empty or trivially copyable.*`shared` argument
#include <coshard/coshard.hpp>

#include <string>

int main() {
  coshard::process_pool pool{{.workers = 1}};
  std::vector<int> in{1, 2, 3};
  std::string prefix = "item ";
  (void)pool.map(in, [prefix](int x) { return prefix + std::to_string(x); });
}
