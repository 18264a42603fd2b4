// Per-device counters, named as Linux blkback names them in sysfs so existing monitoring reads them the same
// way.
//
// Threading: written by the device's worker thread only; read from any thread (relaxed atomics).
#pragma once

#include <atomic>
#include <cstdint>

namespace blk {

struct DeviceStats {
  std::atomic<uint64_t> rd_req{0};
  std::atomic<uint64_t> wr_req{0};
  std::atomic<uint64_t> f_req{0};   // flushes and barriers
  std::atomic<uint64_t> ds_req{0};  // discards
  std::atomic<uint64_t> oo_req{
      0};  // requests that had to wait for a resource (AIO submission refused for now)
  std::atomic<uint64_t> rd_sect{0};
  std::atomic<uint64_t> wr_sect{0};
  std::atomic<uint64_t> bad_req{0};    // requests answered with an error before any I/O (malformed)
  std::atomic<uint64_t> io_errors{0};  // requests whose I/O or grant copy failed
  std::atomic<uint64_t> iocbs{0};      // I/Os submitted to the kernel: adjacent requests merge into one

  static void Add(std::atomic<uint64_t>& counter, uint64_t amount) {
    counter.store(counter.load(std::memory_order_relaxed) + amount, std::memory_order_relaxed);
  }
};

}  // namespace blk
