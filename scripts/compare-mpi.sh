#!/usr/bin/env bash
# The MPI comparisons of docs/BENCHMARKS.md ("Across MPI ranks"): coshard's
# cluster (3 ranks x 1 worker) against process_pool (2 workers) and against
# mpi4py.futures, interleaved rounds, medians of paired ratios.
#
#   scripts/compare-mpi.sh [ROUNDS]        (default 5; about 2 minutes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/install-deps.sh python3-mpi4py
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DCOSHARD_BUILD_TESTS=OFF -DCOSHARD_BUILD_EXAMPLES=ON \
  -DCOSHARD_BUILD_BENCHMARKS=ON
cmake --build build-release -j2 --target ngram_count mpi_dispatch

ngram_file=${COSHARD_NGRAM_FILE:-/tmp/coshard-ngram-200mb.tsv}
if [[ ! -f $ngram_file ]]; then
  build-release/examples/ngram_count/ngram_count --generate "$ngram_file" --size-mb 200
fi
/usr/bin/python3 benchmarks/mpi/compare_mpi.py --build-dir build-release --rounds "${1:-5}" --ngram-file "$ngram_file"
