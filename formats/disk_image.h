// A disk image as the backend serves it: its geometry, and where each guest byte lives (a file and an offset,
// or nothing: zeros). Raw images and VHD chains implement it; OpenDiskImage picks the format.
//
// The request pipeline asks format() once and keeps raw's datapath free of any per-request call: a raw image
// is its own single extent (raw_fd()). Other formats answer Map() per request.
// Knows nothing of Xen. Threading: geometry is immutable after opening; Map() and everything a format adds
// run on one thread at a time (the worker that serves the image).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "base/status.h"

namespace blk {

enum class ImageFormat : uint8_t { kRaw, kVhd };
const char* ImageFormatName(ImageFormat format);

// A run of guest bytes: `length` bytes at `file_offset` of `fd`, or (fd < 0) bytes that read as zeros.
struct ImageExtent {
  int fd;
  uint64_t file_offset;
  uint64_t length;
  bool zero() const { return fd < 0; }
};

struct ImageOpenOptions {
  bool read_only = false;
  bool direct = true;  // try O_DIRECT; fall back to buffered I/O where the file system refuses it
  uint32_t logical_block_size = 0;  // 0: the device's (block devices) or 512 (files); else 512 or 4096
};

class DiskImage {
 public:
  virtual ~DiskImage() = default;
  DiskImage(const DiskImage&) = delete;
  DiskImage& operator=(const DiskImage&) = delete;

  ImageFormat format() const { return format_; }
  const std::string& path() const { return path_; }
  uint64_t size_bytes() const { return size_bytes_; }
  uint32_t logical_block_size() const { return logical_block_size_; }
  uint32_t physical_block_size() const { return physical_block_size_; }
  bool read_only() const { return read_only_; }
  bool direct_io() const { return direct_io_; }

  // Fills `out` with the extents of guest bytes [offset, offset + length) in order and returns how many; they
  // cover a prefix of the range (all of it unless `out` filled up). No allocation. Errors only where the
  // format must read metadata first (a VHD bitmap) and that read failed.
  virtual Result<size_t> Map(uint64_t offset, uint64_t length, std::span<ImageExtent> out) = 0;

 protected:
  explicit DiskImage(ImageFormat format) : format_(format) {}

  ImageFormat format_;
  std::string path_;
  uint64_t size_bytes_ = 0;
  uint32_t logical_block_size_ = 512;
  uint32_t physical_block_size_ = 512;
  bool read_only_ = false;
  bool direct_io_ = false;
};

// How the caller names the format: explicitly (a "raw:"/"aio:" or "vhd:" prefix) or not at all (a bare path,
// whose own footer decides).
enum class ImageFormatHint : uint8_t { kRaw, kVhd, kProbe };

// Opens `path`. kProbe: a file that ends in a valid VHD footer is a VHD, anything else raw. A probed VHD may
// not be a differencing disk: the guest owns a raw disk's bytes, and a footer it wrote there must not make
// the backend open host files its parent locators name.
Result<std::unique_ptr<DiskImage>> OpenDiskImage(const std::string& path, ImageFormatHint hint,
                                                 const ImageOpenOptions& options);

}  // namespace blk
