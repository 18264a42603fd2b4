// RawImage: open, size and sector sizes of a raw file or block device.
#include "formats/raw_image.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cerrno>

namespace blk {

Result<std::unique_ptr<RawImage>> RawImage::Open(const std::string& path, const RawOpenOptions& options) {
  if (options.logical_block_size != 0 && options.logical_block_size != 512 &&
      options.logical_block_size != 4096) {
    return Status::InvalidArgument(path + ": logical block size " +
                                   std::to_string(options.logical_block_size) + " is neither 512 nor 4096");
  }
  int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  std::unique_ptr<RawImage> image(new RawImage());
  image->path_ = path;
  image->read_only_ = options.read_only;
  if (options.direct) {
    image->fd_.Reset(::open(path.c_str(), flags | O_DIRECT));
    // tmpfs and some FUSE file systems refuse O_DIRECT with EINVAL; buffered I/O still works there.
    if (image->fd_.valid())
      image->direct_io_ = true;
    else if (errno != EINVAL)
      return Status::FromErrno(errno, "open " + path);
  }
  if (!image->fd_.valid()) {
    image->fd_.Reset(::open(path.c_str(), flags));
    if (!image->fd_.valid()) return Status::FromErrno(errno, "open " + path);
  }
  struct stat st;
  if (::fstat(image->fd_.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (S_ISBLK(st.st_mode)) {
    image->is_block_device_ = true;
    uint64_t bytes = 0;
    if (::ioctl(image->fd_.get(), BLKGETSIZE64, &bytes) != 0)
      return Status::FromErrno(errno, "BLKGETSIZE64 " + path);
    image->size_bytes_ = bytes;
    int logical = 512;
    unsigned int physical = 512;
    if (::ioctl(image->fd_.get(), BLKSSZGET, &logical) != 0)
      return Status::FromErrno(errno, "BLKSSZGET " + path);
    if (::ioctl(image->fd_.get(), BLKPBSZGET, &physical) != 0) physical = logical;
    image->logical_block_size_ = static_cast<uint32_t>(logical);
    image->physical_block_size_ = physical;
    if (options.logical_block_size != 0 && options.logical_block_size < image->logical_block_size_) {
      return Status::InvalidArgument(path + ": cannot present " + std::to_string(options.logical_block_size) +
                                     "-byte sectors on a device with " + std::to_string(logical) +
                                     "-byte sectors");
    }
  } else if (S_ISREG(st.st_mode)) {
    image->size_bytes_ = static_cast<uint64_t>(st.st_size);
    image->physical_block_size_ = st.st_blksize >= 4096 ? 4096 : 512;
  } else {
    return Status::InvalidArgument(path + ": neither a regular file nor a block device");
  }
  if (options.logical_block_size != 0) image->logical_block_size_ = options.logical_block_size;
  if (image->physical_block_size_ < image->logical_block_size_) {
    image->physical_block_size_ = image->logical_block_size_;
  }
  if (image->size_bytes_ == 0 || image->size_bytes_ % image->logical_block_size_ != 0) {
    return Status::InvalidArgument(path + ": size " + std::to_string(image->size_bytes_) +
                                   " is not a positive multiple of the " +
                                   std::to_string(image->logical_block_size_) + "-byte sector");
  }
  return image;
}

Result<size_t> RawImage::Map(uint64_t offset, uint64_t length, std::span<ImageExtent> out) {
  if (out.empty() || length == 0) return size_t{0};
  out[0] = {fd_.get(), offset, length};
  return size_t{1};
}

}  // namespace blk
