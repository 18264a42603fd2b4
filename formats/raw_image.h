// A raw disk image: a regular file or a block device whose bytes are the disk's bytes.
//
// Opening decides how the backend will do I/O on it: O_DIRECT when the file system allows it (so the guest's
// data does not sit twice in dom0's page cache), buffered where it does not (tmpfs). Knows nothing of Xen.
// Threading: immutable after Open(); the fd may be used from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/status.h"
#include "base/unique_fd.h"
#include "formats/disk_image.h"

namespace blk {

using RawOpenOptions = ImageOpenOptions;

class RawImage final : public DiskImage {
 public:
  static Result<std::unique_ptr<RawImage>> Open(const std::string& path, const RawOpenOptions& options);

  int fd() const { return fd_.get(); }
  bool is_block_device() const { return is_block_device_; }
  // One extent: guest byte x is byte x of the file.
  Result<size_t> Map(uint64_t offset, uint64_t length, std::span<ImageExtent> out) override;

 private:
  RawImage() : DiskImage(ImageFormat::kRaw) {}

  UniqueFd fd_;
  bool is_block_device_ = false;
};

}  // namespace blk
