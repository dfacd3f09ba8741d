// bench_serialization - throughput of coshard's serialization, the bytes every
// item, result and partial reduction becomes on its way between processes.
//
// What is measured (all in this process; no pool, no sockets):
//
//   encode/<type>   coshard::detail::encode_value into a reused byte_buffer, as
//                   the pool writes a batch (one call per item) or a reduce
//                   partial / shared value (one call for the whole value).
//   decode/<type>   the matching read: for items, the parent's result path
//                   (detail::ordered_collector::on_result, which places `map`
//                   results in a fresh vector); for whole values,
//                   coshard::decode<T> (what reduce_collector does with each
//                   partial). The decoded objects are built and destroyed in
//                   the timed loop, allocations included.
//   memcpy/<size>   one memcpy of the same byte count between two buffers
//                   already faulted in: memory speed, for scale.
//
// Types (about 16 MB of payload each, unless named otherwise):
//
//   string/16B, string/4KB       std::string items (1M of 16 chars: 24 MB with
//                                the 8-byte length prefixes; 4096 of 4 KB)
//   record/100k                  a user struct with a cereal `serialize`
//                                member: a 24-char string + 16 doubles
//   map<string,int64>/100k       one std::map of 100k entries (keys 6-14 chars)
//   unordered_map<string,int64>/100k   the same entries in a std::unordered_map
//   vector<int64>/16MB           one std::vector<std::int64_t>: cereal writes
//                                arithmetic vectors as one block
//   int64/per-item, pod32/per-item     2M int64 / 512k 32-byte trivially
//                                copyable structs, one encode_value (a memcpy
//                                of sizeof(T)) per item: how a worker writes
//                                its results, and how a worker reads its
//                                inputs (decode_one per item)
//   int64/contiguous, pod32/contiguous the same items as a contiguous range:
//                                the parent copies a batch of them in one
//                                memcpy, and places results with one memcpy
//
// A std::vector of a trivially copyable struct cannot be sent as one value
// (cereal has no rule for the element type although coshard::serializable
// accepts the vector), so pod32 appears only as items.
//
// Before the first timed run of each type, the payload is decoded once and
// compared with the input (SkipWithError on a mismatch). bytes_per_second is
// the encoded payload's size per pass; items_per_second counts strings,
// records, map entries or elements.
//
// Run:
//   cmake --build build --target bench_serialization
//   build/benchmarks/bench_serialization
//   build/benchmarks/bench_serialization --benchmark_filter='string|memcpy' --benchmark_repetitions=3

#include <benchmark/benchmark.h>

#include <coshard/detail/parent/collectors.hpp>
#include <coshard/serialization.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

namespace cd = coshard::detail;

// ---------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------

/// A trivially copyable 32-byte record: copied as raw bytes.
struct pod32 {
  std::int64_t id;
  double x;
  double y;
  std::int32_t kind;
  float weight;
  bool operator==(const pod32&) const = default;
};
static_assert(sizeof(pod32) == 32 && coshard::bitwise_serializable<pod32>);

/// A user type written through its cereal `serialize` member.
struct record {
  std::string name;
  std::vector<double> values;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values);
  }
  bool operator==(const record&) const = default;
};
static_assert(coshard::cereal_serializable<record> && !coshard::bitwise_serializable<record>);

/// splitmix64: deterministic data, the same on every run.
struct rng {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    return z ^ (z >> 31);
  }
};

std::string random_word(rng& r, std::size_t length) {
  std::string s(length, ' ');
  for (char& c : s) c = static_cast<char>('a' + r.next() % 26);
  return s;
}

constexpr std::size_t payload_target = std::size_t{16} << 20;  // 16 MiB

std::vector<std::string> make_strings(std::size_t length) {
  rng r{length};
  std::vector<std::string> v(payload_target / length);
  for (auto& s : v) s = random_word(r, length);
  return v;
}

std::vector<record> make_records() {
  rng r{7};
  std::vector<record> v(100'000);
  for (auto& rec : v) {
    rec.name = random_word(r, 24);
    rec.values.resize(16);
    for (double& d : rec.values) d = static_cast<double>(r.next() >> 11) * 0x1p-53;
  }
  return v;
}

// 100k distinct keys of 6 to 14 letters with random counts.
template <class Map>
Map make_word_map() {
  rng r{100};
  Map m;
  if constexpr (requires { m.reserve(1); }) m.reserve(100'000);
  while (m.size() < 100'000) m.emplace(random_word(r, 6 + r.next() % 9), static_cast<std::int64_t>(r.next() >> 20));
  return m;
}

std::vector<std::int64_t> make_int64s() {
  rng r{64};
  std::vector<std::int64_t> v(payload_target / sizeof(std::int64_t));
  for (auto& x : v) x = static_cast<std::int64_t>(r.next());
  return v;
}

std::vector<pod32> make_pods() {
  rng r{32};
  std::vector<pod32> v(payload_target / sizeof(pod32));
  std::int64_t id = 0;
  for (auto& p : v)
    p = {id++, static_cast<double>(r.next() >> 11), static_cast<double>(r.next() >> 12),
         static_cast<std::int32_t>(r.next() % 100), static_cast<float>(r.next() % 1000) / 8.0f};
  return v;
}

// ---------------------------------------------------------------------------
// The operations measured
// ---------------------------------------------------------------------------

/// Items written one after another, as a batch (or a worker's results) is.
template <class T>
void encode_items(cd::byte_buffer& out, const std::vector<T>& items) {
  for (const T& x : items) cd::encode_value(out, x);
}

/// The parent's result path for `map`: results placed by index in a fresh
/// vector (one memcpy for trivially copyable results, decode_one per item else).
template <class T>
std::vector<T> collect_items(std::span<const std::byte> payload, std::size_t count) {
  cd::ordered_collector<T> collector;
  collector.reserve(count);
  cd::frame_header h;
  h.type = cd::frame_type::result;
  h.count = static_cast<std::uint32_t>(count);
  h.payload_size = payload.size();
  collector.on_result(h, payload, 0);
  return collector.take();
}

/// The worker's input path: decode_one per item of a batch.
template <class T>
void decode_items_into(std::span<const std::byte> payload, std::vector<T>& out) {
  cd::input_archive in(payload);
  for (T& x : out) x = cd::decode_one<T>(in);
  cd::check_fully_consumed(in, "batch");
}

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

void set_throughput(benchmark::State& st, std::size_t bytes, std::size_t items) {
  const auto passes = static_cast<std::int64_t>(st.iterations());
  st.SetBytesProcessed(passes * static_cast<std::int64_t>(bytes));
  if (items) st.SetItemsProcessed(passes * static_cast<std::int64_t>(items));
  st.counters["payload_MiB"] = static_cast<double>(bytes) / (1 << 20);
}

std::string size_label(std::size_t bytes) {
  const double mib = static_cast<double>(bytes) / (1 << 20);
  char buf[32];
  std::snprintf(buf, sizeof buf, mib >= 10 ? "%.0fMB" : "%.1fMB", mib);
  return buf;
}

template <class Fn>
void add(const std::string& name, Fn fn) {
  benchmark::RegisterBenchmark(name.c_str(), std::move(fn))->Unit(benchmark::kMillisecond);
}

/// memcpy of `bytes` between two buffers faulted in beforehand; one per size label.
void add_memcpy(std::size_t bytes) {
  static std::set<std::string> seen;
  const std::string name = "memcpy/" + size_label(bytes);
  if (!seen.insert(name).second) return;
  add(name, [bytes](benchmark::State& st) {
    std::vector<std::byte> src(bytes, std::byte{1}), dst(bytes);  // both written: no page faults in the loop
    for (auto _ : st) {
      std::memcpy(dst.data(), src.data(), bytes);
      benchmark::DoNotOptimize(dst.data());
      benchmark::ClobberMemory();
    }
    set_throughput(st, bytes, 0);
  });
}

/// Input data, its payload and the once-only round-trip verdict.
template <class V>
struct test_case {
  V value;
  cd::byte_buffer payload;
  std::size_t items = 0;
  std::string error;  // empty: the payload decodes to `value`
};

/// Items of a batch: encode one by one; decode through the result collector,
/// and (for trivially copyable types) also one by one, as a worker reads inputs.
template <class T>
void register_items(const std::string& type, std::vector<T> items, bool contiguous_too) {
  auto c = std::make_shared<test_case<std::vector<T>>>();
  c->value = std::move(items);
  c->items = c->value.size();
  encode_items(c->payload, c->value);
  try {
    if (collect_items<T>(c->payload.view(), c->items) != c->value) c->error = "round trip changed the items";
  } catch (const std::exception& e) {
    c->error = std::string("round trip failed: ") + e.what();
  }
  const std::size_t bytes = c->payload.size();
  const std::string suffix = contiguous_too ? "/per-item" : "";

  add("encode/" + type + suffix, [c](benchmark::State& st) {
    if (!c->error.empty()) return st.SkipWithError(c->error.c_str());
    cd::byte_buffer out;
    out.reserve(c->payload.size());  // batch buffers are reused across jobs
    for (auto _ : st) {
      out.clear();
      encode_items(out, c->value);
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
    set_throughput(st, c->payload.size(), c->items);
  });
  if (contiguous_too) {
    add("decode/" + type + suffix, [c](benchmark::State& st) {
      if (!c->error.empty()) return st.SkipWithError(c->error.c_str());
      std::vector<T> out(c->items);
      decode_items_into(c->payload.view(), out);
      if (out != c->value) return st.SkipWithError("per-item decode changed the items");
      for (auto _ : st) {
        decode_items_into(c->payload.view(), out);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      }
      set_throughput(st, c->payload.size(), c->items);
    });
    add("encode/" + type + "/contiguous", [c](benchmark::State& st) {
      if (!c->error.empty()) return st.SkipWithError(c->error.c_str());
      cd::byte_buffer out;
      out.reserve(c->payload.size());
      for (auto _ : st) {
        out.clear();
        out.append(c->value.data(), c->value.size() * sizeof(T));  // job::cut_from_input for contiguous ranges
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      }
      set_throughput(st, c->payload.size(), c->items);
    });
  }
  add("decode/" + type + (contiguous_too ? "/contiguous" : ""), [c](benchmark::State& st) {
    if (!c->error.empty()) return st.SkipWithError(c->error.c_str());
    for (auto _ : st) {
      auto out = collect_items<T>(c->payload.view(), c->items);
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
    set_throughput(st, c->payload.size(), c->items);
  });
  add_memcpy(bytes);
}

/// One whole value: encode_value / coshard::decode<V>, as for a reduce partial.
template <class V>
void register_value(const std::string& type, V value) {
  auto c = std::make_shared<test_case<V>>();
  c->value = std::move(value);
  c->items = c->value.size();
  cd::encode_value(c->payload, c->value);
  try {
    // Also checks that coshard::encode (the public form) writes the same bytes.
    const auto pub = coshard::encode(c->value);
    if (pub.size() != c->payload.size() || std::memcmp(pub.data(), c->payload.data(), pub.size()) != 0)
      c->error = "coshard::encode and detail::encode_value disagree";
    else if (coshard::decode<V>(c->payload.view()) != c->value)
      c->error = "round trip changed the value";
  } catch (const std::exception& e) {
    c->error = std::string("round trip failed: ") + e.what();
  }
  const std::size_t bytes = c->payload.size();

  add("encode/" + type, [c](benchmark::State& st) {
    if (!c->error.empty()) return st.SkipWithError(c->error.c_str());
    cd::byte_buffer out;
    out.reserve(c->payload.size());
    for (auto _ : st) {
      out.clear();
      cd::encode_value(out, c->value);
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
    set_throughput(st, c->payload.size(), c->items);
  });
  add("decode/" + type, [c](benchmark::State& st) {
    if (!c->error.empty()) return st.SkipWithError(c->error.c_str());
    for (auto _ : st) {
      V out = coshard::decode<V>(c->payload.view());
      benchmark::DoNotOptimize(&out);
      benchmark::ClobberMemory();
    }
    set_throughput(st, c->payload.size(), c->items);
  });
  add_memcpy(bytes);
}

// Registered before benchmark_main's main() runs; the data (about 300 MB with
// the payloads) is built here, so that every baseline's size is known.
const bool registered = [] {
  register_items("string/16B", make_strings(16), false);
  register_items("string/4KB", make_strings(4096), false);
  register_items("record/100k", make_records(), false);
  register_value("map<string,int64>/100k", make_word_map<std::map<std::string, std::int64_t>>());
  register_value("unordered_map<string,int64>/100k",
                 make_word_map<std::unordered_map<std::string, std::int64_t>>());
  register_value("vector<int64>/16MB", make_int64s());
  register_items("int64", make_int64s(), true);
  register_items("pod32", make_pods(), true);
  return true;
}();

}  // namespace
