// blkbench's output: a short human report, or one JSON document.
#pragma once

#include <optional>
#include <string>

#include "bench/fio_runner.h"
#include "bench/options.h"
#include "bench/workload.h"

namespace blk {

std::string HumanReport(const BenchOptions& options, const BenchResult& result,
                        const std::optional<FioResult>& fio);
std::string JsonReport(const BenchOptions& options, const BenchResult& result,
                       const std::optional<FioResult>& fio);

}  // namespace blk
