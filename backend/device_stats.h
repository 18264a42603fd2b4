// Per-device counters, named as Linux blkback names them in sysfs so existing monitoring reads them the same
// way.
//
// Threading: the counters are written by the worker of every ring of the device (queues of one disk may be
// served by different workers), so each update is one atomic add; read from any thread (relaxed). A latency
// histogram belongs to one ring (one writer); a reader merges the rings' histograms.
#pragma once

#include <algorithm>
#include <array>
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
  // fdatasyncs of the image that failed. Sticky: once nonzero, every later flush and barrier of the device
  // fails (see SECURITY.md, "Failing storage").
  std::atomic<uint64_t> sync_errors{0};
  std::atomic<uint64_t> iocbs{0};  // I/Os submitted to the kernel: adjacent requests merge into one

  static void Add(std::atomic<uint64_t>& counter, uint64_t amount) {
    counter.fetch_add(amount, std::memory_order_relaxed);
  }
};

// What a histogram says, in nanoseconds (0 when nothing was recorded).
struct LatencySummary {
  uint64_t count = 0;
  uint64_t p50_ns = 0;
  uint64_t p99_ns = 0;
  uint64_t p999_ns = 0;
  uint64_t max_ns = 0;
};

// Request latency (taken from the ring -> answered) in log-linear buckets: 4 per power of two, so a
// percentile is an upper bound within 25% of the truth. Recording is two relaxed stores; no lock, no
// allocation.
class LatencyBuckets {
 public:
  static constexpr unsigned kBuckets = 256;

  void Record(uint64_t ns) {
    std::atomic<uint64_t>& bucket = buckets_[BucketOf(ns)];
    bucket.store(bucket.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);  // one writer
    if (ns > max_ns_.load(std::memory_order_relaxed)) max_ns_.store(ns, std::memory_order_relaxed);
  }
  // Adds this histogram's counts to `totals` (merging the rings of a device).
  void AddTo(std::array<uint64_t, kBuckets>& totals, uint64_t& max_ns) const {
    for (unsigned i = 0; i < kBuckets; ++i) totals[i] += buckets_[i].load(std::memory_order_relaxed);
    max_ns = std::max(max_ns, max_ns_.load(std::memory_order_relaxed));
  }
  static LatencySummary Summarize(const std::array<uint64_t, kBuckets>& totals, uint64_t max_ns);

  static unsigned BucketOf(uint64_t ns) {
    if (ns < 4) return static_cast<unsigned>(ns);
    unsigned msb = 63u - static_cast<unsigned>(__builtin_clzll(ns));
    return (msb - 1) * 4 + static_cast<unsigned>((ns >> (msb - 2)) & 3);
  }
  // The largest value that falls into `bucket`.
  static uint64_t UpperBoundOf(unsigned bucket) {
    if (bucket < 4) return bucket;
    unsigned msb = bucket / 4 + 1;
    uint64_t sub = bucket % 4;
    uint64_t next = (4 + sub + 1) << (msb - 2);
    return next == 0 ? ~0ull : next - 1;
  }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> max_ns_{0};
};

inline LatencySummary LatencyBuckets::Summarize(const std::array<uint64_t, kBuckets>& totals,
                                                uint64_t max_ns) {
  LatencySummary summary;
  for (uint64_t count : totals) summary.count += count;
  if (summary.count == 0) return summary;
  auto percentile = [&](double fraction) {
    uint64_t rank = static_cast<uint64_t>(fraction * static_cast<double>(summary.count));
    if (rank >= summary.count) rank = summary.count - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < kBuckets; ++i) {
      seen += totals[i];
      if (seen > rank) return std::min(UpperBoundOf(i), max_ns);
    }
    return max_ns;
  };
  summary.p50_ns = percentile(0.50);
  summary.p99_ns = percentile(0.99);
  summary.p999_ns = percentile(0.999);
  summary.max_ns = max_ns;
  return summary;
}

}  // namespace blk
