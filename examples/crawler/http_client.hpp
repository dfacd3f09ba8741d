// crawler/http_client.hpp - a small HTTP/1.1 GET client on Asio coroutines,
// meant to run inside one coshard worker process: keep-alive connections in
// a per-worker pool, responses parsed by libhttp-parser (status, headers,
// Content-Length, chunked or close-delimited bodies), a per-request deadline,
// and the body either kept whole or handed to a body_sink piece by piece.
//
// Failures are values, not exceptions: http_get() returns an http_response
// whose error_kind says what went wrong. That keeps one bad page from failing
// a batch, and lets the deadline race the request with awaitable operator||,
// which waits for the first *successful* branch (a throwing request would
// otherwise sit until the timer fired).
#pragma once

#include <coshard/coshard.hpp>  // Asio configuration first

#include <asio/connect.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <http_parser.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "url.hpp"

namespace crawler {

struct http_response {
  int status = 0;               // 0: no response
  std::string content_type;
  std::string location;         // for redirects
  std::string body;             // empty when a body_sink took the body
  std::size_t body_bytes = 0;   // body bytes received, whoever took them
  std::string error_kind;       // empty on success: "connect", "io", "protocol", "timeout", "too_large"
  std::string error;            // human-readable detail
};

/// Bodies above this are refused (the crawl is of web pages, not downloads).
inline constexpr std::size_t max_body_bytes = std::size_t{64} << 20;

/// Takes a response's body piece by piece as it comes off the socket, so
/// that it can be processed (parsed) while the rest is still in flight.
class body_sink {
 public:
  virtual ~body_sink() = default;
  /// Called once the status and headers are in: true to receive the body
  /// through write() instead of in http_response::body.
  virtual bool accept(const http_response& head) = 0;
  /// The next piece of the (de-chunked) body.
  virtual void write(std::string_view piece) = 0;
};

namespace detail {

using asio::ip::tcp;

// Completion token: (error_code, value) as a tuple, so that expected network
// errors are values rather than exceptions.
inline constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

struct connection {
  explicit connection(asio::any_io_executor ex) : socket(ex), buffer(64 * 1024) {}
  tcp::socket socket;
  std::vector<char> buffer;
};

// Idle keep-alive connections per "host:port", plus resolved endpoints.
// Connections are taken out while a request uses them, so at most
// `concurrency` (the pool option: items running at once in this worker) are
// busy; idle ones are capped by `max_idle`, normally the same number.
class connection_pool {
 public:
  std::unique_ptr<connection> take(const std::string& key) {
    auto it = idle_.find(key);
    if (it == idle_.end() || it->second.empty()) return nullptr;
    auto c = std::move(it->second.back());
    it->second.pop_back();
    --idle_count_;
    return c;
  }

  void give_back(const std::string& key, std::unique_ptr<connection> c, std::size_t max_idle) {
    if (idle_count_ >= max_idle) return;  // closed by the unique_ptr
    idle_[key].push_back(std::move(c));
    ++idle_count_;
  }

  std::unordered_map<std::string, tcp::resolver::results_type> endpoints;

 private:
  std::unordered_map<std::string, std::vector<std::unique_ptr<connection>>> idle_;
  std::size_t idle_count_ = 0;
};

// Worker-global state. Each coshard worker is its own process with one
// io_context for its whole life, so a function-local static is per worker;
// it is created lazily, on the first request, inside the worker (the parent
// never fetches, so forked workers start with none). It is deliberately
// leaked: destroying sockets after the worker's io_context is gone would be
// undefined; the kernel closes them when the process exits.
inline connection_pool& worker_connections() {
  static auto* pool = new connection_pool;
  return *pool;
}

// libhttp-parser callbacks collect into this.
struct parse_state {
  http_response* response = nullptr;
  body_sink* sink = nullptr;    // non-null once it has accepted this body
  std::string field, value;
  bool in_value = false;
  bool complete = false;
  bool too_large = false;

  void commit_header() {
    if (!field.empty()) {
      const std::string name = crawler::detail::lower(field);
      if (name == "content-type") response->content_type = value;
      else if (name == "location") response->location = value;
    }
    field.clear();
    value.clear();
    in_value = false;
  }
};

inline parse_state& state_of(http_parser* p) { return *static_cast<parse_state*>(p->data); }

inline const http_parser_settings& response_settings() {
  static const http_parser_settings settings = [] {
    http_parser_settings s;
    http_parser_settings_init(&s);
    s.on_header_field = [](http_parser* p, const char* at, std::size_t n) {
      auto& st = state_of(p);
      if (st.in_value) st.commit_header();
      st.field.append(at, n);
      return 0;
    };
    s.on_header_value = [](http_parser* p, const char* at, std::size_t n) {
      auto& st = state_of(p);
      st.in_value = true;
      st.value.append(at, n);
      return 0;
    };
    s.on_headers_complete = [](http_parser* p) {
      auto& st = state_of(p);
      st.commit_header();
      st.response->status = p->status_code;
      if (st.sink && !st.sink->accept(*st.response)) st.sink = nullptr;
      return 0;
    };
    s.on_body = [](http_parser* p, const char* at, std::size_t n) {
      auto& st = state_of(p);
      if (st.response->body_bytes + n > max_body_bytes) {
        st.too_large = true;
        return 1;  // stops the parser
      }
      st.response->body_bytes += n;
      if (st.sink) st.sink->write(std::string_view(at, n));
      else st.response->body.append(at, n);
      return 0;
    };
    s.on_message_complete = [](http_parser* p) {
      state_of(p).complete = true;
      // Pausing makes http_parser_execute stop right after this message, so
      // bytes beyond it are visible (and the connection is not reused).
      http_parser_pause(p, 1);
      return 0;
    };
    return s;
  }();
  return settings;
}

inline http_response failure(std::string kind, std::string message) {
  http_response r;
  r.error_kind = std::move(kind);
  r.error = std::move(message);
  return r;
}

// One GET on one connection. `fresh_needed` is set when a reused keep-alive
// connection turned out to be closed by the server before any byte of the
// response arrived: the caller then retries once on a new connection.
inline asio::awaitable<http_response> exchange(connection& c, const url& u, body_sink* sink, bool& keep_alive,
                                               bool& fresh_needed) {
  const std::string request = "GET " + u.target + " HTTP/1.1\r\nHost: " + u.authority() +
                              "\r\nUser-Agent: coshard-crawler/0.1\r\nAccept: */*\r\n"
                              "Accept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n";
  http_response r;
  parse_state st;
  st.response = &r;
  st.sink = sink;
  http_parser parser;
  http_parser_init(&parser, HTTP_RESPONSE);
  parser.data = &st;
  std::size_t received = 0;

  auto [werr, wn] = co_await asio::async_write(c.socket, asio::buffer(request),
                                               use_tuple);
  (void)wn;
  if (werr) {
    fresh_needed = true;
    co_return failure("io", "write: " + werr.message());
  }
  while (!st.complete) {
    auto [rerr, n] = co_await c.socket.async_read_some(asio::buffer(c.buffer),
                                                       use_tuple);
    if (rerr == asio::error::operation_aborted) co_return failure("timeout", "request cancelled");
    if (rerr && rerr != asio::error::eof) {
      fresh_needed = received == 0;
      co_return failure("io", "read: " + rerr.message());
    }
    if (rerr == asio::error::eof) {
      if (received == 0) {
        fresh_needed = true;
        co_return failure("io", "connection closed before a response");
      }
      http_parser_execute(&parser, &response_settings(), nullptr, 0);  // EOF ends a close-delimited body
      if (!st.complete) co_return failure("io", "connection closed in the middle of a response");
      keep_alive = false;
      break;
    }
    received += n;
    const std::size_t used = http_parser_execute(&parser, &response_settings(), c.buffer.data(), n);
    if (st.too_large) co_return failure("too_large", "body larger than " + std::to_string(max_body_bytes));
    const auto err = HTTP_PARSER_ERRNO(&parser);
    if (err != HPE_OK && err != HPE_PAUSED)
      co_return failure("protocol", std::string("bad response: ") + http_errno_description(err));
    if (st.complete) keep_alive = used == n && http_should_keep_alive(&parser) != 0;
  }
  co_return r;
}

// GET without a deadline: takes an idle connection (or connects), runs the
// exchange, and puts the connection back if it can carry another request.
inline asio::awaitable<http_response> get_once(url u, std::size_t max_idle, body_sink* sink) {
  auto ex = co_await asio::this_coro::executor;
  auto& pool = worker_connections();
  const std::string key = u.authority();

  for (int attempt = 0; attempt < 2; ++attempt) {
    std::unique_ptr<connection> c = pool.take(key);
    const bool reused = c != nullptr;
    if (!c) {
      c = std::make_unique<connection>(ex);
      auto found = pool.endpoints.find(key);
      if (found == pool.endpoints.end()) {
        tcp::resolver resolver(ex);
        auto [err, results] = co_await resolver.async_resolve(u.host, std::to_string(u.port),
                                                              use_tuple);
        if (err) co_return failure("connect", "resolve " + u.host + ": " + err.message());
        found = pool.endpoints.emplace(key, std::move(results)).first;
      }
      auto [err, ep] = co_await asio::async_connect(c->socket, found->second,
                                                    use_tuple);
      (void)ep;
      if (err == asio::error::operation_aborted) co_return failure("timeout", "connect cancelled");
      if (err) co_return failure("connect", "connect " + key + ": " + err.message());
      asio::error_code ignored;
      c->socket.set_option(tcp::no_delay(true), ignored);  // requests are one small write
    }
    bool keep_alive = false, fresh_needed = false;
    http_response r = co_await exchange(*c, u, sink, keep_alive, fresh_needed);
    if (!r.error_kind.empty() && reused && fresh_needed) continue;  // stale keep-alive: retry once
    if (r.error_kind.empty() && keep_alive) pool.give_back(key, std::move(c), max_idle);
    co_return r;
  }
  co_return failure("io", "connection closed twice before a response");
}

}  // namespace detail

/// GET `u` with a deadline. Never throws for network or protocol failures:
/// they come back in error_kind. On timeout the request is cancelled, and
/// its connection closed rather than reused (its state is unknown). If
/// `sink` is given and accepts the response, the body goes to it as it
/// arrives; a retry on a fresh connection happens only before any response
/// byte, so the sink sees at most one body.
inline asio::awaitable<http_response> http_get(url u, std::chrono::milliseconds timeout, std::size_t max_idle,
                                               body_sink* sink = nullptr) {
  using namespace asio::experimental::awaitable_operators;
  asio::steady_timer deadline(co_await asio::this_coro::executor, timeout);
  auto winner = co_await (detail::get_once(std::move(u), max_idle, sink) ||
                          deadline.async_wait(asio::use_awaitable));
  if (winner.index() == 1)
    co_return detail::failure("timeout", "no response within " + std::to_string(timeout.count()) + " ms");
  co_return std::get<0>(std::move(winner));
}

}  // namespace crawler
