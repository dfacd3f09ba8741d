#!/usr/bin/env bash
# Builds the benchmarks (Release, build-release/) and runs the whole suite
# side by side with the Python pattern: benchmarks/compare.py prints every
# target of docs/BENCHMARKS.md with its ratio and writes the JSON and a
# summary.md into the results directory; benchmarks/plot.py draws the PNGs.
# Then scripts/compare-crawler.sh runs the crawler against the Python
# crawler on nginx (writes crawler.json there too), and
# scripts/compare-mpi.sh the cluster against the local pool and mpi4py.
#
#   scripts/run-benchmarks.sh [RESULTS_DIR [PLOT_DIR]]     (defaults: results, results/img)
#
# Extra arguments for compare.py can be given in COMPARE_ARGS, e.g.
#   COMPARE_ARGS="--repetitions 5" scripts/run-benchmarks.sh
# Takes about 8 minutes on 2 cores (the Python ngram run alone is ~30 s, the
# crawler comparison about 2 minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

results=${1:-results}
plots=${2:-$results/img}

./scripts/install-deps.sh python3-matplotlib python3-joblib

cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DCOSHARD_BUILD_TESTS=OFF -DCOSHARD_BUILD_EXAMPLES=ON
cmake --build build-release -j2 --target ngram_count bench_dispatch bench_sum_to_num bench_ngram \
  bench_io_fanout bench_serialization

# The map-reduce input both sides read (the same generator as the example).
ngram_file=${COSHARD_NGRAM_FILE:-/tmp/coshard-ngram-200mb.tsv}
if [[ ! -f $ngram_file ]]; then
  build-release/examples/ngram_count/ngram_count --generate "$ngram_file" --size-mb 200
fi

# Debian's python3, as the Python side is meant to be measured with it.
# shellcheck disable=SC2086
/usr/bin/python3 benchmarks/compare.py --build-dir build-release --out "$results" \
  --ngram-file "$ngram_file" ${COMPARE_ARGS:-}
/usr/bin/python3 benchmarks/plot.py "$results" --out "$plots"

./scripts/compare-crawler.sh "$results"
./scripts/compare-mpi.sh | tee "$results/mpi.md"
