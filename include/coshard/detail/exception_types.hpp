// coshard/detail/exception_types.hpp - the exception types a task's failure is
// rebuilt as in the caller: the standard ones, and those a user registers.
//
// A worker names the nearest type of the table that the thrown object is an
// instance of; the caller rebuilds an object of that type which is also a
// coshard::task_error (remote_task_error<E>). The name travels, not an index,
// so that a worker started by exec with another registration order still
// agrees with its parent.
#pragma once

#include <any>
#include <atomic>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <typeinfo>
#include <variant>
#include <vector>

#include "coshard/detail/demangle.hpp"
#include "coshard/errors.hpp"

namespace coshard::detail {

/// What a worker saw of a failed task, as it travels to the caller.
struct exception_description {
  std::string type_name;   // demangled dynamic type of the thrown object
  std::string message;     // its what(), empty for non-std::exception throws
  std::string rebuild_as{};  // name of the registered type to rebuild it as; empty: std::runtime_error
  std::string standard_base{};  // the nearest standard type, should the caller not know rebuild_as
  std::int32_t code = 0;   // std::system_error: the error code's value ...
  std::string category{};  // ... and its category's name()
};

/// The object a caller catches for a task that threw an E: an E and a
/// task_error at once. Each base has its own what(); this one overrides both
/// with the task_error summary, so the message does not depend on the handler.
template <class E>
class remote_task_error final : public E, public task_error {
 public:
  remote_task_error(E&& base, const exception_description& d, std::size_t index, pid_t pid)
      : E(std::move(base)), task_error(d.type_name, d.message, index, pid) {}
  [[nodiscard]] const char* what() const noexcept override { return task_error::what(); }
};

/// One type failures can be rebuilt as.
struct exception_type_entry {
  std::string name;
  bool (*matches)(const std::exception&) = nullptr;
  std::function<std::exception_ptr(const exception_description&, std::size_t, pid_t)> rebuild;
  const exception_type_entry* next = nullptr;  // user entries: the one registered before
};

template <class E>
bool is_instance_of(const std::exception& e) {
  if constexpr (std::is_same_v<E, std::exception>)
    return true;
  else
    return dynamic_cast<const E*>(&e) != nullptr;
}

template <class E, class Make>
exception_type_entry make_exception_type_entry(Make make) {
  return {demangle(typeid(E).name()), &is_instance_of<E>,
          [make = std::move(make)](const exception_description& d, std::size_t index, pid_t pid) {
            return std::make_exception_ptr(remote_task_error<E>(make(d), d, index, pid));
          }};
}

template <class E>
exception_type_entry standard_entry() {
  return make_exception_type_entry<E>([](const exception_description& d) {
    if constexpr (std::is_constructible_v<E, const std::string&>)
      return E(d.message);
    else
      return E();
  });
}

inline std::optional<std::error_code> rebuild_error_code(const exception_description& d) {
  if (d.category == std::generic_category().name()) return std::error_code(d.code, std::generic_category());
  if (d.category == std::system_category().name()) return std::error_code(d.code, std::system_category());
  return std::nullopt;
}

/// The standard exception types, each before its bases: the first match is
/// the nearest.
inline const std::vector<exception_type_entry>& standard_exception_types() {
  static const std::vector<exception_type_entry> table = [] {
    std::vector<exception_type_entry> t;
    t.push_back(standard_entry<std::invalid_argument>());
    t.push_back(standard_entry<std::domain_error>());
    t.push_back(standard_entry<std::length_error>());
    t.push_back(standard_entry<std::out_of_range>());
    t.push_back(standard_entry<std::logic_error>());
    t.push_back(standard_entry<std::range_error>());
    t.push_back(standard_entry<std::overflow_error>());
    t.push_back(standard_entry<std::underflow_error>());
    // A system_error keeps its code only where the caller can name the
    // category; otherwise it arrives as the runtime_error it also is.
    t.push_back({demangle(typeid(std::system_error).name()), &is_instance_of<std::system_error>,
                 [](const exception_description& d, std::size_t index, pid_t pid) {
                   if (auto code = rebuild_error_code(d))
                     return std::make_exception_ptr(
                         remote_task_error<std::system_error>(std::system_error(*code, d.message), d, index, pid));
                   return std::make_exception_ptr(
                       remote_task_error<std::runtime_error>(std::runtime_error(d.message), d, index, pid));
                 }});
    t.push_back(standard_entry<std::runtime_error>());
    t.push_back(standard_entry<std::bad_array_new_length>());
    t.push_back(standard_entry<std::bad_alloc>());
    t.push_back(standard_entry<std::bad_any_cast>());
    t.push_back(standard_entry<std::bad_cast>());
    t.push_back(standard_entry<std::bad_typeid>());
    t.push_back(standard_entry<std::bad_function_call>());
    t.push_back(standard_entry<std::bad_optional_access>());
    t.push_back(standard_entry<std::bad_variant_access>());
    t.push_back(standard_entry<std::bad_weak_ptr>());
    t.push_back(standard_entry<std::bad_exception>());
    t.push_back(standard_entry<std::exception>());
    return t;
  }();
  return table;
}

/// Types users registered, newest first. A lock-free list that only grows:
/// workers are forked at any moment, and a mutex held by another thread at
/// that moment would stay locked in the child for ever.
inline std::atomic<const exception_type_entry*>& user_exception_types() {
  static std::atomic<const exception_type_entry*> head{nullptr};
  return head;
}

inline void add_user_exception_type(exception_type_entry entry) {
  auto* node = new exception_type_entry(std::move(entry));  // reachable from the list head for ever
  auto& head = user_exception_types();
  node->next = head.load(std::memory_order_acquire);
  while (!head.compare_exchange_weak(node->next, node, std::memory_order_acq_rel)) {
  }
}

/// The nearest user-registered type `e` is an instance of (newest first), or null.
inline const exception_type_entry* nearest_user_type(const std::exception& e) {
  for (auto* u = user_exception_types().load(std::memory_order_acquire); u; u = u->next)
    if (u->matches(e)) return u;
  return nullptr;
}

/// The nearest standard type `e` is an instance of (std::exception at worst).
inline const exception_type_entry* nearest_standard_type(const std::exception& e) {
  for (const auto& s : standard_exception_types())
    if (s.matches(e)) return &s;
  return nullptr;
}

inline const exception_type_entry* exception_type_named(std::string_view name) {
  if (name.empty()) return nullptr;
  for (auto* u = user_exception_types().load(std::memory_order_acquire); u; u = u->next)
    if (u->name == name) return u;
  for (const auto& s : standard_exception_types())
    if (s.name == name) return &s;
  return nullptr;
}

/// Describes the exception being handled; call only inside a catch block.
/// Non-std::exception throws (`throw 42`) are named by their type too.
inline exception_description describe_current_exception() {
  try {
    throw;
  } catch (const std::exception& e) {
    exception_description d;
    d.type_name = demangle(typeid(e).name());
    d.message = e.what();
    if (const auto* standard = nearest_standard_type(e)) d.standard_base = standard->name;
    const auto* user = nearest_user_type(e);
    d.rebuild_as = user ? user->name : d.standard_base;
    if (const auto* se = dynamic_cast<const std::system_error*>(&e)) {
      d.code = se->code().value();
      d.category = se->code().category().name();
    }
    return d;
  } catch (...) {
    const std::type_info* t = abi::__cxa_current_exception_type();
    exception_description d;
    d.type_name = t ? demangle(t->name()) : std::string("unknown exception");
    return d;
  }
}

/// The exception the caller sees for a task that failed as `d` described:
/// of the type named by `d.rebuild_as`, or if this process does not know it
/// (or its factory throws) of `d.standard_base`, or else std::runtime_error;
/// and a task_error.
inline std::exception_ptr make_task_error(const exception_description& d, std::size_t index, pid_t pid) {
  for (const std::string* name : {&d.rebuild_as, &d.standard_base}) {
    if (const auto* type = exception_type_named(*name)) {
      try {
        return type->rebuild(d, index, pid);
      } catch (...) {
        // A user's factory threw: the caller still gets the task's failure.
      }
    }
  }
  return std::make_exception_ptr(remote_task_error<std::runtime_error>(std::runtime_error(d.message), d, index, pid));
}

}  // namespace coshard::detail
