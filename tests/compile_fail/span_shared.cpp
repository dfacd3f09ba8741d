// expect: the shared value's type holds an address
#include <coshard/coshard.hpp>

#include <span>

int main() {
  coshard::process_pool pool{{.workers = 1}};
  std::vector<int> table{1, 2, 3};
  std::vector<int> in{0, 1, 2};
  (void)pool.map(in, [](const std::span<int>& t, int i) { return t[static_cast<std::size_t>(i)]; },
                 std::span<int>(table));
}
