// Tests of the whole datapath: the userspace blkfront, the simulated hypervisor, and the real backend
// (Device, RequestPipeline, Worker, AioEngine) on real files, every byte checked against a model of the disk.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "backend/device.h"
#include "backend/worker.h"
#include "base/log.h"
#include "frontend/blkfront.h"
#include "ring/request.h"
#include "ring/sim/sim_hypervisor.h"

namespace blk {
namespace {

constexpr uint64_t kDiskBytes = 8ull << 20;
constexpr uint64_t kDiskSectors = kDiskBytes >> kSectorShift;
constexpr uint64_t kRawIdBase = 1ull << 40;  // ids of hand-made requests, far from the frontend's own

// I/O buffers start on a page, as a guest's do: the frontend derives first_sect from the address.
template <typename T>
struct PageAligned {
  using value_type = T;
  PageAligned() = default;
  template <typename U>
  PageAligned(const PageAligned<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{kPageSize}));
  }
  void deallocate(T* p, size_t) { ::operator delete (p, std::align_val_t{kPageSize}); }
  bool operator==(const PageAligned&) const { return true; }
};
using Bytes = std::vector<uint8_t, PageAligned<uint8_t>>;

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

 private:
  static void Sink(LogLevel, const char* line, void* self) {
    auto* capture = static_cast<LogCapture*>(self);
    std::lock_guard lock(capture->mutex_);
    capture->lines_.emplace_back(line);
  }
  std::mutex mutex_;
  std::vector<std::string> lines_;
};

std::string MakeDiskFile(const std::string& dir, const std::string& name, uint64_t bytes, uint8_t fill) {
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

// One guest with one disk, served by a backend worker that runs on its own thread (or is stepped by hand).
struct Guest {
  Guest(SimHypervisor& sim, const std::string& path, DomId domid, BlkfrontConfig front_config, bool read_only,
        Worker& worker, bool expect_connect = true, uint32_t logical_block_size = 0, bool discard = true) {
    DeviceConfig config;
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
    RingConnection connection;
    connection.frontend_domid = domid;
    connection.ring_refs.assign(front->ring_refs().begin(), front->ring_refs().end());
    connection.event_channel = front->event_channel();
    connection.abi = front_config.abi;
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

Bytes ReadWholeFile(const std::string& path) {
  Bytes bytes(kDiskBytes);
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_EQ(::pread(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  return bytes;
}

Request Good(uint8_t operation, uint64_t sector, unsigned segments) {
  Request request;
  request.operation = operation;
  request.sector_number = sector;
  request.nr_segments = static_cast<uint16_t>(segments);
  for (unsigned i = 0; i < segments; ++i) request.segments[i] = {SimDomain::kFirstFreeGrantRef, 0, 7};
  return request;
}

// Every kind of malformed request, each with the status it must get. None of them may touch the disk.
std::vector<std::pair<Request, int16_t>> MalformedRequests() {
  std::vector<std::pair<Request, int16_t>> all;
  auto add = [&](Request request, int16_t status) { all.push_back({request, status}); };
  Request r = Good(BLKIF_OP_WRITE, 0, 1);
  r.operation = 99;
  add(r, BLKIF_RSP_ERROR);
  r = Good(BLKIF_OP_WRITE, 0, 0);
  add(r, BLKIF_RSP_ERROR);  // a write without segments
  r = Good(BLKIF_OP_WRITE, 0, 11);
  r.nr_segments = 12;
  add(r, BLKIF_RSP_ERROR);
  r = Good(BLKIF_OP_WRITE, 0, 2);
  r.segments[1].last_sect = 8;
  add(r, BLKIF_RSP_ERROR);
  r = Good(BLKIF_OP_WRITE, 0, 2);
  r.segments[0].first_sect = 7;
  r.segments[0].last_sect = 6;
  add(r, BLKIF_RSP_ERROR);
  r = Good(BLKIF_OP_WRITE, kDiskSectors - 4, 1);  // runs off the end
  add(r, BLKIF_RSP_ERROR);
  r = Good(BLKIF_OP_READ, ~0ull - 2, 1);  // the range overflows 64 bits
  add(r, BLKIF_RSP_ERROR);
  r = Good(BLKIF_OP_DISCARD, 0, 0);
  r.discard_sectors = 8;
  r.discard_flag = BLKIF_DISCARD_SECURE;  // never offered
  add(r, BLKIF_RSP_EOPNOTSUPP);
  r = Good(BLKIF_OP_DISCARD, kDiskBytes >> kSectorShift, 0);
  r.discard_sectors = 1;  // past the end
  add(r, BLKIF_RSP_ERROR);
  r = Good(BLKIF_OP_INDIRECT, 0, 0);
  r.indirect_op = BLKIF_OP_WRITE;
  r.nr_segments = 32;
  add(r, BLKIF_RSP_EOPNOTSUPP);
  return all;
}

struct WorkloadCase {
  unsigned depth;
  Abi abi;
  const char* dir;
  unsigned poll_us = 0;  // the worker polls instead of sleeping right away
};

class RandomWorkloadTest : public ::testing::TestWithParam<WorkloadCase> {};

void RunRandomWorkload(const WorkloadCase& c, bool malformed) {
  std::string path = MakeDiskFile(c.dir, "datapath_test", kDiskBytes, 0x5A);
  Bytes model(kDiskBytes, 0x5A);
  SimHypervisor sim;
  auto worker = Worker::Create("worker0", 128, c.poll_us);
  ASSERT_TRUE(worker.ok());
  (*worker)->Start();
  BlkfrontConfig config;
  config.abi = c.abi;
  config.max_outstanding = c.depth;
  {
    Guest guest(sim, path, 1, config, false, **worker);
    ASSERT_TRUE(guest.device && guest.front);
    Workload workload(*guest.front, model, c.depth, c.depth * 1000 + static_cast<unsigned>(c.abi));
    if (malformed) workload.InterleaveMalformed(MalformedRequests());
    workload.Run(10000);
    EXPECT_GT(workload.reads, 4000u);
    EXPECT_GT(workload.writes, 4000u);
    EXPECT_GT(workload.flushes, 400u);
    if (malformed) {
      EXPECT_GT(workload.malformed_answered, 100u);
      EXPECT_EQ(guest.device->stats().bad_req.load(), workload.malformed_answered);
    }
    EXPECT_EQ(guest.device->stats().io_errors.load(), 0u);
    EXPECT_TRUE(guest.front->broken().ok());
    EXPECT_FALSE(guest.device->broken());
    guest.device->Disconnect();
  }
  (*worker)->Stop();
  // What the guest saw is what the file holds.
  EXPECT_TRUE(ReadWholeFile(path) == model) << "the file differs from what the guest wrote";
  ::unlink(path.c_str());
}

TEST_P(RandomWorkloadTest, TenThousandMixedIosVerifiedByteForByte) { RunRandomWorkload(GetParam(), false); }

TEST_P(RandomWorkloadTest, TenThousandMixedIosWithMalformedRequestsInterleaved) {
  RunRandomWorkload(GetParam(), true);
}

INSTANTIATE_TEST_SUITE_P(Depths, RandomWorkloadTest,
                         ::testing::Values(WorkloadCase{1, Abi::kX86_64, "/var/tmp"},
                                           WorkloadCase{8, Abi::kX86_32, "/var/tmp"},
                                           WorkloadCase{64, Abi::kX86_64, "/var/tmp"},
                                           WorkloadCase{64, Abi::kX86_32, "/dev/shm"},
                                           WorkloadCase{8, Abi::kX86_64, "/dev/shm", 200}),
                         [](const auto& info) {
                           return "Depth" + std::to_string(info.param.depth) +
                                  (info.param.abi == Abi::kX86_32 ? "X86_32" : "X86_64") +
                                  (std::string(info.param.dir) == "/dev/shm" ? "Shm" : "Disk") +
                                  (info.param.poll_us > 0 ? "Polling" : "");
                         });

// A fixture whose worker is stepped by hand, so the test decides what the backend sees and when.
class SteppedDatapathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = MakeDiskFile("/var/tmp", "stepped_test", kDiskBytes, 0);
    auto worker = Worker::Create("worker0", 128);
    ASSERT_TRUE(worker.ok());
    worker_ = std::move(*worker);
  }
  void TearDown() override {
    guest_.reset();
    ::unlink(path_.c_str());
  }
  void Connect(BlkfrontConfig config = {}, bool read_only = false, uint32_t logical_block_size = 0,
               bool discard = true) {
    guest_ = std::make_unique<Guest>(sim_, path_, 1, config, read_only, *worker_, true, logical_block_size,
                                     discard);
  }
  Blkfront& front() { return *guest_->front; }
  // Steps the backend until the frontend has `count` completions (or raw responses) or a second passes.
  std::vector<IoCompletion> Step(size_t count) {
    std::vector<IoCompletion> all;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (all.size() < count && std::chrono::steady_clock::now() < deadline) {
      worker_->RunOnce(5);
      IoCompletion done[64];
      auto got = front().Reap(done);
      EXPECT_TRUE(got.ok()) << got.status().ToString();
      if (!got.ok()) break;
      all.insert(all.end(), done, done + *got);
    }
    return all;
  }
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

TEST_F(SteppedDatapathTest, EveryBadRequestGetsItsStatusAndTheNextGoodOneIsServed) {
  Connect();
  Bytes data(4096, 0xC3), back(4096);
  uint64_t id = kRawIdBase;
  for (auto& [request, status] : MalformedRequests()) {
    Request bad = request;
    bad.id = ++id;
    PlaceRaw(bad);
    ASSERT_TRUE(front().Push().ok());
    auto response = StepForRaw(bad.id);
    ASSERT_TRUE(response.has_value()) << "no answer to bad request op " << int{bad.operation};
    EXPECT_EQ(response->status, status) << "op " << int{bad.operation};
    EXPECT_EQ(response->operation, bad.operation);
    // The ring goes on: a good write and read right after.
    ASSERT_TRUE(front().Submit({IoOp::kWrite, 16, 4096, data.data(), 1}).ok());
    auto written = Step(1);
    ASSERT_EQ(written.size(), 1u);
    EXPECT_EQ(written[0].status, BLKIF_RSP_OKAY);
    ASSERT_TRUE(front().Submit({IoOp::kRead, 16, 4096, back.data(), 2}).ok());
    auto read = Step(1);
    ASSERT_EQ(read.size(), 1u);
    EXPECT_EQ(read[0].status, BLKIF_RSP_OKAY);
    EXPECT_EQ(back, data);
    data.assign(4096, static_cast<uint8_t>(data[0] + 1));
  }
  EXPECT_EQ(guest_->device->stats().bad_req.load(), MalformedRequests().size());
}

TEST_F(SteppedDatapathTest, ReadOnlyDiskAnswersWritesWithAnErrorAndStillReads) {
  Connect({}, /*read_only=*/true);
  Bytes data(4096, 0xEE);
  ASSERT_TRUE(front().Submit({IoOp::kWrite, 0, 4096, data.data(), 1}).ok());
  auto done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_ERROR);
  ASSERT_TRUE(front().Submit({IoOp::kFlushDiskCache, 0, 0, nullptr, 2}).ok());
  done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_ERROR);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 0, 4096, data.data(), 3}).ok());
  done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(data, Bytes(4096, 0));
}

TEST_F(SteppedDatapathTest, DiscardPunchesAHoleThatReadsBackAsZerosAndLeavesTheRestAlone) {
  Connect();
  ASSERT_TRUE(guest_->device->limits().discard);
  EXPECT_GE(guest_->device->discard_granularity(), 512u);
  Bytes data(65536), back(65536);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 1);
  ASSERT_TRUE(front().Submit({IoOp::kWrite, 0, data.size(), data.data(), 1}).ok());
  ASSERT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
  // 32 KiB from 8 KiB: whole file-system blocks are freed, and every byte of the range reads as zero.
  ASSERT_TRUE(front().Submit({IoOp::kDiscard, 16, 32768, nullptr, 2}).ok());
  auto done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 0, back.size(), back.data(), 3}).ok());
  ASSERT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
  Bytes expected = data;
  std::fill(expected.begin() + 8192, expected.begin() + 8192 + 32768, 0);
  EXPECT_EQ(back, expected);
  EXPECT_EQ(guest_->device->stats().ds_req.load(), 1u);
  EXPECT_EQ(guest_->device->stats().rd_sect.load(), 128u);  // the discard moved no data
  // A discard of nothing is answered too.
  ASSERT_TRUE(front().Submit({IoOp::kDiscard, 8, 0, nullptr, 4}).ok());
  EXPECT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
}

TEST_F(SteppedDatapathTest, DiscardNotOfferedIsEopnotsuppAndAReadOnlyDiskNeverOffersIt) {
  Bytes data(4096, 0x5A), back(4096);
  {
    Connect({}, /*read_only=*/false, 0, /*discard=*/false);
    EXPECT_FALSE(guest_->device->limits().discard);
    ASSERT_TRUE(front().Submit({IoOp::kWrite, 0, 4096, data.data(), 1}).ok());
    ASSERT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
    ASSERT_TRUE(front().Submit({IoOp::kDiscard, 0, 4096, nullptr, 2}).ok());
    EXPECT_EQ(Step(1).at(0).status, BLKIF_RSP_EOPNOTSUPP);
    guest_.reset();
  }
  Connect({}, /*read_only=*/true);
  EXPECT_FALSE(guest_->device->limits().discard);  // never offered on a read-only disk
  ASSERT_TRUE(front().Submit({IoOp::kDiscard, 0, 4096, nullptr, 3}).ok());
  EXPECT_EQ(Step(1).at(0).status, BLKIF_RSP_EOPNOTSUPP);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 0, 4096, back.data(), 4}).ok());
  ASSERT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
  EXPECT_EQ(back, data);  // nothing was discarded
}

TEST_F(SteppedDatapathTest, BarrierIsAnsweredAfterEverythingBeforeItAndBeforeEverythingAfterIt) {
  BlkfrontConfig config;
  config.max_outstanding = 32;
  Connect(config);
  std::vector<Bytes> writes(8, Bytes(8192)), reads(8, Bytes(8192));
  for (unsigned i = 0; i < 8; ++i) {
    writes[i].assign(8192, static_cast<uint8_t>(0x10 + i));
    ASSERT_TRUE(front().Queue({IoOp::kWrite, i * 64ull, 8192, writes[i].data(), i}).ok());
  }
  Bytes barrier_data(4096, 0xBB);
  ASSERT_TRUE(front().Queue({IoOp::kWriteBarrier, 1024, 4096, barrier_data.data(), 100}).ok());
  for (unsigned i = 0; i < 8; ++i) {
    ASSERT_TRUE(front().Queue({IoOp::kRead, i * 64ull, 8192, reads[i].data(), 200 + i}).ok());
  }
  ASSERT_TRUE(front().Push().ok());
  auto done = Step(17);
  ASSERT_EQ(done.size(), 17u);
  size_t barrier_at = 0;
  for (size_t i = 0; i < done.size(); ++i) {
    EXPECT_EQ(done[i].status, BLKIF_RSP_OKAY);
    if (done[i].tag == 100) barrier_at = i;
  }
  for (size_t i = 0; i < done.size(); ++i) {
    if (done[i].tag < 8) {
      EXPECT_LT(i, barrier_at) << "write " << done[i].tag << " answered after the barrier";
    }
    if (done[i].tag >= 200) {
      EXPECT_GT(i, barrier_at) << "read " << done[i].tag << " answered before the barrier";
    }
  }
  for (unsigned i = 0; i < 8; ++i) EXPECT_EQ(reads[i], writes[i]) << "read " << i << " overtook its write";
}

TEST_F(SteppedDatapathTest, FlushWithDataWritesItAndEmptyFlushesComplete) {
  Connect();
  Bytes data(12288, 0x42), back(12288);
  ASSERT_TRUE(front().Submit({IoOp::kFlushDiskCache, 256, data.size(), data.data(), 1}).ok());
  ASSERT_TRUE(front().Submit({IoOp::kFlushDiskCache, 0, 0, nullptr, 2}).ok());
  ASSERT_TRUE(front().Submit({IoOp::kWriteBarrier, 0, 0, nullptr, 3}).ok());
  auto done = Step(3);
  ASSERT_EQ(done.size(), 3u);
  for (const auto& completion : done) EXPECT_EQ(completion.status, BLKIF_RSP_OKAY);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 256, back.size(), back.data(), 4}).ok());
  ASSERT_EQ(Step(1).size(), 1u);
  EXPECT_EQ(back, data);
  EXPECT_EQ(guest_->device->stats().f_req.load(), 3u);
}

TEST_F(SteppedDatapathTest, GrantMadeReadOnlyMidRequestFailsOnlyThatRead) {
  Connect();
  Bytes data(4096, 0x77), back(4096, 0x01);
  ASSERT_TRUE(front().Submit({IoOp::kWrite, 8, 4096, data.data(), 1}).ok());
  ASSERT_EQ(Step(1).size(), 1u);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 8, 4096, back.data(), 2}).ok());
  // The frontend takes write access back before the backend answered: the copy into its page must fail.
  Request placed;
  DecodeRequest(front().config().abi, front().RingEntry(front().req_prod_pvt() - 1), &placed);
  ASSERT_TRUE(front().domain().SetReadOnly(placed.segments[0].gref, true).ok());
  auto done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_ERROR);
  EXPECT_EQ(guest_->device->stats().io_errors.load(), 1u);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 8, 4096, back.data(), 3}).ok());
  done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(back, data);
}

TEST_F(SteppedDatapathTest, GrantRevokedBeforeTheBackendLookedFailsOnlyThatWrite) {
  Connect();
  Bytes data(4096, 0x77), back(4096);
  ASSERT_TRUE(front().Submit({IoOp::kWrite, 8, 4096, data.data(), 1}).ok());
  Request placed;
  DecodeRequest(front().config().abi, front().RingEntry(front().req_prod_pvt() - 1), &placed);
  ASSERT_TRUE(front().domain().Revoke(placed.segments[0].gref).ok());
  auto done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_ERROR);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 8, 4096, back.data(), 2}).ok());
  done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(back, Bytes(4096, 0)) << "a write whose grant was revoked reached the disk";
  EXPECT_TRUE(front().broken().ok()) << front().broken().ToString();
}

TEST_F(SteppedDatapathTest, IndicesWrapAroundThroughTheWholePipeline) {
  BlkfrontConfig config;
  config.start_index = 0xFFFFFF80u;
  config.max_outstanding = 16;
  Connect(config);
  std::vector<Bytes> data(
      4, Bytes(4096));  // each stays intact until its write completes, as a guest's page would
  Bytes back(4096);
  for (unsigned round = 0; round < 40; ++round) {  // 40 * 8 requests cross 2^32
    for (unsigned i = 0; i < 4; ++i) {
      data[i].assign(4096, static_cast<uint8_t>(round * 4 + i));
      ASSERT_TRUE(front().Queue({IoOp::kWrite, (round * 4 + i) * 8ull, 4096, data[i].data(), i}).ok());
    }
    ASSERT_TRUE(front().Push().ok());
    auto done = Step(4);
    ASSERT_EQ(done.size(), 4u);
    for (unsigned i = 0; i < 4; ++i) {
      ASSERT_TRUE(front().Submit({IoOp::kRead, (round * 4 + i) * 8ull, 4096, back.data(), 10 + i}).ok());
      auto read = Step(1);
      ASSERT_EQ(read.size(), 1u);
      EXPECT_EQ(read[0].status, BLKIF_RSP_OKAY);
      EXPECT_EQ(back, Bytes(4096, static_cast<uint8_t>(round * 4 + i)));
    }
  }
  EXPECT_LT(front().shared_ring().rsp_prod, 0xFFFFFF80u) << "the indices did not wrap";
}

TEST_F(SteppedDatapathTest, FourKilobyteSectorDiskServesAlignedIoAndRefusesTheRest) {
  Connect({}, false, 4096);
  EXPECT_EQ(guest_->device->limits().logical_block_size, 4096u);
  Bytes data(8192, 0x4B), back(8192), small(512, 0x99);
  ASSERT_TRUE(front().Submit({IoOp::kWrite, 16, data.size(), data.data(), 1}).ok());
  ASSERT_TRUE(
      front().Submit({IoOp::kWrite, 17, small.size(), small.data(), 2}).ok());  // not on a 4 KiB boundary
  ASSERT_TRUE(
      front().Submit({IoOp::kRead, 24, small.size(), small.data(), 3}).ok());  // aligned start, 512 bytes
  auto done = Step(3);
  ASSERT_EQ(done.size(), 3u);
  for (const auto& completion : done) {
    EXPECT_EQ(completion.status, completion.tag == 1 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR) << completion.tag;
  }
  ASSERT_TRUE(front().Submit({IoOp::kRead, 16, back.size(), back.data(), 4}).ok());
  done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(back, data);
}

TEST_F(SteppedDatapathTest, DisconnectReturnsAtOnceWhileIoIsInFlightAndReleasesTheRingWhenItCompletes) {
  Connect();
  GrantRef ring_ref = front().ring_refs()[0];
  Bytes data(65536);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 0, data.size(), data.data(), 1}).ok());
  worker_->RunOnce(1000);  // the kick: requests taken and submitted, completions not yet reaped
  ASSERT_GT(front().domain().MapCount(ring_ref), 0u);
  auto started = std::chrono::steady_clock::now();
  guest_->device->Disconnect();
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(100));
  // The kernel may still be writing into the ring's buffers: the worker holds the ring until it is done.
  EXPECT_EQ(worker_->retiring(), 1u);
  EXPECT_GT(front().domain().MapCount(ring_ref), 0u);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (worker_->retiring() > 0 && std::chrono::steady_clock::now() < deadline) worker_->RunOnce(10);
  EXPECT_EQ(worker_->retiring(), 0u);
  EXPECT_EQ(front().domain().MapCount(ring_ref), 0u) << "the retired ring was never unmapped";
}

TEST_F(SteppedDatapathTest, ContiguousRequestsGoToTheKernelAsOneIo) {
  BlkfrontConfig config;
  config.max_outstanding = 4;
  Connect(config);
  Bytes data(1 << 20), back(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + i / 4096);
  ASSERT_TRUE(front().Submit({IoOp::kWrite, 2048, data.size(), data.data(), 1}).ok());
  auto done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  DeviceStats& stats = guest_->device->stats();
  // 1 MiB is 24 requests of at most 11 pages; they are contiguous, so the kernel sees one or two I/Os.
  EXPECT_EQ(stats.wr_req.load(), 24u);
  EXPECT_LE(stats.iocbs.load(), 2u);
  uint64_t before = stats.iocbs.load();
  ASSERT_TRUE(front().Submit({IoOp::kRead, 2048, back.size(), back.data(), 2}).ok());
  done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_LE(stats.iocbs.load() - before, 2u);
  EXPECT_EQ(back, data);
}

TEST_F(SteppedDatapathTest, MergedIoThatFailsIsRetriedRequestByRequest) {
  Connect();
  // The image shrinks under the connected device: a merged read that crosses the new end comes back short.
  ASSERT_EQ(::truncate(path_.c_str(), kDiskBytes - 20480), 0);
  Bytes first(45056), second(20480);
  ASSERT_TRUE(
      front().Queue({IoOp::kRead, (kDiskBytes - 65536) >> kSectorShift, first.size(), first.data(), 1}).ok());
  ASSERT_TRUE(front()
                  .Queue({IoOp::kRead, (kDiskBytes - 20480) >> kSectorShift, second.size(), second.data(), 2})
                  .ok());
  ASSERT_TRUE(front().Push().ok());
  auto done = Step(2);
  ASSERT_EQ(done.size(), 2u);
  for (const auto& completion : done) {
    EXPECT_EQ(completion.status, completion.tag == 1 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR) << completion.tag;
  }
  EXPECT_EQ(guest_->device->stats().io_errors.load(), 1u);
}

TEST(BrokenFrontendTest, ReqProdFarAheadStopsThatDeviceOnlyWithOneClearLogLine) {
  LogCapture log;
  std::string bad_path = MakeDiskFile("/var/tmp", "broken_test_bad", kDiskBytes, 0);
  std::string good_path = MakeDiskFile("/var/tmp", "broken_test_good", kDiskBytes, 0x11);
  Bytes model(kDiskBytes, 0x11);
  SimHypervisor sim;
  auto worker = Worker::Create("worker0", 256);
  ASSERT_TRUE(worker.ok());
  (*worker)->Start();
  BlkfrontConfig config;
  config.max_outstanding = 16;
  {
    Guest hostile(sim, bad_path, 7, config, false, **worker);
    Guest healthy(sim, good_path, 8, config, false, **worker);
    hostile.front->shared_ring().req_prod = hostile.front->req_prod_pvt() + 1000;
    ASSERT_TRUE(hostile.front->NotifyBackend().ok());
    Workload workload(*healthy.front, model, 16, 3);
    workload.Run(3000);
    EXPECT_TRUE(hostile.device->broken());
    EXPECT_FALSE(healthy.device->broken());
    EXPECT_TRUE(log.Contains("7/51712: broken frontend, ring stopped: req_prod"));
    hostile.device->Disconnect();
    healthy.device->Disconnect();
  }
  (*worker)->Stop();
  EXPECT_TRUE(ReadWholeFile(good_path) == model);
  ::unlink(bad_path.c_str());
  ::unlink(good_path.c_str());
}

}  // namespace
}  // namespace blk
