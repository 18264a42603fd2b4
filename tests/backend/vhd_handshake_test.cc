// The blkif handshake on VHD images: "vhd:" params and bare paths whose footer says VHD are served with the
// VHD's virtual size; a bare path to a differencing VHD is refused (its parent locators are not trusted).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "tests/backend/handshake_fixture.h"

namespace blk {
namespace {

class VhdHandshakeTest : public HandshakeFixture {
 protected:
  std::string MakeVhd(const std::string& name, uint64_t bytes) {
    std::string path = image_dir_ + "/" + name;
    EXPECT_TRUE(vhd::CreateImage(path, vhd::CreateOptions::Dynamic(bytes)).ok());
    return path;
  }
  void Connect(uint32_t domid, uint32_t devid, uint32_t queues, uint64_t expected_sectors) {
    guest_ = GuestClient(domid);
    XenbusBlkfrontConfig config;
    config.queues = queues;
    front_ = Frontend(*guest_, domid, devid, config);
    Status connected = front_->Connect(kTimeout);
    ASSERT_TRUE(connected.ok()) << connected.ToString();
    EXPECT_EQ(front_->disk().sectors, expected_sectors);
  }
  std::unique_ptr<LibXenStoreClient> guest_;
  std::unique_ptr<XenbusBlkfront> front_;
};

TEST_F(VhdHandshakeTest, VhdPrefixIsServedWithTheVirtualSizeOnEveryQueue) {
  LogLines log;
  StartDaemon();
  CreateDomain(1);
  std::string path = MakeVhd("disk.vhd", 24u << 20);
  AddDisk(1, 51712, "vhd:" + path);
  ASSERT_NO_FATAL_FAILURE(Connect(1, 51712, 2, (24u << 20) / 512));
  ASSERT_EQ(front_->queue_count(), 2u);
  CheckIo(front_->queue(0), 100, 1);
  CheckIo(front_->queue(1), (5u << 20) / 512, 2);  // another block, allocated from the other queue
  EXPECT_TRUE(log.Contains("1/51712", "(vhd)"));
  front_.reset();
  StopDaemon();
  daemon_.reset();  // closes the image
  auto chain = vhd::VhdChain::Open(path, false);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_NE((*chain)->top().bat_entry(0), vhd::kBatUnused);
  EXPECT_NE((*chain)->top().bat_entry(2), vhd::kBatUnused);
  EXPECT_EQ((*chain)->top().bat_entry(1), vhd::kBatUnused);
}

TEST_F(VhdHandshakeTest, BarePathEndingInAVhdFooterIsAVhdAndRawPrefixIsNotProbed) {
  StartDaemon();
  CreateDomain(2);
  std::string path = MakeVhd("bare.vhd", 16u << 20);
  AddDisk(2, 51712, path, {{"mode", "r"}});
  ASSERT_NO_FATAL_FAILURE(Connect(2, 51712, 1, (16u << 20) / 512));
  EXPECT_EQ(front_->disk().info, static_cast<uint32_t>(VDISK_READONLY));
  AlignedBuffer in(4096);
  Result<int16_t> read = DoIo(front_->queue(0), IoOp::kRead, 0, in.data, in.size);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, BLKIF_RSP_OKAY);
  EXPECT_EQ(in.data[0], 0);  // an unallocated block, not the footer copy the raw file starts with
  front_.reset();
  // The same file named raw: is served as its bytes.
  CreateDomain(3);
  AddDisk(3, 51712, "raw:" + path, {{"mode", "r"}});
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_NO_FATAL_FAILURE(Connect(3, 51712, 1, static_cast<uint64_t>(st.st_size) / 512));
  read = DoIo(front_->queue(0), IoOp::kRead, 0, in.data, 512);  // the file is only a few sectors long
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, BLKIF_RSP_OKAY);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(in.data), 8), "conectix");
}

TEST_F(VhdHandshakeTest, BarePathToADifferencingVhdIsRefusedButVhdPrefixServesTheChain) {
  StartDaemon();
  std::string parent = MakeVhd("parent.vhd", 8u << 20);
  {
    auto opened = vhd::VhdChain::Open(parent, true);
    ASSERT_TRUE(opened.ok());
    AlignedBuffer data(16384);
    FillPattern(data.span(), 64, 9);
    ASSERT_TRUE((*opened)->top().Write(64 * 512, data.span()).ok());
  }
  std::string child = image_dir_ + "/child.vhd";
  ASSERT_TRUE(vhd::CreateImage(child, vhd::CreateOptions::Differencing(parent)).ok());
  CreateDomain(4);
  AddDisk(4, 51712, child);
  std::string backend = BackendPath(4, 51712);
  ASSERT_TRUE(WaitForValue(backend + "/state", "5"));
  std::optional<std::string> error = ReadKey(backend + "/hotplug-error");
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find("differencing"), std::string::npos) << *error;

  CreateDomain(5);
  AddDisk(5, 51712, "vhd:" + child);
  ASSERT_NO_FATAL_FAILURE(Connect(5, 51712, 1, (8u << 20) / 512));
  AlignedBuffer in(16384);
  Result<int16_t> read = DoIo(front_->queue(0), IoOp::kRead, 64, in.data, in.size);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, BLKIF_RSP_OKAY);
  EXPECT_FALSE(CheckPattern(in.span(), 64, 9).has_value()) << "the parent's data is not visible";
  CheckIo(front_->queue(0), 64, 10);
}

}  // namespace
}  // namespace blk
