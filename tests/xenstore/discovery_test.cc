// Tests of xenstore/discovery.cc against the test server: devices of many domains and kinds come and go.
#include "xenstore/discovery.h"

#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/xenstore/xs_test_util.h"

namespace blk {
namespace {

class DeviceDiscoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<XsTestServer>> server = XsTestServer::StartOnTempSocket();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    toolstack_ = OpenClient(*server_);
    ASSERT_NE(toolstack_, nullptr);
  }

  // Creates a backend directory as libxl does: several keys in one transaction.
  void CreateBackend(const std::string& kind, uint32_t frontend, uint32_t devid) {
    std::string base =
        "/local/domain/0/backend/" + kind + "/" + std::to_string(frontend) + "/" + std::to_string(devid);
    Status status = RunTransaction(*toolstack_, [&](Transaction& transaction) -> Status {
      BLK_RETURN_IF_ERROR(transaction.Write(base + "/frontend-id", std::to_string(frontend)));
      BLK_RETURN_IF_ERROR(transaction.Write(base + "/params", "aio:/images/x.img"));
      return transaction.Write(base + "/state", "1");
    });
    ASSERT_TRUE(status.ok()) << status.ToString();
  }

  // Feeds the client's events to `discovery` until its devices equal `expected`, then until a barrier event
  // written after that arrives, so that a late spurious change would be seen too; collects the changes.
  bool PumpUntil(LibXenStoreClient& store, DeviceDiscovery& discovery, const std::set<DeviceId>& expected,
                 std::vector<DeviceChange>* changes) {
    if (!barrier_watched_.contains(&store)) {
      if (!store.Watch("/barrier", "barrier").ok()) return false;
      barrier_watched_.insert(&store);
    }
    std::string barrier;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      std::vector<WatchEvent> events;
      Result<size_t> read = store.ReadWatchEvents(&events, 16);
      if (!read.ok()) return false;
      for (const WatchEvent& event : events) {
        if (event.token == "barrier") {
          if (!barrier.empty() && (event.path == barrier || event.rescan))
            return discovery.devices() == expected;
          continue;
        }
        Status status;
        EXPECT_TRUE(discovery.HandleEvent(event, changes, &status)) << event.token;
        EXPECT_TRUE(status.ok()) << status.ToString();
      }
      if (barrier.empty() && discovery.devices() == expected) {
        barrier = "/barrier/" + std::to_string(++barriers_);
        if (!toolstack_->Write(barrier, "").ok()) return false;
      }
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd fd{store.fd(), POLLIN, 0};
      poll(&fd, 1, static_cast<int>(left.count()));
    }
  }

  std::set<LibXenStoreClient*> barrier_watched_;
  int barriers_ = 0;
  std::unique_ptr<XsTestServer> server_;
  std::unique_ptr<LibXenStoreClient> toolstack_;
};

// Built field by field: brace-initialising these aggregates in place trips GCC 12's maybe-uninitialized.
DeviceChange Change(DeviceChange::Type type, const char* kind, uint32_t frontend, uint32_t devid) {
  DeviceChange change;
  change.type = type;
  change.device.kind = kind;
  change.device.frontend_id = frontend;
  change.device.devid = devid;
  change.backend_path = "/local/domain/0/backend/" + std::string(kind) + "/" + std::to_string(frontend) +
                        "/" + std::to_string(devid);
  return change;
}

size_t Count(const std::vector<DeviceChange>& changes, DeviceChange::Type type) {
  return static_cast<size_t>(std::count_if(changes.begin(), changes.end(),
                                           [&](const DeviceChange& change) { return change.type == type; }));
}

TEST_F(DeviceDiscoveryTest, FindsExistingDevicesAtStart) {
  CreateBackend("vbd", 5, 768);
  CreateBackend("vbd", 5, 832);
  CreateBackend("qdisk", 7, 51712);
  CreateBackend("vif", 5, 0);  // a kind we do not serve
  std::unique_ptr<LibXenStoreClient> daemon = OpenClient(*server_);
  DeviceDiscovery discovery(*daemon, 0, {"vbd", "qdisk"});
  ASSERT_TRUE(discovery.Start().ok());
  std::vector<DeviceChange> changes;
  std::set<DeviceId> expected = {{"vbd", 5, 768}, {"vbd", 5, 832}, {"qdisk", 7, 51712}};
  ASSERT_TRUE(PumpUntil(*daemon, discovery, expected, &changes));
  ASSERT_EQ(changes.size(), 3u);
  EXPECT_EQ(Count(changes, DeviceChange::Type::kAdded), 3u);
  EXPECT_EQ(changes[0].backend_path.rfind("/local/domain/0/backend/", 0), 0u);
  EXPECT_TRUE(std::any_of(changes.begin(), changes.end(), [](const DeviceChange& change) {
    return change.backend_path == "/local/domain/0/backend/qdisk/7/51712";
  }));
}

TEST_F(DeviceDiscoveryTest, ManyDomainsComeAndGoEachReportedOnce) {
  std::unique_ptr<LibXenStoreClient> daemon = OpenClient(*server_);
  DeviceDiscovery discovery(*daemon, 0, {"vbd", "qdisk"});
  ASSERT_TRUE(discovery.Start().ok());
  std::vector<DeviceChange> changes;
  ASSERT_TRUE(PumpUntil(*daemon, discovery, {}, &changes));
  EXPECT_TRUE(changes.empty());

  std::set<DeviceId> expected;
  for (uint32_t domain = 1; domain <= 20; ++domain) {
    for (uint32_t devid : {768u, 832u, 51712u}) {
      std::string kind = devid == 51712 ? "qdisk" : "vbd";
      CreateBackend(kind, domain, devid);
      expected.insert(DeviceId{kind, domain, devid});
    }
  }
  ASSERT_TRUE(PumpUntil(*daemon, discovery, expected, &changes));
  EXPECT_EQ(changes.size(), expected.size());
  EXPECT_EQ(Count(changes, DeviceChange::Type::kAdded), expected.size());

  // One device unplugged, one whole domain destroyed, one domain's kind directory removed.
  changes.clear();
  ASSERT_TRUE(toolstack_->Remove("/local/domain/0/backend/vbd/3/832").ok());
  ASSERT_TRUE(toolstack_->Remove("/local/domain/0/backend/vbd/4").ok());
  ASSERT_TRUE(toolstack_->Remove("/local/domain/0/backend/qdisk").ok());
  std::erase_if(expected, [](const DeviceId& device) {
    return device == DeviceId{"vbd", 3, 832} || (device.kind == "vbd" && device.frontend_id == 4) ||
           device.kind == "qdisk";
  });
  ASSERT_TRUE(PumpUntil(*daemon, discovery, expected, &changes));
  EXPECT_EQ(changes.size(), 1u + 2u + 20u);
  EXPECT_EQ(Count(changes, DeviceChange::Type::kRemoved), changes.size());

  // A device re-created with the same id is new again.
  changes.clear();
  CreateBackend("vbd", 3, 832);
  expected.insert(DeviceId{"vbd", 3, 832});
  ASSERT_TRUE(PumpUntil(*daemon, discovery, expected, &changes));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0], Change(DeviceChange::Type::kAdded, "vbd", 3, 832));
}

TEST_F(DeviceDiscoveryTest, CollapsedEventsStillYieldTheRightSet) {
  // A tiny queue overflows into rescan events; discovery diffs, so nothing is lost or doubled.
  std::unique_ptr<LibXenStoreClient> daemon = OpenClient(*server_, /*capacity=*/4);
  DeviceDiscovery discovery(*daemon, 0, {"vbd"});
  ASSERT_TRUE(discovery.Start().ok());
  std::set<DeviceId> expected;
  for (uint32_t domain = 1; domain <= 30; ++domain) {
    CreateBackend("vbd", domain, 768);
    expected.insert(DeviceId{"vbd", domain, 768});
  }
  std::vector<DeviceChange> changes;
  ASSERT_TRUE(PumpUntil(*daemon, discovery, expected, &changes));
  EXPECT_EQ(changes.size(), 30u);
  EXPECT_GE(daemon->watch_stats().overflows, 1u);
}

TEST_F(DeviceDiscoveryTest, IgnoresMalformedNamesAndForeignTokens) {
  ASSERT_TRUE(toolstack_->Write("/local/domain/0/backend/vbd/notadomain/768/state", "1").ok());
  ASSERT_TRUE(toolstack_->Write("/local/domain/0/backend/vbd/5/0768/state", "1").ok());
  ASSERT_TRUE(toolstack_->Write("/local/domain/0/backend/vbd/99999/768/state", "1").ok());
  CreateBackend("vbd", 5, 768);
  std::unique_ptr<LibXenStoreClient> daemon = OpenClient(*server_);
  DeviceDiscovery discovery(*daemon, 0, {"vbd"});
  ASSERT_TRUE(discovery.Start().ok());
  std::vector<DeviceChange> changes;
  ASSERT_TRUE(PumpUntil(*daemon, discovery, {{"vbd", 5, 768}}, &changes));
  EXPECT_EQ(changes.size(), 1u);

  Status status;
  EXPECT_FALSE(discovery.HandleEvent(WatchEvent{"/local/domain/0/backend/vbd/6/1", "device:6/1", false},
                                     &changes, &status));
  EXPECT_FALSE(discovery.HandleEvent(
      WatchEvent{"/local/domain/0/backend/vif", "blkbackd-discovery:vif", false}, &changes, &status));
  EXPECT_EQ(changes.size(), 1u);
}

TEST_F(DeviceDiscoveryTest, StopThenStartReportsOnlyTheDifference) {
  CreateBackend("vbd", 5, 768);
  std::unique_ptr<LibXenStoreClient> daemon = OpenClient(*server_);
  DeviceDiscovery discovery(*daemon, 0, {"vbd"});
  ASSERT_TRUE(discovery.Start().ok());
  std::vector<DeviceChange> changes;
  ASSERT_TRUE(PumpUntil(*daemon, discovery, {{"vbd", 5, 768}}, &changes));
  ASSERT_TRUE(discovery.Stop().ok());
  ASSERT_TRUE(toolstack_->Remove("/local/domain/0/backend/vbd/5").ok());
  CreateBackend("vbd", 6, 768);
  ASSERT_TRUE(discovery.Start().ok());
  changes.clear();
  ASSERT_TRUE(PumpUntil(*daemon, discovery, {{"vbd", 6, 768}}, &changes));
  EXPECT_EQ(changes, (std::vector<DeviceChange>{Change(DeviceChange::Type::kRemoved, "vbd", 5, 768),
                                                Change(DeviceChange::Type::kAdded, "vbd", 6, 768)}));
}

TEST_F(DeviceDiscoveryTest, OwnDomidSelectsTheBackendTree) {
  ASSERT_TRUE(toolstack_->Write("/local/domain/3/backend/vbd/5/768/state", "1").ok());  // a driver domain's
  CreateBackend("vbd", 5, 832);                                                         // dom0's
  std::unique_ptr<LibXenStoreClient> daemon = OpenClient(*server_);
  DeviceDiscovery discovery(*daemon, 3, {"vbd"});
  ASSERT_TRUE(discovery.Start().ok());
  std::vector<DeviceChange> changes;
  ASSERT_TRUE(PumpUntil(*daemon, discovery, {{"vbd", 5, 768}}, &changes));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].backend_path, "/local/domain/3/backend/vbd/5/768");
}

}  // namespace
}  // namespace blk
