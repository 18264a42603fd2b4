// Creating VHD files: fixed, dynamic (optionally with tapdisk's batmap) and differencing children of a
// parent.
//
// Threading: stateless; each call works on its own files.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "base/status.h"
#include "formats/vhd/format.h"

namespace blk::vhd {

struct CreateOptions {
  DiskType type = DiskType::kDynamic;
  uint64_t size = 0;               // bytes, a multiple of 512 (ignored for differencing: the parent's size)
  uint32_t block_size = 2u << 20;  // dynamic and differencing
  bool batmap = true;              // dynamic and differencing: carry tapdisk's batmap (creator version 1.3)
  std::string parent;              // differencing: the parent's path

  static CreateOptions Fixed(uint64_t size) { return Make(DiskType::kFixed, size, 2u << 20, ""); }
  static CreateOptions Dynamic(uint64_t size, uint32_t block_size = 2u << 20) {
    return Make(DiskType::kDynamic, size, block_size, "");
  }
  static CreateOptions Differencing(std::string parent) {
    return Make(DiskType::kDifferencing, 0, 2u << 20, parent);
  }

 private:
  static CreateOptions Make(DiskType type, uint64_t size, uint32_t block_size, std::string parent) {
    CreateOptions options;
    options.type = type;
    options.size = size;
    options.block_size = block_size;
    options.parent = std::move(parent);
    return options;
  }
};

// Creates `path` (replacing any file there). Differencing images get W2ru (relative), W2ku and MacX locators.
// The creator is "tap\0": qemu 7.2 reads current_size only for a short list of creators (tap among them) and
// the geometry for all others, and XenServer's tools expect a batmap exactly when a "tap" image's version is
// >= 1.2.
Status CreateImage(const std::string& path, const CreateOptions& options);

}  // namespace blk::vhd
