// coshard/impl/src.hpp - with COSHARD_SEPARATE_COMPILATION defined, include
// this in exactly one .cpp file of the program (and nothing of coshard's
// before it): that file compiles the pool's machinery once for the whole
// program. See coshard/detail/separate_compilation.hpp.
#pragma once

#if !defined(COSHARD_SEPARATE_COMPILATION)
#error "coshard/impl/src.hpp is for COSHARD_SEPARATE_COMPILATION builds; header-only builds need no source file"
#endif
#if defined(COSHARD_DEFINE_MACHINERY)
#error "coshard/impl/src.hpp must be included before any other coshard header in its file"
#endif

#define COSHARD_COMPILING_SOURCE 1
#include "coshard/coshard.hpp"
