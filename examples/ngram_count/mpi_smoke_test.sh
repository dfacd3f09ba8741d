#!/usr/bin/env bash
# ngram_count --mpi under mpirun (root + 2 ranks, one worker each) counts a
# generated file exactly as the local pool does, with reduce partials held
# in the remote workers (the default) and with every worker holding
# (--hold-partials on, for the local pool too).
#   mpi_smoke_test.sh NGRAM_COUNT MPIEXEC
set -euo pipefail
ngram=$1 mpiexec=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$ngram" --generate "$tmp/in.tsv" --size-mb 20 > /dev/null
summary() { grep -E '^(files|chunks|bytes|lines|bad_lines|distinct_words|total|top [0-9]+|word):' "$1"; }
"$ngram" --workers 2 --chunk-mb 1 --word Aardvark --word zebra "$tmp/in.tsv" > "$tmp/local.out"
same_count() {  # same_count OUT WHAT: OUT counted what the local pool's default run did
  if ! diff <(summary "$tmp/local.out") <(summary "$1"); then
    echo "FAIL: $2 differs from the local pool's default count"
    exit 1
  fi
}
"$ngram" --workers 2 --chunk-mb 1 --hold-partials on --word Aardvark --word zebra "$tmp/in.tsv" \
  > "$tmp/local-on.out"
same_count "$tmp/local-on.out" "the local pool with --hold-partials on"
for hold in auto on; do
  "$mpiexec" --oversubscribe -np 3 "$ngram" --mpi --chunk-mb 1 --hold-partials "$hold" --word Aardvark \
    --word zebra "$tmp/in.tsv" > "$tmp/mpi.out"
  grep -qx 'ranks: 3' "$tmp/mpi.out" || { echo "FAIL: not 3 ranks"; cat "$tmp/mpi.out"; exit 1; }
  grep -qx 'workers: 3' "$tmp/mpi.out" || { echo "FAIL: not 3 workers"; cat "$tmp/mpi.out"; exit 1; }
  same_count "$tmp/mpi.out" "the cluster with --hold-partials $hold"
done
echo "PASS: $(grep -E '^total:' "$tmp/mpi.out") over $(grep -E '^chunks:' "$tmp/mpi.out")"
