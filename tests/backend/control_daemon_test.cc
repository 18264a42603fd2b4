// Tests of the control socket attached to the daemon's loop: the handshake's devices are listed, paused and
// resumed from the socket while a guest connected through xenstore does I/O, and a resize reaches xenstore
// the way Linux blkfront notices it (new `sectors`, then `state` rewritten to Connected).
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "backend/control_client.h"
#include "backend/control_daemon_target.h"
#include "backend/control_server.h"
#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "tests/backend/handshake_fixture.h"

namespace blk {
namespace {

class ControlDaemonTest : public HandshakeFixture {
 protected:
  // StartDaemon's steps, with the control server attached before the loop runs.
  void StartWithControl() {
    BlkbackDaemonOptions options;
    options.direct_io = false;
    std::unique_ptr<LibXenStoreClient> client = OpenClient(*server_);
    ASSERT_NE(client, nullptr);
    Result<std::unique_ptr<BlkbackDaemon>> daemon =
        BlkbackDaemon::Create(std::move(client), sim_->hypervisor(), options);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    target_ = std::make_unique<DaemonControlTarget>(*daemon_);
    ControlServerOptions control;
    control.socket_path = image_dir_ + "/run/control";
    Result<std::unique_ptr<ControlServer>> server = ControlServer::Create(control, *target_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    control_ = std::move(server).value();
    ASSERT_TRUE(daemon_->AttachControl(control_.get()).ok());
    loop_ = std::thread([this] { loop_status_ = daemon_->Run(); });
  }

  void TearDown() override {
    StopDaemon();
    control_.reset();
    target_.reset();
    HandshakeFixture::TearDown();
  }

  std::string Ask(const std::string& line) {
    auto client = ControlClient::Connect(image_dir_ + "/run/control");
    if (!client.ok()) return "no connection: " + client.status().ToString();
    Result<ControlReply> reply = (*client)->CallLine(line, 10000);
    if (!reply.ok()) return "broken: " + reply.status().ToString();
    if (!reply->ok) return "error: " + reply->error;
    std::string body;
    for (const std::string& l : reply->lines) body += l + "\n";
    return body;
  }

  std::unique_ptr<DaemonControlTarget> target_;
  std::unique_ptr<ControlServer> control_;
};

bool Contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

// What a frontend took up shows in list: persistent grants only where the frontend asked for them too, and
// the indirect segments the device offers.
TEST_F(ControlDaemonTest, ListNamesPersistentGrantsWhereNegotiatedAndTheIndirectSegmentsOffered) {
  StartWithControl();
  CreateDomain(1);
  CreateDomain(2);
  AddDisk(1, 51712, "aio:" + MakeImage("disk1", 4 << 20));
  AddDisk(2, 51712, "aio:" + MakeImage("disk2", 4 << 20));
  std::unique_ptr<LibXenStoreClient> guest1 = GuestClient(1), guest2 = GuestClient(2);
  XenbusBlkfrontConfig persistent;
  persistent.persistent = true;
  std::unique_ptr<XenbusBlkfront> front1 = Frontend(*guest1, 1, 51712, persistent);
  std::unique_ptr<XenbusBlkfront> front2 = Frontend(*guest2, 2, 51712);
  ASSERT_TRUE(front1->Connect(kTimeout).ok());
  ASSERT_TRUE(front2->Connect(kTimeout).ok());

  std::string list = Ask("list");
  EXPECT_TRUE(Contains(list, "ring-pages=1,protocol=x86_64-abi,persistent,max-indirect-segments=256 "))
      << list;
  EXPECT_TRUE(Contains(list, "2/51712 state=Connected")) << list;
  std::string second = list.substr(list.find("2/51712 "));
  EXPECT_TRUE(Contains(second, "protocol=x86_64-abi,max-indirect-segments=256 ")) << list;
  EXPECT_FALSE(Contains(second.substr(0, second.find('\n')), "persistent")) << list;
}

TEST_F(ControlDaemonTest, ListsPausesResumesAndResizesAConnectedGuest) {
  StartWithControl();
  CreateDomain(1);
  std::string image = MakeImage("disk1", 4 << 20);
  AddDisk(1, 51712, "aio:" + image);
  std::string backend = BackendPath(1, 51712);
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(1);
  std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 1, 51712);
  ASSERT_TRUE(front->Connect(kTimeout).ok());
  CheckIo(front->queue(0), 8, 1);

  std::string list = Ask("list");
  EXPECT_TRUE(Contains(list,
                       "1/51712 state=Connected io=running size=4194304 queues=1 "
                       "features=flush-cache,barrier,ring-pages="))
      << list;
  EXPECT_TRUE(Contains(list, "images=aio:" + image)) << list;
  EXPECT_TRUE(Contains(Ask("stats 1/51712"), "wr_req=1 ")) << Ask("stats 1/51712");

  ASSERT_TRUE(Contains(Ask("pause 1/51712"), "1/51712 paused in"));
  AlignedBuffer data(4096);
  FillPattern(data.span(), 64, 2);
  Io io;
  io.op = IoOp::kWrite;
  io.sector = 64;
  io.buffer = data.data;
  io.length = 4096;
  io.tag = 1;
  Blkfront& queue = front->queue(0);
  ASSERT_TRUE(queue.Submit(io).ok());
  IoCompletion done[1];
  Result<size_t> got = queue.Wait(done, std::chrono::milliseconds(200));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, 0u);  // paused: not answered
  EXPECT_EQ(Ask("resume 1/51712"), "1/51712 resumed\n");
  got = queue.Wait(done, kTimeout);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(*got, 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);

  // The resize: new sectors and a state write the frontend's watch on our state sees.
  std::unique_ptr<LibXenStoreClient> watcher = OpenClient(*server_);
  ASSERT_TRUE(watcher->Watch(backend + "/state", "resize").ok());
  std::vector<WatchEvent> events;
  ASSERT_TRUE(WaitForEvents(*watcher, &events, [](const auto& seen) { return !seen.empty(); }));  // initial
  events.clear();
  EXPECT_EQ(Ask("resize 1/51712 8M"), "1/51712: 4194304 -> 8388608 bytes, published to the frontend\n");
  EXPECT_EQ(ReadKey(backend + "/sectors"), "16384");
  EXPECT_EQ(ReadKey(backend + "/state"), "4");
  EXPECT_TRUE(WaitForEvents(*watcher, &events, [](const auto& seen) { return !seen.empty(); }));
  EXPECT_TRUE(Contains(Ask("list"), "size=8388608"));
  EXPECT_EQ(
      Ask("resize 1/51712 4M"),
      "error: 1/51712: refusing to shrink from 8388608 to 4194304 bytes: the guest may have data there");
  // The guest may now use the new sectors.
  CheckIo(queue, (8u << 20) / 512 - 32, 3);
  EXPECT_EQ(Ask("pause 7/51712"), "error: no device 7/51712 (see list)");
}

// A snapshot of a guest connected through xenstore: list names the new chain, and when the guest reconnects
// (close, connect again with params unchanged) the device, which stays open, serves the child, not the now
// read-only parent.
TEST_F(ControlDaemonTest, SnapshotOfAConnectedVhdGuestSurvivesItsReconnect) {
  StartWithControl();
  CreateDomain(1);
  std::string base = image_dir_ + "/base.vhd";
  ASSERT_TRUE(vhd::CreateImage(base, vhd::CreateOptions::Dynamic(8 << 20)).ok());
  AddDisk(1, 51712, "vhd:" + base);
  std::unique_ptr<LibXenStoreClient> guest = GuestClient(1);
  std::unique_ptr<XenbusBlkfront> front = Frontend(*guest, 1, 51712);
  ASSERT_TRUE(front->Connect(kTimeout).ok());
  CheckIo(front->queue(0), 8, 1);
  std::string child = image_dir_ + "/child.vhd";
  std::string reply = Ask("snapshot 1/51712 " + child);
  EXPECT_TRUE(Contains(reply, child + " is the new leaf")) << reply;
  EXPECT_TRUE(Contains(Ask("list"), "io=running size=8388608")) << Ask("list");
  EXPECT_TRUE(Contains(Ask("list"), "images=" + child + "," + base + "\n")) << Ask("list");
  CheckIo(front->queue(0), 4096, 2);  // lands in the child

  ASSERT_TRUE(front->Close(kTimeout).ok());
  ASSERT_TRUE(front->Connect(kTimeout).ok());
  EXPECT_TRUE(Contains(Ask("list"), "images=" + child + "," + base + "\n")) << Ask("list");
  CheckIo(front->queue(0), 8192, 3);
  front.reset();
  StopDaemon();
  auto parent = vhd::VhdChain::Open(base, false);
  ASSERT_TRUE(parent.ok()) << parent.status().ToString();
  EXPECT_NE((*parent)->top().bat_entry(0), vhd::kBatUnused);
  // Sectors 4096 and 8192 are in blocks 1 and 2 (2 MiB blocks), written after the snapshot: the child's.
  EXPECT_EQ((*parent)->top().bat_entry(1), vhd::kBatUnused);
  EXPECT_EQ((*parent)->top().bat_entry(2), vhd::kBatUnused);
  auto chain = vhd::VhdChain::Open(child, false);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_NE((*chain)->top().bat_entry(1), vhd::kBatUnused);
  EXPECT_NE((*chain)->top().bat_entry(2), vhd::kBatUnused);
}

}  // namespace
}  // namespace blk
