// Checking a VHD and every image of its chain for everything Open refuses, plus what Open does not read: the
// footer copy, the batmap against the bitmaps, and, in dynamic disks, sectors whose bitmap bit is clear but
// whose data is not zero (qemu, which ignores bitmaps, would read that data).
//
// Threading: stateless; one call per image.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/status.h"

namespace blk::vhd {

struct CheckReport {
  std::vector<std::string> problems;  // one line each; the image is damaged if any
  std::vector<std::string> notes;     // worth knowing, not damage (a notice logged while opening)
  uint64_t blocks_checked = 0;
  bool ok() const { return problems.empty(); }
};

// `progress(done, total)` is called as blocks are checked (vhdtool draws its bar with it); may be empty.
CheckReport CheckImage(const std::string& path,
                       const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

}  // namespace blk::vhd
