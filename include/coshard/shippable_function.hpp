// coshard/shippable_function.hpp - a callable the pool can run in this
// process's forked workers and, when its type allows, send to workers that
// were started by re-executing the program (start_method::exec).
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/awaitable.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "coshard/detail/entry_registry.hpp"

namespace coshard {

template <class Signature>
class shippable_function;

namespace detail {

template <class R>
struct is_awaitable_of_void : std::false_type {};
template <class E>
struct is_awaitable_of_void<asio::awaitable<void, E>> : std::true_type {};

// How a shipped callable of result R is run in the receiving process.
template <class R>
using shipped_invoker = R (*)(std::shared_ptr<const std::string> bytes);

// The registered entry of one callable type F. Referencing `id` instantiates
// it, which registers F in every process image of the binary, as job entries
// are.
template <class R, class F>
struct shipped_call {
  static R invoke(std::shared_ptr<const std::string> bytes) {
    if constexpr (is_awaitable_of_void<R>::value) {
      return invoke_async(std::move(bytes));
    } else {
      F f = object_from_bytes<F>(as_bytes(*bytes), "initializer");
      return f();
    }
  }
  // The object lives in the coroutine frame until the awaitable it returned
  // has finished (a lambda coroutine refers to its captures through `this`).
  static R invoke_async(std::shared_ptr<const std::string> bytes) {
    F f = object_from_bytes<F>(as_bytes(*bytes), "initializer");
    co_await f();
  }
  static std::span<const std::byte> as_bytes(const std::string& s) {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
  }
  inline static const std::uint64_t id =
      registry<shipped_invoker<R>>::add(type_hash<shipped_call>(), &invoke);
};

struct shippable_access;

}  // namespace detail

/// A nullary callable held for this process, plus, when its type allows, a
/// form that can be sent to another process image of the same binary. Used
/// for the pool's initializers: any callable converts to it implicitly (as to
/// std::function), so `.initializer = [] { ... }` reads as before.
///
/// Sendable: a lambda or function object that is empty or trivially copyable
/// (it captures only plain values). Not sendable, though still fine for the
/// default fork-server start: function pointers (an address means nothing in
/// a re-executed image), std::function (its target's type is not known), and
/// lambdas capturing strings, containers or other owning types.
///
/// What the type cannot show: a lambda that captures a reference, `this`, a
/// raw pointer, a string literal (`const char*`) or a std::string_view is
/// trivially copyable, so it is sent, but the address it holds means nothing
/// in the re-executed image (another address layout). Capture values only.
template <class R>
class shippable_function<R()> {
 public:
  shippable_function() = default;
  /// Holds nothing, as a default-constructed one.
  shippable_function(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor)

  /// Holds `f`; records its bytes and entry id when it can be sent.
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, shippable_function> &&
             !std::is_same_v<std::remove_cvref_t<F>, std::nullptr_t> &&
             std::is_invocable_r_v<R, std::decay_t<F>&>)
  shippable_function(F&& f) {  // NOLINT(google-explicit-constructor): reads like std::function
    using D = std::decay_t<F>;
    static_assert(!std::is_void_v<R> || !detail::is_awaitable_of_void<std::invoke_result_t<D&>>::value,
                  "coshard: this callable is a coroutine (it returns asio::awaitable<void>): assign it to "
                  "async_initializer, or it would never be awaited");
    if constexpr (std::is_class_v<D> && std::is_trivially_copyable_v<D>) {
      id_ = detail::shipped_call<R, D>::id;
      if (id_ != 0)
        bytes_ = std::make_shared<const std::string>(reinterpret_cast<const char*>(std::addressof(f)), sizeof(D));
      else
        refusal_ = "it was assigned during static initialisation, before its entry point was registered: "
                   "build the pool_options in main";
    } else if constexpr (std::is_pointer_v<D> || std::is_function_v<std::remove_reference_t<F>>) {
      refusal_ = "it is a function pointer, an address that means nothing in another process image: "
                 "wrap the call in a lambda, [] { init(); }";
    } else if constexpr (std::is_same_v<D, std::function<R()>>) {
      refusal_ = "it is a std::function, whose target type the pool cannot know: assign the lambda itself";
    } else {
      refusal_ = "its type is not trivially copyable (it captures something with its own copy constructor: a "
                 "std::string, a container, a std::pair or std::tuple, a smart pointer): capture only plain "
                 "values (numbers, enums, arrays of them, plain structs), or read the rest from the environment "
                 "or a file inside the initializer";
    }
    call_ = std::forward<F>(f);
  }

  /// True if a callable is held.
  explicit operator bool() const noexcept { return static_cast<bool>(call_); }

  /// Calls the held callable. Throws std::bad_function_call if there is none.
  R operator()() const { return call_(); }

  /// True if the callable can be sent to a re-executed process image.
  [[nodiscard]] bool sendable() const noexcept { return bytes_ != nullptr; }

  /// Why the callable cannot be sent ("" if it can, or if none is held).
  [[nodiscard]] std::string why_not_sendable() const { return call_ && !bytes_ ? refusal_ : ""; }

 private:
  friend struct detail::shippable_access;
  std::function<R()> call_;
  std::uint64_t id_ = 0;
  std::shared_ptr<const std::string> bytes_;
  const char* refusal_ = "";
};

namespace detail {

// The wire form of a shippable_function, for the exec start method.
struct shippable_access {
  template <class R>
  static std::uint64_t id(const coshard::shippable_function<R()>& f) noexcept {
    return f.id_;
  }
  template <class R>
  static std::string bytes(const coshard::shippable_function<R()>& f) {
    return f.bytes_ ? *f.bytes_ : std::string();
  }
  /// Rebuilds a callable sent by `id` and `bytes`. Throws pool_error if this
  /// image has no such entry (it is not the same binary).
  template <class R>
  static coshard::shippable_function<R()> rebuild(std::uint64_t id, std::string bytes) {
    coshard::shippable_function<R()> f;
    const shipped_invoker<R> invoke = registry<shipped_invoker<R>>::find(id);
    if (!invoke)
      throw pool_error("coshard: unknown initializer entry id " + std::to_string(id) +
                       ": the re-executed program is not the same binary as the pool's owner");
    f.id_ = id;
    f.bytes_ = std::make_shared<const std::string>(std::move(bytes));
    f.call_ = [invoke, bytes = f.bytes_] { return invoke(bytes); };
    return f;
  }
};

}  // namespace detail

}  // namespace coshard
