// Failing storage under a dynamic VHD: a write whose allocation fails (ENOSPC on the new block or its footer,
// EIO on the BAT sector) is the only one answered with an error, the image stays consistent (vhd check, qemu,
// a reopen), and transient errors and short transfers during an allocation are retried to success.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "base/unique_fd.h"
#include "formats/vhd/chain.h"
#include "formats/vhd/check.h"
#include "formats/vhd/create.h"
#include "formats/vhd_disk_image.h"
#include "tests/backend/fault_fixture.h"

namespace blk {
namespace {

constexpr uint64_t kBlock = 2u << 20;

uint64_t FileSize(const std::string& path) {
  struct stat info {};
  EXPECT_EQ(::stat(path.c_str(), &info), 0);
  return static_cast<uint64_t>(info.st_size);
}

void ExpectChecks(const std::string& path) {
  vhd::CheckReport report = vhd::CheckImage(path);
  std::string problems;
  for (const std::string& problem : report.problems) problems += problem + "\n";
  EXPECT_TRUE(report.ok()) << problems;
}

Bytes ReadBack(const std::string& path, uint64_t offset, size_t bytes) {
  Bytes data(bytes);
  auto chain = vhd::VhdChain::Open(path, true);
  EXPECT_TRUE(chain.ok()) << chain.status().ToString();
  if (chain.ok()) {
    EXPECT_TRUE((*chain)->top().Read(offset, data).ok());
  }
  return data;
}

class VhdFaultTest : public FaultTest {
 protected:
  void SetUp() override {
    FaultTest::SetUp();
    path_ = "/var/tmp/fault_vhd." + std::to_string(::getpid());
    paths_.push_back(path_);
    ASSERT_TRUE(vhd::CreateImage(path_, vhd::CreateOptions::Dynamic(kDiskBytes)).ok());
    guest_ = &AddGuest(path_, ImageFormatHint::kVhd);
    // Block 0 allocated before any fault: later writes there go in place.
    Bytes first = Pattern(4096, 1);
    ASSERT_EQ(Do(front(), IoOp::kWrite, 0, first), BLKIF_RSP_OKAY);
    end_before_ = FileSize(path_);
    bat_ = image().leaf().header().table_offset;  // blocks 0 and 1 share its first sector
  }
  Blkfront& front() { return *guest_->front; }
  VhdDiskImage& image() {
    // The test's seam into the device's image (a Device only hands out a const view).
    return static_cast<VhdDiskImage&>(const_cast<DiskImage&>(guest_->device->image()));
  }
  // Writes to block 1 (a new one) and, in the same round, in place into block 0; returns their statuses.
  std::pair<int16_t, int16_t> WriteNewAndInPlace(const Bytes& fresh, const Bytes& in_place) {
    EXPECT_TRUE(front()
                    .Queue({IoOp::kWrite, kBlock >> kSectorShift, fresh.size(),
                            const_cast<uint8_t*>(fresh.data()), 1})
                    .ok());
    EXPECT_TRUE(
        front().Queue({IoOp::kWrite, 64, in_place.size(), const_cast<uint8_t*>(in_place.data()), 2}).ok());
    EXPECT_TRUE(front().Push().ok());
    auto done = Step(front(), 2);
    EXPECT_EQ(done.size(), 2u);
    std::pair<int16_t, int16_t> statuses{-100, -100};
    for (const auto& completion : done)
      (completion.tag == 1 ? statuses.first : statuses.second) = completion.status;
    return statuses;
  }
  // After the failed allocation: the image is consistent, the failed range reads as zeros, and the block can
  // still be allocated.
  void ExpectRecovered(const Bytes& in_place) {
    EXPECT_EQ(image().leaf().bat_entry(1), vhd::kBatUnused);
    EXPECT_EQ(guest_->device->stats().io_errors.load(), 1u);
    EXPECT_EQ(Flush(front()), BLKIF_RSP_OKAY);
    ExpectChecks(path_);
    EXPECT_EQ(ReadBack(path_, kBlock, 4096), Bytes(4096, 0));
    EXPECT_EQ(ReadBack(path_, 64 << kSectorShift, in_place.size()), in_place);
    faults_.Clear();
    Bytes again = Pattern(4096, 9), back(4096);
    EXPECT_EQ(Do(front(), IoOp::kWrite, kBlock >> kSectorShift, again), BLKIF_RSP_OKAY);
    EXPECT_EQ(Do(front(), IoOp::kRead, kBlock >> kSectorShift, back), BLKIF_RSP_OKAY);
    EXPECT_EQ(back, again);
    EXPECT_EQ(Flush(front()), BLKIF_RSP_OKAY);
    ExpectChecks(path_);
    EXPECT_EQ(ReadBack(path_, kBlock, 4096), again);
  }

  // `rule` fails one write of a new block's allocation, while a write in place into block 0 goes in the same
  // round: only the allocating write fails, and the image recovers.
  void ExpectOnlyTheAllocatingWriteFails(FaultRule rule, uint32_t seed) {
    rule.times = 1;
    faults_.Add(rule);
    Bytes fresh = Pattern(4096, seed), in_place = Pattern(4096, seed + 1);
    auto [fresh_status, in_place_status] = WriteNewAndInPlace(fresh, in_place);
    EXPECT_EQ(faults_.fired(), 1u);
    EXPECT_EQ(fresh_status, BLKIF_RSP_ERROR);
    EXPECT_EQ(in_place_status, BLKIF_RSP_OKAY);
    ExpectRecovered(in_place);
  }

  std::string path_;
  Guest* guest_ = nullptr;
  uint64_t end_before_ = 0;
  uint64_t bat_ = 0;
};

TEST_F(VhdFaultTest, NoSpaceForTheNewBlockFailsOnlyThatWrite) {
  // The new block and its footer go at the end of the file.
  ExpectOnlyTheAllocatingWriteFails(WriteRule(-1, end_before_ - 512, UINT64_MAX, ENOSPC), 2);
}

TEST_F(VhdFaultTest, NoSpaceForTheBlockWhileItsFooterLandedFailsOnlyThatWrite) {
  // Only the 2 MiB block write fails; the new footer past it is written.
  ExpectOnlyTheAllocatingWriteFails(WriteRule(-1, end_before_ - 512, end_before_ + kBlock - 512, ENOSPC), 4);
}

TEST_F(VhdFaultTest, FailedBatSectorWriteFailsOnlyThatWrite) {
  ExpectOnlyTheAllocatingWriteFails(WriteRule(-1, bat_, bat_ + 512, EIO), 6);
}

TEST_F(VhdFaultTest, TransientErrorsAndShortTransfersDuringAnAllocationAreRetriedToSuccess) {
  FaultRule busy = WriteRule(-1, end_before_ - 512, UINT64_MAX, EAGAIN);
  busy.times = 2;
  faults_.Add(busy);
  FaultRule bat = WriteRule(-1, bat_, bat_ + 512, ENOMEM);
  bat.times = 1;
  faults_.Add(bat);
  FaultRule partial = WriteRule(-1, 0, UINT64_MAX, 0);
  partial.effect = FaultRule::Effect::kShort;
  partial.times = 2;
  faults_.Add(partial);
  Bytes fresh = Pattern(65536, 8), in_place = Pattern(4096, 10);
  auto [fresh_status, in_place_status] = WriteNewAndInPlace(fresh, in_place);
  EXPECT_EQ(fresh_status, BLKIF_RSP_OKAY);
  EXPECT_EQ(in_place_status, BLKIF_RSP_OKAY);
  EXPECT_EQ(faults_.fired(), 5u);
  EXPECT_EQ(guest_->device->stats().io_errors.load(), 0u);
  EXPECT_NE(image().leaf().bat_entry(1), vhd::kBatUnused);
  EXPECT_EQ(Flush(front()), BLKIF_RSP_OKAY);
  ExpectChecks(path_);
  EXPECT_EQ(ReadBack(path_, kBlock, fresh.size()), fresh);
  EXPECT_EQ(ReadBack(path_, 64 << kSectorShift, in_place.size()), in_place);
}

TEST_F(VhdFaultTest, ABitmapWriteRetriedAfterATransientErrorStillReachesTheDisk) {
  // A block whose bitmap claims only sectors 8..15 (as tapdisk leaves blocks): a write at sector 64 goes data
  // first, then the bitmap sector. That bitmap write fails once; the retry finds the bits already set in
  // memory and must still write them.
  std::string partial = path_ + ".partial";
  paths_.push_back(partial);
  vhd::CreateOptions options = vhd::CreateOptions::Dynamic(kDiskBytes);
  options.batmap = false;
  ASSERT_TRUE(vhd::CreateImage(partial, options).ok());
  uint64_t bitmap_offset = 0;
  {
    auto chain = vhd::VhdChain::Open(partial, true);
    ASSERT_TRUE(chain.ok());
    ASSERT_TRUE((*chain)->top().Write(4096, Pattern(4096, 3)).ok());
    bitmap_offset = uint64_t{(*chain)->top().bat_entry(0)} * 512;
  }
  Bytes bitmap(512, 0);
  bitmap[1] = 0xFF;
  {
    UniqueFd fd(::open(partial.c_str(), O_WRONLY));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::pwrite(fd.get(), bitmap.data(), bitmap.size(), static_cast<off_t>(bitmap_offset)), 512);
  }
  Guest& guest = AddGuest(partial, ImageFormatHint::kVhd);
  FaultRule rule = WriteRule(-1, bitmap_offset, bitmap_offset + 512, EAGAIN);
  rule.times = 1;
  faults_.Add(rule);
  Bytes data = Pattern(4096, 11);
  EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 64, data), BLKIF_RSP_OKAY);
  EXPECT_EQ(faults_.fired(), 1u);
  EXPECT_EQ(Flush(*guest.front), BLKIF_RSP_OKAY);
  {
    UniqueFd fd(::open(partial.c_str(), O_RDONLY));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::pread(fd.get(), bitmap.data(), bitmap.size(), static_cast<off_t>(bitmap_offset)), 512);
  }
  EXPECT_EQ(bitmap[8], 0xFF) << "the bits of sectors 64..71 never reached the disk";
  EXPECT_EQ(bitmap[1], 0xFF);
  ExpectChecks(partial);
  EXPECT_EQ(ReadBack(partial, 64 << kSectorShift, data.size()), data);
}

}  // namespace
}  // namespace blk
