// crawler/page.hpp - the task a worker runs per URL: fetch, parse, summarise.
// page_result is what crosses back to the parent (cereal-serialised).
#pragma once

#include <coshard/coshard.hpp>

#include <chrono>
#include <cstdint>
#include <string>
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
  http_response r = co_await http_get(*u, std::chrono::milliseconds(opt.timeout_ms), opt.max_idle);
  page.status = r.status;
  page.bytes = r.body.size();
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
  } else if (r.status < 300 && is_html(r)) {
    const html_summary html = summarize_html(r.body);
    if (!html.ok) {
      page.error_kind = "html";
      page.error = "gumbo produced no document";
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
