// SpinYielder: a thread that spins (a polling worker, a polling guest) gives its CPU away every few tens of
// microseconds while it finds nothing to do, so that on a machine with more runnable threads than CPUs it
// cannot starve the very thread it is waiting for. On an idle machine sched_yield returns at once.
//
// Threading: one per spinning thread.
#pragma once

#include <sched.h>

#include <chrono>

namespace blk {

class SpinYielder {
 public:
  using Clock = std::chrono::steady_clock;
  // One idle turn of the spin loop, at `now`.
  void Idle(Clock::time_point now) {
    if (now < next_yield_) return;
    ::sched_yield();
    next_yield_ = now + kInterval;
  }

 private:
  static constexpr std::chrono::microseconds kInterval{20};
  Clock::time_point next_yield_{};
};

}  // namespace blk
