// Tests of polling on both sides of the ring: a worker that polls (Worker's poll_us) and a frontend that
// spins for its responses (BlkfrontConfig::poll_us). While they poll, neither side re-arms its event index,
// so no notification is needed; before either sleeps it re-arms, so nothing published later is ever missed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "backend/device.h"
#include "backend/worker.h"
#include "frontend/blkfront.h"
#include "ring/sim/sim_hypervisor.h"
#include "tests/backend/datapath_fixture.h"

namespace blk {
namespace {

using namespace std::chrono_literals;

struct PollingCase {
  unsigned worker_poll_us;
  unsigned frontend_poll_us;
};

class PollingTest : public ::testing::TestWithParam<PollingCase> {
 protected:
  void SetUp() override { path_ = MakeDiskFile("/dev/shm", "polling_test", kDiskBytes, 0x11); }
  void TearDown() override {
    guest_.reset();
    if (worker_) worker_->Stop();
    ::unlink(path_.c_str());
  }
  void Connect(unsigned worker_poll_us, unsigned frontend_poll_us, uint32_t depth) {
    auto worker = Worker::Create("worker0", 128, worker_poll_us);
    ASSERT_TRUE(worker.ok()) << worker.status().ToString();
    worker_ = std::move(*worker);
    worker_->Start();
    BlkfrontConfig config;
    config.max_outstanding = depth;
    config.poll_us = frontend_poll_us;
    config.persistent = true;
    guest_ = std::make_unique<Guest>(sim_, path_, 1, config, false, *worker_);
    ASSERT_TRUE(guest_->device && guest_->front);
  }
  // Writes `count` blocks of 4 KiB with a pattern `depth` at a time, then reads each back and checks it.
  void WriteThenReadBack(uint64_t first_block, unsigned count, unsigned depth) {
    Bytes data(size_t{count} * 4096), back(size_t{count} * 4096);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>((i * 7 + first_block) >> 3);
    for (IoOp op : {IoOp::kWrite, IoOp::kRead}) {
      uint8_t* buffer = op == IoOp::kWrite ? data.data() : back.data();
      unsigned issued = 0, done = 0;
      while (done < count) {
        while (issued < count && issued - done < depth) {
          Io io{op, (first_block + issued) * 8, 4096, buffer + size_t{issued} * 4096, issued};
          ASSERT_TRUE(guest_->front->Queue(io).ok());
          ++issued;
        }
        ASSERT_TRUE(guest_->front->Push().ok());
        IoCompletion completions[64];
        auto got = guest_->front->Wait(completions, 5s);
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        ASSERT_GT(*got, 0u) << "no answer within 5 s: a notification was lost";
        for (size_t i = 0; i < *got; ++i) EXPECT_EQ(completions[i].status, BLKIF_RSP_OKAY);
        done += static_cast<unsigned>(*got);
      }
    }
    EXPECT_EQ(std::memcmp(data.data(), back.data(), data.size()), 0) << "read back differs";
  }
  uint64_t Notifications() {
    return sim_.counters().backend_notifications.load() + sim_.counters().frontend_notifications.load();
  }

  std::string path_;
  SimHypervisor sim_;
  std::unique_ptr<Worker> worker_;
  std::unique_ptr<Guest> guest_;
};

// Bursts separated by pauses longer than any poll window: each side has gone to sleep (re-armed) before the
// next burst, which must still be noticed, whichever side polls.
TEST_P(PollingTest, RequestsAfterBothSidesWentToSleepAreServed) {
  const PollingCase c = GetParam();
  Connect(c.worker_poll_us, c.frontend_poll_us, 8);
  for (unsigned burst = 0; burst < 6; ++burst) {
    WriteThenReadBack(burst * 64, 32, burst % 2 == 0 ? 1 : 8);
    std::this_thread::sleep_for(20ms);  // every window here is 1 ms
  }
  // Sleeping sides were woken by notifications: at least one per burst in each direction where one slept.
  if (c.worker_poll_us == 0 || c.frontend_poll_us == 0) {
    EXPECT_GE(Notifications(), 6u);
  }
  EXPECT_TRUE(guest_->front->broken().ok());
  EXPECT_FALSE(guest_->device->broken());
}

INSTANTIATE_TEST_SUITE_P(Sides, PollingTest,
                         ::testing::Values(PollingCase{1000, 0}, PollingCase{0, 1000},
                                           PollingCase{1000, 1000}),
                         [](const auto& info) {
                           return std::string(info.param.worker_poll_us > 0 ? "Worker" : "") +
                                  (info.param.frontend_poll_us > 0 ? "Frontend" : "") + "Polls";
                         });

// ring.h's suppression at work: with both sides polling through a steady stream, requests and responses are
// published without notifications (issue 6: fewer than 0.1 per request at iodepth 8 and more).
TEST_F(PollingTest, BothSidesPollingNeedAlmostNoNotifications) {
  // Windows (2 s) far longer than any gap in the stream, even on a loaded machine, so that neither side sleeps
  // while it runs.
  Connect(2000000, 2000000, 16);
  const uint64_t before = Notifications();
  const unsigned kBlocks = 1024;
  WriteThenReadBack(0, kBlocks, 16);
  WriteThenReadBack(0, kBlocks, 1);
  const uint64_t requests = 4ull * kBlocks;
  EXPECT_LT(static_cast<double>(Notifications() - before) / requests, 0.1)
      << Notifications() - before << " notifications for " << requests << " requests";
  // And without polling, as a check that the count means something: every iodepth-1 request costs one each
  // way.
  guest_->device->Disconnect();
  guest_.reset();
  worker_->Stop();
  Connect(0, 0, 1);
  const uint64_t sleeping_before = Notifications();
  WriteThenReadBack(0, 64, 1);
  EXPECT_GE(Notifications() - sleeping_before, 2u * 128);
}

// A worker polling through a long window must still run control tasks (a pause, a disconnect) at once.
TEST_F(PollingTest, ControlTasksDoNotWaitForTheWorkerToStopPolling) {
  Connect(30000000, 0, 8);     // a 30 s window
  WriteThenReadBack(0, 8, 8);  // the worker is now polling, and will for 30 s
  const auto start = std::chrono::steady_clock::now();
  bool ran = false;
  worker_->Call([&] { ran = true; });
  EXPECT_TRUE(ran);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s) << "the task waited for the poll window to end";
  WriteThenReadBack(64, 8, 8);
}

}  // namespace
}  // namespace blk
