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
  EXPECT_EQ(front->queue(0).stats().requests_pushed - requests_before, 2u)
      << "64 pages each way, one request";
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

// Every combination Linux blkfront can choose against a backend that offers everything: persistent grants
// or not, indirect descriptors or not, a one-page or a 16-page ring, one queue or two.
struct Combination {
  bool persistent;
  uint32_t indirect;  // segments asked for (0: none)
  uint32_t ring_pages;
  uint32_t queues;
};

class NegotiationMatrixTest : public NegotiationTest, public ::testing::WithParamInterface<Combination> {};

TEST_P(NegotiationMatrixTest, NegotiatesWhatWasAskedAndServesEveryQueue) {
  const Combination c = GetParam();
  BlkbackDaemonOptions options;
  options.workers = 2;
  StartDaemon(options);
  XenbusBlkfrontConfig config;
  config.persistent = c.persistent;
  config.indirect_segments = c.indirect;
  config.ring_pages = c.ring_pages;
  config.queues = c.queues;
  auto front = ConnectGuest(config);
  ASSERT_EQ(front->queue_count(), c.queues);
  EXPECT_EQ(front->ring_pages(), c.ring_pages);
  EXPECT_EQ(front->persistent(), c.persistent);
  EXPECT_EQ(front->indirect_segments(), c.indirect);
  const std::string frontend = FrontendPath(1, 51712);
  EXPECT_EQ(ReadKey(frontend + "/feature-persistent"), c.persistent ? "1" : "0");
  EXPECT_EQ(ReadKey(frontend + "/multi-queue-num-queues"),
            c.queues > 1 ? std::optional<std::string>(std::to_string(c.queues)) : std::nullopt);
  const std::string ring_dir = c.queues > 1 ? frontend + "/queue-1" : frontend;
  if (c.ring_pages > 1) {
    EXPECT_EQ(ReadKey(frontend + "/ring-page-order"), std::to_string(__builtin_ctz(c.ring_pages)));
    EXPECT_TRUE(ReadKey(ring_dir + "/ring-ref" + std::to_string(c.ring_pages - 1)).has_value());
  } else {
    EXPECT_TRUE(ReadKey(ring_dir + "/ring-ref").has_value());
  }

  for (uint32_t q = 0; q < c.queues; ++q) {
    SCOPED_TRACE("queue " + std::to_string(q));
    Blkfront& ring = front->queue(q);
    const uint64_t sector = uint64_t{q} * 2048;
    CheckIo(ring, sector, 10 + q, 256 << 10);  // warm-up: with persistent grants, the pages get mapped
    uint64_t requests_before = ring.stats().requests_pushed;
    uint64_t copies_before = sim_->counters().copy_segments.load();
    uint64_t maps_before = sim_->counters().map_calls.load();
    CheckIo(ring, sector, 20 + q, 256 << 10);
    CheckIo(ring, sector + 1024, 30 + q, 4096);
    uint64_t requests = ring.stats().requests_pushed - requests_before;
    uint64_t copies = sim_->counters().copy_segments.load() - copies_before;
    // 64 pages each way: one INDIRECT request, or six direct ones of up to 11 segments; then 4 KiB each way.
    EXPECT_EQ(requests, c.indirect != 0 ? 2u + 2u : 12u + 2u);
    // Data pages are copied without persistent grants; the indirect pages always are (one per request).
    uint64_t indirect_pages = c.indirect != 0 ? 2u : 0u;
    EXPECT_EQ(copies, (c.persistent ? 0u : 64u * 2 + 2u) + indirect_pages);
    if (c.persistent) {
      EXPECT_EQ(sim_->counters().map_calls.load(), maps_before) << "steady state maps nothing";
    }
    EXPECT_TRUE(ring.broken().ok()) << ring.broken().ToString();
  }
  // Closing unmaps everything the backend mapped, persistent grants included.
  ASSERT_TRUE(front->Close(kTimeout).ok());
  EXPECT_TRUE(Eventually([&] {
    return sim_->counters().map_calls.load() == sim_->counters().unmap_calls.load();
  })) << sim_->counters().map_calls.load()
      << " maps, " << sim_->counters().unmap_calls.load() << " unmaps";
}

INSTANTIATE_TEST_SUITE_P(AllCombinations, NegotiationMatrixTest,
                         ::testing::Values(Combination{false, 0, 1, 1}, Combination{true, 0, 1, 1},
                                           Combination{false, 64, 1, 1}, Combination{true, 64, 1, 1},
                                           Combination{false, 0, 16, 1}, Combination{true, 0, 16, 1},
                                           Combination{false, 64, 16, 1}, Combination{true, 64, 16, 1},
                                           Combination{false, 0, 1, 2}, Combination{true, 0, 1, 2},
                                           Combination{false, 64, 1, 2}, Combination{true, 64, 1, 2},
                                           Combination{false, 0, 16, 2}, Combination{true, 0, 16, 2},
                                           Combination{false, 64, 16, 2}, Combination{true, 64, 16, 2}),
                         [](const auto& info) {
                           const Combination& c = info.param;
                           return std::string(c.persistent ? "Persistent" : "NoPersistent") +
                                  (c.indirect != 0 ? "Indirect" : "Direct") + std::to_string(c.ring_pages) +
                                  "Pages" + std::to_string(c.queues) + "Queues";
                         });

TEST_F(NegotiationTest, PoliteFrontendAskingForMoreThanOfferedGetsTheOffer) {
  BlkbackDaemonOptions options;
  options.max_ring_page_order = 1;
  options.max_queues = 1;
  options.max_indirect_segments = 16;
  options.persistent_grants = false;
  StartDaemon(options);
  XenbusBlkfrontConfig config;
  config.persistent = true;
  config.indirect_segments = 256;
  config.ring_pages = 16;
  config.queues = 4;
  auto front = ConnectGuest(config);
  std::string backend = BackendPath(1, 51712);
  EXPECT_EQ(ReadKey(backend + "/max-ring-page-order"), "1");
  EXPECT_EQ(ReadKey(backend + "/multi-queue-max-queues"), "1");
  EXPECT_EQ(ReadKey(backend + "/feature-max-indirect-segments"), "16");
  EXPECT_EQ(front->ring_pages(), 2u);
  EXPECT_EQ(front->queue_count(), 1u);
  EXPECT_EQ(front->indirect_segments(), 16u);
  EXPECT_FALSE(front->persistent());
  uint64_t requests_before = front->queue(0).stats().requests_pushed;
  CheckIo(front->queue(0), 0, 41, 128 << 10);
  EXPECT_EQ(front->queue(0).stats().requests_pushed - requests_before, 4u)
      << "32 pages: two 16-segment requests";
  EXPECT_TRUE(front->queue(0).broken().ok()) << front->queue(0).broken().ToString();
}

// A frontend that writes more than was offered (a bigger ring, more queues) is refused with a message; the
// persistent case (1 written, 0 offered) is the FrontendAskingFor... test above: not refused, just not used.
struct OverAsk {
  const char* name;
  std::map<std::string, std::string> keys;
  const char* message;
};

TEST_F(NegotiationTest, HostileFrontendWritingMoreThanOfferedIsRefused) {
  BlkbackDaemonOptions options;
  options.max_ring_page_order = 1;
  options.max_queues = 1;
  StartDaemon(options);
  const OverAsk cases[] = {
      {"order",
       {{"ring-page-order", "2"},
        {"ring-ref0", "8"},
        {"ring-ref1", "9"},
        {"ring-ref2", "10"},
        {"ring-ref3", "11"}},
       "max-ring-page-order"},
      {"queues", {{"multi-queue-num-queues", "2"}}, "multi-queue-max-queues"},
  };
  DomId domid = 30;
  for (const OverAsk& bad : cases) {
    SCOPED_TRACE(bad.name);
    CreateDomain(domid);
    AddDisk(domid, 51712, MakeImage(bad.name));
    std::string backend = BackendPath(domid, 51712);
    std::string frontend = FrontendPath(domid, 51712);
    ASSERT_TRUE(WaitForValue(backend + "/state", "2"));
    std::unique_ptr<LibXenStoreClient> guest = GuestClient(domid);
    std::map<std::string, std::string> keys = {
        {"ring-ref", "8"}, {"event-channel", "3"}, {"protocol", "x86_64-abi"}, {"state", "3"}};
    for (const auto& [key, value] : bad.keys) keys[key] = value;
    ASSERT_TRUE(RunTransaction(*guest, [&](Transaction& t) -> Status {
                  for (const auto& [key, value] : keys)
                    BLK_RETURN_IF_ERROR(t.Write(frontend + "/" + key, value));
                  return Status::Ok();
                }).ok());
    ASSERT_TRUE(WaitForValue(backend + "/state", "5"));
    std::optional<std::string> error = ReadKey(backend + "/hotplug-error");
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find(bad.message), std::string::npos) << *error;
    ++domid;
  }
  EXPECT_EQ(sim_->counters().map_calls.load(), 0u) << "a refused frontend's ring was mapped";
}

}  // namespace
}  // namespace blk
