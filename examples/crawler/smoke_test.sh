#!/usr/bin/env bash
# Smoke test of examples/crawler: builds a 60-page site in a temporary
# directory, crawls it through the crawler's embedded server with 2 workers,
# and checks the CSV against the files:
#   - every linked page is reached (status 200), the unlinked page is not;
#   - each page's title in the CSV equals the <title> in its file;
#   - the one broken link is reported as a 404 error.
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
    echo "</ul></body></html>"
  } >"$file"
done
cat >"$site/orphan.html" <<'EOF'
<!DOCTYPE html><html><head><title>Orphan page</title></head><body>Nobody links here.</body></html>
EOF

csv=$work/crawl.csv
if ! timeout 120 "$crawler" --root "$site" --csv "$csv" --workers 2 --concurrency 8 >"$work/out.txt" 2>"$work/err.txt"; then
  cat "$work/out.txt" "$work/err.txt" >&2
  echo "FAIL: the crawler exited with an error" >&2
  exit 1
fi
cat "$work/out.txt"

# url,status,title,links,words -> status and title by path (the titles have no commas).
declare -A status title
while IFS=, read -r url code name _; do
  url=${url#http://127.0.0.1:*/}
  [[ -n ${status[$url]:-} ]] && fail "$url appears twice in the CSV"
  status[$url]=$code
  title[$url]=$name
done < <(tail -n +2 "$csv")

for ((i = 0; i <= pages; i++)); do
  p=${path[i]}
  want=$(sed -n 's:.*<title>\(.*\)</title>.*:\1:p' "$site/$p")
  if [[ -z ${status[$p]:-} ]]; then fail "$p was not reached"; continue; fi
  [[ ${status[$p]} == 200 ]] || fail "$p: status ${status[$p]}, expected 200"
  [[ ${title[$p]} == "$want" ]] || fail "$p: title '${title[$p]}' in the CSV, '$want' in the file"
done

[[ -n ${status[orphan.html]:-} ]] && fail "orphan.html was crawled although nothing links to it"
[[ ${status[d2/missing.html]:-} == 404 ]] || fail "d2/missing.html is not in the CSV with status 404"
expected_rows=$((pages + 2))  # index + pages + the missing one
[[ ${#status[@]} -eq $expected_rows ]] ||
  fail "${#status[@]} URLs in the CSV, expected $expected_rows (an external or unlinked page followed?)"
grep -q 'errors: 1 (http_404: 1)' "$work/out.txt" || fail "the summary does not report exactly one error, http_404"

if ((failures > 0)); then
  echo "crawler smoke test: $failures failure(s)" >&2
  exit 1
fi
echo "crawler smoke test: ok ($expected_rows URLs, titles match, one 404)"
