// The device lifecycle after the handshake: close and reconnect (guest reboot), the toolstack taking a device
// down (Closing, online = 0, removal) within libxl's limits, the frontend's domain vanishing, and the
// toolstack's changes a connected device refuses.
#include <gtest/gtest.h>

#include "tests/backend/handshake_fixture.h"

namespace blk {
namespace {

using Clock = std::chrono::steady_clock;

class LifecycleTest : public HandshakeFixture {
 protected:
  // A connected guest on disk <domid>/51712.
  void ConnectGuest(uint32_t domid, XenbusBlkfrontConfig config = {}) {
    CreateDomain(domid);
    AddDisk(domid, 51712, MakeImage("disk" + std::to_string(domid)));
    guest_ = GuestClient(domid);
    front_ = Frontend(*guest_, domid, 51712, config);
    Status connected = front_->Connect(kTimeout);
    ASSERT_TRUE(connected.ok()) << connected.ToString();
  }

  std::unique_ptr<LibXenStoreClient> guest_;
  std::unique_ptr<XenbusBlkfront> front_;
};

TEST_F(LifecycleTest, CloseUnmapsAndReconnectServesTheSameDisk) {
  LogLines log;
  StartDaemon();
  XenbusBlkfrontConfig config;
  config.ring_pages = 4;
  config.queues = 2;
  ConnectGuest(1, config);
  CheckIo(front_->queue(1), 8, 5);
  HypervisorCounters& counters = sim_->counters();
  ASSERT_TRUE(front_->Close(kTimeout).ok());
  EXPECT_EQ(ReadKey(BackendPath(1, 51712) + "/state"), "6");
  // The backend unmapped every ring: the guest could end all its grants and close its ports.
  EXPECT_EQ(counters.map_calls.load(), counters.unmap_calls.load());
  EXPECT_EQ(sim_->FindDomain(1)->grants_in_use(), 0u);
  EXPECT_TRUE(log.Contains("1/51712", "Connected -> Closing (frontend Closing)"));
  EXPECT_TRUE(log.Contains("1/51712", "Closing -> Closed (frontend Closed)"));

  // The guest reboots: Initialising again, a fresh InitWait and a fresh connection; the data is still there.
  Status again = front_->Connect(kTimeout);
  ASSERT_TRUE(again.ok()) << again.ToString();
  EXPECT_TRUE(log.Contains("1/51712", "Closed -> InitWait (frontend Initialising)"));
  AlignedBuffer in(16384);
  Result<int16_t> read = DoIo(front_->queue(0), IoOp::kRead, 8, in.data, in.size);
  ASSERT_TRUE(read.ok());
  ASSERT_EQ(*read, BLKIF_RSP_OKAY);
  EXPECT_FALSE(CheckPattern(in.span(), 8, 5).has_value());
}

// A guest that kexecs goes straight back to Initialising without closing: the backend drops the old rings
// and offers a fresh InitWait.
TEST_F(LifecycleTest, FrontendInitialisingWhileConnectedResetsTheConnection) {
  LogLines log;
  StartDaemon();
  ConnectGuest(2);
  std::string fe = FrontendPath(2, 51712);
  ASSERT_TRUE(guest_->Write(fe + "/state", "1").ok());
  ASSERT_TRUE(WaitForValue(BackendPath(2, 51712) + "/state", "2"));
  EXPECT_TRUE(log.Contains("2/51712", "Connected -> InitWait (frontend Initialising)"));
  HypervisorCounters& counters = sim_->counters();
  EXPECT_EQ(counters.map_calls.load(), counters.unmap_calls.load());
}

// libxl's detach: online = 0 and Closing in the backend, then 10 s for Closed. The frontend here does not
// cooperate (stays Connected), so the backend must close on its own, quickly.
TEST_F(LifecycleTest, ToolstackDetachClosesAtOnceAndRemovesTheBackendsNodes) {
  LogLines log;
  StartDaemon();
  ConnectGuest(3);
  std::string backend = BackendPath(3, 51712);
  Clock::time_point start = Clock::now();
  ASSERT_TRUE(RunTransaction(*toolstack_, [&](Transaction& t) -> Status {
                BLK_RETURN_IF_ERROR(t.Write(backend + "/online", "0"));
                return t.Write(backend + "/state", "5");
              }).ok());
  ASSERT_TRUE(WaitForValue(backend + "/state", "6"));
  ASSERT_TRUE(WaitForValue(backend + "/sectors", std::nullopt));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(ReadKey(backend + "/feature-barrier"), std::nullopt);
  EXPECT_EQ(ReadKey(backend + "/max-ring-page-order"), std::nullopt);
  EXPECT_EQ(ReadKey(backend + "/params").has_value(), true);  // the toolstack's keys are the toolstack's
  EXPECT_TRUE(log.Contains("3/51712", "-> Removed (online = 0)")) << log.All();
  HypervisorCounters& counters = sim_->counters();
  EXPECT_EQ(counters.map_calls.load(), counters.unmap_calls.load());

  // The toolstack then removes the directories; the daemon forgets the device.
  ASSERT_TRUE(toolstack_->Remove(backend).ok());
  ASSERT_TRUE(WaitForValue(backend, std::nullopt));
  EXPECT_TRUE(Eventually([&] { return daemon_->device_count() == 0; }));
  EXPECT_TRUE(log.Contains("3/51712", "removed by the toolstack"));
}

// Closing written by the toolstack alone (no online = 0) also closes at once, and the device can be
// reconnected afterwards.
TEST_F(LifecycleTest, ToolstackClosingReachesClosedWithinTheLimit) {
  StartDaemon();
  ConnectGuest(4);
  std::string backend = BackendPath(4, 51712);
  Clock::time_point start = Clock::now();
  ASSERT_TRUE(toolstack_->Write(backend + "/state", "5").ok());
  ASSERT_TRUE(WaitForValue(backend + "/state", "6"));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
  ASSERT_TRUE(front_->Close(kTimeout).ok());
  ASSERT_TRUE(front_->Connect(kTimeout).ok());
  CheckIo(front_->queue(0), 0, 9);
}

// The toolstack creates the nodes and gives the backend 10 s to reach InitWait.
TEST_F(LifecycleTest, InitWaitIsReachedQuicklyAfterTheNodesAppear) {
  StartDaemon();
  CreateDomain(5);
  Clock::time_point start = Clock::now();
  AddDisk(5, 51712, MakeImage("d5"));
  ASSERT_TRUE(WaitForValue(BackendPath(5, 51712) + "/state", "2"));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
}

TEST_F(LifecycleTest, FrontendDomainDisappearingTearsTheDeviceDown) {
  LogLines log;
  StartDaemon();
  ConnectGuest(6);
  CheckIo(front_->queue(0), 0, 2);
  ASSERT_TRUE(toolstack_->Remove("/local/domain/6").ok());
  ASSERT_TRUE(WaitForValue(BackendPath(6, 51712) + "/state", "6"));
  EXPECT_TRUE(log.Contains("6/51712", "Connected -> Closed (frontend domain gone)"));
  HypervisorCounters& counters = sim_->counters();
  EXPECT_EQ(counters.map_calls.load(), counters.unmap_calls.load());
}

TEST_F(LifecycleTest, ParamsOrModeRewrittenWhileConnectedIsRefusedWithALogLine) {
  LogLines log;
  StartDaemon();
  ConnectGuest(7);
  std::string backend = BackendPath(7, 51712);
  std::string other = MakeImage("other");
  ASSERT_TRUE(toolstack_->Write(backend + "/params", other).ok());
  ASSERT_TRUE(toolstack_->Write(backend + "/mode", "r").ok());
  EXPECT_TRUE(Eventually([&] { return log.Contains("7/51712", "mode \"r\" while Connected"); }));
  EXPECT_TRUE(log.Contains("7/51712", "refusing the toolstack's change"));
  EXPECT_TRUE(log.Contains("7/51712", "mode \"r\" while Connected"));
  EXPECT_EQ(ReadKey(backend + "/state"), "4");
  CheckIo(front_->queue(0), 0, 3);  // still the old, writable image
}

TEST_F(LifecycleTest, FileNamedVhdThatIsNotOneFailsWithAClearMessageAndOthersKeepServing) {
  StartDaemon();
  ConnectGuest(8);
  CreateDomain(9);
  AddDisk(9, 51712, "vhd:" + MakeImage("disk.vhd"));  // raw bytes: no VHD footer anywhere
  std::string backend = BackendPath(9, 51712);
  ASSERT_TRUE(WaitForValue(backend + "/state", "5"));
  std::optional<std::string> error = ReadKey(backend + "/hotplug-error");
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find("footer"), std::string::npos) << *error;
  EXPECT_EQ(ReadKey(backend + "/hotplug-status"), "error");
  std::optional<std::string> fatal = ReadKey("/local/domain/0/error/backend/vbd/9/51712/error");
  ASSERT_TRUE(fatal.has_value());
  EXPECT_NE(fatal->find("vhd"), std::string::npos) << *fatal;
  CheckIo(front_->queue(0), 0, 4);
}

TEST_F(LifecycleTest, HotplugStatusIsAwaitedWhereConfigured) {
  BlkbackDaemonOptions options;
  options.wait_for_hotplug_status = true;
  StartDaemon(options);
  CreateDomain(10);
  AddDisk(10, 51712, MakeImage("d10"));
  std::string backend = BackendPath(10, 51712);
  // No InitWait before the hotplug script says connected, even once the daemon has looked again.
  ASSERT_TRUE(WaitForValue(backend + "/state", "1"));
  uint64_t before = daemon_->evaluations();
  ASSERT_TRUE(toolstack_->Write(backend + "/hotplug-status", "running").ok());
  ASSERT_TRUE(Eventually([&] { return daemon_->evaluations() > before; }));
  EXPECT_EQ(ReadKey(backend + "/state"), "1");
  ASSERT_TRUE(toolstack_->Write(backend + "/hotplug-status", "connected").ok());
  ASSERT_TRUE(WaitForValue(backend + "/state", "2"));
}

// A toolstack that writes its keys one at a time: the device waits for the missing ones instead of failing.
TEST_F(LifecycleTest, MissingToolstackKeysAreWaitedFor) {
  StartDaemon();
  CreateDomain(11);
  AddDisk(11, 51712, MakeImage("d11"), {{"mode", ""}});
  std::string backend = BackendPath(11, 51712);
  uint64_t before = daemon_->evaluations();
  ASSERT_TRUE(toolstack_->Write(backend + "/removable", "0").ok());
  ASSERT_TRUE(Eventually([&] { return daemon_->evaluations() > before; }));
  EXPECT_EQ(ReadKey(backend + "/state"), "1");
  EXPECT_EQ(ReadKey(backend + "/hotplug-error"), std::nullopt);
  ASSERT_TRUE(toolstack_->Write(backend + "/mode", "w").ok());
  ASSERT_TRUE(WaitForValue(backend + "/state", "2"));
}

}  // namespace
}  // namespace blk

namespace blk {
namespace {

// SIGTERM's path: every device stops serving and publishes Closing; what was taken from the rings is
// finished and answered first, and nothing stays mapped.
TEST_F(LifecycleTest, DaemonShutdownAnswersWhatItTookAndLeavesEveryFrontendClosing) {
  LogLines log;
  StartDaemon();
  ConnectGuest(1);
  // A second disk whose frontend never connects: it is in InitWait, and must not be left offering a disk.
  CreateDomain(2);
  AddDisk(2, 51712, MakeImage("disk2"));
  ASSERT_TRUE(WaitForValue(BackendPath(2, 51712) + "/state", "2"));

  constexpr int kWrites = 24;
  constexpr size_t kBytes = 8192;
  std::vector<std::unique_ptr<AlignedBuffer>> buffers;
  Blkfront& queue = front_->queue(0);
  for (int i = 0; i < kWrites; ++i) {
    buffers.push_back(std::make_unique<AlignedBuffer>(kBytes));
    FillPattern(buffers.back()->span(), i * 16, 77);
    Io io;
    io.op = IoOp::kWrite;
    io.sector = i * 16;
    io.buffer = buffers.back()->data;
    io.length = kBytes;
    io.tag = i;
    ASSERT_TRUE(queue.Queue(io).ok());
  }
  ASSERT_TRUE(queue.Push().ok());
  // One answer means the worker has run a round: the ring holds all the writes, so it took them all.
  IoCompletion done[kWrites];
  Result<size_t> first = queue.Wait(std::span(done, 1), kTimeout);
  ASSERT_TRUE(first.ok() && *first == 1);

  StopDaemon();
  EXPECT_EQ(daemon_->Shutdown(5000), 0u);
  EXPECT_EQ(ReadKey(BackendPath(1, 51712) + "/state"), "5");
  EXPECT_EQ(ReadKey(BackendPath(2, 51712) + "/state"), "5");
  EXPECT_TRUE(log.Contains("1/51712", "Connected -> Closing (daemon stopping)"));
  EXPECT_TRUE(log.Contains("2/51712", "InitWait -> Closing (daemon stopping)"));
  // No error nodes: stopping is not a failure.
  EXPECT_EQ(ReadKey(BackendPath(1, 51712) + "/hotplug-error"), std::nullopt);
  daemon_.reset();
  HypervisorCounters& counters = sim_->counters();
  EXPECT_EQ(counters.map_calls.load(), counters.unmap_calls.load());

  // Every write taken was answered before the rings went, and is in the image.
  Result<size_t> reaped = queue.Reap(std::span(done + 1, kWrites - 1));
  ASSERT_TRUE(reaped.ok());
  ASSERT_EQ(*reaped + 1, size_t{kWrites});
  int fd = ::open((image_dir_ + "/disk1").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  for (size_t i = 0; i < size_t{kWrites}; ++i) {
    ASSERT_EQ(done[i].status, BLKIF_RSP_OKAY);
    AlignedBuffer in(kBytes);
    uint64_t sector = done[i].tag * 16;
    ASSERT_EQ(::pread(fd, in.data, kBytes, static_cast<off_t>(sector * 512)), ssize_t(kBytes));
    EXPECT_FALSE(CheckPattern(in.span(), sector, 77).has_value()) << "write " << done[i].tag;
  }
  ::close(fd);
}

TEST_F(LifecycleTest, DaemonShutdownLeavesDevicesItNeverAdvertisedAlone) {
  BlkbackDaemonOptions options;
  options.wait_for_hotplug_status = true;
  StartDaemon(options);
  CreateDomain(1);
  AddDisk(1, 51712, MakeImage("disk1"));
  ASSERT_TRUE(Eventually([&] { return daemon_->device_count() == 1; }));
  StopDaemon();
  EXPECT_EQ(daemon_->Shutdown(1000), 0u);
  // Still Initialising (no hotplug-status yet): the daemon wrote nothing the toolstack would misread.
  EXPECT_EQ(ReadKey(BackendPath(1, 51712) + "/state"), "1");
}

}  // namespace
}  // namespace blk
