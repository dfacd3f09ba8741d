// Tests of crawler/html.hpp: what the streaming parser reports, that it does
// not depend on where the body is cut into pieces, and how it decodes
// charsets. The crawl itself is covered by smoke_test.sh.
#include "html.hpp"

#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace {

using crawler::html_stream;
using crawler::html_summary;

// A page with something for every part of the summary.
constexpr std::string_view page = R"(<!DOCTYPE html>
<html><head><meta charset="utf-8">
<title>
  Fish &amp; Chips &lt;3 &eacute;t&#233; &#x263A; café
</title>
<base href="/docs/"><base href="/ignored/">
<style>p { content: "not words" }</style>
<script>if (a < b && c) { var not_words = "</p>"; }</script>
</head>
<body>
<p>one two<b>three</b> <a href="a.html">four</a> <a href="b.html?x=1&amp;y=2#frag">five</a></p>
<noscript>hidden words</noscript>
<div>six</div>seven<br>eight<a name="anchor">nine</a>
<A HREF="UPPER.html">ten</A>
</body></html>
)";

void check_page_summary(const html_summary& s) {
  CHECK(s.ok);
  CHECK(s.title == "Fish & Chips <3 été ☺ café");
  CHECK(s.base_href == "/docs/");
  CHECK(s.hrefs == std::vector<std::string>{"a.html", "b.html?x=1&y=2#frag", "UPPER.html"});
  // one, twothree, four, five, six, seven, eightnine (<a> is inline too), ten
  CHECK(s.words == 8);
}

html_summary fed_in_pieces(std::string_view doc, std::size_t piece, std::string_view charset = {}) {
  html_stream parser(charset);
  for (std::size_t at = 0; at < doc.size(); at += piece) parser.feed(doc.substr(at, piece));
  return parser.finish();
}

}  // namespace

TEST_CASE("html_stream: title, links, base href and words of a whole page") {
  check_page_summary(crawler::summarize_html(page));
}

TEST_CASE("html_stream: the result does not depend on how the body is cut") {
  // One byte at a time cuts every tag, entity, word and UTF-8 sequence.
  for (std::size_t piece : {1, 2, 3, 7, 64, 1000}) {
    INFO("pieces of " << piece << " bytes");
    check_page_summary(fed_in_pieces(page, piece));
  }
}

TEST_CASE("html_stream: the HTTP charset, else <meta charset>, is decoded to UTF-8") {
  const std::string latin1_body = "<html><head><title>caf\xE9</title></head><body>na\xEFve</body></html>";
  SECTION("charset from Content-Type") {
    const html_summary s = crawler::summarize_html(latin1_body, "ISO-8859-1");
    CHECK(s.title == "café");
    CHECK(s.words == 1);
  }
  SECTION("a charset name libxml2 has no constant for (through iconv)") {
    CHECK(crawler::summarize_html("<title>\x80 5</title>", "windows-1252").title == "€ 5");
  }
  SECTION("charset from <meta>, the bytes fed one at a time") {
    const std::string doc = "<html><head><meta charset=\"iso-8859-1\"><title>caf\xE9</title></head></html>";
    CHECK(fed_in_pieces(doc, 1).title == "café");
  }
  SECTION("the HTTP charset wins over <meta>") {
    const std::string doc = "<html><head><meta charset=\"iso-8859-1\"><title>café</title></head></html>";
    CHECK(crawler::summarize_html(doc, "utf-8").title == "café");
  }
}

TEST_CASE("html_stream: broken or empty input still gives a summary") {
  const html_summary broken =
      crawler::summarize_html("<p>unclosed <b>bold <a href=x.html>link</div></span><title>Late</title> tail");
  CHECK(broken.ok);
  CHECK(broken.hrefs == std::vector<std::string>{"x.html"});
  CHECK(broken.title == "Late");
  CHECK(broken.words == 4);  // unclosed, bold, link, tail

  const html_summary empty = crawler::summarize_html("");
  CHECK(empty.ok);
  CHECK(empty.title.empty());
  CHECK(empty.hrefs.empty());
  CHECK(empty.words == 0);
}
