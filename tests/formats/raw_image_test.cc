// Tests of formats/raw_image.cc on real files.
#include "formats/raw_image.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace blk {
namespace {

class RawImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/var/tmp/raw_image_test.XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string MakeFile(const std::string& name, off_t size) {
    std::string path = dir_ + "/" + name;
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, size), 0);
    ::close(fd);
    return path;
  }
  std::string dir_;
};

TEST_F(RawImageTest, OpensAFileWithItsSize) {
  auto image = RawImage::Open(MakeFile("disk.img", 1 << 20), {});
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ((*image)->size_bytes(), 1u << 20);
  EXPECT_EQ((*image)->logical_block_size(), 512u);
  EXPECT_FALSE((*image)->read_only());
  EXPECT_FALSE((*image)->is_block_device());
}

TEST_F(RawImageTest, PresentsFourKilobyteSectorsWhenAsked) {
  RawOpenOptions options;
  options.logical_block_size = 4096;
  auto image = RawImage::Open(MakeFile("disk.img", 1 << 20), options);
  ASSERT_TRUE(image.ok());
  EXPECT_EQ((*image)->logical_block_size(), 4096u);
  EXPECT_GE((*image)->physical_block_size(), 4096u);
}

// tmpfs refused O_DIRECT before Linux 6.6 and accepts it since; either way the image must open, and use
// O_DIRECT exactly when the file system takes it.
TEST_F(RawImageTest, UsesDirectIoExactlyWhereTheFileSystemAllowsIt) {
  for (const std::string& dir : {std::string("/dev/shm"), dir_}) {
    std::string path = dir + "/raw_image_test." + std::to_string(::getpid());
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 65536), 0);
    ::close(fd);
    int probe = ::open(path.c_str(), O_RDWR | O_DIRECT);
    bool file_system_allows_direct = probe >= 0;
    if (probe >= 0) ::close(probe);
    auto image = RawImage::Open(path, {});
    RawOpenOptions buffered;
    buffered.direct = false;
    auto buffered_image = RawImage::Open(path, buffered);
    ::unlink(path.c_str());
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    EXPECT_EQ((*image)->direct_io(), file_system_allows_direct) << dir;
    ASSERT_TRUE(buffered_image.ok());
    EXPECT_FALSE((*buffered_image)->direct_io());
  }
}

TEST_F(RawImageTest, RejectsWhatCannotBeADisk) {
  auto missing = RawImage::Open(dir_ + "/missing.img", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
  EXPECT_NE(missing.status().ToString().find("missing.img"), std::string::npos);

  auto empty = RawImage::Open(MakeFile("empty.img", 0), {});
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().ToString().find("positive multiple"), std::string::npos);

  auto odd = RawImage::Open(MakeFile("odd.img", 1000), {});
  EXPECT_FALSE(odd.ok());

  RawOpenOptions four_k;
  four_k.logical_block_size = 4096;
  EXPECT_FALSE(RawImage::Open(MakeFile("half.img", 6144), four_k).ok());

  RawOpenOptions weird;
  weird.logical_block_size = 1024;
  auto bad_size = RawImage::Open(MakeFile("ok.img", 8192), weird);
  ASSERT_FALSE(bad_size.ok());
  EXPECT_NE(bad_size.status().ToString().find("neither 512 nor 4096"), std::string::npos);

  auto directory = RawImage::Open(dir_, {});
  EXPECT_FALSE(directory.ok());
}

TEST_F(RawImageTest, ReadOnlyOpenRefusesWrites) {
  RawOpenOptions options;
  options.read_only = true;
  auto image = RawImage::Open(MakeFile("ro.img", 8192), options);
  ASSERT_TRUE(image.ok());
  EXPECT_TRUE((*image)->read_only());
  char byte = 0;
  EXPECT_LT(::pwrite((*image)->fd(), &byte, 1, 0), 0);
}

// A real block device: a loop device over a file, once with 512-byte and once with 4096-byte logical sectors.
TEST_F(RawImageTest, OpensABlockDeviceWithItsSizeAndSectorSize) {
  std::string backing = MakeFile("loop.img", 8 << 20);
  for (unsigned sector : {512u, 4096u}) {
    std::string command = "losetup --find --show --sector-size " + std::to_string(sector) + " " + backing;
    FILE* pipe = ::popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    char device[64] = {};
    bool got = std::fgets(device, sizeof(device), pipe) != nullptr;
    int rc = ::pclose(pipe);
    if (!got || rc != 0) GTEST_SKIP() << "no loop device can be set up here (" << command << " failed)";
    std::string path(device);
    path.erase(path.find_last_not_of('\n') + 1);
    auto image = RawImage::Open(path, {});
    RawOpenOptions smaller;
    smaller.logical_block_size = 512;
    auto presented_smaller = RawImage::Open(path, smaller);
    std::system(("losetup -d " + path).c_str());
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    EXPECT_TRUE((*image)->is_block_device());
    EXPECT_EQ((*image)->size_bytes(), 8u << 20);
    EXPECT_EQ((*image)->logical_block_size(), sector);
    EXPECT_TRUE((*image)->direct_io());
    // A device with 4096-byte sectors cannot pretend to have 512-byte ones.
    EXPECT_EQ(presented_smaller.ok(), sector == 512) << path;
  }
}

}  // namespace
}  // namespace blk
