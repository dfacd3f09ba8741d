// coshard/detail/parent/slot_scheduler.hpp - shares a pool's worker slots
// between the jobs that run at once.
//
// A job leases whole worker slots: while it holds one, it alone writes to
// that worker and reads its replies, on the job's own executor, exactly as if
// the pool were its own (no extra thread hop on the way to a worker). The
// scheduler decides who holds what: a free slot goes to the job that wants
// one and holds fewest (the one served longest ago among equals), and a job
// holding more than its share is asked to give a slot back. It does so at a
// batch boundary, once the worker has answered what it holds, so nothing is
// ever interrupted or lost by a handover. With more jobs than workers, every
// holder is asked, and the slots rotate between the jobs one drained lease at
// a time: a small job started beside a huge one waits for one of the huge
// job's batches, not for the huge job.
//
// Not a template, and free of Asio: a job tells it how many slots it could
// use (`demand`) and is woken through a function of its own when it is given
// some; the job's side is in job_engine.hpp.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

namespace coshard::detail {

class slot_scheduler {
 public:
  /// One running job's account with the scheduler.
  class tenant {
   public:
    /// Cheap, racy hint that the scheduler may want a slot back: the job
    /// then asks try_yield() at its next batch boundary.
    [[nodiscard]] bool yield_hint() const noexcept { return yield_hint_.load(std::memory_order_relaxed); }

   private:
    friend class slot_scheduler;
    std::function<void()> wake_;        // tells the job it was granted slots; never under the lock
    std::vector<std::size_t> granted_;  // given, not yet picked up by the job
    std::size_t holding_ = 0;           // given and not released (picked up or not)
    std::size_t yielding_ = 0;          // promised back by try_yield, not yet released
    std::size_t demand_ = 0;            // slots the job could keep busy now, those it holds included
    std::uint64_t served_at_ = 0;       // when it last got a slot: the longest unserved goes first
    bool wake_pending_ = false;
    std::mutex wake_mutex_;  // a wake never reaches a job that has left (its executor may be gone)
    bool left_ = false;
    std::atomic<bool> yield_hint_{false};
    [[nodiscard]] std::size_t keeps() const noexcept { return holding_ - yielding_; }
    [[nodiscard]] bool wants() const noexcept { return demand_ > holding_; }
  };

  explicit slot_scheduler(std::size_t slots) : free_(slots, true) {}
  slot_scheduler(const slot_scheduler&) = delete;
  slot_scheduler& operator=(const slot_scheduler&) = delete;

  /// Adds a job that could use `demand` slots. Slots free now are returned in
  /// `now` (the job serves them at once); later grants are announced through
  /// `wake` (called from whichever thread frees a slot, never under the
  /// scheduler's lock, never after leave(); it must post, not run the job
  /// inline) and collected with take_grants().
  std::shared_ptr<tenant> join(std::size_t demand, std::function<void()> wake, std::vector<std::size_t>& now) {
    auto t = std::make_shared<tenant>();
    t->wake_ = std::move(wake);
    t->demand_ = demand;
    std::vector<std::shared_ptr<tenant>> to_wake;
    {
      std::lock_guard lock(mutex_);
      t->served_at_ = clock_++;
      tenants_.push_back(t);
      rebalance(to_wake);
      now = std::move(t->granted_);
      t->granted_.clear();
      t->wake_pending_ = false;
    }
    wake_all(to_wake, t.get());
    return t;
  }

  /// The job now could use `demand` slots (those it holds included).
  void set_demand(tenant& t, std::size_t demand) {
    std::vector<std::shared_ptr<tenant>> to_wake;
    {
      std::lock_guard lock(mutex_);
      if (t.demand_ == demand) return;
      t.demand_ = demand;
      rebalance(to_wake);
    }
    wake_all(to_wake);
  }

  /// The slots granted since the last call; the job serves each, then
  /// release()s it.
  std::vector<std::size_t> take_grants(tenant& t) {
    std::lock_guard lock(mutex_);
    t.wake_pending_ = false;
    return std::exchange(t.granted_, {});
  }

  /// Asked by a job holding a slot at a batch boundary: true if another job
  /// should have it. The job then sends it no more batches and releases it
  /// once its worker has answered what it holds.
  [[nodiscard]] bool try_yield(tenant& t) {
    std::lock_guard lock(mutex_);
    if (!should_yield(t)) {
      t.yield_hint_.store(false, std::memory_order_relaxed);
      return false;
    }
    ++t.yielding_;
    ++promised_;
    update_hints();
    return true;
  }

  /// Gives back a slot the job was granted (`yielded`: as promised by
  /// try_yield); it goes to the job that needs it most.
  void release(tenant& t, std::size_t slot, bool yielded) {
    std::vector<std::shared_ptr<tenant>> to_wake;
    {
      std::lock_guard lock(mutex_);
      if (yielded && t.yielding_ > 0) {
        --t.yielding_;
        --promised_;
      }
      --t.holding_;
      free_[slot] = true;
      rebalance(to_wake);
    }
    wake_all(to_wake);
  }

  /// Removes a finished job. Slots granted to it and not picked up go to
  /// others; it must have released every slot it picked up.
  void leave(tenant& t) {
    {
      std::lock_guard lock(t.wake_mutex_);
      t.left_ = true;
    }
    std::vector<std::shared_ptr<tenant>> to_wake;
    {
      std::lock_guard lock(mutex_);
      for (std::size_t s : t.granted_) {
        free_[s] = true;
        --t.holding_;
      }
      t.granted_.clear();
      t.demand_ = 0;
      promised_ -= std::min(promised_, t.yielding_);
      t.yielding_ = 0;
      tenants_.remove_if([&](const auto& u) { return u.get() == &t; });
      rebalance(to_wake);
    }
    wake_all(to_wake);
  }

 private:
  // Whether `t` holds more than its share while another job waits: one
  // holding at least two fewer slots, or none at all (more jobs than slots:
  // holders give way in turn). One slot promised back per such waiting job
  // at a time, so that one newcomer does not drain every slot of a holder.
  bool should_yield(const tenant& t) const {
    if (t.keeps() == 0) return false;
    std::size_t needy = 0;
    for (const auto& u : tenants_)
      if (u.get() != &t && u->wants() && (u->holding_ + 1 < t.keeps() || u->holding_ == 0)) ++needy;
    return needy > promised_;
  }

  void update_hints() {
    for (const auto& t : tenants_) t->yield_hint_.store(should_yield(*t), std::memory_order_relaxed);
  }

  // Free slots go, one at a time, to the wanting job that holds fewest
  // (served longest ago among equals); then every holder learns whether it
  // should give a slot back.
  void rebalance(std::vector<std::shared_ptr<tenant>>& to_wake) {
    for (std::size_t s = 0; s < free_.size(); ++s) {
      if (!free_[s]) continue;
      tenant* best = nullptr;
      std::shared_ptr<tenant> best_owner;
      for (const auto& t : tenants_)
        if (t->wants() && (!best || t->holding_ < best->holding_ ||
                           (t->holding_ == best->holding_ && t->served_at_ < best->served_at_)))
          best = (best_owner = t).get();
      if (!best) break;
      free_[s] = false;
      ++best->holding_;
      best->served_at_ = clock_++;
      best->granted_.push_back(s);
      if (!best->wake_pending_) {
        best->wake_pending_ = true;
        to_wake.push_back(best_owner);
      }
    }
    update_hints();
  }

  // Outside the scheduler's lock: a wake posts to the job's executor (never
  // runs it inline), under the tenant's own lock that leave() takes. A tenant whose grants were returned by join() is not woken.
  static void wake_all(const std::vector<std::shared_ptr<tenant>>& to_wake, const tenant* skip = nullptr) {
    for (const auto& t : to_wake)
      if (t.get() != skip) {
        std::lock_guard lock(t->wake_mutex_);
        if (!t->left_) t->wake_();
      }
  }

  std::mutex mutex_;
  std::vector<bool> free_;
  std::list<std::shared_ptr<tenant>> tenants_;  // shared: a wake may outlive the job's leave()
  std::uint64_t clock_ = 0;
  std::size_t promised_ = 0;  // slots promised back by try_yield and not yet released
};

}  // namespace coshard::detail
