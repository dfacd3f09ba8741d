// coshard/detail/entry_registry.hpp - the table of entry points a worker may run.
//
// Workers are forked before the user's lambdas are passed to the pool, so a
// job names its code by id. Every instantiation of `entry<Spec>` adds itself to
// this table during static initialisation, so every process of the binary
// (forked workers, re-executed ranks) holds the same table. A worker only ever
// calls factories found here; an id read from the wire is never an address.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/errors.hpp"

namespace coshard::detail {

class job_runner;
class worker_context;

/// The parts of a job_start frame, each still encoded.
struct job_start_view {
  std::uint64_t item_timeout_ns = 0;  // the job's item_timeout (0: none)
  std::span<const std::byte> fn;
  std::span<const std::byte> reduce;
  std::span<const std::byte> shared;
  std::span<const std::byte> init;
};

using runner_factory = std::shared_ptr<job_runner> (*)(worker_context&, const job_start_view&);

constexpr std::uint64_t fnv1a(std::string_view s) noexcept {
  std::uint64_t h = 1469598103934665603ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

template <class T>
constexpr std::uint64_t type_hash() noexcept {
  return fnv1a(__PRETTY_FUNCTION__);
}

/// A table from id to a function of type `Fn` (a function pointer type):
/// one per kind of thing a worker may be asked to run (job runners, shipped
/// initializers).
template <class Fn>
class registry {
 public:
  /// Registers `factory` under the hash of its type's name. Two lambdas can
  /// print the same name (g++ does not number them), so a clash moves the
  /// later one to the next free id; registration order is fixed per binary,
  /// so every process computes the same ids.
  static std::uint64_t add(std::uint64_t name_hash, Fn factory) {
    std::lock_guard lock(mutex());
    auto& t = table();
    std::uint64_t id = name_hash;
    for (;;) {
      auto [it, inserted] = t.emplace(id, factory);
      if (inserted || it->second == factory) return id;
      id = id * 1099511628211ull + 0x9e3779b97f4a7c15ull;
    }
  }

  /// The function registered under `id`, or nullptr.
  static Fn find(std::uint64_t id) {
    std::lock_guard lock(mutex());
    auto it = table().find(id);
    return it == table().end() ? nullptr : it->second;
  }

 private:
  static std::unordered_map<std::uint64_t, Fn>& table() {
    static std::unordered_map<std::uint64_t, Fn> t;
    return t;
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
};

/// A trivially copyable function object sent as its bytes, rebuilt in the
/// receiving process (lambdas need not be default constructible).
template <class T>
T object_from_bytes(std::span<const std::byte> bytes, const char* what) {
  if (bytes.size() != sizeof(T))
    throw serialization_error(std::string("coshard: received ") + std::to_string(bytes.size()) +
                              " bytes for the " + what + ", expected " + std::to_string(sizeof(T)));
  return load_trivial<T>(bytes.data());
}

/// The job runners a worker can make.
using entry_registry = registry<runner_factory>;

}  // namespace coshard::detail
