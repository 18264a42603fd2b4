// blkbench's run: the real backend (Device, RequestPipeline, Worker, AioEngine) serving an image to the
// userspace blkfront over the simulated hypervisor, with the frontend keeping `iodepth` I/Os in flight.
//
// The frontend runs on the calling thread, the backend on its own worker thread, as a guest and dom0 would.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"
#include "bench/histogram.h"
#include "bench/options.h"

namespace blk {

struct HypervisorOps {
  uint64_t map_calls = 0;
  uint64_t pages_mapped = 0;
  uint64_t copy_calls = 0;
  uint64_t copy_segments = 0;
  uint64_t backend_notifications = 0;
  uint64_t frontend_notifications = 0;

  // Applies `op` to each counter of this and `other` (a run's share of the counters, rounds' sums).
  template <typename Op>
  HypervisorOps Combine(const HypervisorOps& other, Op op) const {
    return {op(map_calls, other.map_calls),
            op(pages_mapped, other.pages_mapped),
            op(copy_calls, other.copy_calls),
            op(copy_segments, other.copy_segments),
            op(backend_notifications, other.backend_notifications),
            op(frontend_notifications, other.frontend_notifications)};
  }
};

struct BenchResult {
  std::string filename;
  bool direct_io = false;
  double seconds = 0;
  uint64_t read_ios = 0;
  uint64_t write_ios = 0;
  uint64_t bytes = 0;
  LatencyHistogram latency;
  uint64_t backend_cpu_ns = 0;
  HypervisorOps ops;  // during the measured run only
  uint64_t verified_sectors = 0;
  uint64_t verify_errors = 0;
  uint64_t io_errors = 0;
  std::string first_problem;  // the first verify mismatch or failed I/O, for the report

  uint64_t ios() const { return read_ios + write_ios; }
  // Adds another run of the same job (a round of --rounds).
  void Add(const BenchResult& other);
  double iops() const { return seconds > 0 ? static_cast<double>(ios()) / seconds : 0; }
  double mib_per_s() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / (1 << 20) : 0; }
};

// Runs the job on `filename` (created with `options.size` bytes if it does not exist).
Result<BenchResult> RunBench(const BenchOptions& options, const std::string& filename);

}  // namespace blk
