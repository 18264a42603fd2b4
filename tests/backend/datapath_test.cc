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
#include <thread>
#include <vector>

#include "backend/device.h"
#include "backend/worker.h"
#include "base/log.h"
#include "frontend/blkfront.h"
#include "ring/request.h"
#include "ring/sim/sim_hypervisor.h"
#include "tests/backend/datapath_fixture.h"

namespace blk {
namespace {

Request Good(uint8_t operation, uint64_t sector, unsigned segments) {
  Request request;
  request.operation = operation;
  request.sector_number = sector;
  request.nr_segments = static_cast<uint16_t>(segments);
  for (unsigned i = 0; i < segments; ++i) request.segments[i] = {SimDomain::kFirstFreeGrantRef, 0, 7};
  return request;
}

// Every kind of malformed request, each with the status it must get. None of them may touch the disk.
// `max_indirect`: the segments per INDIRECT request the device offers (0: none).
std::vector<std::pair<Request, int16_t>> MalformedRequests(uint32_t max_indirect = 0) {
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
  r.discard_flag = BLKIF_DISCARD_SECURE;  // not offered: a file never is (discard_secure_test.cc)
  add(r, BLKIF_RSP_EOPNOTSUPP);
  r = Good(BLKIF_OP_DISCARD, kDiskBytes >> kSectorShift, 0);
  r.discard_sectors = 1;  // past the end
  add(r, BLKIF_RSP_ERROR);
  r = Good(BLKIF_OP_INDIRECT, 0, 0);
  r.indirect_op = BLKIF_OP_WRITE;
  r.nr_segments = static_cast<uint16_t>(max_indirect == 0 ? 32 : max_indirect + 1);
  add(r, max_indirect == 0 ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR);
  return all;
}

struct WorkloadCase {
  unsigned depth;
  Abi abi;
  const char* dir;
  unsigned poll_us = 0;            // the worker polls instead of sleeping right away
  uint32_t indirect_segments = 0;  // offered by the backend and used by the frontend
  bool persistent = false;
  size_t persistent_capacity = 0;  // 0: the default (1056)
  unsigned frontend_poll_us = 0;   // the frontend spins for responses before it sleeps
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
  config.indirect_segments = c.indirect_segments;
  config.persistent = c.persistent;
  config.poll_us = c.frontend_poll_us;
  HypervisorCounters& counters = sim.counters();
  {
    Guest guest(sim, path, 1, config, false, **worker, true, 0, ImageFormatHint::kRaw, true,
                c.indirect_segments, c.persistent_capacity);
    ASSERT_TRUE(guest.device && guest.front);
    Workload workload(*guest.front, model, c.depth, c.depth * 1000 + static_cast<unsigned>(c.abi));
    if (malformed) workload.InterleaveMalformed(MalformedRequests(c.indirect_segments));
    workload.Run(10000);
    EXPECT_GT(workload.reads, 4000u);
    EXPECT_GT(workload.writes, 4000u);
    EXPECT_GT(workload.flushes, 400u);
    if (malformed) {
      // How many get in depends on how many answers each wait brings (timing): about one per four waits.
      EXPECT_GT(workload.malformed_answered, 50u);
      EXPECT_EQ(guest.device->stats().bad_req.load(), workload.malformed_answered);
    }
    EXPECT_EQ(guest.device->stats().io_errors.load(), 0u);
    EXPECT_TRUE(guest.front->broken().ok());
    EXPECT_FALSE(guest.device->broken());
    if (c.persistent) {
      // Mappings alive: the ring's one, plus at most the cache's bound of persistent grants.
      size_t bound =
          c.persistent_capacity != 0 ? c.persistent_capacity : PersistentGrantCache::kDefaultCapacity;
      EXPECT_LE(counters.map_calls.load() - counters.unmap_calls.load(), bound + 1);
      EXPECT_GT(counters.map_calls.load(), 1u) << "persistent grants were never mapped";
    }
    guest.device->Disconnect();
  }
  (*worker)->Stop();
  // Disconnected: every mapping is gone, the persistent ones included.
  EXPECT_EQ(counters.map_calls.load(), counters.unmap_calls.load());
  // What the guest saw is what the file holds.
  EXPECT_TRUE(ReadDisk(path) == model) << "the file differs from what the guest wrote";
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
                                           WorkloadCase{8, Abi::kX86_64, "/dev/shm", 200},
                                           WorkloadCase{32, Abi::kX86_64, "/dev/shm", 0, 32},
                                           WorkloadCase{8, Abi::kX86_32, "/var/tmp", 0, 16},
                                           WorkloadCase{32, Abi::kX86_64, "/dev/shm", 0, 0, true},
                                           WorkloadCase{8, Abi::kX86_32, "/var/tmp", 0, 32, true},
                                           // More distinct grants in flight than the cache holds.
                                           WorkloadCase{64, Abi::kX86_64, "/dev/shm", 0, 0, true, 16},
                                           // Both sides polling, every feature on.
                                           WorkloadCase{32, Abi::kX86_64, "/dev/shm", 200, 32, true, 0, 200}),
                         [](const auto& info) {
                           return "Depth" + std::to_string(info.param.depth) +
                                  (info.param.abi == Abi::kX86_32 ? "X86_32" : "X86_64") +
                                  (std::string(info.param.dir) == "/dev/shm" ? "Shm" : "Disk") +
                                  (info.param.poll_us > 0 ? "Polling" : "") +
                                  (info.param.frontend_poll_us > 0 ? "FrontendPolling" : "") +
                                  (info.param.indirect_segments > 0 ? "Indirect" : "") +
                                  (info.param.persistent ? "Persistent" : "") +
                                  (info.param.persistent_capacity != 0 ? "SmallCache" : "");
                         });

// A fixture whose worker is stepped by hand, so the test decides what the backend sees and when.
class SteppedDatapathTest : public SteppedGuestTest {
 protected:
  void SetUp() override { CreateDisk("/var/tmp", "stepped_test"); }
  void Connect(BlkfrontConfig config = {}, bool read_only = false, uint32_t logical_block_size = 0,
               bool discard = true) {
    guest_ = std::make_unique<Guest>(sim_, path_, 1, config, read_only, *worker_, true, logical_block_size,
                                     ImageFormatHint::kRaw, discard);
  }
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
    // An INDIRECT request is answered as the READ or WRITE it carries, as Linux blkback does.
    EXPECT_EQ(response->operation, bad.operation == BLKIF_OP_INDIRECT ? bad.indirect_op : bad.operation);
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
  // A device seen to be slow (the disk, or any storage on a loaded machine) gets a round in pieces of at most
  // 256 KiB: five.
  EXPECT_LE(stats.iocbs.load() - before, 5u);
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
  EXPECT_TRUE(ReadDisk(good_path) == model);
  ::unlink(bad_path.c_str());
  ::unlink(good_path.c_str());
}

// A device's counters are shared by its rings (the queues of one disk), each served by its own worker thread:
// every request of every ring is counted, however the two workers' updates interleave.
TEST(DeviceStatsTest, EveryRingIsCountedWhileTwoWorkersServeThemAtOnce) {
  const std::string path = MakeDiskFile("/dev/shm", "stats_two_workers", kDiskBytes, 0x11);
  SimHypervisor sim;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < 2; ++i) {
    auto worker = Worker::Create("worker" + std::to_string(i), 64);
    ASSERT_TRUE(worker.ok());
    workers.push_back(std::move(*worker));
    workers.back()->Start();
  }
  DeviceConfig config;
  config.name = "1/51712";
  config.path = path;
  auto device = Device::Open(config);
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  Hypervisor hypervisor = sim.hypervisor();
  std::vector<std::unique_ptr<Blkfront>> fronts;
  for (int i = 0; i < 2; ++i) {
    BlkfrontConfig front_config;
    front_config.domid = 1;
    auto front = Blkfront::Create(sim, front_config);
    ASSERT_TRUE(front.ok()) << front.status().ToString();
    ASSERT_TRUE((*device)->Connect(hypervisor, ConnectionTo(**front), *workers[i]).ok());
    fronts.push_back(std::move(*front));
  }
  constexpr unsigned kRounds = 300, kBatch = 16;
  auto reads = [&](Blkfront& front) {
    std::vector<Bytes> buffers(kBatch, Bytes(4096));
    for (unsigned round = 0; round < kRounds; ++round) {
      for (unsigned i = 0; i < kBatch; ++i) {
        if (!front.Queue({IoOp::kRead, i * 16ull, 4096, buffers[i].data(), i}).ok()) return;
      }
      if (!front.Push().ok()) return;
      for (size_t got = 0; got < kBatch;) {
        IoCompletion done[kBatch];
        auto waited = front.Wait(std::span(done).first(kBatch - got), std::chrono::seconds(5));
        if (!waited.ok() || *waited == 0) return;
        got += *waited;
      }
    }
  };
  std::thread other(reads, std::ref(*fronts[1]));
  reads(*fronts[0]);
  other.join();
  EXPECT_EQ(fronts[0]->stats().responses + fronts[1]->stats().responses, 2ull * kRounds * kBatch);
  EXPECT_EQ((*device)->stats().rd_req.load(), 2ull * kRounds * kBatch) << "lost increments";
  EXPECT_EQ((*device)->stats().rd_sect.load(), 2ull * kRounds * kBatch * 8) << "lost increments";
  device->reset();
  fronts.clear();
  ::unlink(path.c_str());
}

// tmpfs does the I/O within io_submit. A round bigger than one piece (256 KiB) is submitted a piece at a
// time, and the first piece's responses are on the ring before the rest is copied, so that the guest can
// refill.
TEST(SynchronousStorageTest, ABigRoundIsAnsweredPieceByPiece) {
  std::string path = MakeDiskFile("/dev/shm", "synchronous_test", kDiskBytes, 0x6B);
  SimHypervisor sim;
  auto worker = Worker::Create("worker0", 128);
  ASSERT_TRUE(worker.ok());
  BlkfrontConfig config;
  config.max_outstanding = 8;
  {
    Guest guest(sim, path, 1, config, false, **worker);
    ASSERT_TRUE(guest.device && guest.front);
    constexpr size_t kBytes = kMaxDirectSegments * kPageSize;  // 44 KiB: six make a piece
    std::vector<Bytes> buffers(8, Bytes(kBytes));
    // Every other 64 KiB, so that nothing merges.
    for (unsigned i = 0; i < 8; ++i)
      ASSERT_TRUE(guest.front->Queue({IoOp::kRead, i * 256, kBytes, buffers[i].data(), i}).ok());
    ASSERT_TRUE(guest.front->Push().ok());
    const uint64_t calls = (*worker)->aio().submit_calls();
    IoCompletion done[8];
    (*worker)->RunOnce(1000);  // takes all eight, submits the first piece, holds the rest
    EXPECT_EQ(*guest.front->Reap(done), 0u);
    EXPECT_EQ((*worker)->aio().submit_calls() - calls, 1u);
    (*worker)->RunOnce(1000);  // answers the first piece, then submits the rest
    EXPECT_EQ(*guest.front->Reap(done), 6u) << "the first piece was not answered before the rest went";
    EXPECT_GE((*worker)->aio().submit_calls() - calls, 2u);
    (*worker)->RunOnce(1000);
    EXPECT_EQ(*guest.front->Reap(done), 2u);
    for (const Bytes& buffer : buffers) EXPECT_EQ(buffer, Bytes(kBytes, 0x6B));
    guest.device->Disconnect();
  }
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace blk
