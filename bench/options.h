// blkbench's command line, with fio's option names so that a user can run the same job on both.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace blk {

enum class Pattern { kRead, kWrite, kRandRead, kRandWrite, kRandRw, kReadWrite };

struct BenchOptions {
  std::string filename;  // empty: a demo image in /dev/shm, created and removed by blkbench
  uint64_t size = 256ull << 20;
  Pattern rw = Pattern::kRandRw;
  uint32_t bs = 4096;
  unsigned iodepth = 32;
  double runtime_s = 10;
  bool direct = true;
  unsigned rwmixread = 50;  // percent of reads in randrw/readwrite
  bool verify = false;
  bool json = false;
  bool vs_fio = false;
  // With vs_fio: blkbench and fio take turns this many times, runtime_s / rounds each, and the sums are
  // compared (the storage of a shared VM drifts within seconds).
  unsigned rounds = 1;
  std::string abi = "x86_64-abi";
  uint32_t sector_size = 512;
  uint64_t seed = 1;
  unsigned poll_us = 0;           // the backend worker polls this long after serving before it sleeps
  unsigned frontend_poll_us = 0;  // the frontend spins this long for responses before it sleeps
  bool granted_buffers = false;   // the frontend's I/O buffers are persistently granted pages (no guest copy)
  unsigned ring_order = 0;     // the frontend's ring is 2^ring_order pages (max-ring-page-order allows 0..4)
  std::string format = "raw";  // raw or vhd: the image blkbench lays out (or finds) and serves
  bool vhd_blank = false;      // vhd: a new, empty dynamic VHD, so that every first write allocates
  std::string control;         // a control socket to serve during the run (any blkctl command), or ""
  bool persistent =
      false;  // feature-persistent negotiated: the frontend reuses its grants, the backend maps them
  uint32_t indirect = 0;  // segments per indirect request offered and used; 0: direct requests only
  unsigned queues = 1;   // rings of one multi-queue device, one backend worker each; iodepth spread over them
  unsigned numjobs = 1;  // as fio's: this many jobs of iodepth each, one ring (and worker) per job
  bool help = false;
};

// Parses `--name=value` and `--name value` forms. Unknown options and bad values give a Status naming them.
Result<BenchOptions> ParseBenchOptions(const std::vector<std::string>& args);
// The rings the run uses, and the I/Os each keeps in flight.
unsigned BenchLanes(const BenchOptions& options);
unsigned BenchDepthPerLane(const BenchOptions& options);
const char* PatternName(Pattern pattern);
bool PatternReads(Pattern pattern);
bool PatternWrites(Pattern pattern);
bool PatternRandom(Pattern pattern);
// Parses fio-style sizes: "4096", "4k", "4K", "1m", "2g", "1t" (powers of 1024). Rejects junk and overflow.
Result<uint64_t> ParseSize(const std::string& text);
extern const char kBenchUsage[];

}  // namespace blk
