// expect: the result type cannot cross processes
#include <coshard/coshard.hpp>

#include <string>

struct opaque {
  std::string text;
};

int main() {
  coshard::process_pool pool{{.workers = 1}};
  std::vector<int> in(3);
  (void)pool.map(in, [](int) { return opaque{}; });
}
