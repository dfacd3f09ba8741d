#!/usr/bin/env bash
# Full check: build + all tests (build/), then the unit tests again under
# ASan+UBSan (build-asan/), then the decoders under libFuzzer (build-fuzz/).
# COSHARD_SKIP_ASAN=1 / COSHARD_SKIP_FUZZ=1 skip those stages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install-deps.sh

echo "== build/ (RelWithDebInfo) =="
cmake -S . -B build \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCOSHARD_BUILD_TESTS=ON \
  -DCOSHARD_BUILD_EXAMPLES=ON \
  -DCOSHARD_BUILD_BENCHMARKS=ON
cmake --build build -j2
ctest --test-dir build --output-on-failure -j2 --timeout 600 --no-tests=error

if [[ ${COSHARD_SKIP_ASAN:-0} == 1 ]]; then
  echo "== build-asan/ skipped (COSHARD_SKIP_ASAN=1) =="
else
  echo "== build-asan/ (ASan + UBSan) =="
  # -O1 -g1: the usual optimisation for sanitizer runs, and it compiles the
  # coroutine-heavy tests much faster than -O2 -g.
  cmake -S . -B build-asan \
    -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
    -DCOSHARD_SANITIZE=ON \
    -DCOSHARD_BUILD_TESTS=ON \
    -DCOSHARD_BUILD_EXAMPLES=OFF \
    -DCOSHARD_BUILD_BENCHMARKS=OFF
  cmake --build build-asan -j2
  ASAN_OPTIONS=detect_leaks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j2 --timeout 600 \
      --no-tests=error -E 'package_|compile_'
fi

# The decoders under libFuzzer (clang, ASan + UBSan) for a bounded time; a
# crash or sanitizer report fails the run.
if [[ ${COSHARD_SKIP_FUZZ:-0} == 1 ]]; then
  echo "== build-fuzz/ skipped (COSHARD_SKIP_FUZZ=1) =="
else
  echo "== build-fuzz/ (libFuzzer, ${COSHARD_FUZZ_SECONDS:-60} s) =="
  cmake -S . -B build-fuzz \
    -DCMAKE_CXX_COMPILER=clang++-14 \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCOSHARD_BUILD_TESTS=OFF \
    -DCOSHARD_BUILD_EXAMPLES=OFF \
    -DCOSHARD_BUILD_BENCHMARKS=OFF \
    -DCOSHARD_BUILD_FUZZERS=ON \
    -DCOSHARD_FUZZ_SECONDS="${COSHARD_FUZZ_SECONDS:-60}"
  cmake --build build-fuzz -j2
  ctest --test-dir build-fuzz --output-on-failure --no-tests=error -L fuzz
fi
