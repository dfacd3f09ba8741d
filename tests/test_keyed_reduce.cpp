// Tests of coshard/keyed_reduce.hpp: merging per-key partials.
#include "coshard/keyed_reduce.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>

TEST_CASE("merge_maps adds values of shared keys and keeps the others") {
  using counts = std::unordered_map<std::string, long>;
  const coshard::merge_maps<> merge;
  counts a{{"x", 1}, {"y", 2}};
  counts b{{"y", 10}, {"z", 5}};
  CHECK(merge(a, b) == counts{{"x", 1}, {"y", 12}, {"z", 5}});
  CHECK(merge(b, a) == counts{{"x", 1}, {"y", 12}, {"z", 5}});
  CHECK(merge(counts{}, a) == a);
  CHECK(merge(a, counts{}) == a);
}

TEST_CASE("merge_maps takes any combiner and ordered maps") {
  auto max_of = [](int l, int r) { return std::max(l, r); };
  const coshard::merge_maps<decltype(max_of)> merge{max_of};
  std::map<int, int> a{{1, 5}, {2, 1}}, b{{1, 3}, {2, 8}, {3, 0}};
  CHECK(merge(a, b) == std::map<int, int>{{1, 5}, {2, 8}, {3, 0}});
}

TEST_CASE("folding many partials equals one sequential count") {
  using counts = std::unordered_map<int, long>;
  const coshard::merge_maps<> merge;
  counts folded, direct;
  for (int part = 0; part < 50; ++part) {
    counts p;
    for (int i = 0; i < 100; ++i) {
      ++p[(part * 31 + i * 7) % 97];
      ++direct[(part * 31 + i * 7) % 97];
    }
    folded = merge(std::move(folded), std::move(p));
  }
  CHECK(folded == direct);
}

TEST_CASE("merge_maps can be shipped to workers as bytes") {
  STATIC_REQUIRE(std::is_trivially_copyable_v<coshard::merge_maps<>>);
  STATIC_REQUIRE(std::is_empty_v<coshard::merge_maps<>>);
}
