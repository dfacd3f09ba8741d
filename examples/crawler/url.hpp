// crawler/url.hpp - just enough of RFC 3986 for a same-host http:// crawler:
// parse an absolute URL, resolve an href against the page it appears on, and
// print the result in one normal form so that the parent's de-duplication
// sees "a/../b.html", "b.html#x" and "B.html" (other host case) as one page.
#pragma once

#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace crawler {

struct url {
  std::string host;            // lower case
  std::uint16_t port = 80;
  std::string target = "/";    // path + "?query", never a fragment

  /// "host" or "host:port": the Host header and the connection pool's key.
  [[nodiscard]] std::string authority() const {
    return port == 80 ? host : host + ":" + std::to_string(port);
  }
  [[nodiscard]] std::string str() const { return "http://" + authority() + target; }
  [[nodiscard]] bool same_origin(const url& o) const { return host == o.host && port == o.port; }
};

namespace detail {

inline std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

inline std::string_view trim(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// The target goes verbatim into the request line, so bytes that would end or
// split it (space, CR, LF, controls) and non-ASCII bytes are percent-encoded.
inline std::string encode_target(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c <= 0x20 || c >= 0x7f) {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

inline void drop_last_segment(std::string& out) {
  const auto slash = out.rfind('/');
  out.erase(slash == std::string::npos ? 0 : slash);
}

}  // namespace detail

/// RFC 3986 section 5.2.4, literally.
inline std::string remove_dot_segments(std::string in) {
  std::string out;
  while (!in.empty()) {
    if (in.starts_with("../")) {
      in.erase(0, 3);
    } else if (in.starts_with("./")) {
      in.erase(0, 2);
    } else if (in.starts_with("/./")) {
      in.replace(0, 3, "/");
    } else if (in == "/.") {
      in = "/";
    } else if (in.starts_with("/../")) {
      in.replace(0, 4, "/");
      detail::drop_last_segment(out);
    } else if (in == "/..") {
      in = "/";
      detail::drop_last_segment(out);
    } else if (in == "." || in == "..") {
      in.clear();
    } else {
      const auto end = in.find('/', in[0] == '/' ? 1 : 0);
      out.append(in, 0, end);
      in.erase(0, end);
    }
  }
  return out;
}

/// Parses "http://host[:port][/path][?query][#fragment]". Anything else
/// (https, user info, a bad port) is nullopt: the crawler skips it.
inline std::optional<url> parse_url(std::string_view s) {
  s = detail::trim(s);
  if (s.size() < 7 || detail::lower(s.substr(0, 7)) != "http://") return std::nullopt;
  s.remove_prefix(7);
  if (auto hash = s.find('#'); hash != std::string_view::npos) s = s.substr(0, hash);
  const auto auth_end = s.find_first_of("/?");
  std::string_view auth = s.substr(0, auth_end);
  std::string_view rest = auth_end == std::string_view::npos ? std::string_view{} : s.substr(auth_end);
  if (auth.empty() || auth.find('@') != std::string_view::npos) return std::nullopt;

  url u;
  std::string_view host = auth;
  const auto colon = auth.rfind(':');
  // "[::1]:8080" has colons inside the brackets; only one after ']' is a port.
  if (colon != std::string_view::npos && auth.find(']', colon) == std::string_view::npos) {
    host = auth.substr(0, colon);
    std::string_view digits = auth.substr(colon + 1);
    if (!digits.empty()) {
      unsigned long port = 0;
      for (char c : digits) {
        if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
        port = port * 10 + static_cast<unsigned long>(c - '0');
        if (port > 65535) return std::nullopt;
      }
      if (port == 0) return std::nullopt;
      u.port = static_cast<std::uint16_t>(port);
    }
  }
  if (host.empty()) return std::nullopt;
  u.host = detail::lower(host);

  std::string_view path = rest.substr(0, rest.find('?'));
  std::string_view query = path.size() < rest.size() ? rest.substr(path.size()) : std::string_view{};
  u.target = detail::encode_target(remove_dot_segments(path.empty() ? "/" : std::string(path))) +
             detail::encode_target(query);
  if (u.target.empty() || u.target[0] != '/') u.target.insert(0, "/");
  return u;
}

/// Resolves `href` against `base` (RFC 3986 section 5.2.2), dropping the
/// fragment. nullopt for other schemes (mailto:, javascript:, https:).
inline std::optional<url> resolve(const url& base, std::string_view href) {
  href = detail::trim(href);
  if (auto hash = href.find('#'); hash != std::string_view::npos) href = href.substr(0, hash);

  // A scheme is letters/digits/+-. before the first ':' that precedes any / ? #.
  const auto colon = href.find(':');
  if (colon != std::string_view::npos && colon > 0 && colon < href.find_first_of("/?")) {
    bool scheme = std::isalpha(static_cast<unsigned char>(href[0])) != 0;
    for (char c : href.substr(0, colon))
      scheme = scheme && (std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.');
    if (scheme) return detail::lower(href.substr(0, colon)) == "http" ? parse_url(href) : std::nullopt;
  }
  if (href.starts_with("//")) return parse_url("http:" + std::string(href));

  url out = base;
  const std::string_view path = href.substr(0, href.find('?'));
  const std::string_view query = href.substr(path.size());
  const std::string_view base_path = std::string_view(base.target).substr(0, base.target.find('?'));
  const std::string_view base_query = std::string_view(base.target).substr(base_path.size());
  std::string new_path;
  if (path.empty()) {
    new_path = std::string(base_path);
  } else if (path[0] == '/') {
    new_path = remove_dot_segments(std::string(path));
  } else {
    const auto slash = base_path.rfind('/');
    new_path = remove_dot_segments(std::string(base_path.substr(0, slash + 1)) + std::string(path));
  }
  if (new_path.empty() || new_path[0] != '/') new_path.insert(0, "/");
  out.target = detail::encode_target(new_path) +
               detail::encode_target(path.empty() && query.empty() ? base_query : query);
  return out;
}

}  // namespace crawler
