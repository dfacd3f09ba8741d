#!/usr/bin/env bash
# Smoke test of ngram_count against independent counts made with awk, tr, sort
# and uniq:
#   1. a generated ~5 MB 1-gram file with bad lines mixed in, cut into several
#      chunks, counted by 2 workers (and --verify'd against the sequential count),
#      and counted by --sequential, without a pool;
#   2. the same file gzipped (one item, decompressed in a worker);
#   3. --text on a small tree of text files (one gzipped, one big enough to be
#      cut into chunks);
#   4. the usage lines' forms, options before, between and after the files:
#      each must count the file it names.
# Usage: smoke_test.sh path/to/ngram_count
# Exits non-zero, saying what differed, on any mismatch.
set -euo pipefail
export LC_ALL=C  # byte-wise tr/sort/awk, as the counter reads bytes

bin=${1:?usage: smoke_test.sh path/to/ngram_count}
[[ -x $bin ]] || { echo "smoke_test: $bin is not an executable" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# value KEY FILE: the value of a `KEY: value` line of the counter's output.
value() { awk -v k="$1" 'index($0, k ": ") == 1 { print substr($0, length(k) + 3); exit }' "$2"; }
# word_count WORD FILE: the count on the `word: WORD N` line.
word_count() { awk -v w="$1" '$1 == "word:" && $2 == w { print $3; exit }' "$2"; }

check() {  # check WHAT EXPECTED ACTUAL
  if [[ "$2" == "$3" ]]; then
    printf '  ok   %-24s %s\n' "$1" "$3"
  else
    printf '  FAIL %-24s expected %s, got %s\n' "$1" "$2" "$3"
    failures=$((failures + 1))
  fi
}

# --- 1. a generated 1-gram file with bad lines --------------------------------
ngrams=$tmp/ngrams.tsv
"$bin" --generate "$tmp/clean.tsv" --size-mb 5 --seed 42 >/dev/null
# Bad lines in the middle and at the end: too few / too many fields, empty
# word, non-numeric or negative count, no tabs at all. A blank line is not data
# and not an error. The last line has no newline.
awk 'NR == 1000 {
       print "Aardvark\t1999\t12"
       print "Aardvark\t1999\t12\t3\textra"
       print ""
       print "\t1999\t5\t1"
     }
     NR == 50000 { print "Aardvark\t1999\tlots\t3"; print "zebra\t1999\t-5\t1" }
     { print }
     END { print "just some words"; printf "Aardvark\t2012\t7\t1" }' "$tmp/clean.tsv" >"$ngrams"

# Three more words to look up, from the start, middle and end of the file.
lines=$(wc -l <"$ngrams")
words=$(awk -F'\t' -v n="$lines" 'NR == 10 || NR == int(n / 2) || NR == n - 5 { print $1 }' "$ngrams" | tr '\n' ' ')
read -r w1 w2 w3 <<<"$words"

reference=$tmp/reference.txt
awk -F'\t' -v words="Aardvark $words" '
  NF == 0 { next }
  NF != 4 || $1 == "" || $2 !~ /^[0-9]+$/ || $3 !~ /^[0-9]+$/ || $4 !~ /^[0-9]+$/ { bad++; next }
  { if (!($1 in count)) distinct++; count[$1] += $3; total += $3 }
  END {
    printf "total: %.0f\ndistinct_words: %d\nbad_lines: %d\n", total, distinct, bad
    n = split(words, w, " ")
    for (i = 1; i <= n; i++) printf "word: %s %.0f\n", w[i], count[w[i]]
  }' "$ngrams" >"$reference"

compare_ngram_run() {  # compare_ngram_run LABEL OUTPUT
  echo "$1:"
  for key in total distinct_words bad_lines; do
    check "$key" "$(value "$key" "$reference")" "$(value "$key" "$2")"
  done
  for w in Aardvark $w1 $w2 $w3; do
    check "word $w" "$(word_count "$w" "$reference")" "$(word_count "$w" "$2")"
  done
  check bytes "$(wc -c <"$ngrams" | tr -d ' ')" "$(value bytes "$2")"
}

lookups=(--word Aardvark --word "$w1" --word "$w2" --word "$w3")
# Small chunks so that the file is cut in several places.
"$bin" "$ngrams" --workers 2 --chunk-mb 0.5 --verify "${lookups[@]}" >"$tmp/plain.out"
compare_ngram_run "plain file, $(value chunks "$tmp/plain.out") chunks" "$tmp/plain.out"
# The chunk boundaries are what this run tests: the file must really be cut.
check "several chunks" yes "$( (($(value chunks "$tmp/plain.out") > 1)) && echo yes || echo no)"
check "--verify" ok "$(value verify "$tmp/plain.out")"
"$bin" "$ngrams" --sequential "${lookups[@]}" >"$tmp/sequential.out"
compare_ngram_run "plain file, --sequential" "$tmp/sequential.out"

# --- 2. the same file gzipped -------------------------------------------------
gzip -k "$ngrams"
"$bin" "$ngrams.gz" --workers 2 "${lookups[@]}" >"$tmp/gz.out"
compare_ngram_run ".gz file" "$tmp/gz.out"

# --- 3. --text on a tree of text files ---------------------------------------
tree=$tmp/text
mkdir -p "$tree/sub/deeper"
cat >"$tree/a.txt" <<'EOF'
The aardvark (Orycteropus afer) is a medium-sized, burrowing, nocturnal mammal.
It's the only living species of the order Tubulidentata -- AARDVARK, Aardvark!
Numbers 1500 and 2012 are not words; under_scores split words.
EOF
printf 'caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 -- bytes beyond ASCII separate words\nno newline at the end' >"$tree/sub/b.md"
cp /usr/share/common-licenses/GPL-3 "$tree/sub/deeper/license.txt" 2>/dev/null ||
  printf 'the quick brown fox jumps over the lazy dog\n%.0s' {1..2000} >"$tree/sub/deeper/license.txt"
gzip -c "$tree/a.txt" >"$tree/sub/deeper/a-again.txt.gz"
# A file of about 1 MB, so that it is cut into chunks at --chunk-mb 0.25.
shuf -n 150000 --random-source=<(yes) /usr/share/dict/american-english | paste -d ' ' - - - - - >"$tree/big.txt"

# Reference: every file (decompressed), a newline after each so that words do
# not join across files, cut into letter runs, lowercased, counted.
find "$tree" -type f | sort | while read -r f; do
  case $f in *.gz) gzip -dc "$f" ;; *) cat "$f" ;; esac
  echo
done | tr -cs 'A-Za-z' '\n' | tr 'A-Z' 'a-z' | grep -v '^$' | sort | uniq -c >"$tmp/text-ref.txt"

"$bin" --text "$tree" --workers 2 --chunk-mb 0.25 --top 1 --word Aardvark --word the --word words \
  --word caf --word zzznotaword --verify >"$tmp/text.out"
echo "--text, $(value files "$tmp/text.out") files, $(value chunks "$tmp/text.out") chunks:"
check "big.txt cut up" yes "$( (($(value chunks "$tmp/text.out") > $(value files "$tmp/text.out"))) && echo yes || echo no)"
check total "$(awk '{ s += $1 } END { print s }' "$tmp/text-ref.txt")" "$(value total "$tmp/text.out")"
check distinct_words "$(wc -l <"$tmp/text-ref.txt" | tr -d ' ')" "$(value distinct_words "$tmp/text.out")"
for w in aardvark the words caf zzznotaword; do
  check "word $w" "$(awk -v w="$w" '$2 == w { c = $1 } END { print c + 0 }' "$tmp/text-ref.txt")" \
    "$(word_count "$w" "$tmp/text.out")"
done
check "top 1 count" "$(sort -rn "$tmp/text-ref.txt" | awk 'NR == 1 { print $1 }')" \
  "$(value "top 1" "$tmp/text.out" | awk '{ print $2 }')"
check "--verify" ok "$(value verify "$tmp/text.out")"
"$bin" --text "$tree" --sequential --top 1 --word Aardvark --word the >"$tmp/text-seq.out"
for key in total distinct_words "top 1"; do
  check "--sequential $key" "$(value "$key" "$tmp/text.out")" "$(value "$key" "$tmp/text-seq.out")"
done
for w in aardvark the; do
  check "--sequential word $w" "$(word_count "$w" "$tmp/text.out")" "$(word_count "$w" "$tmp/text-seq.out")"
done

# --- 4. the usage lines' forms: options before, between and after the files --
# Each form must count the file it names ("--word W FILE" once took FILE as a
# second word and counted the default file instead).
echo "usage forms:"
ngram_forms=(
  "--word Aardvark $ngrams"
  "$ngrams --word Aardvark"
  "--word Aardvark --word $w1 --workers 2 $ngrams"
  "--workers 2 $ngrams --word Aardvark --word $w1 --top 3"
  "--top 3 --chunk-mb 1 --word Aardvark $ngrams --workers 1"
  "--verify --word $w1 $ngrams --word Aardvark"
)
for form in "${ngram_forms[@]}"; do
  read -r -a args <<<"$form"
  "$bin" "${args[@]}" >"$tmp/form.out"
  label=${form//$tmp\//}
  check "[$label] bytes" "$(wc -c <"$ngrams" | tr -d ' ')" "$(value bytes "$tmp/form.out")"
  check "[$label] total" "$(value total "$reference")" "$(value total "$tmp/form.out")"
  for w in Aardvark $w1; do
    if [[ " ${args[*]} " == *" --word "$w" "* ]]; then
      check "[$label] word $w" "$(word_count "$w" "$reference")" "$(word_count "$w" "$tmp/form.out")"
    fi
  done
done
aardvarks=$(tr -cs 'A-Za-z' '\n' <"$tree/a.txt" | tr 'A-Z' 'a-z' | grep -c '^aardvark$')
for form in "--text $tree/a.txt --word aardvark" "$tree/a.txt --text --word aardvark" \
            "--word aardvark --text $tree/a.txt"; do
  read -r -a args <<<"$form"
  "$bin" "${args[@]}" >"$tmp/form.out"
  label=${form//$tmp\//}
  check "[$label] files" 1 "$(value files "$tmp/form.out")"
  check "[$label] word aardvark" "$aardvarks" "$(word_count aardvark "$tmp/form.out")"
done
"$bin" --generate "$tmp/gen-a.tsv" --size-mb 1 --seed 7 >/dev/null
"$bin" --seed 7 --size-mb 1 --generate "$tmp/gen-b.tsv" >/dev/null
check "[--generate, options in either order] same file" yes \
  "$(cmp -s "$tmp/gen-a.tsv" "$tmp/gen-b.tsv" && echo yes || echo no)"

if ((failures)); then
  echo "smoke_test: $failures mismatches"
  exit 1
fi
echo "smoke_test: all checks passed"
