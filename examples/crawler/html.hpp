// crawler/html.hpp - what the crawler takes from a page, via gumbo (an HTML5
// parser: it accepts any input, as browsers and BeautifulSoup do): the
// <title>, the href of every <a>, an optional <base href>, and a word count
// of the visible text.
#pragma once

#include <gumbo.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace crawler {

struct html_summary {
  bool ok = false;                  // false: gumbo produced no document
  std::string title;                // whitespace collapsed, entities decoded
  std::string base_href;            // <base href>, if any: links resolve against it
  std::vector<std::string> hrefs;   // raw href values of <a>, in document order
  std::uint64_t words = 0;
};

namespace detail {

inline bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

// Text that is never shown: scripts, styles, templates (and the title, which
// is reported separately).
inline bool hidden(GumboTag tag) {
  return tag == GUMBO_TAG_SCRIPT || tag == GUMBO_TAG_STYLE || tag == GUMBO_TAG_NOSCRIPT ||
         tag == GUMBO_TAG_TEMPLATE || tag == GUMBO_TAG_TITLE;
}

// Inline elements do not separate words ("foo<b>bar</b>" is one word, as in
// BeautifulSoup's get_text()); every other element does.
inline bool inline_element(GumboTag tag) {
  switch (tag) {
    case GUMBO_TAG_A: case GUMBO_TAG_ABBR: case GUMBO_TAG_B: case GUMBO_TAG_BDI: case GUMBO_TAG_BDO:
    case GUMBO_TAG_CITE: case GUMBO_TAG_CODE: case GUMBO_TAG_DATA: case GUMBO_TAG_DFN: case GUMBO_TAG_EM:
    case GUMBO_TAG_I: case GUMBO_TAG_KBD: case GUMBO_TAG_MARK: case GUMBO_TAG_Q: case GUMBO_TAG_S:
    case GUMBO_TAG_SAMP: case GUMBO_TAG_SMALL: case GUMBO_TAG_SPAN: case GUMBO_TAG_STRONG:
    case GUMBO_TAG_SUB: case GUMBO_TAG_SUP: case GUMBO_TAG_TIME: case GUMBO_TAG_U: case GUMBO_TAG_VAR:
    case GUMBO_TAG_FONT: case GUMBO_TAG_TT: case GUMBO_TAG_BIG: case GUMBO_TAG_STRIKE: case GUMBO_TAG_LABEL:
      return true;
    default:
      return false;
  }
}

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

inline std::string text_of(const GumboNode* node) {
  std::string out;
  const GumboVector& children = node->v.element.children;
  for (unsigned i = 0; i < children.length; ++i) {
    auto* child = static_cast<const GumboNode*>(children.data[i]);
    if (child->type == GUMBO_NODE_TEXT || child->type == GUMBO_NODE_WHITESPACE) out += child->v.text.text;
  }
  return out;
}

struct gumbo_deleter {
  void operator()(GumboOutput* out) const { gumbo_destroy_output(&kGumboDefaultOptions, out); }
};

}  // namespace detail

/// Parses `html` and extracts the summary. Walks the tree with an explicit
/// stack: deeply nested (or hostile) pages cannot overflow the coroutine's
/// thread stack.
inline html_summary summarize_html(std::string_view html) {
  html_summary s;
  std::unique_ptr<GumboOutput, detail::gumbo_deleter> doc(
      gumbo_parse_with_options(&kGumboDefaultOptions, html.data(), html.size()));
  if (!doc || !doc->root) return s;
  s.ok = true;

  bool in_word = false;
  // (node, entered): a node is pushed once to enter it and once more to leave it.
  std::vector<std::pair<const GumboNode*, bool>> stack{{doc->root, false}};
  while (!stack.empty()) {
    auto [node, leaving] = stack.back();
    stack.pop_back();
    if (node->type == GUMBO_NODE_TEXT || node->type == GUMBO_NODE_CDATA ||
        node->type == GUMBO_NODE_WHITESPACE) {
      for (unsigned char c : std::string_view(node->v.text.text)) {
        const bool space = detail::is_space(c);
        if (!space && !in_word) ++s.words;
        in_word = !space;
      }
      continue;
    }
    if (node->type != GUMBO_NODE_ELEMENT && node->type != GUMBO_NODE_TEMPLATE) continue;
    const GumboElement& el = node->v.element;
    if (!detail::inline_element(el.tag)) in_word = false;
    if (leaving) continue;

    if (el.tag == GUMBO_TAG_TITLE && s.title.empty()) s.title = detail::collapse_whitespace(detail::text_of(node));
    if (el.tag == GUMBO_TAG_A || (el.tag == GUMBO_TAG_BASE && s.base_href.empty())) {
      if (const GumboAttribute* href = gumbo_get_attribute(&el.attributes, "href")) {
        if (el.tag == GUMBO_TAG_A) s.hrefs.emplace_back(href->value);
        else s.base_href = href->value;
      }
    }
    if (detail::hidden(el.tag)) continue;

    stack.emplace_back(node, true);
    for (unsigned i = el.children.length; i-- > 0;)  // reversed: children pop in document order
      stack.emplace_back(static_cast<const GumboNode*>(el.children.data[i]), false);
  }
  return s;
}

}  // namespace crawler
