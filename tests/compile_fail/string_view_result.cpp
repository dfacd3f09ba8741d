// expect: the result type holds an address
#include <coshard/coshard.hpp>

#include <string_view>

int main() {
  coshard::process_pool pool{{.workers = 1}};
  std::vector<int> in{1, 2, 3};
  (void)pool.map(in, [](int) { return std::string_view("made in the worker"); });
}
