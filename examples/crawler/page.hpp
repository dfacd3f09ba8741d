// crawler/page.hpp - the task a worker runs per URL: fetch, parse, summarise.
// An HTML body is parsed as it arrives (an html_stream behind the HTTP
// client's body_sink). page_result is what crosses back to the parent
// (cereal-serialised).
#pragma once

#include <coshard/coshard.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "html.hpp"
#include "http_client.hpp"
#include "url.hpp"

namespace crawler {

struct page_result {
  std::string url;
  int status = 0;                    // HTTP status, 0 if none arrived
  std::string error_kind;            // empty: fine; else "connect", "timeout", "http_404", ...
  std::string error;                 // detail for error_kind
  std::string title;
  std::vector<std::string> links;    // same-host, absolute, no fragment, unique (if asked for)
  std::uint64_t link_count = 0;      // links.size(), also when the list itself is not sent back
  std::uint64_t words = 0;
  std::uint64_t bytes = 0;           // body bytes

  template <class Archive>
  void serialize(Archive& ar) {
    ar(url, status, error_kind, error, title, links, link_count, words, bytes);
  }
};

/// Settings of a fetch; trivially copyable so that the task lambda may
/// capture it (coshard ships the lambda to the workers as bytes).
struct fetch_options {
  std::int64_t timeout_ms = 10'000;
  std::uint32_t max_idle = 64;       // idle keep-alive connections kept per worker
  bool return_links = true;          // false in --rounds mode: counts only, less to send back
};

inline bool is_html(const http_response& r) {
  // No Content-Type: sniffing is out of scope; treat as HTML like browsers mostly do.
  if (r.content_type.empty()) return true;
  const std::string type = detail::lower(r.content_type);
  return type.starts_with("text/html") || type.starts_with("application/xhtml");
}

/// The charset parameter of a Content-Type ("text/html; charset=UTF-8" ->
/// "UTF-8"), or empty.
inline std::string charset_of(std::string_view content_type) {
  const std::string lowered = detail::lower(content_type);
  auto at = lowered.find("charset=");
  if (at == std::string::npos) return {};
  std::string_view value = std::string_view(content_type).substr(at + 8);
  value = value.substr(0, value.find(';'));
  value = detail::trim(value);
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
  return std::string(value);
}

/// Parses the body of a successful HTML response while it downloads; other
/// responses (redirects, errors, images) are left to the client.
class html_body final : public body_sink {
 public:
  bool accept(const http_response& head) override {
    if (head.status >= 300 || !is_html(head)) return false;
    parser_.emplace(charset_of(head.content_type));
    return true;
  }
  void write(std::string_view piece) override { parser_->feed(piece); }

  /// The summary, if accept() took the body; call once, after the response.
  std::optional<html_summary> finish() {
    if (!parser_) return std::nullopt;
    return parser_->finish();
  }

 private:
  std::optional<html_stream> parser_;
};

/// Runs in a worker: GET `address`, and for an HTML page its title, links and
/// word count. Every failure is reported in the result, none is thrown.
inline asio::awaitable<page_result> fetch_page(std::string address, fetch_options opt) {
  page_result page;
  page.url = address;
  const auto u = parse_url(address);
  if (!u) {
    page.error_kind = "bad_url";
    page.error = "not an http:// URL";
    co_return page;
  }
  html_body parser;
  http_response r = co_await http_get(*u, std::chrono::milliseconds(opt.timeout_ms), opt.max_idle, &parser);
  page.status = r.status;
  page.bytes = r.body_bytes;
  if (!r.error_kind.empty()) {
    page.error_kind = std::move(r.error_kind);
    page.error = std::move(r.error);
    co_return page;
  }
  if (r.status >= 400) {
    page.error_kind = "http_" + std::to_string(r.status);
    page.error = "HTTP status " + std::to_string(r.status);
  }

  std::vector<std::string> links;
  std::unordered_set<std::string> seen;
  auto add_link = [&](const url& base, std::string_view href) {
    if (auto target = resolve(base, href); target && target->same_origin(*u)) {
      std::string s = target->str();
      if (seen.insert(s).second) links.push_back(std::move(s));
    }
  };
  if (r.status >= 300 && r.status < 400 && !r.location.empty()) {
    add_link(*u, r.location);  // a redirect is a link to follow
  } else if (std::optional<html_summary> parsed = parser.finish()) {
    const html_summary& html = *parsed;
    if (!html.ok) {
      page.error_kind = "html";
      page.error = "libxml2 could not create an HTML parser";
      co_return page;
    }
    page.title = html.title;
    page.words = html.words;
    url base = *u;
    if (!html.base_href.empty())
      if (auto b = resolve(*u, html.base_href)) base = *b;
    for (const auto& href : html.hrefs) add_link(base, href);
  }
  page.link_count = links.size();
  if (opt.return_links) page.links = std::move(links);
  co_return page;
}

}  // namespace crawler
