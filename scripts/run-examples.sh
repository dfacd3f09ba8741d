#!/usr/bin/env bash
# Builds build/ and runs every example on its built-in defaults: the quick
# start, the articles' sum_to_num demo, the crawler on Debian's python3 HTML
# manual served by its embedded server, and ngram_count on a generated 200 MB
# 1-gram file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install-deps.sh python3-doc

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOSHARD_BUILD_EXAMPLES=ON
cmake --build build -j2 --target quickstart sum_to_num crawler ngram_count

examples=(
  quickstart
  sum_to_num
  crawler
  ngram_count
)

for name in "${examples[@]}"; do
  # Single-file examples land in build/examples/, the others in their own directory.
  exe=build/examples/$name
  [[ -f $exe && -x $exe ]] || exe=build/examples/$name/$name
  if [[ ! -f $exe || ! -x $exe ]]; then
    echo "== $name: not built, skipping =="
    continue
  fi
  echo "== $name =="
  "./$exe"
  echo "== $name: ok =="
done
