#!/usr/bin/env bash
# Builds build/ and runs every example on its built-in defaults.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install-deps.sh

cmake -S . -B build -DCOSHARD_BUILD_EXAMPLES=ON
cmake --build build -j2

examples=(
  quickstart
)

for name in "${examples[@]}"; do
  exe=build/examples/$name
  if [[ ! -x $exe ]]; then
    echo "== $name: not built (no examples/$name/main.cpp?), skipping =="
    continue
  fi
  echo "== $name =="
  "./$exe"
  echo "== $name: ok =="
done
