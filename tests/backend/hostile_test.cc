// Hostile guests against the daemon: every malformed frontend key fails its device with a message the
// toolstack can read while another guest keeps doing I/O; a guest flooding its nodes with writes; a guest
// breaking its ring after connecting.
#include <gtest/gtest.h>

#include "tests/backend/handshake_fixture.h"

namespace blk {
namespace {

struct MalformedKey {
  const char* name;
  std::map<std::string, std::string> keys;  // frontend keys to set ("" removes the key) over good ones
  const char* message;                      // what the error must mention
};

const MalformedKey kMalformed[] = {
    {"letters", {{"ring-ref", "abc"}}, "ring-ref: \"abc\" is not a decimal"},
    {"negative", {{"ring-ref", "-1"}}, "ring-ref"},
    {"leading_zero", {{"ring-ref", "0123"}}, "leading zero"},
    {"overflow", {{"ring-ref", "99999999999"}}, "exceeds"},
    {"missing_ring_ref", {{"ring-ref", ""}}, "ring-ref"},
    {"port_zero", {{"event-channel", "0"}}, "port 0"},
    {"missing_port", {{"event-channel", ""}}, "event-channel"},
    {"order_too_big", {{"ring-page-order", "5"}}, "max-ring-page-order"},
    {"order_without_refs", {{"ring-page-order", "1"}}, "ring-ref0"},
    {"too_many_queues", {{"multi-queue-num-queues", "3"}}, "multi-queue-max-queues"},
    {"zero_queues", {{"multi-queue-num-queues", "0"}}, "0 queues"},
    {"protocol", {{"protocol", "x86_16-abi"}}, "unknown protocol"},
    {"persistent", {{"feature-persistent", "yes"}}, "feature-persistent"},
    {"ungranted_ref", {{"ring-ref", "4000"}}, "queue 0"},
    {"unbound_port", {{"event-channel", "999"}}, "queue 0"},
    {"state", {{"state", "banana"}}, "state"},
};

class HostileTest : public HandshakeFixture {
 protected:
  void ConnectHealthyGuest() {
    CreateDomain(1);
    AddDisk(1, 51712, MakeImage("healthy"));
    healthy_store_ = GuestClient(1);
    healthy_ = Frontend(*healthy_store_, 1, 51712);
    Status connected = healthy_->Connect(kTimeout);
    ASSERT_TRUE(connected.ok()) << connected.ToString();
  }

  std::unique_ptr<LibXenStoreClient> healthy_store_;
  std::unique_ptr<XenbusBlkfront> healthy_;
};

TEST_F(HostileTest, EveryMalformedFrontendKeyFailsItsDeviceAlone) {
  LogLines log;
  StartDaemon();
  ConnectHealthyGuest();
  DomId domid = 20;
  for (const MalformedKey& bad : kMalformed) {
    SCOPED_TRACE(bad.name);
    CreateDomain(domid);
    AddDisk(domid, 51712, MakeImage(bad.name));
    std::string backend = BackendPath(domid, 51712);
    std::string frontend = FrontendPath(domid, 51712);
    ASSERT_TRUE(WaitForValue(backend + "/state", "2"));
    // Real rings, so that only the one key is wrong.
    BlkfrontConfig ring;
    ring.domid = domid;
    Result<std::unique_ptr<Blkfront>> front = Blkfront::Create(*sim_, ring);
    ASSERT_TRUE(front.ok()) << front.status().ToString();
    std::map<std::string, std::string> keys;
    for (const auto& [key, value] : (*front)->XenstoreEntries()) keys[key] = value;
    keys["state"] = "3";
    for (const auto& [key, value] : bad.keys) keys[key] = value;
    std::unique_ptr<LibXenStoreClient> guest = GuestClient(domid);
    ASSERT_TRUE(RunTransaction(*guest, [&](Transaction& t) -> Status {
                  for (const auto& [key, value] : keys) {
                    Status status =
                        value.empty() ? t.Remove(frontend + "/" + key) : t.Write(frontend + "/" + key, value);
                    if (!status.ok() && status.code() != Status::Code::kNotFound) return status;
                  }
                  return Status::Ok();
                }).ok());
    ASSERT_TRUE(WaitForValue(backend + "/state", "5"));
    std::optional<std::string> error = ReadKey(backend + "/hotplug-error");
    ASSERT_TRUE(error.has_value());
    EXPECT_NE(error->find(bad.message), std::string::npos) << *error;
    std::optional<std::string> fatal =
        ReadKey("/local/domain/0/error/backend/vbd/" + std::to_string(domid) + "/51712/error");
    ASSERT_TRUE(fatal.has_value());
    EXPECT_NE(fatal->find(bad.message), std::string::npos) << *fatal;
    EXPECT_TRUE(log.Contains(std::to_string(domid) + "/51712", "failed: "));
    // The guest acknowledges (Closed): the backend closes too and never mapped anything that stays.
    ASSERT_TRUE(guest->Write(frontend + "/state", "6").ok());
    ASSERT_TRUE(WaitForValue(backend + "/state", "6"));
    // Nothing of the failed connection stays mapped: the guest can end every grant of its ring.
    front->reset();
    EXPECT_EQ(sim_->FindDomain(domid)->grants_in_use(), 0u);
    CheckIo(healthy_->queue(0), domid, domid);
    ++domid;
  }
  EXPECT_EQ(daemon_->device_count(), std::size(kMalformed) + 1);
}

TEST_F(HostileTest, ToolstackKeysThatDoNotParseFailTheDevice) {
  StartDaemon();
  ConnectHealthyGuest();
  CreateDomain(2);
  AddDisk(2, 51712, MakeImage("m"), {{"mode", "rw"}});
  AddDisk(2, 51728, "qcow2:" + MakeImage("q"));
  AddDisk(2, 51744, MakeImage("x"), {{"frontend-id", "3"}});
  ASSERT_TRUE(WaitForValue(BackendPath(2, 51712) + "/state", "5"));
  ASSERT_TRUE(WaitForValue(BackendPath(2, 51728) + "/state", "5"));
  ASSERT_TRUE(WaitForValue(BackendPath(2, 51744) + "/state", "5"));
  EXPECT_NE(ReadKey(BackendPath(2, 51712) + "/hotplug-error")->find("mode"), std::string::npos);
  EXPECT_NE(ReadKey(BackendPath(2, 51728) + "/hotplug-error")->find("qcow2"), std::string::npos);
  EXPECT_NE(ReadKey(BackendPath(2, 51744) + "/hotplug-error")->find("frontend"), std::string::npos);
  CheckIo(healthy_->queue(0), 0, 1);
}

TEST_F(HostileTest, GuestFloodingItsNodesDoesNotDisturbOthers) {
  StartDaemon();
  ConnectHealthyGuest();
  CreateDomain(2);
  AddDisk(2, 51712, MakeImage("flood"));
  std::unique_ptr<LibXenStoreClient> flooder = GuestClient(2);
  std::unique_ptr<XenbusBlkfront> front = Frontend(*flooder, 2, 51712);
  ASSERT_TRUE(front->Connect(kTimeout).ok());
  std::string frontend = FrontendPath(2, 51712);
  for (int i = 0; i < 1500; ++i) {
    ASSERT_TRUE(flooder->Write(frontend + "/state", "4").ok());
    ASSERT_TRUE(flooder->Write(frontend + "/junk-" + std::to_string(i % 50), std::to_string(i)).ok());
    if (i % 300 == 0) CheckIo(healthy_->queue(0), 0, i + 1);
  }
  // The flood changed nothing: the flooder is still served, and a last bad write still fails it.
  CheckIo(front->queue(0), 0, 77);
  EXPECT_EQ(ReadKey(BackendPath(2, 51712) + "/state"), "4");
  ASSERT_TRUE(flooder->Write(frontend + "/state", "9").ok());
  ASSERT_TRUE(WaitForValue(BackendPath(2, 51712) + "/state", "5"));
  CheckIo(healthy_->queue(0), 0, 99);
  StopDaemon();
  const WatchEventQueue::Stats& stats = daemon_client_->watch_stats();
  EXPECT_LE(stats.high_water, WatchEventQueue::kDefaultCapacity);
}

TEST_F(HostileTest, GuestBreakingItsRingFailsItsDevice) {
  StartDaemon();
  ConnectHealthyGuest();
  CreateDomain(2);
  AddDisk(2, 51712, MakeImage("breaker"));
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(2);
  std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 2, 51712);
  ASSERT_TRUE(front->Connect(kTimeout).ok());
  Blkfront& ring = front->queue(0);
  ring.shared_ring().req_prod = ring.req_prod_pvt() + 100000;
  ASSERT_TRUE(ring.NotifyBackend().ok());
  ASSERT_TRUE(WaitForValue(BackendPath(2, 51712) + "/state", "5"));
  EXPECT_NE(ReadKey(BackendPath(2, 51712) + "/hotplug-error")->find("broke the ring"), std::string::npos);
  CheckIo(healthy_->queue(0), 0, 5);
}

}  // namespace
}  // namespace blk
