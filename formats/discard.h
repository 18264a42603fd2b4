// Discard on an image's file descriptor: punching holes in a regular file (the range reads back as zeros and
// its blocks go back to the file system) or BLKDISCARD on a block device; secure erase (BLKSECDISCARD) on a
// block device. Knows nothing of Xen.
//
// Threading: plain functions over an fd; the caller serialises against its own I/O as it needs to.
#pragma once

#include <cstdint>

#include "base/status.h"

namespace blk {

struct DiscardSupport {
  bool supported = false;
  // The unit the storage frees in, in bytes (what blkif calls discard-granularity); a power of two.
  uint32_t granularity = 0;
};

// What discarding on `fd` can do. A regular file is assumed to take hole punching (its file system may still
// refuse: Discard then says kNotSupported); a block device is asked through sysfs.
DiscardSupport ProbeDiscard(int fd);

// Discards `length` bytes at `offset`. kNotSupported where the storage refuses the operation itself.
Status Discard(int fd, uint64_t offset, uint64_t length);

// Discards `length` bytes at `offset` so that the old data cannot be recovered (BLKSECDISCARD). Only a block
// device can promise that, and only the operator can know whether a given one keeps the promise: user space
// has no harmless way to ask. kNotSupported for anything but a block device, and where its kernel driver
// refuses the operation.
Status SecureErase(int fd, uint64_t offset, uint64_t length);

}  // namespace blk
