#!/usr/bin/env bash
# The crawler against the Python pattern (aiohttp + BeautifulSoup/lxml in a
# process pool) on the same site: builds examples/crawler in Release
# (build-release/), installs nginx, the python3 manual and the Python
# packages if missing, then benchmarks/crawler_compare.py starts nginx on
# 127.0.0.1 (config in a temporary directory, stopped at the end) and runs
# both crawlers in turn, PAIRS times, 2 workers x 64 concurrent each.
#
#   scripts/compare-crawler.sh [RESULTS_DIR]        (default: results)
#
# PAIRS (default 3) sets the rounds; BASELINE=path/to/another/crawler adds a
# third contender to every round (e.g. an older build). Writes
# RESULTS_DIR/crawler.json. Takes about 2 minutes on 2 cores (~30 s per
# Python run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

results=${1:-results}

./scripts/install-deps.sh nginx python3-doc python3-aiohttp python3-bs4 python3-lxml

cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DCOSHARD_BUILD_TESTS=OFF -DCOSHARD_BUILD_EXAMPLES=ON
cmake --build build-release -j2 --target crawler

mkdir -p "$results"
baseline=()
if [[ -n ${BASELINE:-} ]]; then baseline=(--baseline "$BASELINE"); fi
# Debian's python3: the packages above are installed for it.
/usr/bin/python3 benchmarks/crawler_compare.py --crawler build-release/examples/crawler/crawler \
  --pairs "${PAIRS:-3}" --workers 2 --concurrency 64 "${baseline[@]}" --json "$results/crawler.json"
