// Reports: what blkbench measured, per I/O where that is what matters, and beside fio when it ran.
#include "bench/report.h"

#include <nlohmann/json.hpp>

#include "base/format.h"

namespace blk {
namespace {

double PerIo(uint64_t total, uint64_t ios) { return ios == 0 ? 0 : static_cast<double>(total) / ios; }
double Micros(uint64_t ns) { return static_cast<double>(ns) / 1000.0; }

}  // namespace

std::string HumanReport(const BenchOptions& options, const BenchResult& r,
                        const std::optional<FioResult>& fio) {
  std::string out;
  out += StrFormat("blkbench: %s bs=%u iodepth=%u on %s (%llu MiB, %s), %s, simulated hypervisor\n",
                   PatternName(options.rw), options.bs, options.iodepth, r.filename.c_str(),
                   static_cast<unsigned long long>(options.size >> 20), r.direct_io ? "O_DIRECT" : "buffered",
                   options.abi.c_str());
  out += StrFormat("  IOPS        %.0f  (read %.0f, write %.0f) over %.1f s\n", r.iops(),
                   r.seconds > 0 ? r.read_ios / r.seconds : 0, r.seconds > 0 ? r.write_ios / r.seconds : 0,
                   r.seconds);
  out += StrFormat("  bandwidth   %.1f MiB/s\n", r.mib_per_s());
  out += StrFormat(
      "  latency     p50 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us (frontend: queued -> answered)\n",
      Micros(r.latency.PercentileNs(50)), Micros(r.latency.PercentileNs(99)),
      Micros(r.latency.PercentileNs(99.9)), Micros(r.latency.max()));
  out += StrFormat("  backend CPU %.2f us per I/O\n", PerIo(r.backend_cpu_ns, r.ios()) / 1000.0);
  out += StrFormat(
      "  hypervisor  per I/O: %.2f grant maps, %.2f grant copy calls (%.2f segments), %.2f notifications "
      "to the frontend, %.2f to the backend\n",
      PerIo(r.ops.map_calls, r.ios()), PerIo(r.ops.copy_calls, r.ios()), PerIo(r.ops.copy_segments, r.ios()),
      PerIo(r.ops.backend_notifications, r.ios()), PerIo(r.ops.frontend_notifications, r.ios()));
  if (options.verify) {
    out += StrFormat("  verify      %llu sectors checked, %llu mismatches\n",
                     static_cast<unsigned long long>(r.verified_sectors),
                     static_cast<unsigned long long>(r.verify_errors));
  }
  if (r.io_errors > 0 || r.verify_errors > 0) {
    out += StrFormat("  FAILED      %llu I/O errors, %llu verify errors; first: %s\n",
                     static_cast<unsigned long long>(r.io_errors),
                     static_cast<unsigned long long>(r.verify_errors), r.first_problem.c_str());
  }
  if (fio) {
    out += StrFormat(
        "fio (same job, same file): IOPS %.0f, %.1f MiB/s, p50 %.1f us, p99 %.1f us, p99.9 %.1f us, "
        "CPU %.2f us per I/O\n",
        fio->iops, fio->mib_per_s, fio->lat_p50_us, fio->lat_p99_us, fio->lat_p999_us, fio->cpu_us_per_io);
    out += StrFormat("  ratio       blkbench/fio IOPS %.2f, MiB/s %.2f\n",
                     fio->iops > 0 ? r.iops() / fio->iops : 0,
                     fio->mib_per_s > 0 ? r.mib_per_s() / fio->mib_per_s : 0);
    out += "  fio command " + fio->command + "\n";
  }
  return out;
}

std::string JsonReport(const BenchOptions& options, const BenchResult& r,
                       const std::optional<FioResult>& fio) {
  nlohmann::json doc;
  doc["job"] = {{"filename", r.filename},  {"size", options.size},       {"rw", PatternName(options.rw)},
                {"bs", options.bs},        {"iodepth", options.iodepth}, {"runtime", options.runtime_s},
                {"direct", r.direct_io},   {"verify", options.verify},   {"abi", options.abi},
                {"rounds", options.rounds}};
  doc["blkbench"] = {
      {"seconds", r.seconds},
      {"ios", r.ios()},
      {"read_ios", r.read_ios},
      {"write_ios", r.write_ios},
      {"iops", r.iops()},
      {"mib_per_s", r.mib_per_s()},
      {"lat_p50_us", Micros(r.latency.PercentileNs(50))},
      {"lat_p99_us", Micros(r.latency.PercentileNs(99))},
      {"lat_p999_us", Micros(r.latency.PercentileNs(99.9))},
      {"lat_max_us", Micros(r.latency.max())},
      {"backend_cpu_us_per_io", PerIo(r.backend_cpu_ns, r.ios()) / 1000.0},
      {"grant_maps_per_io", PerIo(r.ops.map_calls, r.ios())},
      {"grant_copy_calls_per_io", PerIo(r.ops.copy_calls, r.ios())},
      {"grant_copy_segments_per_io", PerIo(r.ops.copy_segments, r.ios())},
      {"notifications_to_frontend_per_io", PerIo(r.ops.backend_notifications, r.ios())},
      {"notifications_to_backend_per_io", PerIo(r.ops.frontend_notifications, r.ios())},
      {"verified_sectors", r.verified_sectors},
      {"verify_errors", r.verify_errors},
      {"io_errors", r.io_errors},
  };
  if (fio) {
    doc["fio"] = {{"iops", fio->iops},
                  {"mib_per_s", fio->mib_per_s},
                  {"lat_p50_us", fio->lat_p50_us},
                  {"lat_p99_us", fio->lat_p99_us},
                  {"lat_p999_us", fio->lat_p999_us},
                  {"cpu_us_per_io", fio->cpu_us_per_io},
                  {"command", fio->command}};
    doc["ratio"] = {{"iops", fio->iops > 0 ? r.iops() / fio->iops : 0},
                    {"mib_per_s", fio->mib_per_s > 0 ? r.mib_per_s() / fio->mib_per_s : 0}};
  }
  return doc.dump(2) + "\n";
}

}  // namespace blk
