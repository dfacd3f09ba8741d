#!/usr/bin/env bash
# Full check: build + all tests (build/), then the unit tests again under
# ASan+UBSan (build-asan/). COSHARD_SKIP_ASAN=1 skips the sanitizer stage.
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
  exit 0
fi

echo "== build-asan/ (ASan + UBSan) =="
cmake -S . -B build-asan \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCOSHARD_SANITIZE=ON \
  -DCOSHARD_BUILD_TESTS=ON \
  -DCOSHARD_BUILD_EXAMPLES=OFF \
  -DCOSHARD_BUILD_BENCHMARKS=OFF
cmake --build build-asan -j2
ASAN_OPTIONS=detect_leaks=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j2 --timeout 600 \
    --no-tests=error -E package_
