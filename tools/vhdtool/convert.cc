// vhdtool verbs that walk an image's data: convert (raw <-> VHD, a chain to one flat image) and coalesce (a
// child into its parent).
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <functional>

#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "tools/vhdtool/commands.h"
#include "tools/vhdtool/progress.h"

namespace blk::vhdtool {
namespace {

constexpr size_t kChunk = 1 << 20;
constexpr size_t kZeroGrain = 64 * 1024;  // zero runs this long stay holes in the output

// A file is a VHD when a footer cookie sits at its end (512 or 511 bytes back) or at offset 0.
Result<bool> LooksLikeVhd(const std::string& path) {
  Result<std::unique_ptr<vhd::FileIo>> file = vhd::PosixFile::Open(path, false);
  if (!file.ok()) return file.status();
  Result<uint64_t> size = (*file)->Size();
  if (!size.ok()) return size.status();
  std::array<uint8_t, 8> cookie;
  for (uint64_t back : {uint64_t{512}, uint64_t{511}}) {
    if (*size < back) continue;
    BLK_RETURN_IF_ERROR((*file)->ReadAt(*size - back, cookie));
    if (std::memcmp(cookie.data(), "conectix", 8) == 0) return true;
  }
  if (*size >= 8) {
    BLK_RETURN_IF_ERROR((*file)->ReadAt(0, cookie));
    if (std::memcmp(cookie.data(), "conectix", 8) == 0) return true;
  }
  return false;
}

bool AllZero(std::span<const uint8_t> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool EndsWith(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

int Convert(const Args& args) {
  std::string output_format;
  bool fixed = false;
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "-O" && i + 1 < args.size()) {
      output_format = args[++i];
      if (output_format != "raw" && output_format != "vhd") return Fail("convert: -O takes raw or vhd", 2);
    } else if (args[i] == "--fixed") {
      fixed = true;
    } else if (!args[i].empty() && args[i][0] == '-') {
      return Fail("convert: unknown option " + args[i], 2);
    } else {
      positional.push_back(args[i]);
    }
  }
  if (positional.size() != 2) return Fail("usage: vhdtool convert [-O raw|vhd] [--fixed] SRC DST", 2);
  const std::string& source = positional[0];
  const std::string& target = positional[1];
  if (output_format.empty()) output_format = EndsWith(target, ".vhd") ? "vhd" : "raw";
  if (Exists(target)) return Fail("convert: " + target + " exists; remove it first");

  Result<bool> is_vhd = LooksLikeVhd(source);
  if (!is_vhd.ok()) return Fail(is_vhd.status().message());
  std::unique_ptr<vhd::VhdChain> chain;
  std::unique_ptr<vhd::FileIo> raw_source;
  uint64_t size;
  std::function<Status(uint64_t, std::span<uint8_t>)> read;
  if (*is_vhd) {
    Result<std::unique_ptr<vhd::VhdChain>> opened = vhd::VhdChain::Open(source, false);
    if (!opened.ok()) return Fail(opened.status().message());
    chain = std::move(*opened);
    size = chain->top().virtual_size();
    read = [&](uint64_t offset, std::span<uint8_t> out) { return chain->top().Read(offset, out); };
  } else {
    Result<std::unique_ptr<vhd::FileIo>> opened = vhd::PosixFile::Open(source, false);
    if (!opened.ok()) return Fail(opened.status().message());
    raw_source = std::move(*opened);
    Result<uint64_t> file_size = raw_source->Size();
    if (!file_size.ok()) return Fail(file_size.status().message());
    // A VHD holds whole sectors: a raw file's tail is padded with zeros.
    size = output_format == "vhd" ? vhd::RoundUp(*file_size, vhd::kSectorSize) : *file_size;
    uint64_t real_size = *file_size;
    read = [&, real_size](uint64_t offset, std::span<uint8_t> out) {
      uint64_t inside = offset >= real_size ? 0 : std::min<uint64_t>(out.size(), real_size - offset);
      std::memset(out.data() + inside, 0, out.size() - inside);
      return inside > 0 ? raw_source->ReadAt(offset, out.first(inside)) : Status::Ok();
    };
  }

  std::unique_ptr<vhd::FileIo> raw_target;
  std::unique_ptr<vhd::VhdChain> vhd_target;
  std::function<Status(uint64_t, std::span<const uint8_t>)> write;
  if (output_format == "raw") {
    Result<std::unique_ptr<vhd::FileIo>> opened = vhd::PosixFile::Open(target, true, true);
    if (!opened.ok()) return Fail(opened.status().message());
    raw_target = std::move(*opened);
    Status status = raw_target->Truncate(size);
    if (!status.ok()) return Fail(status.message());
    write = [&](uint64_t offset, std::span<const uint8_t> data) { return raw_target->WriteAt(offset, data); };
  } else {
    Status status =
        vhd::CreateImage(target, fixed ? vhd::CreateOptions::Fixed(size) : vhd::CreateOptions::Dynamic(size));
    if (!status.ok()) return Fail(status.message());
    Result<std::unique_ptr<vhd::VhdChain>> opened = vhd::VhdChain::Open(target, true);
    if (!opened.ok()) return Fail(opened.status().message());
    vhd_target = std::move(*opened);
    write = [&](uint64_t offset, std::span<const uint8_t> data) {
      return vhd_target->top().Write(offset, data);
    };
  }

  Progress progress("converting", true);
  std::vector<uint8_t> buffer(kChunk);
  for (uint64_t offset = 0; offset < size; offset += kChunk) {
    progress.Update(offset, size);
    std::span<uint8_t> chunk = std::span(buffer).first(std::min<uint64_t>(kChunk, size - offset));
    Status status = read(offset, chunk);
    if (!status.ok()) return Fail(status.message());
    for (size_t at = 0; at < chunk.size(); at += kZeroGrain) {
      std::span<const uint8_t> grain =
          std::span<const uint8_t>(chunk).subspan(at, std::min(kZeroGrain, chunk.size() - at));
      if (AllZero(grain)) continue;
      status = write(offset + at, grain);
      if (!status.ok()) return Fail(status.message());
    }
  }
  progress.Update(size, size);
  progress.Finish();
  Status status = raw_target ? raw_target->Sync() : vhd_target->top().Close();
  if (!status.ok()) return Fail(status.message());
  return 0;
}

int Coalesce(const Args& args) {
  if (args.size() != 1 || args[0][0] == '-') return Fail("usage: vhdtool coalesce CHILD", 2);
  Result<std::unique_ptr<vhd::VhdChain>> child_chain = vhd::VhdChain::Open(args[0], false);
  if (!child_chain.ok()) return Fail(child_chain.status().message());
  vhd::VhdImage& child = (*child_chain)->top();
  if (child.type() != vhd::DiskType::kDifferencing) return Fail(args[0] + " is not a differencing image");
  std::string parent_path = (*child_chain)->images()[1]->path();
  Result<std::unique_ptr<vhd::VhdChain>> parent_chain = vhd::VhdChain::Open(parent_path, true);
  if (!parent_chain.ok()) return Fail(parent_chain.status().message());
  vhd::VhdImage& parent = (*parent_chain)->top();
  if (child.virtual_size() > parent.virtual_size()) {
    return Fail(args[0] + " is larger than its parent " + parent_path + "; coalesce cannot grow the parent");
  }
  const uint32_t block_size = child.header().block_size;
  std::vector<uint8_t> buffer(block_size);
  uint64_t blocks = 0;
  Progress progress("coalescing", true);
  for (uint32_t block = 0; block < child.block_count(); ++block) {
    progress.Update(block, child.block_count());
    if (child.bat_entry(block) == vhd::kBatUnused) continue;
    Result<std::span<const uint8_t>> bitmap = child.Bitmap(block);
    if (!bitmap.ok()) return Fail(bitmap.status().message());
    uint64_t data_at = uint64_t{child.bat_entry(block)} * vhd::kSectorSize + child.bitmap_bytes();
    uint64_t sectors = child.block_sectors(block);
    // Copy each run of present sectors; absent ones are the parent's already.
    for (uint64_t s = 0; s < sectors;) {
      if (!vhd::TestBit(*bitmap, s)) {
        ++s;
        continue;
      }
      uint64_t run = s;
      while (run < sectors && vhd::TestBit(*bitmap, run)) ++run;
      std::span<uint8_t> data = std::span(buffer).first((run - s) * vhd::kSectorSize);
      Status status = child.file().ReadAt(data_at + s * vhd::kSectorSize, data);
      if (status.ok()) status = parent.Write(uint64_t{block} * block_size + s * vhd::kSectorSize, data);
      if (!status.ok()) return Fail(status.message());
      s = run;
    }
    ++blocks;
  }
  progress.Update(child.block_count(), child.block_count());
  progress.Finish();
  Status status = parent.Close();
  if (!status.ok()) return Fail(status.message());
  std::printf("coalesced %llu blocks of %s into %s\n", static_cast<unsigned long long>(blocks),
              args[0].c_str(), parent_path.c_str());
  return 0;
}

}  // namespace blk::vhdtool
