// A VHD and the parents it differences against, opened top-down: parent locators are tried relative to the
// child first, then as absolute paths, then the header's parent name next to the child. Every parent must
// carry the UUID its child recorded; cycles and chains deeper than kMaxChainDepth are refused.
//
// Threading: one thread at a time.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "formats/vhd/image.h"

namespace blk::vhd {

class VhdChain {
 public:
  // Optional hook to wrap the top image's file (the crash tests inject faults there).
  using WrapFile = std::function<std::unique_ptr<FileIo>(std::unique_ptr<FileIo>)>;
  // Opens `path` (writable if asked; parents are always read-only) and every parent below it.
  static Result<std::unique_ptr<VhdChain>> Open(const std::string& path, bool writable,
                                                WrapFile wrap = nullptr);

  VhdImage& top() { return *images_.front(); }
  // images()[0] is the top; the last is the base (fixed or dynamic).
  const std::vector<std::unique_ptr<VhdImage>>& images() const { return images_; }
  std::vector<std::string> paths() const;

  // The parent path `image`'s locators lead to, without opening it (used by `info`).
  static Result<std::string> FindParent(VhdImage& image);

 private:
  std::vector<std::unique_ptr<VhdImage>> images_;
};

}  // namespace blk::vhd
