// The one translation unit of a coshard::separate target that compiles the
// pool's machinery (COSHARD_SEPARATE_COMPILATION is set for the whole target).
#include <coshard/impl/src.hpp>
