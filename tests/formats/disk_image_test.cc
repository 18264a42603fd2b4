// Tests of formats/disk_image.cc and formats/vhd_disk_image.cc: choosing the format, and mapping guest ranges
// of raw images and VHD chains to file extents and holes.
#include "formats/disk_image.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <string>
#include <vector>

#include "formats/raw_image.h"
#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "formats/vhd_disk_image.h"

namespace blk {
namespace {

class DiskImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/disk-image-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Raw(const std::string& name, uint64_t bytes) {
    std::string path = dir_ + "/" + name;
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
    ::close(fd);
    return path;
  }
  // A 8 MiB dynamic VHD (2 MiB blocks) with data in blocks 1 and 2.
  std::string Parent() {
    std::string path = dir_ + "/parent.vhd";
    EXPECT_TRUE(vhd::CreateImage(path, vhd::CreateOptions::Dynamic(8u << 20)).ok());
    auto chain = vhd::VhdChain::Open(path, true);
    EXPECT_TRUE(chain.ok());
    std::vector<uint8_t> data(4u << 20, 0x22);
    EXPECT_TRUE((*chain)->top().Write(2u << 20, data).ok());
    return path;
  }
  std::string Child(const std::string& parent) {
    std::string path = dir_ + "/child.vhd";
    EXPECT_TRUE(vhd::CreateImage(path, vhd::CreateOptions::Differencing(parent)).ok());
    auto chain = vhd::VhdChain::Open(path, true);
    EXPECT_TRUE(chain.ok());
    std::vector<uint8_t> data(4096, 0x33);
    EXPECT_TRUE((*chain)->top().Write((2u << 20) + 8192, data).ok());  // allocates block 1 in the child
    return path;
  }
  std::string dir_;
};

TEST_F(DiskImageTest, ProbingFindsVhdFootersAndLeavesEverythingElseRaw) {
  ImageOpenOptions options;
  options.direct = false;
  auto raw = OpenDiskImage(Raw("disk.img", 1 << 20), ImageFormatHint::kProbe, options);
  ASSERT_TRUE(raw.ok()) << raw.status().ToString();
  EXPECT_EQ((*raw)->format(), ImageFormat::kRaw);
  EXPECT_EQ((*raw)->size_bytes(), 1u << 20);

  std::string parent = Parent();
  auto vhd = OpenDiskImage(parent, ImageFormatHint::kProbe, options);
  ASSERT_TRUE(vhd.ok()) << vhd.status().ToString();
  EXPECT_EQ((*vhd)->format(), ImageFormat::kVhd);
  EXPECT_EQ((*vhd)->size_bytes(), 8u << 20);  // the virtual size, not the file's
  auto as_raw = OpenDiskImage(parent, ImageFormatHint::kRaw, options);
  ASSERT_TRUE(as_raw.ok());
  EXPECT_EQ((*as_raw)->format(), ImageFormat::kRaw);
  EXPECT_NE((*as_raw)->size_bytes(), 8u << 20);
}

TEST_F(DiskImageTest, ProbedDifferencingVhdIsRefusedAndNamedVhdIsValidated) {
  ImageOpenOptions options;
  options.direct = false;
  std::string child = Child(Parent());
  auto probed = OpenDiskImage(child, ImageFormatHint::kProbe, options);
  ASSERT_FALSE(probed.ok());
  EXPECT_EQ(probed.status().code(), Status::Code::kPermissionDenied);
  EXPECT_NE(probed.status().message().find("differencing"), std::string::npos);
  EXPECT_TRUE(OpenDiskImage(child, ImageFormatHint::kVhd, options).ok());
  auto not_vhd = OpenDiskImage(Raw("fake.vhd", 1 << 20), ImageFormatHint::kVhd, options);
  ASSERT_FALSE(not_vhd.ok());
  EXPECT_EQ(not_vhd.status().code(), Status::Code::kCorruption) << not_vhd.status().ToString();
  auto missing = OpenDiskImage(dir_ + "/missing", ImageFormatHint::kProbe, options);
  EXPECT_FALSE(missing.ok());
  options.logical_block_size = 1024;
  EXPECT_FALSE(OpenDiskImage(child, ImageFormatHint::kVhd, options).ok());
}

TEST_F(DiskImageTest, RawMapsToOneExtentOfItsOwnFile) {
  auto image = RawImage::Open(Raw("disk.img", 1 << 20), {});
  ASSERT_TRUE(image.ok());
  std::array<ImageExtent, 4> out;
  auto mapped = (*image)->Map(4096, 8192, out);
  ASSERT_TRUE(mapped.ok());
  ASSERT_EQ(*mapped, 1u);
  EXPECT_EQ(out[0].fd, (*image)->fd());
  EXPECT_EQ(out[0].file_offset, 4096u);
  EXPECT_EQ(out[0].length, 8192u);
}

TEST_F(DiskImageTest, ChainMapsToTheLeafTheParentOrHolesInOrder) {
  ImageOpenOptions options;
  options.direct = false;
  options.read_only = true;
  std::string child = Child(Parent());
  auto image = VhdDiskImage::Open(child, options);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  VhdDiskImage& vhd = **image;
  // Block 0: a hole in both. Block 1: the child's (it copied the parent's data in). Block 2: the parent's.
  std::array<ImageExtent, 8> out;
  auto mapped = vhd.Map((2u << 20) - 4096, (2u << 20) + 8192, out);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  ASSERT_EQ(*mapped, 3u);
  EXPECT_TRUE(out[0].zero());
  EXPECT_EQ(out[0].length, 4096u);
  EXPECT_EQ(out[1].fd, vhd.data_fd());
  EXPECT_EQ(out[1].length, 2u << 20);
  EXPECT_FALSE(out[2].zero());
  EXPECT_NE(out[2].fd, vhd.data_fd());
  EXPECT_EQ(out[2].length, 4096u);
  // A short output array gives a prefix.
  std::array<ImageExtent, 2> few;
  mapped = vhd.Map((2u << 20) - 4096, (2u << 20) + 8192, few);
  ASSERT_TRUE(mapped.ok());
  ASSERT_EQ(*mapped, 2u);
  EXPECT_EQ(few[1].length, 2u << 20);
  // From level 1 (the parent alone), as a new child block is filled.
  mapped = vhd.MapFrom(1, 0, 4u << 20, out);
  ASSERT_TRUE(mapped.ok());
  ASSERT_EQ(*mapped, 2u);
  EXPECT_TRUE(out[0].zero());
  EXPECT_EQ(out[0].length, 2u << 20);
  EXPECT_NE(out[1].fd, vhd.data_fd());
  EXPECT_EQ(out[1].length, 2u << 20);
  // Beyond the chain (a level past the base) everything is a hole.
  mapped = vhd.MapFrom(2, 0, 4096, out);
  ASSERT_TRUE(mapped.ok());
  ASSERT_EQ(*mapped, 1u);
  EXPECT_TRUE(out[0].zero());
}

}  // namespace
}  // namespace blk
