// crawler/static_server.hpp - a small HTTP/1.1 static file server on its own
// thread, so that the crawler has a site to crawl without nginx: 127.0.0.1 on
// an ephemeral port, keep-alive, GET and HEAD, Content-Type by extension, 404
// for what is missing, requests parsed by libhttp-parser. Files are cached in
// memory after the first read: the point is to measure the crawler, not the
// disk.
//
// Construct it *after* the coshard pool: workers are forked when the pool is
// built, and forking while this server's thread runs would copy its state
// into every worker for nothing.
#pragma once

#include <coshard/coshard.hpp>  // Asio configuration first

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <http_parser.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

namespace crawler {

class static_server {
 public:
  /// Serves `root` on 127.0.0.1:<ephemeral>; throws if it cannot listen.
  explicit static_server(std::filesystem::path root)
      : root_(std::move(root)), acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    asio::co_spawn(io_, accept_loop(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }

  static_server(const static_server&) = delete;
  static_server& operator=(const static_server&) = delete;

  /// Stops serving; open connections are dropped with the io_context.
  ~static_server() {
    io_.stop();
    thread_.join();
  }

  [[nodiscard]] std::uint16_t port() const { return acceptor_.local_endpoint().port(); }

 private:
  using tcp = asio::ip::tcp;
  static constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

  struct request {
    std::string target;
    bool complete = false;
  };

  static const http_parser_settings& request_settings() {
    static const http_parser_settings settings = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_url = [](http_parser* p, const char* at, std::size_t n) {
        auto& req = *static_cast<request*>(p->data);
        if (req.target.size() + n > 8192) return 1;  // refuse absurd request lines
        req.target.append(at, n);
        return 0;
      };
      s.on_message_complete = [](http_parser* p) {
        static_cast<request*>(p->data)->complete = true;
        http_parser_pause(p, 1);  // stop here: a pipelined next request stays unparsed
        return 0;
      };
      return s;
    }();
    return settings;
  }

  static std::string_view content_type(const std::filesystem::path& file) {
    static const std::unordered_map<std::string, std::string_view> types{
        {".html", "text/html; charset=utf-8"}, {".htm", "text/html; charset=utf-8"},
        {".css", "text/css"},                  {".js", "text/javascript"},
        {".txt", "text/plain; charset=utf-8"}, {".json", "application/json"},
        {".xml", "application/xml"},           {".svg", "image/svg+xml"},
        {".png", "image/png"},                 {".jpg", "image/jpeg"},
        {".jpeg", "image/jpeg"},               {".gif", "image/gif"},
        {".ico", "image/x-icon"},              {".pdf", "application/pdf"},
        {".woff", "font/woff"},                {".woff2", "font/woff2"},
        {".zip", "application/zip"},           {".py", "text/plain; charset=utf-8"}};
    auto it = types.find(file.extension().string());
    return it == types.end() ? std::string_view("application/octet-stream") : it->second;
  }

  static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // Maps a request target to a file under the root, or returns an empty path.
  // The check is lexical: after percent-decoding, no segment may be "..", so
  // no request reaches outside the root (symlinks inside the root are
  // followed, as nginx does by default).
  std::filesystem::path file_for(std::string_view target) const {
    target = target.substr(0, target.find_first_of("?#"));
    if (!target.starts_with('/')) return {};
    std::string path;
    for (std::size_t i = 0; i < target.size(); ++i) {
      if (target[i] == '%' && i + 2 < target.size() && hex_value(target[i + 1]) >= 0 &&
          hex_value(target[i + 2]) >= 0) {
        path += static_cast<char>(hex_value(target[i + 1]) * 16 + hex_value(target[i + 2]));
        i += 2;
      } else {
        path += target[i];
      }
    }
    if (path.find('\0') != std::string::npos || path.find('\\') != std::string::npos) return {};
    std::filesystem::path rel;
    std::istringstream segments(path);
    for (std::string seg; std::getline(segments, seg, '/');) {
      if (seg == "..") return {};
      if (!seg.empty() && seg != ".") rel /= seg;
    }
    std::filesystem::path full = root_ / rel;
    std::error_code ec;
    if (path.ends_with('/') || std::filesystem::is_directory(full, ec)) full /= "index.html";
    return full;
  }

  // The file's bytes, from the cache or the disk; null if it is not a regular file.
  std::shared_ptr<const std::string> load(const std::filesystem::path& file) {
    const std::string key = file.string();
    if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec)) return nullptr;
    std::ifstream in(file, std::ios::binary);
    if (!in) return nullptr;
    std::ostringstream bytes;
    bytes << in.rdbuf();
    auto body = std::make_shared<const std::string>(std::move(bytes).str());
    cache_.emplace(key, body);
    return body;
  }

  asio::awaitable<void> accept_loop() {
    for (;;) {
      auto [err, socket] = co_await acceptor_.async_accept(use_tuple);
      if (err == asio::error::operation_aborted) co_return;
      if (err) continue;  // e.g. EMFILE: drop this one, keep serving
      asio::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      asio::co_spawn(io_, session(std::move(socket)), asio::detached);
    }
  }

  asio::awaitable<void> session(tcp::socket socket) {
    std::array<char, 16 * 1024> buffer;
    std::string pending;  // received, not yet parsed
    for (;;) {
      request req;
      http_parser parser;
      http_parser_init(&parser, HTTP_REQUEST);
      parser.data = &req;
      while (!req.complete) {
        if (pending.empty()) {
          auto [err, n] = co_await socket.async_read_some(asio::buffer(buffer), use_tuple);
          if (err) co_return;  // EOF or reset: the client is done
          pending.assign(buffer.data(), n);
        }
        const std::size_t used = http_parser_execute(&parser, &request_settings(), pending.data(), pending.size());
        const auto perr = HTTP_PARSER_ERRNO(&parser);
        if (perr != HPE_OK && perr != HPE_PAUSED) {
          co_await reply(socket, 400, "text/plain", nullptr, false, false);
          co_return;
        }
        pending.erase(0, used);
      }
      const bool keep_alive = http_should_keep_alive(&parser) != 0;
      const bool head = parser.method == HTTP_HEAD;
      bool ok;
      if (parser.method != HTTP_GET && !head) {
        ok = co_await reply(socket, 405, "text/plain", nullptr, head, keep_alive);
      } else if (const auto file = file_for(req.target); file.empty()) {
        ok = co_await reply(socket, 404, "text/plain", nullptr, head, keep_alive);
      } else if (auto body = load(file)) {
        ok = co_await reply(socket, 200, content_type(file), std::move(body), head, keep_alive);
      } else {
        ok = co_await reply(socket, 404, "text/plain", nullptr, head, keep_alive);
      }
      if (!ok || !keep_alive) co_return;
    }
  }

  // Writes one response (headers and body in one gathered write).
  static asio::awaitable<bool> reply(tcp::socket& socket, int status, std::string_view type,
                                     std::shared_ptr<const std::string> body, bool head, bool keep_alive) {
    static const std::string not_found = "not found\n", bad_request = "bad request\n",
                             not_allowed = "method not allowed\n";
    const std::string& text = body ? *body
                              : status == 404 ? not_found
                              : status == 405 ? not_allowed
                                              : bad_request;
    const char* reason = status == 200 ? "OK" : status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed" : "Bad Request";
    std::string headers = "HTTP/1.1 " + std::to_string(status) + " " + reason +
                          "\r\nServer: coshard-crawler\r\nContent-Type: " + std::string(type) +
                          "\r\nContent-Length: " + std::to_string(text.size()) +
                          (status == 405 ? "\r\nAllow: GET, HEAD" : "") +
                          (keep_alive ? "\r\n\r\n" : "\r\nConnection: close\r\n\r\n");
    std::array<asio::const_buffer, 2> parts{asio::buffer(headers),
                                            head ? asio::const_buffer() : asio::buffer(text)};
    auto [err, n] = co_await asio::async_write(socket, parts, use_tuple);
    (void)n;
    co_return !err;
  }

  std::filesystem::path root_;
  asio::io_context io_{1};
  tcp::acceptor acceptor_;
  std::unordered_map<std::string, std::shared_ptr<const std::string>> cache_;  // only touched on io_'s thread
  std::thread thread_;
};

}  // namespace crawler
