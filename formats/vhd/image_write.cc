// VhdImage writes: planning a write inside one block and carrying the plan out in tapdisk's durable order.
#include <algorithm>
#include <cstring>

#include "formats/vhd/image.h"

namespace blk::vhd {
namespace {

// New blocks are placed so that their data (behind the bitmap) starts on a 4 KiB boundary, ready for
// O_DIRECT.
constexpr uint64_t kDataAlignment = 4096;

}  // namespace

Result<BlockWritePlan> VhdImage::PlanWrite(uint64_t offset, uint64_t length) const {
  BlockWritePlan plan{BlockWritePlan::Action::kInPlace, 0, offset, length, offset, 0, 0};
  if (type() == DiskType::kFixed) return plan;
  plan.block = static_cast<uint32_t>(offset / header_.block_size);
  uint64_t in_block = offset % header_.block_size;
  if (in_block + length > header_.block_size) {
    return Status::InvalidArgument(path() + ": a planned write must stay inside one block");
  }
  uint32_t sector = bat_entry(plan.block);
  if (sector == kBatUnused) {
    plan.action = BlockWritePlan::Action::kAllocate;
    plan.block_offset = RoundUp(footer_offset_ + bitmap_bytes_, kDataAlignment) - bitmap_bytes_;
    if (plan.block_offset / kSectorSize >= kBatUnused) {
      return Status::Error(Status::Code::kNoSpace,
                           path() + ": the file has grown past what a BAT entry can address");
    }
    plan.new_footer_offset = plan.block_offset + bitmap_bytes_ + header_.block_size;
    plan.data_file_offset = plan.block_offset + bitmap_bytes_ + in_block;
    return plan;
  }
  plan.data_file_offset = uint64_t{sector} * kSectorSize + bitmap_bytes_ + in_block;
  if (BatmapBit(plan.block)) return plan;
  auto cached = bitmaps_.find(plan.block);
  if (cached == bitmaps_.end()) {
    return Status::InvalidArgument(path() + ": block " + std::to_string(plan.block) +
                                   "'s bitmap is not loaded");
  }
  if (cached->second.full) return plan;
  for (uint64_t s = in_block / kSectorSize; s < RoundUp(in_block + length, kSectorSize) / kSectorSize; ++s) {
    if (!TestBit(cached->second.bits, s)) {
      plan.action = BlockWritePlan::Action::kWriteThenBitmap;
      break;
    }
  }
  return plan;
}

Status VhdImage::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (!writable_) return Status::Error(Status::Code::kPermissionDenied, path() + ": opened read-only");
  if (offset % kSectorSize != 0 || data.size() % kSectorSize != 0) {
    return Status::InvalidArgument(path() + ": writes must be whole sectors");
  }
  if (offset > virtual_size_ || data.size() > virtual_size_ - offset) {
    return Status::InvalidArgument(path() + ": write of " + std::to_string(data.size()) + " bytes at " +
                                   std::to_string(offset) + " is beyond the virtual size " +
                                   std::to_string(virtual_size_));
  }
  while (!data.empty()) {
    uint64_t run = data.size();
    if (type() != DiskType::kFixed) {
      run = std::min<uint64_t>(run, header_.block_size - offset % header_.block_size);
    }
    BLK_RETURN_IF_ERROR(WriteInBlock(offset, data.first(run)));
    offset += run;
    data = data.subspan(run);
  }
  return Status::Ok();
}

Status VhdImage::WriteInBlock(uint64_t offset, std::span<const uint8_t> data) {
  if (type() != DiskType::kFixed) {
    auto block = static_cast<uint32_t>(offset / header_.block_size);
    if (bat_entry(block) != kBatUnused && !BatmapBit(block)) BLK_RETURN_IF_ERROR(LoadBitmap(block));
  }
  Result<BlockWritePlan> plan = PlanWrite(offset, data.size());
  if (!plan.ok()) return plan.status();
  switch (plan->action) {
    case BlockWritePlan::Action::kInPlace:
      return file_->WriteAt(plan->data_file_offset, data);
    case BlockWritePlan::Action::kAllocate:
      return Allocate(*plan, data);
    case BlockWritePlan::Action::kWriteThenBitmap:
      break;
  }
  // The bits may only claim data that is already durable.
  BLK_RETURN_IF_ERROR(file_->WriteAt(plan->data_file_offset, data));
  BLK_RETURN_IF_ERROR(file_->Sync());
  CachedBitmap& cached = bitmaps_.at(plan->block);
  uint64_t first = offset % header_.block_size / kSectorSize;
  SetBits(cached.bits, first, data.size() / kSectorSize);
  uint64_t bitmap_offset = uint64_t{bat_entry(plan->block)} * kSectorSize;
  uint64_t sector = first / 8 / kSectorSize;
  uint64_t last = (first + data.size() / kSectorSize - 1) / 8 / kSectorSize;
  BLK_RETURN_IF_ERROR(file_->WriteAt(bitmap_offset + sector * kSectorSize,
                                     std::span<const uint8_t>(cached.bits)
                                         .subspan(sector * kSectorSize, (last - sector + 1) * kSectorSize)));
  BLK_RETURN_IF_ERROR(file_->Sync());
  cached.full = AllBitsSet(cached.bits, block_sectors(plan->block));
  if (cached.full) {
    cached.bits = {};
    BLK_RETURN_IF_ERROR(SetBatmapBit(plan->block));
  }
  return Status::Ok();
}

bool VhdImage::NeedsParentFill(const BlockWritePlan& plan) const {
  return type() == DiskType::kDifferencing && plan.length < block_sectors(plan.block) * kSectorSize;
}

void VhdImage::BuildNewBlock(const BlockWritePlan& plan, std::span<const uint8_t> data,
                             std::span<uint8_t> block) const {
  std::span<uint8_t> bitmap = block.first(bitmap_bytes_);
  std::span<uint8_t> contents = block.subspan(bitmap_bytes_);
  const uint64_t sectors = block_sectors(plan.block);
  std::fill(bitmap.begin(), bitmap.end(), 0);
  SetBits(bitmap, 0, sectors);
  // Without a parent the block is zeros around the guest's data (qemu reads a dynamic block's data regardless
  // of its bitmap); with one, the caller has put the parent's data there.
  if (!NeedsParentFill(plan)) std::fill(contents.begin(), contents.end(), 0);
  std::fill(contents.begin() + static_cast<ptrdiff_t>(sectors * kSectorSize), contents.end(), 0);
  uint64_t in_block = plan.guest_offset - uint64_t{plan.block} * header_.block_size;
  std::copy(data.begin(), data.end(), contents.begin() + static_cast<ptrdiff_t>(in_block));
}

std::array<uint8_t, kFooterSize> VhdImage::EncodedFooter() const {
  std::array<uint8_t, kFooterSize> footer;
  EncodeFooter(footer_, footer);
  return footer;
}

uint64_t VhdImage::BatSectorOffset(const BlockWritePlan& plan) const {
  return header_.table_offset + uint64_t{plan.block} * 4 / kSectorSize * kSectorSize;
}

std::array<uint8_t, kSectorSize> VhdImage::BatSector(const BlockWritePlan& plan) const {
  std::array<uint8_t, kSectorSize> sector;
  uint64_t first = uint64_t{plan.block} * 4 / kSectorSize * kSectorSize;
  std::copy_n(bat_.begin() + static_cast<ptrdiff_t>(first), kSectorSize, sector.begin());
  SetBatEntry(sector, static_cast<uint32_t>(uint64_t{plan.block} * 4 % kSectorSize / 4),
              static_cast<uint32_t>(plan.block_offset / kSectorSize));
  return sector;
}

void VhdImage::CommitAllocation(const BlockWritePlan& plan) {
  SetBatEntry(bat_, plan.block, static_cast<uint32_t>(plan.block_offset / kSectorSize));
  footer_offset_ = std::max(footer_offset_, plan.new_footer_offset);
  bitmaps_[plan.block] = CachedBitmap{{}, true};
}

void VhdImage::AbandonAllocation(const BlockWritePlan& plan) {
  footer_offset_ = std::max(footer_offset_, plan.new_footer_offset);
}

VhdImage::BitmapSectors VhdImage::MarkPresent(const BlockWritePlan& plan) {
  CachedBitmap& cached = bitmaps_.at(plan.block);
  uint64_t in_block = plan.guest_offset % header_.block_size;
  uint64_t first = in_block / kSectorSize;
  uint64_t count = RoundUp(in_block + plan.length, kSectorSize) / kSectorSize - first;
  SetBits(cached.bits, first, count);
  // The bits stay even when the block is now full: the engine writes from them.
  cached.full = AllBitsSet(cached.bits, block_sectors(plan.block));
  uint64_t sector = first / 8 / kSectorSize;
  uint64_t last = (first + count - 1) / 8 / kSectorSize;
  return {
      uint64_t{bat_entry(plan.block)} * kSectorSize + sector * kSectorSize,
      std::span<const uint8_t>(cached.bits).subspan(sector * kSectorSize, (last - sector + 1) * kSectorSize)};
}

Status VhdImage::Allocate(const BlockWritePlan& plan, std::span<const uint8_t> data) {
  std::vector<uint8_t> block(new_block_bytes());
  if (NeedsParentFill(plan)) {
    uint64_t block_start = uint64_t{plan.block} * header_.block_size;
    BLK_RETURN_IF_ERROR(ReadParent(
        block_start, std::span(block).subspan(bitmap_bytes_, block_sectors(plan.block) * kSectorSize)));
  }
  BuildNewBlock(plan, data, block);
  // (1) The footer past the new block, then the block itself; neither is reachable until the BAT says so.
  BLK_RETURN_IF_ERROR(file_->WriteAt(plan.new_footer_offset, EncodedFooter()));
  BLK_RETURN_IF_ERROR(file_->WriteAt(plan.block_offset, block));
  BLK_RETURN_IF_ERROR(file_->Sync());
  // (2) The one BAT sector holding the entry.
  BLK_RETURN_IF_ERROR(file_->WriteAt(BatSectorOffset(plan), BatSector(plan)));
  BLK_RETURN_IF_ERROR(file_->Sync());
  CommitAllocation(plan);
  // (3) The batmap: a hint, so it may lag; it is never ahead of the bitmap it summarises.
  return SetBatmapBit(plan.block);
}

Status VhdImage::SetBatmapBit(uint32_t block) {
  NoteBlockFull(block);
  if (!batmap_dirty()) return Status::Ok();
  BLK_RETURN_IF_ERROR(WriteBatmap());
  return file_->Sync();
}

void VhdImage::NoteBlockFull(uint32_t block) {
  if (!has_batmap_ || TestBit(batmap_, block)) return;
  SetBits(batmap_, block, 1);
  uint32_t sector = block / 8 / kSectorSize;
  if (!batmap_dirty()) {
    batmap_dirty_first_ = batmap_dirty_last_ = sector;
  } else {
    batmap_dirty_first_ = std::min(batmap_dirty_first_, sector);
    batmap_dirty_last_ = std::max(batmap_dirty_last_, sector);
  }
}

Status VhdImage::ClearBatmapBitForTesting(uint32_t block) {
  if (!has_batmap_ || !TestBit(batmap_, block)) return Status::Ok();
  batmap_[block / 8] &= static_cast<uint8_t>(~(0x80u >> (block % 8)));
  bitmaps_.erase(block);
  batmap_dirty_first_ = batmap_dirty_last_ = block / 8 / kSectorSize;
  BLK_RETURN_IF_ERROR(WriteBatmap());
  return file_->Sync();
}

std::array<VhdImage::MetadataWrite, 2> VhdImage::PendingBatmapWrites() {
  uint64_t first = batmap_dirty_first_;
  uint64_t count = uint64_t{batmap_dirty_last_} - first + 1;
  batmap_header_.checksum = BatmapChecksum(batmap_);
  EncodeBatmapHeader(batmap_header_, batmap_header_sector_);
  return {MetadataWrite{batmap_header_.batmap_offset + first * kSectorSize,
                        std::span<const uint8_t>(batmap_).subspan(first * kSectorSize, count * kSectorSize)},
          MetadataWrite{batmap_header_offset_, batmap_header_sector_}};
}

Status VhdImage::WriteBatmap() {
  if (!batmap_dirty()) return Status::Ok();
  for (const MetadataWrite& write : PendingBatmapWrites())
    BLK_RETURN_IF_ERROR(file_->WriteAt(write.file_offset, write.bytes));
  BatmapWritten();
  return Status::Ok();
}

Status VhdImage::WriteFooters() {
  std::array<uint8_t, kFooterSize> footer;
  EncodeFooter(footer_, footer);
  BLK_RETURN_IF_ERROR(file_->WriteAt(footer_offset_, footer));
  Result<uint64_t> size = file_->Size();
  if (!size.ok()) return size.status();
  if (*size > footer_offset_ + kFooterSize)
    BLK_RETURN_IF_ERROR(file_->Truncate(footer_offset_ + kFooterSize));
  BLK_RETURN_IF_ERROR(file_->Sync());
  if (type() != DiskType::kFixed) {
    BLK_RETURN_IF_ERROR(file_->WriteAt(0, footer));
    BLK_RETURN_IF_ERROR(file_->Sync());
  }
  footer_dirty_ = false;
  return Status::Ok();
}

Status VhdImage::Flush() {
  if (!writable_) return Status::Ok();
  BLK_RETURN_IF_ERROR(WriteBatmap());
  BLK_RETURN_IF_ERROR(file_->Sync());
  if (footer_dirty_) BLK_RETURN_IF_ERROR(WriteFooters());
  return Status::Ok();
}

Status VhdImage::Close() {
  if (closed_) return Status::Ok();
  closed_ = true;
  return Flush();
}

}  // namespace blk::vhd
