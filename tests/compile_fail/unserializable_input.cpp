// expect: the input type cannot cross processes
#include <coshard/coshard.hpp>

#include <string>

struct opaque {
  std::string text;  // neither trivially copyable nor serializable by cereal
};

int main() {
  coshard::process_pool pool{{.workers = 1}};
  std::vector<opaque> in(3);
  (void)pool.map(in, [](const opaque& o) { return o.text.size(); });
}
