// coshard/keyed_reduce.hpp - merging per-key partial results (word counts and the like).
#pragma once

#include <functional>
#include <utility>

namespace coshard {

/// A reducer for map_reduce whose partials are associative containers
/// (`std::unordered_map<K, V>`, `std::map<K, V>`): keys present in both sides
/// get `combine(left, right)`, other keys are moved over. Nodes are moved, not
/// copied, and the smaller map is merged into the larger, so merging many
/// partials costs about one insertion per distinct key per partial.
/// `combine` must be associative and commutative (partials arrive in any
/// order) and, like any function sent to workers, empty or trivially copyable.
template <class Combine = std::plus<>>
struct merge_maps {
  /// Combines the values of a key found in both maps: `combine(acc_value, part_value)`.
  [[no_unique_address]] Combine combine{};

  /// `acc` with every entry of `part` merged in (the larger map is kept and
  /// the smaller one's nodes moved into it).
  template <class Map>
  Map operator()(Map acc, Map part) const {
    if (acc.size() < part.size()) std::swap(acc, part);
    for (auto it = part.begin(); it != part.end();) {
      auto node = part.extract(it++);
      auto found = acc.find(node.key());
      if (found == acc.end())
        acc.insert(std::move(node));
      else
        found->second = std::invoke(combine, std::move(found->second), std::move(node.mapped()));
    }
    return acc;
  }
};

}  // namespace coshard
