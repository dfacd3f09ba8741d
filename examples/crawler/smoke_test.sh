#!/usr/bin/env bash
# Smoke test of examples/crawler: builds a 60-page site in a temporary
# directory, crawls it through the crawler's embedded server with 2 workers,
# and checks the CSV against the files:
#   - every linked page is reached (status 200), the unlinked page is not;
#   - each page's title in the CSV equals the <title> in its file;
#   - the one broken link is reported as a 404 error;
#   - pages that exercise the HTML parser: entities and non-ASCII text in a
#     title, a <base href> that links must resolve against, the word count
#     of a page with script/style/noscript text (not words) and inline tags
#     (no word break), and a 2 MB page whose body arrives in many reads (a
#     link at its very end must still be followed, every word counted).
# Usage: smoke_test.sh path/to/crawler
set -euo pipefail

crawler=${1:?usage: smoke_test.sh path/to/crawler}
[[ -x $crawler ]] || { echo "FAIL: $crawler is not an executable" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
site=$work/site
mkdir -p "$site"

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# The site: index.html, then pages 1..59 in a tree with 4 children per page.
# Page i lives in d<depth>/p<i>.html; links use relative ../ paths, ./ paths
# with fragments, absolute paths and external URLs (which must be ignored).
pages=59
depth=(0)
path=(index.html)
for ((i = 1; i <= pages; i++)); do
  depth[i]=$((depth[(i - 1) / 4] + 1))
  path[i]=d${depth[i]}/p$i.html
done

for ((i = 0; i <= pages; i++)); do
  file=$site/${path[i]}
  mkdir -p "$(dirname "$file")"
  if ((i == 0)); then up=""; else up="../"; fi
  {
    echo "<!DOCTYPE html>"
    echo "<html><head><meta charset=\"utf-8\"><title>Smoke page $i (depth ${depth[i]})</title>"
    echo "<style>p { color: red }</style><script>var hidden = 'not words';</script></head>"
    echo "<body><h1 id=\"top\">Page $i</h1><p>Some visible text for page number $i.</p><ul>"
    for ((c = 4 * i + 1; c <= 4 * i + 4 && c <= pages; c++)); do
      echo "<li><a href=\"${up}${path[c]}\">child $c</a></li>"
    done
    echo "<li><a href=\"/index.html#top\">home</a> <a href=\"./${path[i]##*/}#top\">self</a></li>"
    echo "<li><a href=\"http://example.invalid/elsewhere.html\">elsewhere</a> <a href=\"mailto:nobody@example.invalid\">mail</a></li>"
    if ((i == 7)); then echo "<li><a href=\"../d2/missing.html\">broken link</a></li>"; fi
    if ((i == 0)); then
      echo "<li><a href=\"x/entities.html\">e</a> <a href=\"x/base.html\">b</a> <a href=\"x/words.html\">w</a>"
      echo "<a href=\"x/big.html\">big</a></li>"
    fi
    echo "</ul></body></html>"
  } >"$file"
done
cat >"$site/orphan.html" <<'EOF'
<!DOCTYPE html><html><head><title>Orphan page</title></head><body>Nobody links here.</body></html>
EOF

# The parser's pages, under x/ (x/ itself has no index: only links reach them).
mkdir -p "$site/x" "$site/based"
cat >"$site/x/entities.html" <<'EOF'
<!DOCTYPE html><html><head><meta charset="utf-8">
<title>  Fish &amp; Chips &lt;3
  &eacute;t&#233; &#x263A; café </title></head><body>Entities.</body></html>
EOF
entities_title='Fish & Chips <3 été ☺ café'
# Resolved against the page, "target.html" would be x/target.html (a 404).
cat >"$site/x/base.html" <<'EOF'
<html><head><base href="/based/"><title>Base page</title></head>
<body><a href="target.html">via base</a></body></html>
EOF
cat >"$site/based/target.html" <<'EOF'
<html><head><title>Base target</title></head><body>Reached through base href.</body></html>
EOF
# 7 words: one, twothree (inline tags do not split a word), &, four, five,
# six, seven (<br> and <script> do split); the title, script, style and
# noscript text are not words.
cat >"$site/x/words.html" <<'EOF'
<html><head><title>Words page</title><style>p { x: y }</style>
<script>var a = "not words" < 3;</script></head>
<body><p>one two<b>three</b> <i>&amp;</i></p><noscript>hidden text</noscript>
<div>four</div>five<br>six<script type="text/javascript">if (a < b && c) { no words }</script>seven</body></html>
EOF
# ~2.2 MB: far beyond one 64 KiB read, so tags, entities and words are cut
# between reads; 5 words a line, then 2 in the link to tail.html at the end.
big_lines=50000
{
  echo "<html><head><title>Big page</title></head><body>"
  for ((l = 0; l < big_lines; l++)); do echo "<p>alpha beta <i>gam</i>ma &amp; delta</p>"; done
  echo "<a href=\"tail.html\">tail link</a></body></html>"
} >"$site/x/big.html"
echo "<html><head><title>Tail page</title></head><body>The end.</body></html>" >"$site/x/tail.html"
extra_paths=(x/entities.html x/base.html based/target.html x/words.html x/big.html x/tail.html)

csv=$work/crawl.csv
if ! timeout 120 "$crawler" --root "$site" --csv "$csv" --workers 2 --concurrency 8 >"$work/out.txt" 2>"$work/err.txt"; then
  cat "$work/out.txt" "$work/err.txt" >&2
  echo "FAIL: the crawler exited with an error" >&2
  exit 1
fi
cat "$work/out.txt"

# url,status,title,links,words -> status, title and words by path (the titles have no commas).
declare -A status title words
while IFS=, read -r url code name _ count; do
  url=${url#http://127.0.0.1:*/}
  [[ -n ${status[$url]:-} ]] && fail "$url appears twice in the CSV"
  status[$url]=$code
  title[$url]=$name
  words[$url]=$count
done < <(tail -n +2 "$csv")

for ((i = 0; i <= pages; i++)); do
  p=${path[i]}
  want=$(sed -n 's:.*<title>\(.*\)</title>.*:\1:p' "$site/$p")
  if [[ -z ${status[$p]:-} ]]; then fail "$p was not reached"; continue; fi
  [[ ${status[$p]} == 200 ]] || fail "$p: status ${status[$p]}, expected 200"
  [[ ${title[$p]} == "$want" ]] || fail "$p: title '${title[$p]}' in the CSV, '$want' in the file"
done

for p in "${extra_paths[@]}"; do
  [[ ${status[$p]:-} == 200 ]] || fail "$p: status '${status[$p]:-}', expected 200"
done
[[ ${title[x/entities.html]:-} == "$entities_title" ]] ||
  fail "x/entities.html: title '${title[x/entities.html]:-}', expected '$entities_title'"
[[ ${title[based/target.html]:-} == "Base target" ]] || fail "based/target.html not reached through <base href>"
[[ ${words[x/words.html]:-} == 7 ]] || fail "x/words.html: ${words[x/words.html]:-} words, expected 7"
[[ ${words[x/big.html]:-} == $((5 * big_lines + 2)) ]] ||
  fail "x/big.html: ${words[x/big.html]:-} words, expected $((5 * big_lines + 2))"

[[ -n ${status[orphan.html]:-} ]] && fail "orphan.html was crawled although nothing links to it"
[[ ${status[d2/missing.html]:-} == 404 ]] || fail "d2/missing.html is not in the CSV with status 404"
expected_rows=$((pages + 2 + ${#extra_paths[@]}))  # index + pages + the missing one + the parser's
[[ ${#status[@]} -eq $expected_rows ]] ||
  fail "${#status[@]} URLs in the CSV, expected $expected_rows (an external or unlinked page followed?)"
grep -q 'errors: 1 (http_404: 1)' "$work/out.txt" || fail "the summary does not report exactly one error, http_404"

if ((failures > 0)); then
  echo "crawler smoke test: $failures failure(s)" >&2
  exit 1
fi
echo "crawler smoke test: ok ($expected_rows URLs; titles, entities, base href and word counts match; one 404)"
