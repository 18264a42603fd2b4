// Runs fio with the same job as blkbench, on the same file, and reads its JSON result.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "bench/options.h"
#include "bench/workload.h"

namespace blk {

struct FioResult {
  double iops = 0;
  double mib_per_s = 0;
  double lat_p50_us = 0;
  double lat_p99_us = 0;
  double lat_p999_us = 0;
  double cpu_us_per_io = 0;  // fio's user+system CPU time per I/O
  std::string command;
};

// The fio command line for `options` (libaio, the same file, size, pattern, block size, depth, runtime,
// direct).
std::vector<std::string> FioCommand(const BenchOptions& options, const std::string& filename);
// Parses fio's --output-format=json (the first job; reads and writes summed).
Result<FioResult> ParseFioJson(const std::string& json);
Result<FioResult> RunFio(const BenchOptions& options, const std::string& filename);
// One result for runs of equal length: rates averaged, latencies and CPU weighted by each run's IOPS.
FioResult CombineFioRuns(const std::vector<FioResult>& runs);
// Runs the job through blkbench and, with vs_fio, through fio, the two taking turns `rounds` times for
// runtime_s / rounds each; returns blkbench's sum. fio's combined result goes to `fio` when every run of it
// succeeded, else why not to `fio_status`.
Result<BenchResult> RunTakingTurns(const BenchOptions& options, const std::string& filename,
                                   std::optional<FioResult>* fio, Status* fio_status);

}  // namespace blk
