// libFuzzer target: arbitrary bytes into every decoder that reads what another
// process wrote (frame headers, job_start, failure records, settled and
// ordered result frames, cereal payloads). A decoder may only answer with
// serialization_error or cereal::Exception; anything else (a crash, a
// sanitizer report, another exception) is a finding.
#include <coshard/coshard.hpp>

#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace {

struct record {
  std::string name;
  std::vector<double> values;
  std::map<int, std::string> tags;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values, tags);
  }
};

template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const coshard::serialization_error&) {
  } catch (const cereal::Exception&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace coshard::detail;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  if (size == 0) return 0;
  // The first byte picks the decoder, the rest is its input.
  const auto body = bytes.subspan(1);
  switch (data[0] % 9) {
    case 0:
      expect_clean([&] {
        frame_header h;
        if (body.size() < sizeof h) return;
        std::memcpy(&h, body.data(), sizeof h);
        validate_header(h, 1u << 20);
      });
      break;
    case 1:
      expect_clean([&] { (void)parse_job_start(body); });
      break;
    case 2:
      expect_clean([&] {
        input_archive in(body);
        (void)decode_failure(in);
      });
      break;
    case 3:
      expect_clean([&] { (void)coshard::decode<std::vector<std::string>>(body); });
      break;
    case 4:
      expect_clean([&] { (void)coshard::decode<std::unordered_map<std::string, long>>(body); });
      break;
    case 5:
      expect_clean([&] { (void)coshard::decode<std::variant<int, std::string, std::vector<int>>>(body); });
      break;
    case 6:
      expect_clean([&] { (void)coshard::decode<record>(body); });
      break;
    case 7:
      expect_clean([&] {
        settled_collector<std::string> c;
        frame_header h;
        h.count = body.empty() ? 0 : static_cast<std::uint32_t>(body[0]) % 8;
        c.on_result(h, body.subspan(body.empty() ? 0 : 1), 1);
      });
      break;
    case 8:
      expect_clean([&] {
        ordered_collector<record> c;
        frame_header h;
        h.count = body.empty() ? 0 : static_cast<std::uint32_t>(body[0]) % 8;
        h.first_index = 3;
        c.on_result(h, body.subspan(body.empty() ? 0 : 1), 1);
      });
      break;
  }
  return 0;
}
