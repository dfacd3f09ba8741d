#!/usr/bin/env bash
# Installs the Debian 12 packages coshard needs to build, test and benchmark,
# skipping those already installed. Runs apt-get update only when a package
# has no install candidate (e.g. on a fresh image with empty package lists).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(
  build-essential
  g++
  cmake
  libasio-dev
  libcereal-dev
  catch2
  libbenchmark-dev
  clang-14
  libclang-rt-14-dev   # sanitizer/fuzzer runtimes for clang
  # examples
  libcli11-dev         # command lines of the examples
  libhttp-parser-dev   # crawler: HTTP responses
  libxml2-dev          # crawler: HTML, parsed in streaming SAX mode as the body arrives (no DOM)
  zlib1g-dev           # ngram_count: .gz input
  wamerican            # ngram_count: words for the generator
  pkg-config           # the pkg-config package test
  gzip                 # ngram_count smoke test
  doxygen              # the API reference (ctest docs_reference)
  libopenmpi-dev       # coshard::mpi (the cluster across MPI ranks) and its tests
  openmpi-bin          # mpirun, which runs those tests on this machine
)
# Extra packages named on the command line (e.g. python3-doc for the crawler's
# default site) are installed the same way.
packages+=("$@")

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${packages[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all packages already installed"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps: missing packages (${missing[*]}); run as root or install sudo" >&2
  exit 1
fi

apt_get() {
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

has_candidate() {
  local cand
  cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')
  [[ -n $cand && $cand != "(none)" ]]
}

updated=0
for p in "${missing[@]}"; do
  if ! has_candidate "$p"; then
    echo "install-deps: no install candidate for $p; running apt-get update"
    apt_get update
    updated=1
    break
  fi
done

echo "install-deps: installing ${missing[*]}"
if ! apt_get install -y --no-install-recommends "${missing[@]}"; then
  if [[ $updated -eq 1 ]]; then
    exit 1
  fi
  # Stale package lists (e.g. 404 on a superseded version): refresh once, retry.
  echo "install-deps: install failed; running apt-get update and retrying"
  apt_get update
  apt_get install -y --no-install-recommends "${missing[@]}"
fi
