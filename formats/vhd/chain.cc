// VhdChain: parent discovery through locators, UUID checks, cycle and depth limits.
#include "formats/vhd/chain.h"

#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <set>
#include <utility>

namespace blk::vhd {
namespace {

bool Readable(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

Result<std::string> VhdChain::FindParent(VhdImage& image) {
  namespace fs = std::filesystem;
  fs::path child_dir = fs::absolute(image.path()).parent_path();
  std::vector<std::string> relative;
  std::vector<std::string> absolute;
  std::string problems;
  for (const ParentLocator& locator : image.header().locators) {
    if (locator.platform_code == 0) continue;
    std::vector<uint8_t> data(locator.data_length);
    BLK_RETURN_IF_ERROR(image.file().ReadAt(locator.data_offset, data));
    Result<std::string> path = DecodeLocatorPath(locator.platform_code, data);
    if (!path.ok()) {
      problems += "; " + path.status().message();
      continue;
    }
    if ((*path)[0] == '/') {
      absolute.push_back(*path);
    } else if (path->size() > 2 && (*path)[1] == ':') {
      // "C:/dir/x.vhd": a Windows drive; the part after it may still name our file.
      absolute.push_back(path->substr(2));
    } else {
      relative.push_back(*path);
    }
  }
  for (const std::string& candidate : relative) {
    std::string joined = (child_dir / candidate).lexically_normal().string();
    if (Readable(joined)) return joined;
  }
  for (const std::string& candidate : absolute) {
    if (Readable(candidate)) return candidate;
  }
  std::string name = DecodeParentName(image.header().parent_name_utf16be);
  if (!name.empty()) {
    std::string joined = (child_dir / name).lexically_normal().string();
    if (Readable(joined)) return joined;
  }
  std::string tried;
  for (const auto& list : {relative, absolute}) {
    for (const std::string& candidate : list) tried += (tried.empty() ? "" : ", ") + candidate;
  }
  return Status::NotFound(image.path() + ": parent not found (locators: " + (tried.empty() ? "none" : tried) +
                          (name.empty() ? "" : "; name: " + name) + ")" + problems);
}

Result<std::unique_ptr<VhdChain>> VhdChain::Open(const std::string& path, bool writable, WrapFile wrap) {
  auto chain = std::unique_ptr<VhdChain>(new VhdChain());
  std::set<std::pair<dev_t, ino_t>> seen;
  std::string next = path;
  for (uint64_t depth = 0;; ++depth) {
    if (depth >= kMaxChainDepth) {
      return Status::Corruption(path + ": chain deeper than " + std::to_string(kMaxChainDepth) + " images");
    }
    struct stat st;
    if (::stat(next.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + next);
    if (!seen.insert({st.st_dev, st.st_ino}).second) {
      return Status::Corruption(path + ": chain cycle: " + next + " is its own ancestor");
    }
    bool top = depth == 0;
    Result<std::unique_ptr<FileIo>> file = PosixFile::Open(next, top && writable);
    if (!file.ok()) return file.status();
    std::unique_ptr<FileIo> io = std::move(*file);
    if (top && wrap) io = wrap(std::move(io));
    Result<std::unique_ptr<VhdImage>> image = VhdImage::Open(std::move(io), top && writable);
    if (!image.ok()) return image.status();
    if (!chain->images_.empty()) {
      VhdImage& child = *chain->images_.back();
      if ((*image)->footer().uuid != child.header().parent_uuid) {
        return Status::Corruption(child.path() + ": parent " + next + " has UUID " +
                                  UuidToString((*image)->footer().uuid) + ", but the child expects " +
                                  UuidToString(child.header().parent_uuid));
      }
      child.set_parent(image->get());
    }
    chain->images_.push_back(std::move(*image));
    VhdImage& current = *chain->images_.back();
    if (current.type() != DiskType::kDifferencing) break;
    Result<std::string> parent = FindParent(current);
    if (!parent.ok()) return parent.status();
    next = *parent;
  }
  return chain;
}

std::vector<std::string> VhdChain::paths() const {
  std::vector<std::string> out;
  for (const auto& image : images_) out.push_back(image->path());
  return out;
}

}  // namespace blk::vhd
