// A fixed-size log-linear latency histogram: recording never allocates, percentiles are within 1/32 of the
// value.
#pragma once

#include <array>
#include <cstdint>

namespace blk {

class LatencyHistogram {
 public:
  void Record(uint64_t nanoseconds);
  void Merge(const LatencyHistogram& other);
  uint64_t count() const { return count_; }
  uint64_t max() const { return max_; }
  double MeanNs() const { return count_ == 0 ? 0 : static_cast<double>(sum_) / static_cast<double>(count_); }
  // The value below which `percent` of the recorded values fall (an upper bucket bound, capped at max()).
  uint64_t PercentileNs(double percent) const;

 private:
  static constexpr unsigned kSubBucketBits = 5;
  static constexpr unsigned kSubBuckets = 1u << kSubBucketBits;
  static constexpr unsigned kBuckets = (64 - kSubBucketBits + 1) * kSubBuckets;
  static unsigned BucketOf(uint64_t value);
  static uint64_t UpperBoundOf(unsigned bucket);

  std::array<uint64_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t max_ = 0;
};

}  // namespace blk
