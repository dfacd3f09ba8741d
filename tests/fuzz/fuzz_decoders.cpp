// libFuzzer target: arbitrary bytes into every decoder that reads what another
// process wrote: frame headers and the frame reader, job_start, failure
// records, cereal payloads, every collector of the caller (ordered, settled,
// reduce, sink) and the worker's batch decoder for plain, awaitable, bitwise
// and settled jobs. A decoder may only answer with serialization_error or
// cereal::Exception (a worker answers a bad item with a task_failed reply);
// anything else (a crash, a sanitizer report, another exception) is a finding.
// The first byte picks the mode (fuzz_modes.hpp); seeds/ holds one valid
// input per mode, written by make_seeds.cpp.
#include "fuzz_modes.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/local/connect_pair.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/write.hpp>

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace {

using namespace coshard::detail;
using namespace coshard_fuzz;

template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const coshard::serialization_error&) {
  } catch (const cereal::Exception&) {
  }
}

// A worker's side for one batch: replies are checked to be well formed.
class fake_worker final : public worker_context {
 public:
  asio::io_context& io() override { return io_; }
  [[nodiscard]] std::size_t concurrency() const override { return 4; }
  [[nodiscard]] std::chrono::nanoseconds item_timeout() const override { return {}; }
  [[nodiscard]] std::uint64_t max_frame_bytes() const override { return 1 << 20; }
  item_watch& watch() override { return watch_; }
  byte_buffer take_buffer() override { return {}; }
  void send(const frame_header& h, byte_buffer payload) override {
    validate_header(h, max_frame_bytes());
    if (payload.size() != h.payload_size) __builtin_trap();  // a reply that lies about its size
  }
  void count_timeout() noexcept override {}

 private:
  asio::io_context io_{1};
  item_watch watch_;
};

template <class Spec>
void run_batch(std::span<const std::byte> body, const byte_buffer& start) {
  if (body.empty()) return;
  fake_worker w;
  const auto [id, parts] = parse_job_start(start.view());
  auto runner = entry<Spec>::make(w, parts);
  frame_header h;
  h.type = frame_type::batch;
  h.count = static_cast<std::uint32_t>(body[0]) % 16;
  h.first_index = 100;
  const auto items = body.subspan(1);
  h.payload_size = items.size();
  expect_clean([&] { runner->on_batch(h, items); });
  w.io().run();
}

template <class Spec>
const byte_buffer& start_of(const typename Spec::fn_type& fn) {
  static const byte_buffer start = encode_job_start(entry<Spec>::id, fn, no_reduce{}, no_shared{}, no_reduce{});
  return start;
}

template <class Collector>
void collect(Collector c, std::span<const std::byte> body) {
  frame_header h;
  h.count = body.empty() ? 0 : static_cast<std::uint32_t>(body[0]) % 8;
  h.first_index = 3;
  expect_clean([&] { c.on_result(h, body.subspan(body.empty() ? 0 : 1), 1); });
}

// Bytes written into a socketpair and read back frame by frame, as the
// parent reads a worker's channel, until the end or a malformed frame.
void read_frames(std::span<const std::byte> body) {
  asio::io_context io{1};
  asio::local::stream_protocol::socket reader(io), writer(io);
  asio::local::connect_pair(reader, writer);
  asio::write(writer, asio::buffer(body.data(), body.size()));
  writer.close();
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        frame_reader frames(1 << 16);
        for (;;) {
          frame_header h;
          const auto payload = co_await frames.read(reader, h);
          if (payload.size() != h.payload_size) __builtin_trap();
        }
      },
      [](std::exception_ptr e) {
        try {
          if (e) std::rethrow_exception(e);
        } catch (const coshard::serialization_error&) {
        } catch (const std::system_error& err) {
          if (err.code() != asio::error::eof) throw;
        }
      });
  io.run();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  if (size == 0) return 0;
  const auto body = bytes.subspan(1);
  switch (data[0] % mode_count) {
    case header:
      expect_clean([&] {
        frame_header h;
        if (body.size() < sizeof h) return;
        std::memcpy(&h, body.data(), sizeof h);
        validate_header(h, 1u << 20);
      });
      break;
    case job_start:
      expect_clean([&] { (void)parse_job_start(body); });
      break;
    case failure_record:
      expect_clean([&] {
        input_archive in(body);
        (void)decode_failure(in);
      });
      break;
    case strings:
      expect_clean([&] { (void)coshard::decode<std::vector<std::string>>(body); });
      break;
    case word_counts:
      expect_clean([&] { (void)coshard::decode<std::unordered_map<std::string, long>>(body); });
      break;
    case variant_value:
      expect_clean([&] { (void)coshard::decode<std::variant<int, std::string, std::vector<int>>>(body); });
      break;
    case record_value:
      expect_clean([&] { (void)coshard::decode<record>(body); });
      break;
    case settled_results:
      collect(settled_collector<std::string>{}, body);
      break;
    case ordered_results:
      collect(ordered_collector<record>{}, body);
      break;
    case reduce_partial:
      expect_clean([&] {
        using counts = std::map<std::string, long>;
        reduce_collector<counts, coshard::merge_maps<>> c(coshard::merge_maps<>{}, counts{});
        c.on_result(frame_header{}, body, 1);
      });
      break;
    case sink_results:
      collect(sink_collector<std::string, std::function<void(std::size_t, std::string)>>(
                  [](std::size_t, std::string) {}),
              body);
      break;
    case batch_strings:
      run_batch<strings_spec>(body, start_of<strings_spec>(string_size));
      break;
    case batch_records:
      run_batch<records_spec>(body, start_of<records_spec>(record_echo));
      break;
    case batch_longs:
      run_batch<longs_spec>(body, start_of<longs_spec>(long_flip));
      break;
    case batch_settled:
      run_batch<settled_spec>(body, start_of<settled_spec>(string_size));
      break;
    case frame_stream:
      read_frames(body);
      break;
    default:
      break;
  }
  return 0;
}
