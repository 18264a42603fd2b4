// fio_runner: the side-by-side comparison blkbench's figures are judged by.
#include "bench/fio_runner.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "base/format.h"
#include "base/unique_fd.h"

extern char** environ;

namespace blk {

std::vector<std::string> FioCommand(const BenchOptions& options, const std::string& filename) {
  // In milliseconds: fio takes no fractions of a second, and a round (--rounds) may be one.
  char runtime[32];
  std::snprintf(runtime, sizeof(runtime), "%.0fms", std::max(1.0, options.runtime_s * 1000));
  std::vector<std::string> command = {
      "fio",
      "--name=blkbench",
      "--filename=" + filename,
      "--size=" + std::to_string(options.size),
      std::string("--rw=") + PatternName(options.rw),
      "--bs=" + std::to_string(options.bs),
      "--iodepth=" + std::to_string(options.iodepth),
      "--ioengine=libaio",
      std::string("--direct=") + (options.direct ? "1" : "0"),
      "--runtime=" + std::string(runtime),
      "--time_based",
      "--randrepeat=0",
      "--norandommap",
      "--output-format=json",
  };
  if (options.numjobs > 1) {
    command.push_back("--numjobs=" + std::to_string(options.numjobs));
    command.push_back("--group_reporting");
  }
  if (options.rw == Pattern::kRandRw || options.rw == Pattern::kReadWrite) {
    command.push_back("--rwmixread=" + std::to_string(options.rwmixread));
  }
  return command;
}

Result<FioResult> ParseFioJson(const std::string& text) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.contains("jobs") || !doc["jobs"].is_array() || doc["jobs"].empty()) {
    return Status::InvalidArgument("fio printed no JSON job result");
  }
  const nlohmann::json& job = doc["jobs"][0];
  FioResult result;
  double ios = 0;
  double weighted_p50 = 0, weighted_p99 = 0, weighted_p999 = 0;
  for (const char* direction : {"read", "write"}) {
    if (!job.contains(direction)) continue;
    const nlohmann::json& d = job[direction];
    double iops = d.value("iops", 0.0);
    result.iops += iops;
    result.mib_per_s += d.value("bw_bytes", 0.0) / (1024.0 * 1024.0);
    double n = d.value("total_ios", 0.0);
    ios += n;
    if (n > 0 && d.contains("clat_ns") && d["clat_ns"].contains("percentile")) {
      const nlohmann::json& p = d["clat_ns"]["percentile"];
      weighted_p50 += n * p.value("50.000000", 0.0);
      weighted_p99 += n * p.value("99.000000", 0.0);
      weighted_p999 += n * p.value("99.900000", 0.0);
    }
  }
  if (ios > 0) {
    result.lat_p50_us = weighted_p50 / ios / 1000.0;
    result.lat_p99_us = weighted_p99 / ios / 1000.0;
    result.lat_p999_us = weighted_p999 / ios / 1000.0;
    double cpu_percent = job.value("usr_cpu", 0.0) + job.value("sys_cpu", 0.0);
    double runtime_ms = job.value("job_runtime", 0.0);
    result.cpu_us_per_io = cpu_percent / 100.0 * runtime_ms * 1000.0 / ios;
  }
  return result;
}

FioResult CombineFioRuns(const std::vector<FioResult>& runs) {
  FioResult combined;
  if (runs.empty()) return combined;
  double weight = 0;
  for (const FioResult& run : runs) {
    combined.iops += run.iops / static_cast<double>(runs.size());
    combined.mib_per_s += run.mib_per_s / static_cast<double>(runs.size());
    combined.lat_p50_us += run.iops * run.lat_p50_us;
    combined.lat_p99_us += run.iops * run.lat_p99_us;
    combined.lat_p999_us += run.iops * run.lat_p999_us;
    combined.cpu_us_per_io += run.iops * run.cpu_us_per_io;
    weight += run.iops;
  }
  if (weight > 0) {
    combined.lat_p50_us /= weight;
    combined.lat_p99_us /= weight;
    combined.lat_p999_us /= weight;
    combined.cpu_us_per_io /= weight;
  }
  combined.command = runs.front().command;
  if (runs.size() > 1) combined.command += StrFormat("  (%zu runs, taking turns with blkbench)", runs.size());
  return combined;
}

Result<BenchResult> RunTakingTurns(const BenchOptions& options, const std::string& filename,
                                   std::optional<FioResult>* fio, Status* fio_status) {
  BenchOptions round = options;
  round.runtime_s = options.runtime_s / options.rounds;
  std::optional<BenchResult> total;
  std::vector<FioResult> fio_runs;
  for (unsigned i = 0; i < options.rounds; ++i) {
    auto ran = RunBench(round, filename);
    if (!ran.ok()) return ran.status();
    if (total) {
      total->Add(*ran);
    } else {
      total = std::move(*ran);
    }
    if (!options.vs_fio || !fio_status->ok()) continue;
    auto fio_ran = RunFio(round, filename);
    if (fio_ran.ok()) {
      fio_runs.push_back(*fio_ran);
    } else {
      *fio_status = fio_ran.status();
    }
  }
  if (fio_status->ok() && !fio_runs.empty()) *fio = CombineFioRuns(fio_runs);
  return std::move(*total);
}

Result<FioResult> RunFio(const BenchOptions& options, const std::string& filename) {
  std::vector<std::string> command = FioCommand(options, filename);
  std::vector<char*> argv;
  std::string printable;
  for (std::string& arg : command) {
    argv.push_back(arg.data());
    printable += (printable.empty() ? "" : " ") + arg;
  }
  argv.push_back(nullptr);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe for fio");
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDOUT_FILENO);
  pid_t pid;
  int rc = posix_spawnp(&pid, "fio", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0)
    return Status::FromErrno(rc, "running fio (is it installed? scripts/install-deps installs it)");
  write_end.Reset();
  std::string output;
  char chunk[65536];
  ssize_t got;
  while ((got = ::read(read_end.get(), chunk, sizeof(chunk))) > 0 || (got < 0 && errno == EINTR)) {
    if (got > 0) output.append(chunk, static_cast<size_t>(got));
  }
  int wait_status = 0;
  while (::waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) != 0) {
    return Status::IoError("fio failed: " + printable);
  }
  // fio may print notes before the JSON document.
  size_t start = output.find('{');
  if (start == std::string::npos) return Status::IoError("fio printed no JSON: " + printable);
  auto result = ParseFioJson(output.substr(start));
  if (result.ok()) result->command = printable;
  return result;
}

}  // namespace blk
