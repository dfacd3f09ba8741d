#!/usr/bin/env bash
# Measures the example figures the README quotes and writes them, with the
# commands that produced them, to docs/results/examples.txt. Needs build/
# (./scripts/run-examples.sh builds it). Runs: the crawler's default run
# (3 times), ngram_count with --verify on the generated 200 MB 1-gram file
# (3 times, each a fresh process), and the Python pattern on that file
# (benchmarks/python/ngram.py, 1 pass each way).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install-deps.sh python3-doc >/dev/null

out=docs/results/examples.txt
mkdir -p "$(dirname "$out")"
crawler=build/examples/crawler/crawler
ngram=build/examples/ngram_count/ngram_count
file=/tmp/coshard-ngram-200mb.tsv
[[ -f $file ]] || "$ngram" --generate "$file" --size-mb 200 >/dev/null

run() {  # prints the command, its output, and wall/CPU time (all processes)
  echo "\$ $*"
  /usr/bin/time -f "[wall %e s, user %U s, sys %S s]" "$@" 2>&1
  echo
}

{
  echo "# Example figures quoted in README.md, measured $(date -u +%Y-%m-%d) on $(nproc) cores"
  echo "# ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); produced by $0"
  echo
  for i in 1 2 3; do run "$crawler"; done
  for i in 1 2 3; do run "$ngram" "$file" --workers 2 --verify; done
  run /usr/bin/python3 benchmarks/python/ngram.py --input "$file" --workers 2
} | tee "$out"
