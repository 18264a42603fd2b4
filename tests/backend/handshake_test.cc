// The blkif handshake end to end: BlkbackDaemon on the real libxenstore client and the xs_wire test server,
// XenbusBlkfront as the guest, the simulated hypervisor in between, and real I/O on raw images.
#include <gtest/gtest.h>

#include <tuple>

#include "tests/backend/handshake_fixture.h"
#include "tests/test_util.h"

namespace blk {
namespace {

class HandshakeTest : public HandshakeFixture {};

TEST_F(HandshakeTest, SingleDeviceConnectsAdvertisesAndServesIo) {
  LogLines log;
  StartDaemon();
  CreateDomain(1);
  std::string image = MakeImage("disk1", 4 << 20);
  AddDisk(1, 51712, "aio:" + image);
  std::string backend = BackendPath(1, 51712);
  ASSERT_TRUE(WaitForValue(backend + "/state", "2"));
  // What the backend advertises before the frontend connects, and nothing it cannot do yet.
  EXPECT_EQ(ReadKey(backend + "/feature-flush-cache"), "1");
  EXPECT_EQ(ReadKey(backend + "/feature-barrier"), "1");
  EXPECT_EQ(ReadKey(backend + "/max-ring-page-order"), "4");
  EXPECT_EQ(ReadKey(backend + "/multi-queue-max-queues"), "2");
  EXPECT_EQ(ReadKey(backend + "/feature-persistent"), "1");
  EXPECT_EQ(ReadKey(backend + "/feature-max-indirect-segments"), "256");
  // Discard depends on the image: it is published with the disk, at Connected.
  EXPECT_EQ(ReadKey(backend + "/feature-discard"), std::nullopt);

  std::unique_ptr<LibXenStoreClient> guest = GuestClient(1);
  std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 1, 51712);
  Status connected = front->Connect(kTimeout);
  ASSERT_TRUE(connected.ok()) << connected.ToString();
  EXPECT_EQ(front->disk().sectors, (4u << 20) / 512);
  EXPECT_EQ(front->disk().sector_size, 512u);
  EXPECT_EQ(front->disk().info, 0u);
  EXPECT_TRUE(front->disk().flush_cache);
  std::optional<std::string> physical = ReadKey(backend + "/physical-sector-size");
  ASSERT_TRUE(physical.has_value());
  EXPECT_TRUE(*physical == "512" || *physical == "4096") << *physical;
  EXPECT_EQ(ReadKey(backend + "/state"), "4");
  EXPECT_EQ(ReadKey(backend + "/feature-discard"), "1");
  std::optional<std::string> granularity = ReadKey(backend + "/discard-granularity");
  ASSERT_TRUE(granularity.has_value());
  EXPECT_TRUE(*granularity == "512" || *granularity == "4096") << *granularity;
  EXPECT_EQ(ReadKey(backend + "/discard-alignment"), "0");
  EXPECT_EQ(ReadKey(backend + "/discard-secure"), "0");
  CheckIo(front->queue(0), 100, 1);
  Result<int16_t> flushed = DoIo(front->queue(0), IoOp::kFlushDiskCache, 0, nullptr, 0);
  ASSERT_TRUE(flushed.ok());
  EXPECT_EQ(*flushed, BLKIF_RSP_OKAY);

  EXPECT_TRUE(log.Contains("1/51712", "Initialising -> InitWait"));
  EXPECT_TRUE(log.Contains("1/51712", "InitWait -> Connected"));
}

TEST_F(HandshakeTest, ReadOnlyModeAndCdromArePublishedInInfo) {
  StartDaemon();
  CreateDomain(2);
  AddDisk(2, 51712, MakeImage("ro"), {{"mode", "r"}});
  AddDisk(2, 51728, "raw:" + MakeImage("cd"), {{"device-type", "cdrom"}});
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(2);
  std::unique_ptr<XenbusBlkfront> ro = Frontend(*guest, 2, 51712);
  ASSERT_TRUE(ro->Connect(kTimeout).ok());
  EXPECT_EQ(ro->disk().info, static_cast<uint32_t>(VDISK_READONLY));
  AlignedBuffer buffer(4096);
  FillPattern(buffer.span(), 0, 1);
  Result<int16_t> wrote = DoIo(ro->queue(0), IoOp::kWrite, 0, buffer.data, 4096);
  ASSERT_TRUE(wrote.ok());
  EXPECT_EQ(*wrote, BLKIF_RSP_ERROR);
  std::unique_ptr<XenbusBlkfront> cd = Frontend(*guest, 2, 51728);
  ASSERT_TRUE(cd->Connect(kTimeout).ok());
  EXPECT_EQ(cd->disk().info, static_cast<uint32_t>(VDISK_CDROM | VDISK_REMOVABLE | VDISK_READONLY));
}

// libxl writes discard-enable = 0 for a disk with "no-discard": the disk is published without the feature and
// a frontend that discards anyway gets EOPNOTSUPP; a read-only disk never offers it; a bad value fails the
// device.
TEST_F(HandshakeTest, DiscardFollowsTheToolstacksDiscardEnableAndTheMode) {
  StartDaemon();
  CreateDomain(3);
  AddDisk(3, 51712, MakeImage("nodiscard"), {{"discard-enable", "0"}});
  AddDisk(3, 51728, MakeImage("ro"), {{"mode", "r"}});
  AddDisk(3, 51744, MakeImage("bad"), {{"discard-enable", "sometimes"}});
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(3);
  std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 3, 51712);
  ASSERT_TRUE(front->Connect(kTimeout).ok());
  EXPECT_EQ(ReadKey(BackendPath(3, 51712) + "/feature-discard"), "0");
  EXPECT_EQ(ReadKey(BackendPath(3, 51712) + "/discard-granularity"), std::nullopt);
  Result<int16_t> discarded = DoIo(front->queue(0), IoOp::kDiscard, 0, nullptr, 4096);
  ASSERT_TRUE(discarded.ok());
  EXPECT_EQ(*discarded, BLKIF_RSP_EOPNOTSUPP);
  std::unique_ptr<XenbusBlkfront> ro = Frontend(*guest, 3, 51728);
  ASSERT_TRUE(ro->Connect(kTimeout).ok());
  EXPECT_EQ(ReadKey(BackendPath(3, 51728) + "/feature-discard"), "0");
  ASSERT_TRUE(WaitForValue(BackendPath(3, 51744) + "/state", "5"));
  std::optional<std::string> error = ReadKey(BackendPath(3, 51744) + "/hotplug-error");
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find("discard-enable"), std::string::npos) << *error;
}

// discard-secure = yes in the daemon's configuration: published "1" for a raw image on a block device, "0"
// for a file (the key never makes a file look secure). Without the key it is "0" (see the first test).
TEST_F(HandshakeTest, DiscardSecureIsPublishedOnlyForABlockDeviceWhenTheOperatorVouches) {
  BlkbackDaemonOptions options;
  options.discard_secure = true;
  StartDaemon(options);
  CreateDomain(3);
  std::string backing = MakeImage("secure", 4 << 20);
  AddDisk(3, 51712, "aio:" + backing);
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(3);
  std::unique_ptr<XenbusBlkfront> file = Frontend(*guest, 3, 51712);
  ASSERT_TRUE(file->Connect(kTimeout).ok());
  EXPECT_EQ(ReadKey(BackendPath(3, 51712) + "/feature-discard"), "1");
  EXPECT_EQ(ReadKey(BackendPath(3, 51712) + "/discard-secure"), "0");
  testing::LoopDevice loop(backing);
  if (loop.path().empty()) GTEST_SKIP() << "no loop device can be set up here";
  AddDisk(3, 51728, "raw:" + loop.path());
  std::unique_ptr<XenbusBlkfront> block = Frontend(*guest, 3, 51728);
  ASSERT_TRUE(block->Connect(kTimeout).ok());
  if (ReadKey(BackendPath(3, 51728) + "/feature-discard") != "1")
    GTEST_SKIP() << loop.path() << " takes no discard here";
  EXPECT_EQ(ReadKey(BackendPath(3, 51728) + "/discard-secure"), "1");
  EXPECT_EQ(ReadKey(BackendPath(3, 51728) + "/discard-alignment"), "0");
  block.reset();
  file.reset();
  StopDaemon();
  daemon_.reset();  // closes the device before the loop device goes
}

// The daemon stands in for blkback, qdisk and tapback at once: each configured kind is discovered and served.
TEST_F(HandshakeTest, ServesEveryConfiguredKind) {
  BlkbackDaemonOptions options;
  options.kinds = {"vbd", "qdisk", "vbd3"};
  StartDaemon(options);
  CreateDomain(4);
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(4);
  uint32_t devid = 51712;
  for (const char* kind : {"vbd", "qdisk", "vbd3"}) {
    SCOPED_TRACE(kind);
    AddDisk(4, devid, MakeImage(kind), {}, kind);
    std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 4, devid);
    Status connected = front->Connect(kTimeout);
    ASSERT_TRUE(connected.ok()) << connected.ToString();
    EXPECT_EQ(front->backend_path(), BackendPath(4, devid, kind));
    CheckIo(front->queue(0), 0, devid);
    devid += 16;
  }
  // A kind that is not configured is left to whoever serves it.
  AddDisk(4, devid, MakeImage("other"), {}, "vif");
  // A vbd created after it reaching InitWait proves the daemon has seen the vif's creation too.
  AddDisk(4, devid + 16, MakeImage("later"));
  ASSERT_TRUE(WaitForValue(BackendPath(4, devid + 16) + "/state", "2"));
  EXPECT_EQ(ReadKey(BackendPath(4, devid, "vif") + "/state"), "1");
  EXPECT_EQ(daemon_->device_count(), 4u);
}

// In a driver domain the daemon finds its own domid, watches its own backend tree and maps as that domain.
TEST_F(HandshakeTest, ServesFromADriverDomain) {
  UseDriverDomain(5);
  StartDaemon();
  EXPECT_EQ(daemon_->own_domid(), 5u);
  CreateDomain(6);
  AddDisk(6, 51712, MakeImage("dd"));
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(6);
  std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 6, 51712);
  Status connected = front->Connect(kTimeout);
  ASSERT_TRUE(connected.ok()) << connected.ToString();
  EXPECT_EQ(front->backend_path(), "/local/domain/5/backend/vbd/6/51712");
  CheckIo(front->queue(0), 0, 6);
  ASSERT_TRUE(front->Close(kTimeout).ok());
}

// (ring pages, queues, protocol) — protocol "" leaves the key out (native).
using Transport = std::tuple<uint32_t, uint32_t, std::string>;

class TransportTest : public HandshakeFixture, public ::testing::WithParamInterface<Transport> {};

TEST_P(TransportTest, HandshakeAndIoOnEveryQueue) {
  auto [pages, queues, protocol] = GetParam();
  StartDaemon();
  CreateDomain(3);
  AddDisk(3, 51712, MakeImage("disk"));
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(3);
  XenbusBlkfrontConfig config;
  config.ring_pages = pages;
  config.queues = queues;
  config.write_protocol = !protocol.empty();
  config.abi = protocol.empty() ? kNativeAbi : *ParseProtocol(protocol);
  std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 3, 51712, config);
  Status connected = front->Connect(kTimeout);
  ASSERT_TRUE(connected.ok()) << connected.ToString();
  ASSERT_EQ(front->queue_count(), queues);
  ASSERT_EQ(front->ring_pages(), pages);
  std::string fe = FrontendPath(3, 51712);
  if (pages > 1) {
    EXPECT_EQ(ReadKey(fe + "/ring-page-order"), std::to_string(__builtin_ctz(pages)));
  }
  if (queues > 1) {
    EXPECT_TRUE(ReadKey(fe + "/queue-1/event-channel").has_value());
  }
  EXPECT_EQ(ReadKey(fe + "/protocol").has_value(), !protocol.empty());
  for (size_t q = 0; q < queues; ++q) {
    CheckIo(front->queue(q), 64 * q, q + 1, 8 * 4096);
    // One request each way: 8 pages fit in one request of 11 segments; on this queue, not another.
    EXPECT_EQ(front->queue(q).stats().responses, 2u) << "queue " << q;
  }
  ASSERT_TRUE(front->Close(kTimeout).ok());
}

INSTANTIATE_TEST_SUITE_P(Transports, TransportTest,
                         ::testing::Combine(::testing::Values(1u, 4u, 16u), ::testing::Values(1u, 2u),
                                            ::testing::Values(std::string(),
                                                              std::string(XEN_IO_PROTO_ABI_X86_32),
                                                              std::string(XEN_IO_PROTO_ABI_X86_64))),
                         [](const ::testing::TestParamInfo<Transport>& info) {
                           std::string protocol =
                               std::get<2>(info.param).empty() ? "native" : std::get<2>(info.param);
                           for (char& c : protocol) c = c == '-' ? '_' : c;
                           return std::to_string(std::get<0>(info.param)) + "pages_" +
                                  std::to_string(std::get<1>(info.param)) + "queues_" + protocol;
                         });

}  // namespace
}  // namespace blk
