// Hole punching, BLKDISCARD and BLKSECDISCARD.
#include "formats/discard.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <fstream>
#include <string>

namespace blk {

namespace {

// A number from the block device's queue directory (a partition's is its disk's), or 0.
uint64_t QueueValue(dev_t device, const char* name) {
  std::string base = "/sys/dev/block/" + std::to_string(major(device)) + ":" + std::to_string(minor(device));
  for (const std::string& queue : {base + "/queue/", base + "/../queue/"}) {
    std::ifstream file(queue + name);
    uint64_t value = 0;
    if (file >> value) return value;
  }
  return 0;
}

bool IsPowerOfTwo(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

}  // namespace

DiscardSupport ProbeDiscard(int fd) {
  DiscardSupport support;
  struct stat st;
  if (::fstat(fd, &st) != 0) return support;
  if (S_ISREG(st.st_mode)) {
    support.supported = true;
    support.granularity = IsPowerOfTwo(st.st_blksize) ? static_cast<uint32_t>(st.st_blksize) : 4096;
  } else if (S_ISBLK(st.st_mode)) {
    support.supported = QueueValue(st.st_rdev, "discard_max_bytes") > 0;
    uint64_t granularity = QueueValue(st.st_rdev, "discard_granularity");
    support.granularity =
        IsPowerOfTwo(granularity) && granularity <= (1u << 30) ? static_cast<uint32_t>(granularity) : 4096;
  }
  return support;
}

Status Discard(int fd, uint64_t offset, uint64_t length) {
  if (length == 0) return Status::Ok();
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "discard: fstat");
  int result;
  if (S_ISBLK(st.st_mode)) {
    uint64_t range[2] = {offset, length};
    result = ::ioctl(fd, BLKDISCARD, range);
  } else {
    result = ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                         static_cast<off_t>(length));
  }
  if (result == 0) return Status::Ok();
  int error = errno;
  if (error == EOPNOTSUPP || error == ENOTTY)
    return Status::NotSupported("the storage does not take discards");
  return Status::FromErrno(error, "discard");
}

Status SecureErase(int fd, uint64_t offset, uint64_t length) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "secure erase: fstat");
  // A file system may keep the old blocks anywhere (copies, journals, snapshots): never a promise.
  if (!S_ISBLK(st.st_mode)) return Status::NotSupported("secure erase needs a block device");
  if (length == 0) return Status::Ok();
  uint64_t range[2] = {offset, length};
  if (::ioctl(fd, BLKSECDISCARD, range) == 0) return Status::Ok();
  int error = errno;
  if (error == EOPNOTSUPP || error == ENOTTY)
    return Status::NotSupported("the block device cannot erase securely (BLKSECDISCARD refused)");
  return Status::FromErrno(error, "secure erase");
}

}  // namespace blk
