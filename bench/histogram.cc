// LatencyHistogram: values below 32 have a bucket each; above, each power of two splits into 32 buckets.
#include "bench/histogram.h"

#include <bit>
#include <cmath>

namespace blk {

unsigned LatencyHistogram::BucketOf(uint64_t value) {
  if (value < kSubBuckets) return static_cast<unsigned>(value);
  unsigned top = 63 - static_cast<unsigned>(std::countl_zero(value));  // >= kSubBucketBits
  unsigned shift = top - kSubBucketBits;
  unsigned sub = static_cast<unsigned>(value >> shift) & (kSubBuckets - 1);
  return (shift + 1) * kSubBuckets + sub;
}

uint64_t LatencyHistogram::UpperBoundOf(unsigned bucket) {
  if (bucket < kSubBuckets) return bucket;
  unsigned shift = bucket / kSubBuckets - 1;
  uint64_t sub = bucket % kSubBuckets;
  uint64_t low = (kSubBuckets + sub) << shift;
  return low + ((uint64_t{1} << shift) - 1);
}

void LatencyHistogram::Record(uint64_t nanoseconds) {
  ++buckets_[BucketOf(nanoseconds)];
  ++count_;
  sum_ += nanoseconds;
  if (nanoseconds > max_) max_ = nanoseconds;
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (unsigned i = 0; i < kBuckets; ++i) buckets_[i] += other.buckets_[i];
  count_ += other.count_;
  sum_ += other.sum_;
  if (other.max_ > max_) max_ = other.max_;
}

uint64_t LatencyHistogram::PercentileNs(double percent) const {
  if (count_ == 0) return 0;
  uint64_t rank = static_cast<uint64_t>(std::ceil(percent / 100.0 * static_cast<double>(count_)));
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < kBuckets; ++i) {
    seen += buckets_[i];
    if (seen >= rank) return UpperBoundOf(i) < max_ ? UpperBoundOf(i) : max_;
  }
  return max_;
}

}  // namespace blk
