// Negotiation of feature-persistent and feature-max-indirect-segments through the xenstore handshake, in
// every combination a frontend may ask for, and what each combination costs in hypercalls.
#include <gtest/gtest.h>

#include "tests/backend/handshake_fixture.h"

namespace blk {
namespace {

class NegotiationTest : public HandshakeFixture {
 protected:
  // Connects guest 1's disk with `config`; the test then checks what was negotiated.
  std::unique_ptr<XenbusBlkfront> ConnectGuest(XenbusBlkfrontConfig config) {
    CreateDomain(1);
    AddDisk(1, 51712, "aio:" + MakeImage("disk1", 8 << 20));
    guest_ = GuestClient(1);
    std::unique_ptr<XenbusBlkfront> front = Frontend(*guest_, 1, 51712, config);
    Status connected = front->Connect(kTimeout);
    EXPECT_TRUE(connected.ok()) << connected.ToString();
    return front;
  }
  // Grant copies (segments) the backend made for `ios` 4 KiB write+read pairs on `front` after a warm-up.
  uint64_t CopiesFor(Blkfront& front, unsigned ios) {
    CheckIo(front, 64, 1, 4096);
    uint64_t before = sim_->counters().copy_segments.load();
    for (unsigned i = 0; i < ios; ++i) CheckIo(front, 64 + 8 * (i % 4), i + 2, 4096);
    return sim_->counters().copy_segments.load() - before;
  }

  std::unique_ptr<LibXenStoreClient> guest_;
};

TEST_F(NegotiationTest, BackendAdvertisesBothAndAFrontendAskingNothingGetsNeither) {
  StartDaemon();
  auto front = ConnectGuest({});
  std::string backend = BackendPath(1, 51712);
  EXPECT_EQ(ReadKey(backend + "/feature-persistent"), "1");
  EXPECT_EQ(ReadKey(backend + "/feature-max-indirect-segments"), "256");
  EXPECT_EQ(ReadKey(FrontendPath(1, 51712) + "/feature-persistent"), "0");
  EXPECT_FALSE(front->persistent());
  EXPECT_EQ(front->indirect_segments(), 0u);
  // Every data segment is grant-copied, both ways.
  EXPECT_EQ(CopiesFor(front->queue(0), 10), 20u);
  EXPECT_TRUE(front->queue(0).broken().ok());
}

TEST_F(NegotiationTest, PersistentOnlyMovesDataWithoutCopies) {
  StartDaemon();
  XenbusBlkfrontConfig config;
  config.persistent = true;
  auto front = ConnectGuest(config);
  EXPECT_EQ(ReadKey(FrontendPath(1, 51712) + "/feature-persistent"), "1");
  EXPECT_TRUE(front->persistent());
  EXPECT_EQ(front->indirect_segments(), 0u);
  uint64_t maps_before = sim_->counters().map_calls.load();
  EXPECT_EQ(CopiesFor(front->queue(0), 20), 0u);
  // The frontend reuses its pages: a handful of maps at most, not one per I/O.
  EXPECT_LE(sim_->counters().map_calls.load() - maps_before, 2u);
  EXPECT_TRUE(front->queue(0).broken().ok());
}

TEST_F(NegotiationTest, IndirectOnlyCarriesLargeIoInOneRequest) {
  StartDaemon();
  XenbusBlkfrontConfig config;
  config.indirect_segments = 64;
  auto front = ConnectGuest(config);
  EXPECT_FALSE(front->persistent());
  EXPECT_EQ(front->indirect_segments(), 64u);
  uint64_t requests_before = front->queue(0).stats().requests_pushed;
  CheckIo(front->queue(0), 0, 9, 256 << 10);
  EXPECT_EQ(front->queue(0).stats().requests_pushed - requests_before, 2u) << "64 pages each way, one request";
}

TEST_F(NegotiationTest, BothTogetherAndTheFrontendsWishIsCappedByTheOffer) {
  BlkbackDaemonOptions options;
  options.max_indirect_segments = 32;
  StartDaemon(options);
  XenbusBlkfrontConfig config;
  config.persistent = true;
  config.indirect_segments = 128;
  auto front = ConnectGuest(config);
  EXPECT_EQ(ReadKey(BackendPath(1, 51712) + "/feature-max-indirect-segments"), "32");
  EXPECT_TRUE(front->persistent());
  EXPECT_EQ(front->indirect_segments(), 32u);
  CheckIo(front->queue(0), 0, 3, 128 << 10);
  uint64_t copies_before = sim_->counters().copy_segments.load();
  CheckIo(front->queue(0), 0, 4, 128 << 10);
  // Only the indirect pages are copied (one per request); the data goes through mapped pages.
  EXPECT_EQ(sim_->counters().copy_segments.load() - copies_before, 2u);
}

TEST_F(NegotiationTest, MultiPageMultiQueueWithBothFeatures) {
  BlkbackDaemonOptions options;
  options.workers = 2;
  StartDaemon(options);
  XenbusBlkfrontConfig config;
  config.persistent = true;
  config.indirect_segments = 64;
  config.ring_pages = 4;
  config.queues = 2;
  auto front = ConnectGuest(config);
  ASSERT_EQ(front->queue_count(), 2u);
  EXPECT_EQ(front->ring_pages(), 4u);
  EXPECT_TRUE(front->persistent());
  EXPECT_EQ(front->indirect_segments(), 64u);
  CheckIo(front->queue(0), 0, 5, 256 << 10);
  CheckIo(front->queue(1), 1024, 6, 256 << 10);
  CheckIo(front->queue(1), 2048, 7, 4096);
  EXPECT_TRUE(front->queue(0).broken().ok());
  EXPECT_TRUE(front->queue(1).broken().ok());
}

TEST_F(NegotiationTest, FrontendAskingForWhatTheBackendDoesNotOfferDoesNotGetIt) {
  BlkbackDaemonOptions options;
  options.persistent_grants = false;
  options.max_indirect_segments = 0;
  StartDaemon(options);
  XenbusBlkfrontConfig config;
  config.persistent = true;
  config.indirect_segments = 64;
  auto front = ConnectGuest(config);
  std::string backend = BackendPath(1, 51712);
  EXPECT_EQ(ReadKey(backend + "/feature-persistent"), "0");
  EXPECT_EQ(ReadKey(backend + "/feature-max-indirect-segments"), std::nullopt) << "0 is written as no node";
  // The frontend wrote feature-persistent = 1 all the same, as Linux does.
  EXPECT_EQ(ReadKey(FrontendPath(1, 51712) + "/feature-persistent"), "1");
  EXPECT_FALSE(front->persistent());
  EXPECT_EQ(front->indirect_segments(), 0u);
  // The backend copies and keeps nothing mapped: the frontend ends every grant at the response, and would
  // break on one still mapped.
  EXPECT_EQ(CopiesFor(front->queue(0), 10), 20u);
  CheckIo(front->queue(0), 0, 8, 256 << 10);
  EXPECT_TRUE(front->queue(0).broken().ok()) << front->queue(0).broken().ToString();
}

}  // namespace
}  // namespace blk
