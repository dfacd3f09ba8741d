// coshard/detail/demangle.hpp - readable names for the exception a task threw.
#pragma once

#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>

namespace coshard::detail {

inline std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                             std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(mangled);
}

struct exception_description {
  std::string type_name;
  std::string message;
};

/// Describes the exception being handled; call only inside a catch block.
/// Non-std::exception throws (`throw 42`) are named by their type too.
inline exception_description describe_current_exception() {
  try {
    throw;
  } catch (const std::exception& e) {
    return {demangle(typeid(e).name()), e.what()};
  } catch (...) {
    const std::type_info* t = abi::__cxa_current_exception_type();
    return {t ? demangle(t->name()) : std::string("unknown exception"), std::string()};
  }
}

}  // namespace coshard::detail
