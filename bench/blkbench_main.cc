// blkbench: the datapath benchmark, and the way to try blkbackd on any Linux machine.
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "base/log.h"
#include "bench/fio_runner.h"
#include "bench/options.h"
#include "bench/report.h"
#include "bench/workload.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto options = blk::ParseBenchOptions(args);
  if (!options.ok()) {
    std::fprintf(stderr, "blkbench: %s\n", options.status().ToString().c_str());
    return 2;
  }
  if (options->help) {
    std::fputs(blk::kBenchUsage, stdout);
    return 0;
  }
  blk::SetLogLevel(blk::LogLevel::kWarning);
  bool demo = options->filename.empty();
  std::string filename = demo ? "/dev/shm/blkbench-demo." + std::to_string(::getpid()) + "." + options->format
                              : options->filename;
  std::optional<blk::FioResult> fio;
  blk::Status fio_status;
  auto result = blk::RunTakingTurns(*options, filename, &fio, &fio_status);
  if (demo) ::unlink(filename.c_str());
  if (!result.ok()) {
    std::fprintf(stderr, "blkbench: %s\n", result.status().ToString().c_str());
    return 1;
  }
  std::string report =
      options->json ? blk::JsonReport(*options, *result, fio) : blk::HumanReport(*options, *result, fio);
  std::fputs(report.c_str(), stdout);
  if (!fio_status.ok()) {
    std::fprintf(stderr, "blkbench: --vs-fio: %s\n", fio_status.ToString().c_str());
    return 1;
  }
  return result->io_errors == 0 && result->verify_errors == 0 ? 0 : 1;
}
