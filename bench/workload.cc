// RunBench: a guest's view of the backend, timed.
#include "bench/workload.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "backend/control_device.h"
#include "backend/control_server.h"
#include "backend/device.h"
#include "backend/worker.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "frontend/blkfront.h"
#include "frontend/pattern.h"
#include "ring/sim/sim_hypervisor.h"

namespace blk {
namespace {

using Clock = std::chrono::steady_clock;

constexpr DomId kFrontendDomain = 1;
constexpr const char* kDeviceName = "1/51712";  // domain 1, xvda

Status EnsureFile(const std::string& path, uint64_t size) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < size) {
      return Status::InvalidArgument(path + " holds " + std::to_string(st.st_size) +
                                     " bytes, fewer than --size " + std::to_string(size));
    }
    return Status::Ok();
  }
  if (errno != ENOENT) return Status::FromErrno(errno, "stat " + path);
  UniqueFd fd(::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::FromErrno(errno, "create " + path);
  // Lay the file out with data, as fio does: reads of a sparse file's holes never reach the storage, and
  // would measure nothing.
  std::vector<uint8_t> chunk(1 << 20, 0xA5);
  for (uint64_t done = 0; done < size;) {
    size_t length = static_cast<size_t>(std::min<uint64_t>(chunk.size(), size - done));
    ssize_t wrote = ::pwrite(fd.get(), chunk.data(), length, static_cast<off_t>(done));
    if (wrote <= 0) return Status::FromErrno(wrote < 0 ? errno : ENOSPC, "lay out " + path);
    done += static_cast<uint64_t>(wrote);
  }
  if (::fdatasync(fd.get()) != 0) return Status::FromErrno(errno, "sync " + path);
  return Status::Ok();
}

// A VHD to serve: blank (--vhd-blank: created, so it must not exist yet), or fully allocated: created with
// every block written once when missing, so that reads reach the storage as they do on a laid-out raw file.
Status EnsureVhd(const std::string& path, uint64_t size, bool blank) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (blank) return Status::InvalidArgument(path + " exists; --vhd-blank creates a new file");
    auto chain = vhd::VhdChain::Open(path, false);
    if (!chain.ok()) return chain.status();
    if ((*chain)->top().virtual_size() < size) {
      return Status::InvalidArgument(path + " is a VHD of " + std::to_string((*chain)->top().virtual_size()) +
                                     " bytes, fewer than --size " + std::to_string(size));
    }
    return Status::Ok();
  }
  if (errno != ENOENT) return Status::FromErrno(errno, "stat " + path);
  BLK_RETURN_IF_ERROR(vhd::CreateImage(path, vhd::CreateOptions::Dynamic(size)));
  if (blank) return Status::Ok();
  auto chain = vhd::VhdChain::Open(path, true);
  if (!chain.ok()) return chain.status();
  std::vector<uint8_t> chunk(2 << 20, 0xA5);
  for (uint64_t done = 0; done < size;) {
    size_t length = static_cast<size_t>(std::min<uint64_t>(chunk.size(), size - done));
    BLK_RETURN_IF_ERROR((*chain)->top().Write(done, std::span(chunk).first(length)));
    done += length;
  }
  return (*chain)->top().Close();
}

HypervisorOps Snapshot(const HypervisorCounters& c) {
  return {c.map_calls.load(),     c.pages_mapped.load(),          c.copy_calls.load(),
          c.copy_segments.load(), c.backend_notifications.load(), c.frontend_notifications.load()};
}

// The frontend's side of the job: chooses I/Os, keeps `iodepth` in flight, checks what comes back.
class Driver {
 public:
  // `device` is asked whether it is paused (blkbench --control): a paused device answering nothing is no
  // failure.
  // This driver's I/O goes to blocks [first_block, first_block + blocks) of the file, `depth` at a time.
  Driver(const BenchOptions& options, Blkfront& front, BenchResult& result, const Device& device,
         uint64_t first_block, uint64_t blocks, unsigned depth, uint64_t seed)
      : device_(device),
        options_(options),
        front_(front),
        result_(result),
        first_block_(first_block),
        blocks_(blocks),
        random_(seed),
        generation_(blocks_, 0),
        busy_(blocks_, false),
        slots_(depth) {
    // The guest's own pages, as a real guest's I/O buffers are.
    size_t bytes = static_cast<size_t>(depth) * options.bs;
    auto buffer =
        options.granted_buffers ? front.AllocateGrantedBuffer(bytes) : front.AllocateGuestBuffer(bytes);
    buffer_base_ = buffer.ok() ? *buffer : nullptr;
    for (unsigned i = 0; i < depth; ++i) free_.push_back(i);
  }

  bool ready() const { return buffer_base_ != nullptr && blocks_ > 0; }

  // Writes every block once with its pattern, so that every later read can be checked.
  Status Prefill() {
    for (uint64_t block = 0; block < blocks_;) {
      while (!free_.empty() && block < blocks_) BLK_RETURN_IF_ERROR(Start(block++, /*write=*/true));
      BLK_RETURN_IF_ERROR(front_.Push());
      BLK_RETURN_IF_ERROR(Collect(false));
    }
    while (free_.size() < slots_.size()) BLK_RETURN_IF_ERROR(Collect(false));
    return Status::Ok();
  }

  Status Run(double seconds) {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    uint64_t next_sequential = 0;
    while (Clock::now() < deadline) {
      while (!free_.empty()) {
        bool write = ChooseWrite();
        uint64_t block;
        if (PatternRandom(options_.rw)) {
          block = random_() % blocks_;
          for (int tries = 0; busy_[block] && tries < 8; ++tries) block = random_() % blocks_;
          if (busy_[block]) break;
        } else {
          block = next_sequential++ % blocks_;
          if (busy_[block]) break;
        }
        BLK_RETURN_IF_ERROR(Start(block, write));
      }
      BLK_RETURN_IF_ERROR(front_.Push());
      BLK_RETURN_IF_ERROR(Collect(true));
    }
    while (free_.size() < slots_.size()) BLK_RETURN_IF_ERROR(Collect(true));
    return Status::Ok();
  }

 private:
  struct Slot {
    uint64_t block;
    bool write;
    Clock::time_point started;
  };

  bool ChooseWrite() {
    switch (options_.rw) {
      case Pattern::kRead:
      case Pattern::kRandRead:
        return false;
      case Pattern::kWrite:
      case Pattern::kRandWrite:
        return true;
      case Pattern::kRandRw:
      case Pattern::kReadWrite:
        return random_() % 100 >= options_.rwmixread;
    }
    return false;
  }

  uint8_t* Buffer(unsigned slot) { return buffer_base_ + static_cast<size_t>(slot) * options_.bs; }
  uint64_t FirstSector(uint64_t block) const {
    return (first_block_ + block) * (options_.bs >> kSectorShift);
  }

  Status Start(uint64_t block, bool write) {
    unsigned index = free_.back();
    free_.pop_back();
    Slot& slot = slots_[index];
    slot = {block, write, Clock::now()};
    busy_[block] = true;
    if (write && options_.verify) {
      FillPattern(std::span(Buffer(index), options_.bs), FirstSector(block), generation_[block] + 1);
    }
    Io io;
    io.op = write ? IoOp::kWrite : IoOp::kRead;
    io.sector = FirstSector(block);
    io.length = options_.bs;
    io.buffer = Buffer(index);
    io.tag = index;
    return front_.Queue(io);
  }

  // Waits for at least one completion and handles every completion available.
  Status Collect(bool measured) {
    IoCompletion done[256];
    auto got = front_.Wait(done, std::chrono::milliseconds(10000));
    while (got.ok() && *got == 0 && device_.pause_state() != PauseState::kRunning) {
      got = front_.Wait(done, std::chrono::milliseconds(10000));
    }
    if (!got.ok()) return got.status();
    if (*got == 0) return Status::IoError("no completion for 10 s: the backend stopped answering");
    auto now = Clock::now();
    for (size_t i = 0; i < *got; ++i) {
      unsigned index = static_cast<unsigned>(done[i].tag);
      Slot& slot = slots_[index];
      if (done[i].status != BLKIF_RSP_OKAY) {
        ++result_.io_errors;
        if (result_.first_problem.empty()) {
          result_.first_problem = std::string(slot.write ? "write" : "read") + " of block " +
                                  std::to_string(slot.block) + " failed with status " +
                                  std::to_string(done[i].status);
        }
      } else if (slot.write) {
        if (options_.verify) ++generation_[slot.block];
      } else if (options_.verify) {
        auto mismatch = CheckPattern(std::span<const uint8_t>(Buffer(index), options_.bs),
                                     FirstSector(slot.block), generation_[slot.block]);
        result_.verified_sectors += options_.bs >> kSectorShift;
        if (mismatch) {
          ++result_.verify_errors;
          if (result_.first_problem.empty()) {
            result_.first_problem =
                "verify: sector " + std::to_string(mismatch->sector) + " " + mismatch->reason;
          }
        }
      }
      if (measured) {
        result_.latency.Record(static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(now - slot.started).count()));
        (slot.write ? result_.write_ios : result_.read_ios) += 1;
        result_.bytes += options_.bs;
      }
      busy_[slot.block] = false;
      free_.push_back(index);
    }
    return Status::Ok();
  }

  const Device& device_;
  const BenchOptions& options_;
  Blkfront& front_;
  BenchResult& result_;
  uint64_t first_block_;
  uint64_t blocks_;
  std::mt19937_64 random_;
  std::vector<uint32_t> generation_;  // per block: how many times it was written (its pattern's seed)
  std::vector<bool> busy_;  // per block: an I/O is in flight (two in flight on one block would race)
  std::vector<Slot> slots_;
  std::vector<unsigned> free_;
  uint8_t* buffer_base_ = nullptr;
};

}  // namespace

void BenchResult::Add(const BenchResult& other) {
  seconds += other.seconds;
  read_ios += other.read_ios;
  write_ios += other.write_ios;
  bytes += other.bytes;
  latency.Merge(other.latency);
  backend_cpu_ns += other.backend_cpu_ns;
  ops = ops.Combine(other.ops, std::plus<uint64_t>());
  verified_sectors += other.verified_sectors;
  verify_errors += other.verify_errors;
  io_errors += other.io_errors;
  if (first_problem.empty()) first_problem = other.first_problem;
}

Result<BenchResult> RunBench(const BenchOptions& options, const std::string& filename) {
  if (options.size < options.bs) return Status::InvalidArgument("--size is smaller than --bs");
  bool vhd = options.format == "vhd";
  BLK_RETURN_IF_ERROR(vhd ? EnsureVhd(filename, options.size, options.vhd_blank)
                          : EnsureFile(filename, options.size));
  DeviceConfig config;
  config.name = kDeviceName;
  config.path = filename;
  config.format = vhd ? ImageFormatHint::kVhd : ImageFormatHint::kRaw;
  config.direct = options.direct;
  config.logical_block_size = options.sector_size;
  config.max_indirect_segments = options.indirect;
  auto device = Device::Open(config);
  if (!device.ok()) return device.status();
  if ((*device)->image().size_bytes() < options.size) {
    return Status::InvalidArgument(filename + " is smaller than --size");
  }

  SimHypervisor sim;
  const unsigned lanes = BenchLanes(options);
  const unsigned depth = BenchDepthPerLane(options);
  BlkfrontConfig front_config;
  front_config.domid = kFrontendDomain;
  front_config.abi = *ParseProtocol(options.abi);
  front_config.max_outstanding = depth;
  front_config.ring_pages = 1u << options.ring_order;
  front_config.indirect_segments = options.indirect;
  front_config.persistent = options.persistent;
  front_config.poll_us = options.frontend_poll_us;
  // One guest for every ring, its memory sized for all of them (Blkfront::Create reuses the domain).
  const uint32_t slots = RingSlots(front_config.abi, front_config.ring_pages);
  const uint32_t segments = std::max(kMaxDirectSegments, options.indirect);
  const size_t buffer_pages = (size_t{depth} * options.bs + kPageSize - 1) / kPageSize;
  const size_t pages = size_t{lanes} * (front_config.ring_pages +
                                        size_t{slots} * (segments + IndirectPages(segments)) + buffer_pages) +
                       16;
  auto domain =
      sim.CreateDomain(kFrontendDomain, pages,
                       std::max(SimDomain::kDefaultGrantEntries, SimDomain::kFirstFreeGrantRef + pages * 2));
  if (!domain.ok()) return domain.status();

  std::vector<std::unique_ptr<Blkfront>> fronts;
  std::vector<std::unique_ptr<Worker>> workers;
  auto stop = [&] {
    (*device)->Disconnect();
    for (auto& worker : workers) worker->Stop();
  };
  Hypervisor hypervisor = sim.hypervisor();
  for (unsigned lane = 0; lane < lanes; ++lane) {
    auto front = Blkfront::Create(sim, front_config);
    if (!front.ok()) {
      stop();
      return front.status();
    }
    auto worker = Worker::Create("worker" + std::to_string(lane), slots * 2, options.poll_us);
    if (!worker.ok()) {
      stop();
      return worker.status();
    }
    (*worker)->Start();
    RingConnection connection;
    connection.frontend_domid = kFrontendDomain;
    connection.ring_refs.assign((*front)->ring_refs().begin(), (*front)->ring_refs().end());
    connection.event_channel = (*front)->event_channel();
    connection.abi = front_config.abi;
    connection.persistent = options.persistent;
    workers.push_back(std::move(*worker));
    fronts.push_back(std::move(*front));
    Status connected = (*device)->Connect(hypervisor, connection, *workers.back());
    if (!connected.ok()) {
      stop();
      return connected;
    }
  }

  BenchResult result;
  result.filename = filename;
  result.direct_io = (*device)->image().direct_io();
  DeviceControlTarget control_target;
  std::unique_ptr<ControlServerThread> control;
  if (!options.control.empty()) {
    control_target.Add(kDeviceName, **device);
    ControlServerOptions control_options;
    control_options.socket_path = options.control;
    auto started = ControlServerThread::Start(control_options, control_target);
    if (!started.ok()) {
      stop();
      return started.status().Annotate("--control: ");
    }
    control = std::move(*started);
  }
  // Each lane (ring) drives its own share of the file, so that no two lanes race on a block.
  const uint64_t blocks = options.size / options.bs;
  std::vector<BenchResult> parts(lanes);
  std::vector<std::unique_ptr<Driver>> drivers;
  for (unsigned lane = 0; lane < lanes; ++lane) {
    uint64_t first = blocks * lane / lanes, last = blocks * (lane + 1) / lanes;
    drivers.push_back(std::make_unique<Driver>(options, *fronts[lane], parts[lane], **device, first,
                                               last - first, depth, options.seed + lane));
    if (!drivers.back()->ready()) {
      stop();
      return Status::InvalidArgument("cannot allocate " + std::to_string(depth) + " buffers of " +
                                     std::to_string(options.bs) + " bytes for each of " +
                                     std::to_string(lanes) + " rings");
    }
  }
  std::vector<Status> statuses(lanes);
  auto run_all = [&](auto&& body) {
    if (lanes == 1) {
      statuses[0] = body(0);
      return;
    }
    std::vector<std::thread> threads;
    for (unsigned lane = 0; lane < lanes; ++lane)
      threads.emplace_back([&, lane] { statuses[lane] = body(lane); });
    for (auto& thread : threads) thread.join();
  };
  auto first_failure = [&]() -> Status {
    for (const Status& status : statuses) {
      if (!status.ok()) return status;
    }
    return Status::Ok();
  };
  Status status;
  if (options.verify) {
    run_all([&](unsigned lane) { return drivers[lane]->Prefill(); });
    status = first_failure();
  }
  HypervisorOps before = Snapshot(sim.counters());
  uint64_t cpu_before = 0;
  for (auto& worker : workers) cpu_before += worker->CpuTimeNs();
  auto started = Clock::now();
  if (status.ok()) {
    run_all([&](unsigned lane) { return drivers[lane]->Run(options.runtime_s); });
    status = first_failure();
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  uint64_t cpu_after = 0;
  for (auto& worker : workers) cpu_after += worker->CpuTimeNs();
  result.backend_cpu_ns = cpu_after - cpu_before;
  result.ops = Snapshot(sim.counters()).Combine(before, std::minus<uint64_t>());
  for (const BenchResult& part : parts) {
    result.read_ios += part.read_ios;
    result.write_ios += part.write_ios;
    result.bytes += part.bytes;
    result.latency.Merge(part.latency);
    result.verified_sectors += part.verified_sectors;
    result.verify_errors += part.verify_errors;
    result.io_errors += part.io_errors;
    if (result.first_problem.empty()) result.first_problem = part.first_problem;
  }
  control.reset();
  drivers.clear();
  stop();
  if (!status.ok()) return status;
  return result;
}

}  // namespace blk
