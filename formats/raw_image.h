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

namespace blk {

struct RawOpenOptions {
  bool read_only = false;
  bool direct = true;  // try O_DIRECT; fall back to buffered I/O where the file system refuses it
  uint32_t logical_block_size = 0;  // 0: the device's (block devices) or 512 (files); else 512 or 4096
};

class RawImage {
 public:
  static Result<std::unique_ptr<RawImage>> Open(const std::string& path, const RawOpenOptions& options);

  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }
  uint64_t size_bytes() const { return size_bytes_; }
  uint32_t logical_block_size() const { return logical_block_size_; }
  uint32_t physical_block_size() const { return physical_block_size_; }
  bool read_only() const { return read_only_; }
  bool direct_io() const { return direct_io_; }
  bool is_block_device() const { return is_block_device_; }

 private:
  RawImage() = default;

  std::string path_;
  UniqueFd fd_;
  uint64_t size_bytes_ = 0;
  uint32_t logical_block_size_ = 512;
  uint32_t physical_block_size_ = 512;
  bool read_only_ = false;
  bool direct_io_ = false;
  bool is_block_device_ = false;
};

}  // namespace blk
