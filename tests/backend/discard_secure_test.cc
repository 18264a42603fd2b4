// discard-secure, an operator's opt-in (DeviceConfig::discard_secure): offered only with discard, on a raw
// image on a block device; a file or a VHD never. Through the datapath on a loop device (which cannot erase
// securely): the guest's secure discard gets EOPNOTSUPP and leaves the data, a plain discard still works.
#include <gtest/gtest.h>

#include "formats/discard.h"
#include "formats/raw_image.h"
#include "formats/vhd/create.h"
#include "tests/backend/datapath_fixture.h"
#include "tests/test_util.h"

namespace blk {
namespace {

Request SecureDiscard(uint64_t id, uint64_t sector, uint64_t sectors) {
  Request request;
  request.operation = BLKIF_OP_DISCARD;
  request.discard_flag = BLKIF_DISCARD_SECURE;
  request.id = id;
  request.sector_number = sector;
  request.discard_sectors = sectors;
  return request;
}

struct Offer {
  bool discard;
  bool secure;
};

// What Device::Open offers for `path` with the key set (or not).
Offer OpenAndSee(const std::string& path, ImageFormatHint format, bool key, bool discard = true,
                 bool read_only = false) {
  DeviceConfig config;
  config.name = "1/51712";
  config.path = path;
  config.format = format;
  config.direct = false;
  config.discard = discard;
  config.read_only = read_only;
  config.discard_secure = key;
  auto device = Device::Open(config);
  EXPECT_TRUE(device.ok()) << device.status().ToString();
  if (!device.ok()) return {false, false};
  return {(*device)->limits().discard, (*device)->limits().discard_secure};
}

TEST(DiscardSecureOfferTest, AFileOrAVhdIsNeverOfferedItEvenWithTheKeySet) {
  testing::TempDir dir;
  std::string raw = MakeDiskFile(dir.path(), "raw", 1 << 20, 0);
  Offer file = OpenAndSee(raw, ImageFormatHint::kRaw, true);
  EXPECT_TRUE(file.discard);
  EXPECT_FALSE(file.secure);
  std::string vhd = dir.File("disk.vhd");
  ASSERT_TRUE(vhd::CreateImage(vhd, vhd::CreateOptions::Dynamic(4 << 20)).ok());
  Offer dynamic = OpenAndSee(vhd, ImageFormatHint::kVhd, true);
  EXPECT_TRUE(dynamic.discard);
  EXPECT_FALSE(dynamic.secure);
}

class LoopDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backing_ = MakeDiskFile("/var/tmp", "discard_secure_test", kDiskBytes, 0);
    loop_ = std::make_unique<testing::LoopDevice>(backing_);
    if (loop_->path().empty()) GTEST_SKIP() << "no loop device can be set up here";
  }
  void TearDown() override {
    loop_.reset();
    ::unlink(backing_.c_str());
  }
  std::string backing_;
  std::unique_ptr<testing::LoopDevice> loop_;
};

TEST_F(LoopDeviceTest, OfferedOnABlockDeviceOnlyWithTheKeyAndWithDiscard) {
  Offer keyed = OpenAndSee(loop_->path(), ImageFormatHint::kRaw, true);
  if (!keyed.discard) GTEST_SKIP() << loop_->path() << " takes no discard here";
  EXPECT_TRUE(keyed.secure);
  Offer unkeyed = OpenAndSee(loop_->path(), ImageFormatHint::kRaw, false);
  EXPECT_TRUE(unkeyed.discard);
  EXPECT_FALSE(unkeyed.secure) << "the operator did not vouch for it";
  Offer forbidden = OpenAndSee(loop_->path(), ImageFormatHint::kRaw, true, /*discard=*/false);
  EXPECT_FALSE(forbidden.discard);
  EXPECT_FALSE(forbidden.secure) << "no discard-secure without discard (the toolstack's no-discard)";
  Offer read_only = OpenAndSee(loop_->path(), ImageFormatHint::kRaw, true, true, /*read_only=*/true);
  EXPECT_FALSE(read_only.discard);
  EXPECT_FALSE(read_only.secure);
}

// A guest offered discard-secure keeps it across an image swap: only a raw block device may replace the
// image.
TEST_F(LoopDeviceTest, AnImageSwapKeepsDiscardSecureOnlyOntoABlockDevice) {
  DiskLimits limits;
  limits.sectors = kDiskSectors;
  limits.discard = true;
  limits.discard_secure = true;
  auto block = RawImage::Open(loop_->path(), {});
  ASSERT_TRUE(block.ok()) << block.status().ToString();
  if (!ProbeDiscard((*block)->fd()).supported) GTEST_SKIP() << loop_->path() << " takes no discard here";
  EXPECT_TRUE(CheckImageSwap("1/2", limits, 1, **block).ok());
  auto file = RawImage::Open(backing_, {});
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  Status refused = CheckImageSwap("1/2", limits, 1, **file);
  EXPECT_EQ(refused.code(), Status::Code::kNotSupported);
  EXPECT_EQ(refused.message(), "1/2: the guest was offered discard-secure, which " + backing_ +
                                   " (not a raw block device) cannot keep");
  limits.discard_secure = false;
  EXPECT_TRUE(CheckImageSwap("1/2", limits, 1, **file).ok());
}

class SecureDiscardDatapathTest : public SteppedGuestTest {
 protected:
  void SetUp() override {
    CreateDisk("/var/tmp", "secure_datapath_test");
    loop_ = std::make_unique<testing::LoopDevice>(path_);
  }
  void TearDown() override {
    guest_.reset();
    loop_.reset();
    SteppedGuestTest::TearDown();
  }
  void Connect(const std::string& path, bool key) {
    guest_ = std::make_unique<Guest>(sim_, path, 1, BlkfrontConfig{}, false, *worker_, true, 0,
                                     ImageFormatHint::kRaw, true, 0, 0, key);
  }
  // Places a secure discard and steps the backend until it is answered; the status.
  int16_t SecureDiscardStatus(uint64_t id, uint64_t sector, uint64_t sectors) {
    PlaceRaw(SecureDiscard(id, sector, sectors));
    EXPECT_TRUE(front().Push().ok());
    auto response = StepForRaw(id);
    EXPECT_TRUE(response.has_value()) << "no answer to secure discard " << id;
    if (!response) return 1;  // no blkif status is 1
    EXPECT_EQ(response->operation, BLKIF_OP_DISCARD);
    return response->status;
  }
  std::unique_ptr<testing::LoopDevice> loop_;
};

TEST_F(SecureDiscardDatapathTest, ALoopDeviceRefusesSecureDiscardYetDiscardsPlainly) {
  if (loop_->path().empty()) GTEST_SKIP() << "no loop device can be set up here";
  LogCapture log;
  Connect(loop_->path(), true);
  if (!guest_->device->limits().discard) GTEST_SKIP() << loop_->path() << " takes no discard here";
  ASSERT_TRUE(guest_->device->limits().discard_secure);
  Bytes data(65536), back(65536);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 13 + 5);
  ASSERT_TRUE(front().Submit({IoOp::kWrite, 0, data.size(), data.data(), 1}).ok());
  ASSERT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
  // The kernel's loop driver cannot erase securely: EOPNOTSUPP, nothing erased, one log line however often.
  EXPECT_EQ(SecureDiscardStatus(kRawIdBase + 1, 16, 64), BLKIF_RSP_EOPNOTSUPP);
  EXPECT_EQ(SecureDiscardStatus(kRawIdBase + 2, 0, 8), BLKIF_RSP_EOPNOTSUPP);
  EXPECT_EQ(log.Count("BLKSECDISCARD"), 1u);
  EXPECT_TRUE(log.Contains("1/51712")) << "the line names the device";
  EXPECT_EQ(guest_->device->stats().bad_req.load(), 0u) << "offered: validation let them through";
  ASSERT_TRUE(front().Submit({IoOp::kRead, 0, back.size(), back.data(), 2}).ok());
  ASSERT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
  EXPECT_EQ(back, data);
  // A secure discard still has to fit the disk.
  EXPECT_EQ(SecureDiscardStatus(kRawIdBase + 3, kDiskSectors - 4, 8), BLKIF_RSP_ERROR);
  // A plain discard goes on working: BLKDISCARD on the loop device, the range reads back as zeros.
  ASSERT_TRUE(front().Submit({IoOp::kDiscard, 16, 32768, nullptr, 3}).ok());
  ASSERT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 0, back.size(), back.data(), 4}).ok());
  ASSERT_EQ(Step(1).at(0).status, BLKIF_RSP_OKAY);
  Bytes expected = data;
  std::fill(expected.begin() + 8192, expected.begin() + 8192 + 32768, 0);
  EXPECT_EQ(back, expected);
}

// The same key on the loop device's backing file: not offered, so a secure discard is a bad request (refused
// before the storage is asked) and nothing is logged about the storage.
TEST_F(SecureDiscardDatapathTest, AFileWithTheKeySetRefusesSecureDiscardAsNotOffered) {
  LogCapture log;
  Connect(path_, true);
  ASSERT_TRUE(guest_->device->limits().discard);
  ASSERT_FALSE(guest_->device->limits().discard_secure);
  EXPECT_EQ(SecureDiscardStatus(kRawIdBase + 1, 0, 8), BLKIF_RSP_EOPNOTSUPP);
  EXPECT_EQ(guest_->device->stats().bad_req.load(), 1u);
  EXPECT_EQ(log.Count("BLKSECDISCARD"), 0u);
}

}  // namespace
}  // namespace blk
