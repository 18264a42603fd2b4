// Tests of formats/discard.cc on real files: what a regular file offers, holes that read as zeros and give
// their blocks back, and the errors of fds that cannot discard.
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

}  // namespace
}  // namespace blk
