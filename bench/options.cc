// blkbench options: fio's names and units.
#include "bench/options.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>

namespace blk {

const char kBenchUsage[] =
    "usage: blkbench [options]\n"
    "Serves an image through the real blkbackd pipeline to a userspace blkfront over the simulated "
    "hypervisor,\n"
    "and measures it. Options use fio's names.\n"
    "\n"
    "  --filename=PATH    image file or block device (default: a demo image in /dev/shm, removed "
    "afterwards)\n"
    "  --size=SIZE        bytes of the file to use; the demo image is created this big (default 256m)\n"
    "  --rw=MODE          read, write, randread, randwrite, randrw, readwrite (default randrw)\n"
    "  --rwmixread=PCT    percent reads in randrw/readwrite (default 50)\n"
    "  --bs=SIZE          I/O size, a multiple of 512 (default 4k)\n"
    "  --iodepth=N        I/Os in flight (default 32)\n"
    "  --runtime=SECONDS  how long to run (default 10)\n"
    "  --direct=0|1       the backend opens the image with O_DIRECT where it can (default 1)\n"
    "  --verify           write a self-checking pattern and check every byte read back\n"
    "  --json             print the results as JSON\n"
    "  --vs-fio           also run fio with the same job on the same file, and print the ratio\n"
    "  --rounds=N         with --vs-fio: blkbench and fio take turns N times, --runtime/N seconds each, and "
    "the\n"
    "                     sums are compared (a shared machine's storage drifts within seconds; default 1)\n"
    "  --abi=ABI          the frontend's ring layout: x86_64-abi or x86_32-abi (default x86_64-abi)\n"
    "  --sector-size=N    logical sector size the disk presents: 512 or 4096 (default 512)\n"
    "  --seed=N           seed of the random offsets (default 1)\n"
    "  --poll=USEC        the backend worker keeps polling this long after serving before it sleeps (default "
    "0)\n"
    "  --frontend-poll=USEC  the frontend spins this long on its ring for responses before it sleeps, as a "
    "guest\n"
    "                     polling its queue would (default 0: it waits for the backend's notification)\n"
    "  --granted-buffers  with --persistent: the frontend's I/O buffers are its persistently granted pages, "
    "so\n"
    "                     the guest copies nothing (default, as Linux blkfront does: copied through the pool "
    "with\n"
    "                     --persistent; without it each request grants its buffer's own pages)\n"
    "  --ring-order=N     the ring is 2^N pages, 0..4: 32 to 512 requests in flight (default 0)\n"
    "  --format=FMT       raw or vhd: a missing vhd file is laid out as a fully allocated dynamic VHD of "
    "--size "
    "bytes (default raw)\n"
    "  --vhd-blank        with --format=vhd: create the file as an empty dynamic VHD (it must not exist), so "
    "that "
    "writes allocate\n"
    "  --control=PATH     serve a control socket at PATH for the run: blkctl --socket PATH can list,\n"
    "                     stats, pause and resume the simulated device 1/51712, swap its image (resume\n"
    "                     --image) and, with --format=vhd, snapshot it\n"
    "  --persistent       negotiate persistent grants (feature-persistent): grants reused, mapped once\n"
    "  --indirect=N       indirect descriptors of up to N segments (12..4096; 0 = off, the default)\n"
    "  --queues=N         N rings of one multi-queue device, one backend worker and one frontend thread "
    "each;\n"
    "                     --iodepth is spread over them (default 1)\n"
    "  --numjobs=N        as fio's: N jobs of --iodepth each, each on its own ring and worker (default 1)\n"
    "\n"
    "example: blkbench --filename=/var/tmp/disk.img --size=1g --rw=randread --bs=4k --iodepth=32 "
    "--runtime=10 "
    "--vs-fio\n";

Result<uint64_t> ParseSize(const std::string& text) {
  if (text.empty() || text[0] < '0' || text[0] > '9')
    return Status::InvalidArgument("bad size '" + text + "'");
  errno = 0;
  char* end = nullptr;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0) return Status::InvalidArgument("size '" + text + "' is too large");
  unsigned shift = 0;
  std::string suffix(end);
  if (suffix == "k" || suffix == "K" || suffix == "kb" || suffix == "KB" || suffix == "KiB")
    shift = 10;
  else if (suffix == "m" || suffix == "M" || suffix == "mb" || suffix == "MB" || suffix == "MiB")
    shift = 20;
  else if (suffix == "g" || suffix == "G" || suffix == "gb" || suffix == "GB" || suffix == "GiB")
    shift = 30;
  else if (suffix == "t" || suffix == "T" || suffix == "tb" || suffix == "TB" || suffix == "TiB")
    shift = 40;
  else if (!suffix.empty())
    return Status::InvalidArgument("bad size suffix in '" + text + "'");
  if (shift != 0 && value > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return Status::InvalidArgument("size '" + text + "' is too large");
  }
  return static_cast<uint64_t>(value) << shift;
}

namespace {

Result<uint64_t> ParseNumber(const std::string& name, const std::string& text, uint64_t min, uint64_t max) {
  if (text.empty() || text[0] < '0' || text[0] > '9') {
    return Status::InvalidArgument("--" + name + ": '" + text + "' is not a number");
  }
  errno = 0;
  char* end = nullptr;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || value < min || value > max) {
    return Status::InvalidArgument("--" + name + ": '" + text + "' is not a number from " +
                                   std::to_string(min) + " to " + std::to_string(max));
  }
  return static_cast<uint64_t>(value);
}

}  // namespace

unsigned BenchLanes(const BenchOptions& options) { return std::max(options.queues, options.numjobs); }

unsigned BenchDepthPerLane(const BenchOptions& options) {
  return options.numjobs > 1 ? options.iodepth : options.iodepth / options.queues;
}

const char* PatternName(Pattern pattern) {
  switch (pattern) {
    case Pattern::kRead:
      return "read";
    case Pattern::kWrite:
      return "write";
    case Pattern::kRandRead:
      return "randread";
    case Pattern::kRandWrite:
      return "randwrite";
    case Pattern::kRandRw:
      return "randrw";
    case Pattern::kReadWrite:
      return "readwrite";
  }
  return "?";
}

bool PatternReads(Pattern p) { return p != Pattern::kWrite && p != Pattern::kRandWrite; }
bool PatternWrites(Pattern p) { return p != Pattern::kRead && p != Pattern::kRandRead; }
bool PatternRandom(Pattern p) {
  return p == Pattern::kRandRead || p == Pattern::kRandWrite || p == Pattern::kRandRw;
}

Result<BenchOptions> ParseBenchOptions(const std::vector<std::string>& args) {
  BenchOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0)
      return Status::InvalidArgument("unexpected argument '" + arg + "' (see --help)");
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto flag = [&](bool* target) -> Status {
      if (!has_value) {
        *target = true;
        return Status::Ok();
      }
      if (value == "1")
        *target = true;
      else if (value == "0")
        *target = false;
      else
        return Status::InvalidArgument("--" + name + ": '" + value + "' is neither 0 nor 1");
      return Status::Ok();
    };
    if (name == "help" || name == "h") {
      options.help = true;
      continue;
    }
    if (name == "verify") {
      BLK_RETURN_IF_ERROR(flag(&options.verify));
      continue;
    }
    if (name == "json") {
      BLK_RETURN_IF_ERROR(flag(&options.json));
      continue;
    }
    if (name == "vhd-blank") {
      BLK_RETURN_IF_ERROR(flag(&options.vhd_blank));
      continue;
    }
    if (name == "vs-fio") {
      BLK_RETURN_IF_ERROR(flag(&options.vs_fio));
      continue;
    }
    if (name == "persistent") {
      BLK_RETURN_IF_ERROR(flag(&options.persistent));
      continue;
    }
    if (name == "granted-buffers") {
      BLK_RETURN_IF_ERROR(flag(&options.granted_buffers));
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return Status::InvalidArgument("--" + name + " needs a value");
      value = args[++i];
    }
    if (name == "control") {
      if (value.empty()) return Status::InvalidArgument("--control: empty path");
      options.control = value;
    } else if (name == "filename") {
      if (value.empty()) return Status::InvalidArgument("--filename: empty path");
      options.filename = value;
    } else if (name == "size") {
      auto size = ParseSize(value);
      if (!size.ok()) return size.status().Annotate("--size: ");
      if (*size < 4096) return Status::InvalidArgument("--size: " + value + " is smaller than 4k");
      options.size = *size;
    } else if (name == "bs") {
      auto bs = ParseSize(value);
      if (!bs.ok()) return bs.status().Annotate("--bs: ");
      if (*bs == 0 || *bs % 512 != 0 || *bs > (64ull << 20)) {
        return Status::InvalidArgument("--bs: " + value + " is not a multiple of 512 up to 64m");
      }
      options.bs = static_cast<uint32_t>(*bs);
    } else if (name == "rw" || name == "readwrite") {
      static constexpr Pattern kAll[] = {Pattern::kRead,      Pattern::kWrite,  Pattern::kRandRead,
                                         Pattern::kRandWrite, Pattern::kRandRw, Pattern::kReadWrite};
      bool found = false;
      for (Pattern p : kAll) {
        if (value == PatternName(p)) {
          options.rw = p;
          found = true;
        }
      }
      if (value == "rw") {
        options.rw = Pattern::kReadWrite;
        found = true;
      }
      if (!found) {
        return Status::InvalidArgument("--rw: '" + value +
                                       "' is not one of read, write, randread, randwrite, randrw, readwrite");
      }
    } else if (name == "iodepth") {
      auto depth = ParseNumber(name, value, 1, 4096);
      if (!depth.ok()) return depth.status();
      options.iodepth = static_cast<unsigned>(*depth);
    } else if (name == "runtime") {
      char* end = nullptr;
      double seconds = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(seconds > 0) || seconds > 86400) {
        return Status::InvalidArgument("--runtime: '" + value + "' is not a number of seconds up to a day");
      }
      options.runtime_s = seconds;
    } else if (name == "direct") {
      BLK_RETURN_IF_ERROR(flag(&options.direct));
    } else if (name == "rwmixread") {
      auto mix = ParseNumber(name, value, 0, 100);
      if (!mix.ok()) return mix.status();
      options.rwmixread = static_cast<unsigned>(*mix);
    } else if (name == "abi") {
      if (value != "x86_64-abi" && value != "x86_32-abi") {
        return Status::InvalidArgument("--abi: '" + value + "' is neither x86_64-abi nor x86_32-abi");
      }
      options.abi = value;
    } else if (name == "sector-size") {
      if (value != "512" && value != "4096") return Status::InvalidArgument("--sector-size: 512 or 4096");
      options.sector_size = static_cast<uint32_t>(std::stoul(value));
    } else if (name == "poll") {
      auto poll = ParseNumber(name, value, 0, 100000);
      if (!poll.ok()) return poll.status();
      options.poll_us = static_cast<unsigned>(*poll);
    } else if (name == "frontend-poll") {
      auto poll = ParseNumber(name, value, 0, 100000);
      if (!poll.ok()) return poll.status();
      options.frontend_poll_us = static_cast<unsigned>(*poll);
    } else if (name == "ring-order") {
      auto order = ParseNumber(name, value, 0, 4);
      if (!order.ok()) return order.status();
      options.ring_order = static_cast<unsigned>(*order);
    } else if (name == "format") {
      if (value != "raw" && value != "vhd")
        return Status::InvalidArgument("--format: '" + value + "' is neither raw nor vhd");
      options.format = value;
    } else if (name == "indirect") {
      auto segments = ParseNumber(name, value, 0, 4096);
      if (!segments.ok()) return segments.status();
      if (*segments != 0 && *segments <= 11) {
        return Status::InvalidArgument("--indirect: " + value +
                                       " segments fit a direct request; use 0 or 12..4096");
      }
      options.indirect = static_cast<uint32_t>(*segments);
    } else if (name == "queues") {
      auto queues = ParseNumber(name, value, 1, 16);
      if (!queues.ok()) return queues.status();
      options.queues = static_cast<unsigned>(*queues);
    } else if (name == "rounds") {
      auto rounds = ParseNumber(name, value, 1, 100);
      if (!rounds.ok()) return rounds.status();
      options.rounds = static_cast<unsigned>(*rounds);
    } else if (name == "numjobs") {
      auto jobs = ParseNumber(name, value, 1, 16);
      if (!jobs.ok()) return jobs.status();
      options.numjobs = static_cast<unsigned>(*jobs);
    } else if (name == "seed") {
      auto seed = ParseNumber(name, value, 0, std::numeric_limits<uint64_t>::max());
      if (!seed.ok()) return seed.status();
      options.seed = *seed;
    } else {
      return Status::InvalidArgument("unknown option --" + name + " (see --help)");
    }
  }
  if (options.granted_buffers && !options.persistent) {
    return Status::InvalidArgument(
        "--granted-buffers needs --persistent: without it every grant ends at its response");
  }
  if (options.rounds > 1 && !options.vs_fio) {
    return Status::InvalidArgument("--rounds takes turns with fio: it needs --vs-fio");
  }
  if (options.vhd_blank && options.format != "vhd") {
    return Status::InvalidArgument("--vhd-blank needs --format=vhd");
  }
  if (options.vs_fio && options.format != "raw") {
    return Status::InvalidArgument("--vs-fio: fio reads files raw; it cannot run against --format=" +
                                   options.format);
  }
  if (options.queues > 1 && options.numjobs > 1) {
    return Status::InvalidArgument(
        "--queues and --numjobs: each job has its own ring already; give one of them");
  }
  if (options.iodepth < options.queues) {
    return Status::InvalidArgument("--iodepth " + std::to_string(options.iodepth) +
                                   " is spread over --queues " + std::to_string(options.queues) +
                                   ": at least one each");
  }
  if (options.bs % options.sector_size != 0) {
    return Status::InvalidArgument("--bs " + std::to_string(options.bs) +
                                   " is not a multiple of the sector size " +
                                   std::to_string(options.sector_size));
  }
  return options;
}

}  // namespace blk
