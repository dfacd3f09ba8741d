// coshard/detail/parent/transport.hpp - the seam between the job engine (which
// batches to send where, retries, results) and the workers it sends them to.
//
// The engine sees a fixed number of worker slots. Each slot has at most one
// worker at a time; the engine opens a channel to it for as long as it serves
// the slot, sends frames, reads replies, and learns of the worker's end when
// a send or a read fails. What a worker is and how its frames travel is the
// transport's business: local_transport.hpp runs forked workers behind
// socketpairs; a cluster transport (the MPI issue) is to run a remote rank
// behind MPI messages.
#pragma once

#include "coshard/detail/asio_config.hpp"

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>

#include "coshard/detail/byte_buffer.hpp"
#include "coshard/detail/wire.hpp"
#include "coshard/detail/worker_status.hpp"

namespace coshard::detail {

/// One worker's frames, both ways, while one coroutine serves its slot. All
/// calls are made on the executor the channel was opened on.
class worker_channel {
 public:
  virtual ~worker_channel() = default;

  /// Writes one frame. Throws std::system_error if the worker is gone.
  virtual asio::awaitable<void> send(const frame_header& h, std::span<const std::byte> payload) = 0;

  /// Writes two frames at once (a job's start and its first batch, so that
  /// starting a job costs no extra round trip). Errors as send().
  virtual asio::awaitable<void> send(const frame_header& first, std::span<const std::byte> first_payload,
                                     const frame_header& second, std::span<const std::byte> second_payload) = 0;

  /// Reads the next frame into `h`; the payload stays valid until the next
  /// receive. Throws std::system_error if the worker is gone
  /// (asio::error::operation_aborted after interrupt()), serialization_error
  /// if what arrived is not a frame.
  virtual asio::awaitable<std::span<const std::byte>> receive(frame_header& h) = 0;

  /// Reads the next frame as receive() does, into `out`: `headroom` bytes
  /// for the caller, the header, the payload. For a relay that passes frames
  /// on whole (a cluster rank); this default copies, a transport that can
  /// read into `out` directly overrides it.
  virtual asio::awaitable<void> receive_into(frame_header& h, byte_buffer& out, std::size_t headroom) {
    const auto payload = co_await receive(h);
    out.clear();
    out.grow(headroom);
    out.append(&h, sizeof h);
    out.append(payload.data(), payload.size());
  }

  /// Makes a receive in progress end with operation_aborted.
  virtual void interrupt() noexcept = 0;
};

/// How a worker ended, as far as the transport could learn it.
struct worker_end {
  pid_t pid = -1;
  /// A waitpid status, or unknown_wait_status.
  int status = 0;
  /// The input index the worker's watchdog stopped it over (worker_status::none if not).
  std::uint64_t timed_out_index = worker_status::none;
};

/// What the engine may send a slot's current worker: set by the transport
/// when a worker starts, counted by the engine as it sends.
struct worker_allowance {
  /// Items sent to this worker so far (for max_items_per_worker).
  std::size_t items_assigned = 0;
  /// Over max_worker_rss_bytes: replace it once it has answered what it holds.
  bool retire = false;
};

/// The workers one pool runs its jobs on, slot by slot. Calls about one slot
/// come from the coroutine that serves it (one at a time per slot).
class worker_transport {
 public:
  virtual ~worker_transport() = default;

  /// Whether slot `i`'s worker is on another machine (a cluster's other
  /// ranks): its reduce partials are held by default (job_options::hold_partials).
  [[nodiscard]] virtual bool is_remote(std::size_t /*i*/) const noexcept { return false; }

  /// The largest batch (encoded inputs, in bytes) to cut for slot `i`, below
  /// the job's max_batch_bytes where the way to the worker makes large
  /// batches dear (a cluster's other ranks).
  [[nodiscard]] virtual std::size_t batch_bytes_limit(std::size_t /*i*/) const noexcept {
    return std::numeric_limits<std::size_t>::max();
  }

  /// How many worker slots there are; fixed for the transport's life.
  [[nodiscard]] virtual std::size_t slot_count() const noexcept = 0;

  /// True once the pool is shutting down: no worker is started any more.
  [[nodiscard]] virtual bool closing() const noexcept = 0;

  /// True once a forced shutdown began (it kills workers under running jobs).
  [[nodiscard]] virtual bool forced_shutdown() const noexcept = 0;

  /// Whether slot `i` has a worker that said it is ready.
  [[nodiscard]] virtual bool ready(std::size_t i) const noexcept = 0;

  /// Waits on the calling coroutine's executor until slot `i` has a ready
  /// worker, starting one if none is starting. `interrupt` is set, for the
  /// time of the wait, to a function that ends it early: false is returned
  /// then. Throws pool_error if no worker can be started.
  virtual asio::awaitable<bool> bring_up(std::size_t i, std::function<void()>& interrupt) = 0;

  /// Opens slot `i`'s ready worker for the calling coroutine on `ex`. `home`,
  /// if given, is the pool's own io_context that `ex` belongs to, where the
  /// channel may stay registered from one job to the next.
  virtual std::unique_ptr<worker_channel> open(std::size_t i, const asio::any_io_executor& ex,
                                               asio::io_context* home) = 0;

  /// The process id of slot `i`'s worker (-1 if none), for error messages.
  [[nodiscard]] virtual pid_t pid(std::size_t i) const noexcept = 0;

  /// What slot `i`'s current worker may still be sent.
  virtual worker_allowance& allowance(std::size_t i) noexcept = 0;

  /// Lets slot `i`'s worker go (what it holds is of no more interest); it
  /// exits once it sees its channel end. The slot is empty afterwards.
  virtual void release(std::size_t i) noexcept = 0;

  /// Lets slot `i`'s worker go as release() does and asks for a replacement
  /// at once, unless the pool is closing.
  virtual void replace(std::size_t i) = 0;

  /// SIGKILLs every worker (a forced shutdown, or one whose grace ran out).
  /// Any thread.
  virtual void kill_all() noexcept = 0;

  /// After a send or receive failed: learns how slot `i`'s worker ended
  /// (killing it first if `kill`, or if it has not ended within 2 s), waited
  /// for on the calling coroutine's executor; then empties the slot. Does not
  /// ask for a replacement.
  virtual asio::awaitable<worker_end> bury(std::size_t i, bool kill) = 0;
};

}  // namespace coshard::detail
