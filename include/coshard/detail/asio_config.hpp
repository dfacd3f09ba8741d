// coshard/detail/asio_config.hpp - included before any Asio header.
#pragma once

// Asio 1.22 recognises C++20 coroutines under clang only with libc++'s
// <experimental/coroutine>; clang 14 with libstdc++ has <coroutine> and the
// language feature, so say so. (The CMake target sets the same for users who
// include Asio before coshard.)
#if defined(__clang__) && defined(__cpp_impl_coroutine) && __has_include(<coroutine>)
#ifndef ASIO_HAS_CO_AWAIT
#define ASIO_HAS_CO_AWAIT 1
#endif
#ifndef ASIO_HAS_STD_COROUTINE
#define ASIO_HAS_STD_COROUTINE 1
#endif
#endif
