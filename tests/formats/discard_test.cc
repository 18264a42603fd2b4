// Tests of formats/discard.cc on real files: what a regular file offers, holes that read as zeros and give
// their blocks back, the errors of fds that cannot discard, and secure erase refused where it cannot be kept.
#include "formats/discard.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vector>

#include "base/unique_fd.h"
#include "tests/test_util.h"

namespace blk {
namespace {

TEST(DiscardTest, ARegularFileOffersDiscardInFileSystemBlocks) {
  testing::TempDir dir;
  UniqueFd fd(::open(dir.File("disk").c_str(), O_RDWR | O_CREAT, 0600));
  ASSERT_TRUE(fd.valid());
  DiscardSupport support = ProbeDiscard(fd.get());
  EXPECT_TRUE(support.supported);
  EXPECT_GE(support.granularity, 512u);
  EXPECT_EQ(support.granularity & (support.granularity - 1), 0u) << "a power of two";
}

TEST(DiscardTest, AHoleReadsAsZerosKeepsTheSizeAndFreesBlocks) {
  const char* dir_path =
      "/var/tmp";  // a disk file system: tmpfs frees pages too, but st_blocks is clearer here
  std::string path = std::string(dir_path) + "/discard_test." + std::to_string(::getpid());
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600));
  ASSERT_TRUE(fd.valid());
  std::vector<uint8_t> data(1 << 20, 0xA5);
  ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 0), ssize_t(data.size()));
  ASSERT_EQ(::fsync(fd.get()), 0);
  struct stat before, after;
  ASSERT_EQ(::fstat(fd.get(), &before), 0);
  // Unaligned ends: the partial blocks are zeroed, the whole ones freed.
  ASSERT_TRUE(Discard(fd.get(), 4096 + 512, 512 * 1024).ok());
  ASSERT_EQ(::fstat(fd.get(), &after), 0);
  EXPECT_EQ(after.st_size, before.st_size);
  EXPECT_LT(after.st_blocks, before.st_blocks);
  std::vector<uint8_t> back(data.size());
  ASSERT_EQ(::pread(fd.get(), back.data(), back.size(), 0), ssize_t(back.size()));
  for (size_t i = 0; i < back.size(); ++i) {
    bool in_hole = i >= 4096 + 512 && i < 4096 + 512 + 512 * 1024;
    ASSERT_EQ(back[i], in_hole ? 0 : 0xA5) << "byte " << i;
  }
  EXPECT_TRUE(Discard(fd.get(), 0, 0).ok());  // nothing to do
  ::unlink(path.c_str());
}

TEST(DiscardTest, FdsThatCannotDiscardSaySo) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  EXPECT_FALSE(ProbeDiscard(read_end.get()).supported);
  Status status = Discard(read_end.get(), 0, 4096);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("discard"), std::string::npos) << status.ToString();
  EXPECT_FALSE(ProbeDiscard(-1).supported);
  UniqueFd read_only(::open("/proc/self/status", O_RDONLY));
  EXPECT_FALSE(Discard(read_only.get(), 0, 4096).ok());
}

// Hole punching leaves the old blocks wherever the file system put them: a file never takes a secure erase,
// and asking changes nothing in it.
TEST(DiscardTest, SecureEraseRefusesFilesAndLeavesThemAlone) {
  testing::TempDir dir;
  UniqueFd fd(::open(dir.File("disk").c_str(), O_RDWR | O_CREAT, 0600));
  ASSERT_TRUE(fd.valid());
  std::vector<uint8_t> data(64 * 1024, 0x5A);
  ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 0), ssize_t(data.size()));
  for (uint64_t length : {uint64_t{4096}, uint64_t{0}}) {
    Status status = SecureErase(fd.get(), 0, length);
    EXPECT_EQ(status.code(), Status::Code::kNotSupported) << status.ToString();
    EXPECT_NE(status.message().find("block device"), std::string::npos) << status.ToString();
  }
  std::vector<uint8_t> back(data.size());
  ASSERT_EQ(::pread(fd.get(), back.data(), back.size(), 0), ssize_t(back.size()));
  EXPECT_EQ(back, data);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  EXPECT_EQ(SecureErase(read_end.get(), 0, 4096).code(), Status::Code::kNotSupported);
  Status closed = SecureErase(-1, 0, 4096);
  EXPECT_FALSE(closed.ok());
  EXPECT_NE(closed.code(), Status::Code::kNotSupported) << "a bad fd is an error, not a missing feature";
}

// A loop device cannot erase securely: its kernel driver says so, and the data stays as it was.
TEST(DiscardTest, SecureEraseOnALoopDeviceIsRefusedByTheKernel) {
  testing::TempDir dir;
  std::string backing = dir.File("loop.img");
  {
    UniqueFd file(::open(backing.c_str(), O_RDWR | O_CREAT, 0600));
    ASSERT_TRUE(file.valid());
    std::vector<uint8_t> data(1 << 20, 0xC3);
    ASSERT_EQ(::pwrite(file.get(), data.data(), data.size(), 0), ssize_t(data.size()));
  }
  testing::LoopDevice loop(backing);
  if (loop.path().empty()) GTEST_SKIP() << "no loop device can be set up here";
  UniqueFd fd(::open(loop.path().c_str(), O_RDWR));
  ASSERT_TRUE(fd.valid());
  Status status = SecureErase(fd.get(), 0, 64 * 1024);
  EXPECT_EQ(status.code(), Status::Code::kNotSupported) << status.ToString();
  EXPECT_NE(status.message().find("BLKSECDISCARD"), std::string::npos) << status.ToString();
  EXPECT_TRUE(SecureErase(fd.get(), 0, 0).ok()) << "nothing to erase asks the kernel nothing";
  std::vector<uint8_t> back(64 * 1024);
  ASSERT_EQ(::pread(fd.get(), back.data(), back.size(), 0), ssize_t(back.size()));
  EXPECT_EQ(back, std::vector<uint8_t>(back.size(), 0xC3));
}

}  // namespace
}  // namespace blk
