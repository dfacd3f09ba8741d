// coshard/detail/parent/local_transport.hpp - the transport of a process_pool:
// workers forked by the pool's supervisor, one socketpair each.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/local/stream_protocol.hpp>

#include <optional>

#include "coshard/detail/frame_io.hpp"
#include "coshard/detail/parent/transport.hpp"
#include "coshard/detail/parent/worker_set.hpp"

namespace coshard::detail {

/// A worker's socketpair end, for one serving coroutine. On the pool's own
/// io_context the slot's registered socket is reused from job to job; on any
/// other executor the fd is registered for this channel only (it cannot stay
/// registered with a reactor the pool does not own) and handed back, never
/// closed, when the channel ends: the slot keeps owning the descriptor.
class local_channel final : public worker_channel {
  using socket = asio::local::stream_protocol::socket;

 public:
  local_channel(worker_slot& slot, const asio::any_io_executor& ex, asio::io_context* home) : slot_(slot) {
    if (home) {
      sock_ = &slot.socket_on(*home);
    } else {
      slot.release_socket();
      own_.emplace(ex);
      own_->assign(asio::local::stream_protocol(), slot.fd);
      sock_ = &*own_;
    }
  }
  ~local_channel() override {
    asio::error_code ignored;
    if (own_ && own_->is_open()) own_->release(ignored);
  }
  local_channel(const local_channel&) = delete;
  local_channel& operator=(const local_channel&) = delete;

  asio::awaitable<void> send(const frame_header& h, std::span<const std::byte> payload) override {
    return write_frame(*sock_, h, payload);
  }
  asio::awaitable<void> send(const frame_header& first, std::span<const std::byte> first_payload,
                             const frame_header& second, std::span<const std::byte> second_payload) override {
    return write_frames(*sock_, first, first_payload, second, second_payload);
  }
  asio::awaitable<std::span<const std::byte>> receive(frame_header& h) override {
    return slot_.reader->read(*sock_, h);
  }
  asio::awaitable<void> receive_into(frame_header& h, byte_buffer& out, std::size_t headroom) override {
    return slot_.reader->read_into(*sock_, h, out, headroom);
  }
  void interrupt() noexcept override {
    asio::error_code ignored;
    sock_->cancel(ignored);
  }

 private:
  worker_slot& slot_;
  socket* sock_ = nullptr;
  std::optional<socket> own_;
};

/// worker_transport over a worker_set.
class local_transport final : public worker_transport {
 public:
  explicit local_transport(worker_set& workers) : workers_(workers) {}

  [[nodiscard]] std::size_t slot_count() const noexcept override { return workers_.slots().size(); }
  [[nodiscard]] bool closing() const noexcept override { return workers_.closing(); }
  [[nodiscard]] bool forced_shutdown() const noexcept override { return workers_.forced_shutdown(); }
  [[nodiscard]] bool ready(std::size_t i) const noexcept override {
    const worker_slot& s = workers_.slots()[i];
    return s.live() && s.ready;
  }
  asio::awaitable<bool> bring_up(std::size_t i, std::function<void()>& interrupt) override {
    return workers_.bring_up(workers_.slots()[i], interrupt);
  }
  std::unique_ptr<worker_channel> open(std::size_t i, const asio::any_io_executor& ex,
                                       asio::io_context* home) override {
    return std::make_unique<local_channel>(workers_.slots()[i], ex, home);
  }
  [[nodiscard]] pid_t pid(std::size_t i) const noexcept override { return workers_.slots()[i].pid.load(); }
  worker_allowance& allowance(std::size_t i) noexcept override { return workers_.slots()[i].allowance; }
  void release(std::size_t i) noexcept override { workers_.drop_worker(workers_.slots()[i]); }
  void replace(std::size_t i) override {
    worker_slot& s = workers_.slots()[i];
    workers_.drop_worker(s);
    if (!workers_.closing()) workers_.request_start(s);
  }
  void kill_all() noexcept override { workers_.kill_all(); }
  asio::awaitable<worker_end> bury(std::size_t i, bool kill) override {
    worker_slot& s = workers_.slots()[i];
    worker_end end;
    end.pid = s.pid.load();
    if (kill && end.pid > 0) workers_.supervisor().kill(end.pid);
    end.status =
        end.pid > 0 ? co_await workers_.exit_status(end.pid, co_await asio::this_coro::executor) : unknown_wait_status;
    // The status page is read before a restart resets it.
    end.timed_out_index = s.status ? s.status->timed_out_index.load() : worker_status::none;
    workers_.drop_worker(s);
    co_return end;
  }

 private:
  worker_set& workers_;
};

}  // namespace coshard::detail
