// What the datapath tests share: page-aligned buffers, a log capture, disk files, a guest (blkfront + Device
// on a worker) and a random workload verified byte for byte against a model of the disk.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/device.h"
#include "backend/worker.h"
#include "base/log.h"
#include "frontend/blkfront.h"
#include "ring/request.h"
#include "ring/sim/sim_hypervisor.h"
#include "tests/backend/connection_to.h"
#include "tests/page_aligned.h"

namespace blk {

inline constexpr uint64_t kDiskBytes = 8ull << 20;
inline constexpr uint64_t kDiskSectors = kDiskBytes >> kSectorShift;
inline constexpr uint64_t kRawIdBase = 1ull << 40;  // ids of hand-made requests, far from the frontend's own

// Collects log lines so that tests can check what an operator would read.
class LogCapture {
 public:
  LogCapture() { SetLogSink(&LogCapture::Sink, this); }
  ~LogCapture() { SetLogSink(nullptr, nullptr); }
  bool Contains(const std::string& needle) {
    std::lock_guard lock(mutex_);
    for (const std::string& line : lines_) {
      if (line.find(needle) != std::string::npos) return true;
    }
    return false;
  }
  size_t Count(const std::string& needle) {
    std::lock_guard lock(mutex_);
    size_t count = 0;
    for (const std::string& line : lines_) count += line.find(needle) != std::string::npos;
    return count;
  }

 private:
  static void Sink(LogLevel, const char* line, void* self) {
    auto* capture = static_cast<LogCapture*>(self);
    std::lock_guard lock(capture->mutex_);
    capture->lines_.emplace_back(line);
  }
  std::mutex mutex_;
  std::vector<std::string> lines_;
};

inline std::string MakeDiskFile(const std::string& dir, const std::string& name, uint64_t bytes,
                                uint8_t fill) {
  std::string path = dir + "/" + name + "." + std::to_string(::getpid());
  int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
  EXPECT_GE(fd, 0);
  Bytes chunk(1 << 20, fill);
  for (uint64_t done = 0; done < bytes; done += chunk.size()) {
    EXPECT_EQ(::pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(done)),
              static_cast<ssize_t>(chunk.size()));
  }
  ::close(fd);
  return path;
}

// What the image file holds at [offset, offset + length): the whole disk by default.
inline Bytes ReadDisk(const std::string& path, uint64_t offset = 0, size_t length = kDiskBytes) {
  Bytes bytes(length);
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_EQ(::pread(fd, bytes.data(), length, static_cast<off_t>(offset)), static_cast<ssize_t>(length));
  ::close(fd);
  return bytes;
}

// One guest with one disk, served by a backend worker that runs on its own thread (or is stepped by hand).
struct Guest {
  Guest(SimHypervisor& sim, const std::string& path, DomId domid, BlkfrontConfig front_config, bool read_only,
        Worker& worker, bool expect_connect = true, uint32_t logical_block_size = 0,
        ImageFormatHint format = ImageFormatHint::kRaw, bool discard = true,
        uint32_t max_indirect_segments = 0, size_t persistent_capacity = 0, bool discard_secure = false) {
    DeviceConfig config;
    config.discard_secure = discard_secure;
    config.max_indirect_segments = max_indirect_segments;
    config.format = format;
    config.discard = discard;
    config.logical_block_size = logical_block_size;
    config.name = std::to_string(domid) + "/51712";
    config.path = path;
    config.read_only = read_only;
    auto opened = Device::Open(config);
    EXPECT_TRUE(opened.ok()) << opened.status().ToString();
    device = std::move(*opened);
    front_config.domid = domid;
    auto created = Blkfront::Create(sim, front_config);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    front = std::move(*created);
    RingConnection connection = ConnectionTo(*front);
    // Persistent grants when the frontend uses them, with the cache bound the test chose (0: the default).
    connection.persistent = front_config.persistent;
    if (persistent_capacity != 0) connection.persistent_capacity = persistent_capacity;
    Hypervisor hypervisor = sim.hypervisor();
    Status connected = device->Connect(hypervisor, connection, worker);
    if (expect_connect) {
      EXPECT_TRUE(connected.ok()) << connected.ToString();
    }
  }
  std::unique_ptr<Device> device;
  std::unique_ptr<Blkfront> front;
};

// A guest's random workload with a model of the disk: reads must return what the model holds.
class Workload {
 public:
  Workload(Blkfront& front, Bytes& model, unsigned depth, uint64_t seed)
      : front_(front), model_(model), random_(seed), busy_(model.size() >> kSectorShift, 0), slots_(depth) {
    for (unsigned i = 0; i < depth; ++i) {
      slots_[i].buffer.resize(64 * 1024 + kPageSize);
      free_.push_back(i);
    }
  }

  // Malformed requests to slip in between the good ones, and the status each must get.
  void InterleaveMalformed(std::vector<std::pair<Request, int16_t>> malformed) {
    malformed_ = std::move(malformed);
  }

  void Run(unsigned count) {
    unsigned issued = 0;
    while (issued < count || free_.size() < slots_.size()) {
      while (issued < count && !free_.empty() && StartOne()) ++issued;
      if (!malformed_.empty() && random_() % 4 == 0) PlaceMalformed();
      ASSERT_TRUE(front_.Push().ok());
      IoCompletion done[64];
      auto got = front_.Wait(done, std::chrono::seconds(10));
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      ASSERT_TRUE(*got > 0 || free_.size() == slots_.size()) << "the backend stopped answering";
      for (size_t i = 0; i < *got; ++i) Finish(done[i]);
      CollectMalformed();
      if (::testing::Test::HasFatalFailure()) return;
    }
    // Raw requests get their answers even when no good I/O is left to wait for.
    for (int spins = 0; !raw_pending_.empty() && spins < 1000; ++spins) {
      IoCompletion none[1];
      ASSERT_TRUE(front_.Reap(none).ok());
      CollectMalformed();
      if (!raw_pending_.empty()) ::usleep(1000);
    }
    EXPECT_TRUE(raw_pending_.empty()) << raw_pending_.size() << " malformed requests never answered";
  }

  uint64_t reads = 0, writes = 0, flushes = 0, malformed_answered = 0;

 private:
  struct Slot {
    IoOp op;
    uint64_t sector;
    uint32_t sectors;
    uint32_t offset;
    Bytes buffer;
  };

  bool StartOne() {
    unsigned roll = random_() % 100;
    IoOp op = roll < 45 ? IoOp::kRead : roll < 92 ? IoOp::kWrite : IoOp::kFlushDiskCache;
    uint32_t sectors = op == IoOp::kFlushDiskCache ? 0 : 1 + static_cast<uint32_t>(random_() % 128);
    uint64_t sector = random_() % (busy_.size() - sectors + 1);
    for (uint64_t s = sector; s < sector + sectors; ++s) {
      if (busy_[s]) return false;  // overlapping I/Os in flight would make the outcome a race
    }
    unsigned index = free_.back();
    free_.pop_back();
    Slot& slot = slots_[index];
    slot.op = op;
    slot.sector = sector;
    slot.sectors = sectors;
    slot.offset = static_cast<uint32_t>(random_() % kSectorsPerPage) << kSectorShift;  // partial first pages
    size_t bytes = size_t{sectors} << kSectorShift;
    if (op == IoOp::kWrite) {
      for (size_t i = 0; i < bytes; ++i) slot.buffer[slot.offset + i] = static_cast<uint8_t>(random_());
    }
    for (uint64_t s = sector; s < sector + sectors; ++s) busy_[s] = 1;
    Io io;
    io.op = op;
    io.sector = sector;
    io.length = bytes;
    io.buffer = slot.buffer.data() + slot.offset;
    io.tag = index;
    Status queued = front_.Queue(io);
    EXPECT_TRUE(queued.ok()) << queued.ToString();
    return true;
  }

  void Finish(const IoCompletion& done) {
    Slot& slot = slots_[done.tag];
    EXPECT_EQ(done.status, BLKIF_RSP_OKAY) << "op " << static_cast<int>(slot.op) << " sector " << slot.sector;
    size_t bytes = size_t{slot.sectors} << kSectorShift;
    uint8_t* data = slot.buffer.data() + slot.offset;
    uint8_t* disk = model_.data() + (slot.sector << kSectorShift);
    if (slot.op == IoOp::kRead) {
      ++reads;
      if (std::memcmp(data, disk, bytes) != 0) {
        ADD_FAILURE() << "read of " << slot.sectors << " sectors at " << slot.sector
                      << " differs from the model";
      }
    } else if (slot.op == IoOp::kWrite) {
      ++writes;
      std::memcpy(disk, data, bytes);
    } else {
      ++flushes;
    }
    for (uint64_t s = slot.sector; s < slot.sector + slot.sectors; ++s) busy_[s] = 0;
    free_.push_back(static_cast<unsigned>(done.tag));
  }

  void PlaceMalformed() {
    auto& [request, status] = malformed_[next_malformed_++ % malformed_.size()];
    Request copy = request;
    copy.id = kRawIdBase + next_raw_id_++;
    uint8_t entry[sizeof(abi::x86_64::Request)];
    EncodeRequest(front_.config().abi, copy, entry);
    if (!front_.PlaceRaw(std::span(entry, RequestSize(front_.config().abi))).ok())
      return;  // ring full: later
    raw_pending_.push_back({copy.id, status});
  }

  void CollectMalformed() {
    for (size_t i = 0; i < raw_pending_.size();) {
      auto response = front_.TakeRawResponse(raw_pending_[i].first);
      if (!response) {
        ++i;
        continue;
      }
      EXPECT_EQ(response->status, raw_pending_[i].second) << "malformed request id " << response->id;
      ++malformed_answered;
      raw_pending_.erase(raw_pending_.begin() + static_cast<long>(i));
    }
  }

  Blkfront& front_;
  Bytes& model_;
  std::mt19937_64 random_;
  Bytes busy_;
  std::vector<Slot> slots_;
  std::vector<unsigned> free_;
  std::vector<std::pair<Request, int16_t>> malformed_;
  size_t next_malformed_ = 0;
  uint64_t next_raw_id_ = 0;
  std::vector<std::pair<uint64_t, int16_t>> raw_pending_;
};

// A guest and a backend worker stepped by hand, so the test decides what the backend sees and when. Derived
// fixtures make `path_` in SetUp (CreateDisk) and connect `guest_` as they need.
// Steps `worker` by hand until `front` has `count` completions or `limit` passes; `after_step` runs after
// each step (a fixture may sample something there).
inline std::vector<IoCompletion> StepUntil(Worker& worker, Blkfront& front, size_t count,
                                           const std::function<void()>& after_step = {},
                                           std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  std::vector<IoCompletion> all;
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (all.size() < count && std::chrono::steady_clock::now() < deadline) {
    worker.RunOnce(5);
    if (after_step) after_step();
    IoCompletion done[64];
    auto got = front.Reap(done);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    if (!got.ok()) break;
    all.insert(all.end(), done, done + *got);
  }
  return all;
}

// One I/O through a worker stepped by hand: its status, or -100 if it never completed.
inline int16_t StepOne(Worker& worker, Blkfront& front, IoOp op, uint64_t sector, Bytes& buffer,
                       uint64_t tag = 1000) {
  EXPECT_TRUE(front.Submit({op, sector, buffer.size(), buffer.size() ? buffer.data() : nullptr, tag}).ok());
  auto done = StepUntil(worker, front, 1);
  EXPECT_EQ(done.size(), 1u);
  return done.empty() ? int16_t{-100} : done[0].status;
}

class SteppedGuestTest : public ::testing::Test {
 protected:
  void CreateDisk(const std::string& dir, const std::string& name, unsigned worker_depth = 128) {
    path_ = MakeDiskFile(dir, name, kDiskBytes, 0);
    auto worker = Worker::Create("worker0", worker_depth);
    ASSERT_TRUE(worker.ok());
    worker_ = std::move(*worker);
  }
  void TearDown() override {
    guest_.reset();
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  Blkfront& front() { return *guest_->front; }
  // Called after each step of the worker (a fixture may sample something there).
  virtual void AfterStep() {}
  // Steps the backend until the frontend has `count` completions or five seconds pass.
  std::vector<IoCompletion> Step(size_t count) {
    return StepUntil(*worker_, front(), count, [this] { AfterStep(); });
  }
  // Steps the backend until the raw response to `id` (a request placed with PlaceRaw) is there.
  std::optional<RawResponse> StepForRaw(uint64_t id) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
      worker_->RunOnce(5);
      IoCompletion none[1];
      EXPECT_TRUE(front().Reap(none).ok());
      if (auto response = front().TakeRawResponse(id)) return response;
    }
    return std::nullopt;
  }
  // Places `request` in the ring as the frontend's ABI encodes it, bypassing the frontend's own checks.
  void PlaceRaw(const Request& request) {
    uint8_t entry[sizeof(abi::x86_64::Request)];
    EncodeRequest(front().config().abi, request, entry);
    ASSERT_TRUE(front().PlaceRaw(std::span(entry, RequestSize(front().config().abi))).ok());
  }

  std::string path_;
  SimHypervisor sim_;
  std::unique_ptr<Worker> worker_;
  std::unique_ptr<Guest> guest_;
};

}  // namespace blk
