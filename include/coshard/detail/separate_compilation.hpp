// coshard/detail/separate_compilation.hpp - where the untyped machinery is
// compiled.
//
// By default coshard is header-only: every translation unit that builds a
// pool compiles the pool's machinery (workers, supervisor, scheduler, the
// job engine), several seconds at -O2. With COSHARD_SEPARATE_COMPILATION
// defined for the whole program, translation units only declare that
// machinery, and exactly one of them compiles it by including
// <coshard/impl/src.hpp> (the same arrangement as Asio's
// ASIO_SEPARATE_COMPILATION). The typed part of every job is compiled where
// the job is, in both modes.
#pragma once

#if defined(COSHARD_SEPARATE_COMPILATION)
// Declared in every translation unit, defined in the one including src.hpp.
#define COSHARD_DECL
#else
#define COSHARD_DECL inline
#endif

// True where the machinery's definitions are compiled: everywhere in
// header-only mode; in src.hpp's translation unit otherwise.
#if !defined(COSHARD_SEPARATE_COMPILATION) || defined(COSHARD_COMPILING_SOURCE)
#define COSHARD_DEFINE_MACHINERY 1
#else
#define COSHARD_DEFINE_MACHINERY 0
#endif
