// crawler/html.hpp - what the crawler takes from a page, via libxml2's HTML
// parser in push (streaming) SAX mode: the <title>, the href of every <a>, an
// optional <base href>, and a word count of the visible text.
//
// Why SAX and push: building a DOM per page (as gumbo or BeautifulSoup do)
// was most of the crawler's CPU time, and none of the tree is needed. The
// parser is fed each piece of the body as it comes off the socket, so a page
// is parsed while the rest of it is still in flight and is never held whole.
// With HTML_PARSE_RECOVER libxml2 accepts any input, as browsers do.
#pragma once

#include <libxml/HTMLparser.h>
#include <libxml/encoding.h>
#include <libxml/parserInternals.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace crawler {

struct html_summary {
  bool ok = false;                 // false: libxml2 could not create a parser
  std::string title;               // whitespace collapsed, entities decoded, UTF-8
  std::string base_href;           // <base href>, if any: links resolve against it
  std::vector<std::string> hrefs;  // raw href values of <a>, in document order
  std::uint64_t words = 0;
};

namespace detail {

inline bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

inline std::string collapse_whitespace(std::string_view s) {
  std::string out;
  bool pending_space = false;
  for (unsigned char c : s) {
    if (is_space(c)) {
      pending_space = !out.empty();
    } else {
      if (pending_space) out += ' ';
      pending_space = false;
      out += static_cast<char>(c);
    }
  }
  return out;
}

// What an element means to the summary. libxml2 reports tag names in lower case.
enum class element_kind { block, inline_text, hidden, title, a, base };

inline element_kind kind_of(std::string_view tag) {
  // Text that is never shown: scripts, styles, templates. (The title is
  // hidden too, but reported separately.)
  static constexpr std::string_view hidden_tags[] = {"script", "style", "noscript", "template"};
  // Inline elements do not separate words ("foo<b>bar</b>" is one word, as in
  // BeautifulSoup's get_text()); every other element does.
  static constexpr std::string_view inline_tags[] = {"abbr", "b",     "bdi",  "bdo",    "cite", "code",   "data",
                                                     "dfn",  "em",    "i",    "kbd",    "mark", "q",      "s",
                                                     "samp", "small", "span", "strong", "sub",  "sup",    "time",
                                                     "u",    "var",   "font", "tt",     "big",  "strike", "label"};
  if (tag == "a") return element_kind::a;
  if (tag == "title") return element_kind::title;
  if (tag == "base") return element_kind::base;
  if (tag.size() > 8) return element_kind::block;  // longer than any name below
  for (std::string_view t : inline_tags)
    if (t == tag) return element_kind::inline_text;
  for (std::string_view t : hidden_tags)
    if (t == tag) return element_kind::hidden;
  return element_kind::block;
}

inline std::string_view view(const xmlChar* s) { return s ? reinterpret_cast<const char*>(s) : std::string_view{}; }

// The value of attribute `name` in libxml2's SAX1 list (name, value, name,
// value, ..., null), or null.
inline const xmlChar* attribute(const xmlChar** atts, std::string_view name) {
  for (; atts && atts[0]; atts += 2)
    if (view(atts[0]) == name) return atts[1] ? atts[1] : reinterpret_cast<const xmlChar*>("");
  return nullptr;
}

}  // namespace detail

/// Incremental HTML summariser: feed() the body in pieces of any size, as
/// they arrive, then finish(). Not copyable or movable: libxml2 holds a
/// pointer to it for its callbacks.
class html_stream {
 public:
  /// `charset` is the Content-Type header's charset, if there was one; it
  /// then wins over a <meta charset> in the page (as in browsers). Without
  /// it libxml2 takes the <meta> declaration, else UTF-8, falling back to
  /// ISO-8859-1 if the bytes are not UTF-8. Either way the summary is UTF-8.
  explicit html_stream(std::string_view charset = {}) {
    xmlCharEncoding enc = XML_CHAR_ENCODING_NONE;
    xmlCharEncodingHandlerPtr handler = nullptr;
    const std::string name(charset);
    if (!name.empty()) {
      enc = xmlParseCharEncoding(name.c_str());
      // Names outside libxml2's enum (e.g. windows-1252) go through iconv.
      if (enc == XML_CHAR_ENCODING_ERROR) {
        enc = XML_CHAR_ENCODING_NONE;
        handler = xmlFindCharEncodingHandler(name.c_str());
      }
    }
    // The handler is only copied into the context; the API just lacks the const.
    ctxt_ = htmlCreatePushParserCtxt(const_cast<htmlSAXHandler*>(&sax()), this, nullptr, 0, nullptr, enc);
    if (!ctxt_) return;
    int options = HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING | HTML_PARSE_NONET;
    if (enc != XML_CHAR_ENCODING_NONE || handler) options |= HTML_PARSE_IGNORE_ENC;
    htmlCtxtUseOptions(ctxt_, options);
    if (handler) xmlSwitchToEncoding(ctxt_, handler);
    summary_.ok = true;
  }

  html_stream(const html_stream&) = delete;
  html_stream& operator=(const html_stream&) = delete;

  ~html_stream() {
    if (ctxt_) htmlFreeParserCtxt(ctxt_);
  }

  /// Parses the next piece of the document; the callbacks run before it returns.
  void feed(std::string_view chunk) {
    if (!ctxt_ || finished_) return;
    while (!chunk.empty()) {  // htmlParseChunk takes an int size
      const auto n = static_cast<int>(std::min<std::size_t>(chunk.size(), INT_MAX));
      htmlParseChunk(ctxt_, chunk.data(), n, 0);
      chunk.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  /// Ends the document (flushing what libxml2 held back at the end of the
  /// last piece) and returns the summary; call once.
  html_summary finish() {
    if (ctxt_ && !finished_) htmlParseChunk(ctxt_, nullptr, 0, 1);
    finished_ = true;
    if (in_title_) end_title();
    return std::move(summary_);
  }

 private:
  static const htmlSAXHandler& sax() {
    static const htmlSAXHandler handler = [] {
      htmlSAXHandler h{};  // everything else null: no tree, no error output
      h.startElement = [](void* self, const xmlChar* name, const xmlChar** atts) {
        static_cast<html_stream*>(self)->start(detail::view(name), atts);
      };
      h.endElement = [](void* self, const xmlChar* name) { static_cast<html_stream*>(self)->end(detail::view(name)); };
      h.characters = [](void* self, const xmlChar* ch, int len) {
        static_cast<html_stream*>(self)->text(std::string_view(reinterpret_cast<const char*>(ch), len));
      };
      // Whitespace between elements still ends a word.
      h.ignorableWhitespace = h.characters;
      // libxml2 hands the raw content of <script> and <style> here: never words.
      h.cdataBlock = [](void*, const xmlChar*, int) {};
      return h;
    }();
    return handler;
  }

  void start(std::string_view tag, const xmlChar** atts) {
    using detail::element_kind;
    const element_kind kind = detail::kind_of(tag);
    if (kind != element_kind::inline_text && kind != element_kind::a) in_word_ = false;
    switch (kind) {
      case element_kind::a:
        if (const xmlChar* href = detail::attribute(atts, "href")) summary_.hrefs.emplace_back(detail::view(href));
        break;
      case element_kind::base:
        if (summary_.base_href.empty())
          if (const xmlChar* href = detail::attribute(atts, "href")) summary_.base_href = detail::view(href);
        break;
      case element_kind::title:
        ++hidden_depth_;
        if (!title_done_) in_title_ = true;
        break;
      case element_kind::hidden:
        ++hidden_depth_;
        break;
      default:
        break;
    }
  }

  void end(std::string_view tag) {
    using detail::element_kind;
    const element_kind kind = detail::kind_of(tag);
    if (kind != element_kind::inline_text && kind != element_kind::a) in_word_ = false;
    if (kind == element_kind::title || kind == element_kind::hidden) {
      if (hidden_depth_ > 0) --hidden_depth_;
      if (kind == element_kind::title && in_title_) end_title();
    }
  }

  // The first <title> with any text is the page's title.
  void end_title() {
    in_title_ = false;
    summary_.title = detail::collapse_whitespace(title_text_);
    title_text_.clear();
    title_done_ = !summary_.title.empty();
  }

  void text(std::string_view s) {
    if (in_title_) title_text_ += s;
    if (hidden_depth_ > 0) return;
    // A word may straddle two calls (and two network reads): in_word_ carries over.
    for (unsigned char c : s) {
      const bool space = detail::is_space(c);
      if (!space && !in_word_) ++summary_.words;
      in_word_ = !space;
    }
  }

  htmlParserCtxtPtr ctxt_ = nullptr;
  html_summary summary_;
  std::string title_text_;
  unsigned hidden_depth_ = 0;
  bool in_word_ = false, in_title_ = false, title_done_ = false, finished_ = false;
};

/// Parses a whole page at once (the same as one feed() and finish()).
inline html_summary summarize_html(std::string_view html, std::string_view charset = {}) {
  html_stream parser(charset);
  parser.feed(html);
  return parser.finish();
}

}  // namespace crawler
