// Writes tests/fuzz/seeds/: one valid input per mode of fuzz_decoders,
// encoded by the library itself, so that the fuzzer starts past the first
// length prefix. Run after a wire format change:
//   build-fuzz/tests/fuzz/fuzz_make_seeds tests/fuzz/seeds
#include "fuzz_modes.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <unordered_map>
#include <variant>

using namespace coshard::detail;
using namespace coshard_fuzz;

namespace {

std::string dir;

void write(const char* name, mode m, const byte_buffer& body) {
  std::ofstream out(dir + "/" + name, std::ios::binary);
  const char first = static_cast<char>(m);
  out.write(&first, 1);
  out.write(reinterpret_cast<const char*>(body.data()), static_cast<std::streamsize>(body.size()));
}

template <class T>
byte_buffer encoded(const T& v) {
  byte_buffer b;
  encode_value(b, v);
  return b;
}

// count byte, then the items as a batch or a result frame carries them.
template <class T>
byte_buffer counted(const std::vector<T>& items) {
  byte_buffer b;
  const auto n = static_cast<std::uint8_t>(items.size());
  b.append(&n, 1);
  for (const auto& v : items) encode_value(b, v);
  return b;
}

record sample(int i) { return {"rec" + std::to_string(i), {1.5, -2.0 * i}, {{i, "tag"}}}; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SEED_DIR\n", argv[0]);
    return 2;
  }
  dir = argv[1];

  frame_header h;
  h.type = frame_type::result;
  h.count = 2;
  h.payload_size = 16;
  byte_buffer hb;
  hb.append(&h, sizeof h);
  write("header", header, hb);

  write("job_start", job_start,
        encode_job_start(entry<strings_spec>::id, string_size, no_reduce{}, no_shared{}, no_reduce{}));

  byte_buffer fb;
  encode_failure(fb, item_failure{failure_kind::threw, 7, {"std::runtime_error", "boom"}});
  write("failure_record", failure_record, fb);

  write("strings", strings, encoded(std::vector<std::string>{"alpha", "", "gamma"}));
  write("word_counts", word_counts, encoded(std::unordered_map<std::string, long>{{"the", 3}, {"cat", 1}}));
  write("variant", variant_value, encoded(std::variant<int, std::string, std::vector<int>>{std::vector<int>{1, 2}}));
  write("record", record_value, encoded(sample(1)));

  byte_buffer settled;
  const std::uint8_t two = 2;
  settled.append(&two, 1);
  encode_settled_value(settled, std::string("ok"));
  encode_settled_failure(settled, item_failure{failure_kind::threw, 4, {"int", ""}});
  write("settled_results", settled_results, settled);

  write("ordered_results", ordered_results, counted(std::vector<record>{sample(1), sample(2)}));
  write("reduce_partial", reduce_partial, encoded(std::map<std::string, long>{{"a", 1}, {"b", 2}}));
  write("sink_results", sink_results, counted(std::vector<std::string>{"x", "yz"}));
  write("batch_strings", batch_strings, counted(std::vector<std::string>{"one", "two", ""}));
  write("batch_records", batch_records, counted(std::vector<record>{sample(3), sample(4)}));
  write("batch_longs", batch_longs, counted(std::vector<long>{1, -2, 3}));
  write("batch_settled", batch_settled, counted(std::vector<std::string>{"a", "bb"}));

  // Two frames back to back: a result and a task failure.
  byte_buffer stream;
  const byte_buffer r = encoded(std::vector<std::string>{"r"});
  frame_header rh;
  rh.type = frame_type::result;
  rh.count = 1;
  rh.payload_size = r.size();
  stream.append(&rh, sizeof rh);
  stream.append(r.data(), r.size());
  frame_header fh;
  fh.type = frame_type::task_failed;
  fh.payload_size = fb.size();
  stream.append(&fh, sizeof fh);
  stream.append(fb.data(), fb.size());
  write("frame_stream", frame_stream, stream);
  return 0;
}
