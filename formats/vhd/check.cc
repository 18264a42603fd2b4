// CheckImage: open the chain (which validates its structure), then compare what Open trusts without reading.
#include "formats/vhd/check.h"

#include <algorithm>
#include <array>

#include "formats/vhd/chain.h"

namespace blk::vhd {
namespace {

void CheckFooterCopy(VhdImage& image, CheckReport* report) {
  std::array<uint8_t, kFooterSize> copy_bytes;
  std::array<uint8_t, kFooterSize> footer_bytes;
  Status status = image.file().ReadAt(0, copy_bytes);
  if (!status.ok()) {
    report->problems.push_back(status.message());
    return;
  }
  Result<Footer> copy = DecodeFooter(copy_bytes);
  if (!copy.ok()) {
    report->problems.push_back(image.path() + ": footer copy at offset 0: " + copy.status().message());
    return;
  }
  // Compare encodings: every field, not only the ones Open looks at.
  EncodeFooter(*copy, copy_bytes);
  EncodeFooter(image.footer(), footer_bytes);
  if (copy_bytes != footer_bytes) {
    report->problems.push_back(image.path() +
                               ": the footer copy at offset 0 differs from the footer at the end");
  }
}

void CheckBlocks(VhdImage& image, CheckReport* report,
                 const std::function<void(uint64_t, uint64_t)>& progress) {
  std::vector<uint8_t> data;
  for (uint32_t block = 0; block < image.block_count(); ++block) {
    if (progress) progress(block, image.block_count());
    uint32_t sector = image.bat_entry(block);
    if (sector == kBatUnused) {
      if (image.BatmapBit(block)) {
        report->problems.push_back(image.path() + ": block " + std::to_string(block) +
                                   " is marked full in the batmap but not allocated");
      }
      continue;
    }
    ++report->blocks_checked;
    Result<std::span<const uint8_t>> bitmap = image.Bitmap(block);
    if (!bitmap.ok()) {
      report->problems.push_back(bitmap.status().message());
      continue;
    }
    uint64_t sectors = image.block_sectors(block);
    bool full = AllBitsSet(*bitmap, sectors);
    if (image.BatmapBit(block) && !full) {
      report->problems.push_back(image.path() + ": block " + std::to_string(block) +
                                 " is marked full in the batmap but its bitmap has clear bits");
    }
    if (image.type() != DiskType::kDynamic || full) continue;
    data.resize(sectors * kSectorSize);  // a hostile header may claim 256 MiB blocks for a tiny disk
    Status status = image.file().ReadAt(uint64_t{sector} * kSectorSize + image.bitmap_bytes(),
                                        std::span(data).first(sectors * kSectorSize));
    if (!status.ok()) {
      report->problems.push_back(status.message());
      continue;
    }
    for (uint64_t s = 0; s < sectors; ++s) {
      if (TestBit(*bitmap, s)) continue;
      auto first = data.begin() + static_cast<ptrdiff_t>(s * kSectorSize);
      if (std::any_of(first, first + kSectorSize, [](uint8_t byte) { return byte != 0; })) {
        report->problems.push_back(image.path() + ": block " + std::to_string(block) + " sector " +
                                   std::to_string(s) +
                                   ": bitmap bit clear but the data is not zero (qemu would read it)");
        break;
      }
    }
  }
  if (progress) progress(image.block_count(), image.block_count());
}

}  // namespace

CheckReport CheckImage(const std::string& path, const std::function<void(uint64_t, uint64_t)>& progress) {
  CheckReport report;
  Result<std::unique_ptr<VhdChain>> chain = VhdChain::Open(path, false);
  if (!chain.ok()) {
    report.problems.push_back(chain.status().message());
    return report;
  }
  for (const auto& image : (*chain)->images()) {
    for (const std::string& note : image->notes()) report.notes.push_back(image->path() + ": " + note);
  }
  for (const auto& image : (*chain)->images()) {
    if (image->type() == DiskType::kFixed) continue;
    CheckFooterCopy(*image, &report);
    CheckBlocks(*image, &report, progress);
  }
  return report;
}

}  // namespace blk::vhd
