// The one clock of the datapath: CLOCK_MONOTONIC in nanoseconds (retry deadlines, held completions, latency).
#pragma once

#include <time.h>

#include <cstdint>

namespace blk {

inline uint64_t MonotonicNs() {
  timespec now;
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000000000ull + static_cast<uint64_t>(now.tv_nsec);
}

}  // namespace blk
