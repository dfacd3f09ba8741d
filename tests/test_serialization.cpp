// Tests of coshard/serialization.hpp: round trips, the raw-bytes path, and
// bounds checks on hostile input; and how the parent splits an encoded batch.
#include "coshard/serialization.hpp"
#include "coshard/detail/parent/batch.hpp"

#include <catch2/catch.hpp>

#include <array>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>

namespace {

struct trivially_copied {
  int a;
  double b;
  char c[3];
  bool operator==(const trivially_copied&) const = default;
};

struct with_serialize {
  std::string name;
  std::vector<int> values;
  std::optional<std::map<std::string, double>> extra;
  bool operator==(const with_serialize&) const = default;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values, extra);
  }
};

struct no_way_across {
  std::string s;  // not trivially copyable, no serialize function
};

template <class T>
T round_trip(const T& value) {
  return coshard::decode<T>(coshard::encode(value));
}

}  // namespace

TEST_CASE("what may cross is decided at compile time") {
  STATIC_REQUIRE(coshard::bitwise_serializable<int>);
  STATIC_REQUIRE(coshard::bitwise_serializable<trivially_copied>);
  STATIC_REQUIRE_FALSE(coshard::bitwise_serializable<int*>);
  STATIC_REQUIRE_FALSE(coshard::bitwise_serializable<std::string>);
  STATIC_REQUIRE(coshard::serializable<std::string>);
  STATIC_REQUIRE(coshard::serializable<with_serialize>);
  STATIC_REQUIRE(coshard::serializable<std::unordered_map<std::string, std::vector<int>>>);
  STATIC_REQUIRE_FALSE(coshard::serializable<no_way_across>);
  STATIC_REQUIRE_FALSE(coshard::serializable<const char*>);
}

TEST_CASE("values round-trip unchanged") {
  CHECK(round_trip(42) == 42);
  CHECK(round_trip(-1.5) == -1.5);
  CHECK(round_trip(std::numeric_limits<std::uint64_t>::max()) == std::numeric_limits<std::uint64_t>::max());
  CHECK(round_trip(std::string()) == "");
  CHECK(round_trip(std::string("hello\0world", 11)) == std::string("hello\0world", 11));
  const trivially_copied t{7, 2.5, {'x', 'y', 'z'}};
  CHECK(round_trip(t) == t);
  const with_serialize w{"n", {1, 2, 3}, std::map<std::string, double>{{"k", 0.5}}};
  CHECK(round_trip(w) == w);
  const std::unordered_map<std::string, long> counts{{"aardvark", 3}, {"bee", 1}};
  CHECK(round_trip(counts) == counts);
  const std::vector<std::tuple<int, std::string>> tuples{{1, "a"}, {2, "b"}};
  CHECK(round_trip(tuples) == tuples);
  const std::variant<int, std::string> v = std::string("alt");
  CHECK(round_trip(v) == v);
  const std::array<short, 4> arr{1, 2, 3, 4};
  CHECK(round_trip(arr) == arr);
}

TEST_CASE("trivially copyable values are their own bytes") {
  const trivially_copied t{1, 2.0, {'a', 'b', 'c'}};
  const auto bytes = coshard::encode(t);
  REQUIRE(bytes.size() == sizeof(t));
  CHECK(std::memcmp(bytes.data(), &t, sizeof(t)) == 0);
  // A vector of arithmetic values is one length prefix plus one block.
  const std::vector<double> v(1000, 3.25);
  CHECK(coshard::encode(v).size() == sizeof(std::uint64_t) + 1000 * sizeof(double));
}

TEST_CASE("truncated input is refused with a clear error") {
  const auto bytes = coshard::encode(std::string(100, 'q'));
  for (std::size_t cut : {std::size_t{0}, std::size_t{4}, std::size_t{8}, std::size_t{50}, bytes.size() - 1}) {
    INFO("cut at " << cut);
    CHECK_THROWS_WITH(coshard::decode<std::string>(std::span(bytes.data(), cut)),
                      Catch::Contains("truncated"));
  }
  CHECK_THROWS_AS(coshard::decode<double>(std::span(bytes.data(), 3)), coshard::serialization_error);
}

TEST_CASE("a corrupt element count cannot make the decoder allocate wildly") {
  auto bytes = coshard::encode(std::vector<std::string>{"a", "b"});
  const std::uint64_t huge = std::uint64_t{1} << 60;
  std::memcpy(bytes.data(), &huge, sizeof huge);
  CHECK_THROWS_WITH(coshard::decode<std::vector<std::string>>(bytes), Catch::Contains("element count"));
}

TEST_CASE("trailing bytes are a decode error") {
  auto bytes = coshard::encode(7);
  bytes.push_back(std::byte{0});
  CHECK_THROWS_WITH(coshard::decode<int>(bytes), Catch::Contains("unread bytes"));
}

TEST_CASE("random bytes never crash the decoder") {
  std::uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  int refused = 0;
  for (int round = 0; round < 2000; ++round) {
    std::vector<std::byte> junk(next() % 64);
    for (auto& b : junk) b = std::byte(next() & 0xff);
    try {
      (void)coshard::decode<with_serialize>(junk);
    } catch (const coshard::serialization_error&) {
      ++refused;
    } catch (const cereal::Exception&) {
      ++refused;
    }
  }
  CHECK(refused > 1900);  // almost all random inputs are invalid
}

// A batch run again on a worker with smaller batches (a cluster's other
// ranks) is split between items where a fresh cut would have closed it: up
// to and including the first item that reaches the limit.
TEST_CASE("batch_record::items_within takes the items a fresh cut at the limit would, at least one") {
  coshard::detail::batch_record fixed;  // 10 items of 8 bytes
  fixed.count = 10;
  fixed.item_size = 8;
  fixed.payload.append(std::string(80, 'x').data(), 80);
  CHECK(fixed.items_within(0, 80) == 10);
  CHECK(fixed.items_within(0, 1000) == 10);
  CHECK(fixed.items_within(0, 79) == 10);  // the 10th item reaches 79: a cut would close after it
  CHECK(fixed.items_within(0, 72) == 9);
  CHECK(fixed.items_within(0, 16) == 2);
  CHECK(fixed.items_within(0, 15) == 2);
  CHECK(fixed.items_within(0, 8) == 1);
  CHECK(fixed.items_within(0, 0) == 1);  // one item travels alone, whatever its size
  CHECK(fixed.items_within(3, 16) == 2);
  CHECK(fixed.items_within(8, 16) == 2);
  CHECK(fixed.items_within(8, 9) == 2);
  CHECK(fixed.items_within(9, 1) == 1);

  coshard::detail::batch_record encoded;  // items of 5, 100, 1, 30 and 64 bytes
  encoded.count = 5;
  encoded.offsets = {0, 5, 105, 106, 136};
  encoded.payload.append(std::string(200, 'y').data(), 200);
  CHECK(encoded.items_within(0, 200) == 5);
  CHECK(encoded.items_within(0, 199) == 5);
  CHECK(encoded.items_within(0, 137) == 5);
  CHECK(encoded.items_within(0, 136) == 4);
  CHECK(encoded.items_within(0, 107) == 4);
  CHECK(encoded.items_within(0, 106) == 3);
  CHECK(encoded.items_within(0, 105) == 2);
  CHECK(encoded.items_within(0, 6) == 2);
  CHECK(encoded.items_within(0, 5) == 1);
  CHECK(encoded.items_within(0, 4) == 1);
  CHECK(encoded.items_within(1, 100) == 1);  // from item 1 (offset 5): 100, 1, 30, 64 bytes
  CHECK(encoded.items_within(1, 101) == 2);
  CHECK(encoded.items_within(2, 31) == 2);
  CHECK(encoded.items_within(2, 95) == 3);
  CHECK(encoded.items_within(2, 94) == 3);
  CHECK(encoded.items_within(4, 1) == 1);
}

// A batch parked in a cluster may sit in a recycled buffer of a larger one;
// it keeps only what it needs, and the large buffer goes back for reuse.
TEST_CASE("batch_record::fit_payload moves a small batch out of a large buffer, keeping its bytes") {
  coshard::detail::buffer_pool spare(4, std::size_t{4} << 20);
  coshard::detail::batch_record rec;
  rec.count = 1;
  rec.item_size = 100'000;
  rec.payload.reserve(std::size_t{1} << 20);
  std::string bytes(100'000, 'a');
  for (std::size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<char>('a' + k % 26);
  rec.payload.append(bytes.data(), bytes.size());
  REQUIRE(rec.payload.capacity() >= (std::size_t{1} << 20));
  rec.fit_payload(spare);
  CHECK(rec.payload.size() == bytes.size());
  CHECK(rec.payload.capacity() < 2 * bytes.size());
  CHECK(std::memcmp(rec.payload.data(), bytes.data(), bytes.size()) == 0);
  CHECK(spare.take().capacity() >= (std::size_t{1} << 20));  // the large buffer, for the next batch

  // A payload that fills most of its buffer stays where it is.
  const auto* before = rec.payload.data();
  rec.fit_payload(spare);
  CHECK(rec.payload.data() == before);
}
