// VhdImage: opening and validating a VHD file, resolving guest ranges to pieces, and synchronous reads.
#include "formats/vhd/image.h"

#include <algorithm>
#include <cstring>

#include "base/log.h"

namespace blk::vhd {
namespace {

// a + b, or false when it does not fit in 64 bits.
bool Add(uint64_t a, uint64_t b, uint64_t* sum) { return !__builtin_add_overflow(a, b, sum); }

// The BAT is held in memory: 16M entries (64 MiB) map 32 TiB in 2 MiB blocks, far beyond VHD's 2040 GiB, and
// stop a hostile image with tiny blocks from asking for gigabytes.
constexpr uint64_t kMaxBlocks = 16u << 20;

bool Overlaps(uint64_t a, uint64_t a_length, uint64_t b, uint64_t b_length) {
  return a < b + b_length && b < a + a_length;
}

}  // namespace

VhdImage::~VhdImage() {
  if (!closed_) {
    Status status = Close();
    if (!status.ok()) Log(LogLevel::kError, "vhd", "%s", status.ToString().c_str());
  }
}

Status VhdImage::Corrupt(const std::string& what) const { return Status::Corruption(path() + ": " + what); }

Result<std::unique_ptr<VhdImage>> VhdImage::Open(std::unique_ptr<FileIo> file, bool writable) {
  std::unique_ptr<VhdImage> image(new VhdImage(std::move(file), writable));
  Status status = image->Load();
  if (!status.ok()) {
    image->closed_ = true;  // nothing to write back for an image that never opened
    return status;
  }
  for (const std::string& note : image->notes_)
    Log(LogLevel::kNotice, "vhd", "%s: %s", image->path().c_str(), note.c_str());
  return image;
}

Status VhdImage::Load() {
  Result<uint64_t> size = file_->Size();
  if (!size.ok()) return size.status();
  BLK_RETURN_IF_ERROR(LoadFooter(*size));
  std::string note;
  virtual_size_ = VirtualSize(footer_, &note);
  if (!note.empty()) notes_.push_back(note);
  if (virtual_size_ == 0) return Corrupt("the virtual size is zero");
  if (virtual_size_ % kSectorSize != 0) {
    return Corrupt("the virtual size " + std::to_string(virtual_size_) + " is not a multiple of 512");
  }
  if (virtual_size_ > kMaxVirtualSize) {
    return Corrupt("the virtual size " + std::to_string(virtual_size_) + " exceeds the 2040 GiB VHD limit");
  }
  if (type() == DiskType::kFixed) {
    if (virtual_size_ > footer_offset_) {
      return Corrupt("truncated: a fixed disk of " + std::to_string(virtual_size_) +
                     " bytes needs a file of at least " + std::to_string(virtual_size_ + kFooterSize) +
                     " bytes, not " + std::to_string(*size));
    }
    metadata_end_ = 0;
    return Status::Ok();
  }
  return LoadDynamic(*size);
}

Status VhdImage::LoadFooter(uint64_t file_size) {
  if (file_size < kOldFooterSize) {
    return Corrupt("truncated: " + std::to_string(file_size) + " bytes cannot hold a VHD footer");
  }
  std::array<uint8_t, kFooterSize> bytes{};
  Status end_status;
  if (file_size >= kFooterSize) {
    BLK_RETURN_IF_ERROR(file_->ReadAt(file_size - kFooterSize, bytes));
    Result<Footer> footer = DecodeFooter(bytes);
    if (footer.ok()) {
      footer_ = *footer;
      footer_offset_ = file_size - kFooterSize;
      end_status = Status::Ok();
    } else {
      end_status = footer.status();
    }
  }
  if (file_size < kFooterSize || !end_status.ok()) {
    BLK_RETURN_IF_ERROR(file_->ReadAt(file_size - kOldFooterSize, std::span(bytes).first(kOldFooterSize)));
    Result<Footer> old = DecodeFooter(std::span<const uint8_t>(bytes).first(kOldFooterSize));
    if (old.ok()) {
      footer_ = *old;
      footer_offset_ = file_size - kOldFooterSize;
      notes_.push_back("old 511-byte footer");
      footer_dirty_ = true;
    } else {
      // A dynamic disk keeps a copy at offset 0, written first: an interrupted extension leaves it intact.
      Status copy_status = Status::Corruption("file too small");
      if (file_size >= kFooterSize) {
        BLK_RETURN_IF_ERROR(file_->ReadAt(0, bytes));
        Result<Footer> copy = DecodeFooter(bytes);
        if (copy.ok() && copy->type() != DiskType::kFixed) {
          footer_ = *copy;
          footer_offset_ = RoundUp(file_size, kSectorSize);
          footer_dirty_ = true;
          notes_.push_back("no footer at the end of the file (" + end_status.message() +
                           "); using the copy at offset 0");
          return Status::Ok();
        }
        if (!copy.ok()) copy_status = copy.status();
      }
      return Corrupt(
          "footer at the end: " + (end_status.ok() ? std::string("missing") : end_status.message()) +
          "; copy at offset 0: " + copy_status.message());
    }
  }
  if (type() != DiskType::kFixed) {
    BLK_RETURN_IF_ERROR(file_->ReadAt(0, bytes));
    Result<Footer> copy = DecodeFooter(bytes);
    if (!copy.ok()) {
      notes_.push_back("the footer copy at offset 0 is unreadable (" + copy.status().message() + ")");
      footer_dirty_ = true;
    } else if (copy->uuid != footer_.uuid || copy->current_size != footer_.current_size ||
               copy->disk_type != footer_.disk_type) {
      notes_.push_back("the footer copy at offset 0 differs from the footer at the end");
      footer_dirty_ = true;
    }
  }
  return Status::Ok();
}

Status VhdImage::LoadDynamic(uint64_t file_size) {
  (void)file_size;
  uint64_t header_end;
  if (footer_.data_offset < kFooterSize || !Add(footer_.data_offset, kHeaderSize, &header_end) ||
      header_end > footer_offset_) {
    return Corrupt("dynamic header offset " + std::to_string(footer_.data_offset) +
                   " is not inside the file between the footer copy and the footer");
  }
  std::array<uint8_t, kHeaderSize> bytes;
  BLK_RETURN_IF_ERROR(file_->ReadAt(footer_.data_offset, bytes));
  Result<DynamicHeader> header = DecodeHeader(bytes);
  if (!header.ok()) return Corrupt(header.status().message());
  header_ = *header;
  if (!IsPowerOfTwo(header_.block_size) || header_.block_size < kMinBlockSize ||
      header_.block_size > kMaxBlockSize) {
    return Corrupt("block size " + std::to_string(header_.block_size) +
                   " is not a power of two between 512 bytes and 256 MiB");
  }
  bitmap_bytes_ = BitmapBytes(header_.block_size);
  uint64_t needed = BlocksFor(virtual_size_, header_.block_size);
  if (header_.max_table_entries < needed) {
    return Corrupt("max_table_entries " + std::to_string(header_.max_table_entries) + " cannot map " +
                   std::to_string(virtual_size_) + " bytes in blocks of " +
                   std::to_string(header_.block_size) + " (needs " + std::to_string(needed) + ")");
  }
  if (needed > kMaxBlocks) {
    return Corrupt(std::to_string(needed) + " blocks of " + std::to_string(header_.block_size) +
                   " bytes: more than the " + std::to_string(kMaxBlocks) +
                   " blocks this implementation maps");
  }
  block_count_ = static_cast<uint32_t>(needed);
  uint64_t bat_bytes = BatBytes(header_.max_table_entries);
  uint64_t bat_end;
  if (!Add(header_.table_offset, bat_bytes, &bat_end) || bat_end > footer_offset_) {
    return Corrupt("the BAT (" + std::to_string(header_.max_table_entries) + " entries at offset " +
                   std::to_string(header_.table_offset) + ") reaches past the end of the file (" +
                   std::to_string(footer_offset_) + " bytes before the footer)");
  }
  if (Overlaps(header_.table_offset, bat_bytes, 0, kFooterSize) ||
      Overlaps(header_.table_offset, bat_bytes, footer_.data_offset, kHeaderSize)) {
    return Corrupt("the BAT at offset " + std::to_string(header_.table_offset) +
                   " overlaps the footer copy or the dynamic header");
  }
  metadata_end_ = std::max({kFooterSize + uint64_t{0}, header_end, bat_end});
  // Whole sectors, so a BAT sector can be rewritten from memory (entries past the disk's end included).
  bat_.resize(BatBytes(block_count_));
  BLK_RETURN_IF_ERROR(file_->ReadAt(header_.table_offset, bat_));

  if (type() == DiskType::kDifferencing) {
    for (size_t i = 0; i < kLocatorCount; ++i) {
      const ParentLocator& locator = header_.locators[i];
      if (locator.platform_code == 0) continue;
      uint64_t end;
      if (locator.data_length > 65536) {
        return Corrupt("parent locator " + std::to_string(i) + " claims " +
                       std::to_string(locator.data_length) + " bytes, more than any path");
      }
      if (!Add(locator.data_offset, locator.data_length, &end) || end > footer_offset_) {
        return Corrupt("parent locator " + std::to_string(i) + " (" + std::to_string(locator.data_length) +
                       " bytes at offset " + std::to_string(locator.data_offset) + ") lies outside the file");
      }
      if (Overlaps(locator.data_offset, locator.data_length, 0, kFooterSize) ||
          Overlaps(locator.data_offset, locator.data_length, footer_.data_offset, kHeaderSize) ||
          Overlaps(locator.data_offset, locator.data_length, header_.table_offset, bat_bytes)) {
        return Corrupt("parent locator " + std::to_string(i) + " at offset " +
                       std::to_string(locator.data_offset) +
                       " overlaps the footer copy, the header or the BAT");
      }
      metadata_end_ = std::max(metadata_end_, RoundUp(end, kSectorSize));
    }
  }
  BLK_RETURN_IF_ERROR(LoadBatmap(file_size));
  return ValidateBat(file_size);
}

Status VhdImage::LoadBatmap(uint64_t) {
  if (footer_.creator() != std::string_view("tap\0", 4)) return Status::Ok();
  batmap_header_offset_ = header_.table_offset + BatBytes(header_.max_table_entries);
  if (batmap_header_offset_ + kSectorSize > footer_offset_) return Status::Ok();
  std::array<uint8_t, kSectorSize> bytes;
  BLK_RETURN_IF_ERROR(file_->ReadAt(batmap_header_offset_, bytes));
  Result<BatmapHeader> header = DecodeBatmapHeader(bytes);
  if (!header.ok()) {
    if (header.status().code() == Status::Code::kNotFound) {
      if (footer_.creator_version >= 0x00010002) notes_.push_back("tapdisk image without a batmap");
      return Status::Ok();
    }
    return Corrupt(header.status().message());
  }
  uint64_t bytes_needed = RoundUp(block_count_, 8) / 8;
  uint64_t map_bytes = uint64_t{header->batmap_sectors} * kSectorSize;
  uint64_t map_end;
  if (map_bytes < bytes_needed) {
    return Corrupt("batmap of " + std::to_string(header->batmap_sectors) + " sectors cannot cover " +
                   std::to_string(block_count_) + " blocks");
  }
  if (header->batmap_offset < batmap_header_offset_ + kSectorSize ||
      !Add(header->batmap_offset, map_bytes, &map_end) || map_end > footer_offset_) {
    return Corrupt("batmap at offset " + std::to_string(header->batmap_offset) +
                   " is not between its header and the end of the file");
  }
  batmap_header_ = *header;
  batmap_.resize(map_bytes);
  BLK_RETURN_IF_ERROR(file_->ReadAt(header->batmap_offset, batmap_));
  has_batmap_ = true;
  metadata_end_ = std::max(metadata_end_, map_end);
  if (BatmapChecksum(batmap_) != batmap_header_.checksum) {
    // An unset bit only means "look at the bitmap", so a map we cannot trust is safely replaced by an empty
    // one.
    notes_.push_back("batmap checksum mismatch; ignoring the batmap" +
                     std::string(writable_ ? " and rewriting it empty" : ""));
    std::fill(batmap_.begin(), batmap_.end(), 0);
    batmap_header_.checksum = BatmapChecksum(batmap_);
    if (writable_) {
      BLK_RETURN_IF_ERROR(file_->WriteAt(batmap_header_.batmap_offset, batmap_));
      BLK_RETURN_IF_ERROR(file_->Sync());
      EncodeBatmapHeader(batmap_header_, bytes);
      BLK_RETURN_IF_ERROR(file_->WriteAt(batmap_header_offset_, bytes));
      BLK_RETURN_IF_ERROR(file_->Sync());
    }
  }
  return Status::Ok();
}

uint64_t VhdImage::block_sectors(uint32_t block) const {
  uint64_t start = uint64_t{block} * header_.block_size;
  return std::min<uint64_t>(header_.block_size, virtual_size_ - start) / kSectorSize;
}

Status VhdImage::ValidateBat(uint64_t file_size) {
  // Where blocks may end: before the footer, and inside the file (when the footer copy at offset 0 stands in
  // for a lost trailing one, footer_offset_ lies past the end of a file that is not a whole number of
  // sectors).
  const uint64_t blocks_end = std::min(footer_offset_, file_size);
  struct Extent {
    uint64_t offset;
    uint64_t length;
    uint32_t block;
  };
  std::vector<Extent> extents;
  for (uint32_t block = 0; block < block_count_; ++block) {
    uint32_t sector = bat_entry(block);
    if (sector == kBatUnused) continue;
    uint64_t offset = uint64_t{sector} * kSectorSize;
    uint64_t length = bitmap_bytes_ + block_sectors(block) * kSectorSize;
    if (offset < metadata_end_) {
      return Corrupt("BAT entry " + std::to_string(block) + " points at offset " + std::to_string(offset) +
                     ", inside the metadata (which ends at " + std::to_string(metadata_end_) + ")");
    }
    if (offset + length > blocks_end) {
      return Corrupt("BAT entry " + std::to_string(block) + " points at offset " + std::to_string(offset) +
                     ", past the end of the file (block ends at " + std::to_string(offset + length) +
                     ", footer at " + std::to_string(footer_offset_) + ", file of " +
                     std::to_string(file_size) + " bytes)");
    }
    extents.push_back({offset, length, block});
  }
  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) { return a.offset < b.offset; });
  for (size_t i = 1; i < extents.size(); ++i) {
    if (extents[i - 1].offset + extents[i - 1].length > extents[i].offset) {
      return Corrupt("BAT entries " + std::to_string(extents[i - 1].block) + " and " +
                     std::to_string(extents[i].block) + " overlap (offsets " +
                     std::to_string(extents[i - 1].offset) + " and " + std::to_string(extents[i].offset) +
                     ")");
    }
  }
  return Status::Ok();
}

bool VhdImage::BatmapBit(uint32_t block) const { return has_batmap_ && TestBit(batmap_, block); }

bool VhdImage::BlockFull(uint32_t block) const {
  auto cached = bitmaps_.find(block);
  return cached != bitmaps_.end() && cached->second.full;
}

Status VhdImage::LoadBitmap(uint32_t block) {
  if (bitmaps_.contains(block)) return Status::Ok();
  uint32_t sector = bat_entry(block);
  if (sector == kBatUnused)
    return Status::InvalidArgument(path() + ": block " + std::to_string(block) + " is not allocated");
  CachedBitmap cached{std::vector<uint8_t>(bitmap_bytes_), false};
  BLK_RETURN_IF_ERROR(file_->ReadAt(uint64_t{sector} * kSectorSize, cached.bits));
  cached.full = AllBitsSet(cached.bits, block_sectors(block));
  if (cached.full) cached.bits = {};  // a full block needs no bits kept: the common case costs a few bytes
  bitmaps_.emplace(block, std::move(cached));
  return Status::Ok();
}

Result<std::span<const uint8_t>> VhdImage::Bitmap(uint32_t block) {
  BLK_RETURN_IF_ERROR(LoadBitmap(block));
  const CachedBitmap& cached = bitmaps_.at(block);
  if (cached.full) {
    if (full_bitmap_.empty()) full_bitmap_.assign(bitmap_bytes_, 0xFF);
    return std::span<const uint8_t>(full_bitmap_);
  }
  return std::span<const uint8_t>(cached.bits);
}

size_t VhdImage::Resolve(uint64_t offset, uint64_t length, std::span<Piece> out) const {
  size_t count = 0;
  auto emit = [&](Piece::Kind kind, uint64_t guest, uint64_t bytes, uint64_t file_offset, uint32_t block) {
    if (count > 0) {
      Piece& last = out[count - 1];
      bool contiguous = last.kind == kind && last.guest_offset + last.length == guest &&
                        (kind != Piece::Kind::kFile || last.file_offset + last.length == file_offset);
      if (contiguous && kind != Piece::Kind::kNeedBitmap) {
        last.length += bytes;
        return true;
      }
    }
    if (count == out.size()) return false;
    out[count++] = Piece{kind, guest, bytes, file_offset, block};
    return true;
  };
  if (type() == DiskType::kFixed) {
    if (!out.empty() && length > 0) out[count++] = Piece{Piece::Kind::kFile, offset, length, offset, 0};
    return count;
  }
  const Piece::Kind absent = type() == DiskType::kDifferencing ? Piece::Kind::kParent : Piece::Kind::kZero;
  uint64_t end = offset + length;
  while (offset < end) {
    auto block = static_cast<uint32_t>(offset / header_.block_size);
    uint64_t in_block = offset % header_.block_size;
    uint64_t run = std::min<uint64_t>(end - offset, header_.block_size - in_block);
    uint32_t sector = bat_entry(block);
    uint64_t data = uint64_t{sector} * kSectorSize + bitmap_bytes_;
    if (sector == kBatUnused) {
      if (!emit(absent, offset, run, 0, block)) return count;
    } else if (BatmapBit(block)) {
      if (!emit(Piece::Kind::kFile, offset, run, data + in_block, block)) return count;
    } else {
      auto cached = bitmaps_.find(block);
      if (cached == bitmaps_.end()) {
        emit(Piece::Kind::kNeedBitmap, offset, run, 0, block);
        return count;
      }
      if (cached->second.full) {
        if (!emit(Piece::Kind::kFile, offset, run, data + in_block, block)) return count;
      } else {
        // Walk sector by sector (guest I/O is sector-aligned; a partial first sector shares its sector's
        // bit).
        uint64_t at = in_block;
        uint64_t stop = in_block + run;
        while (at < stop) {
          bool present = TestBit(cached->second.bits, at / kSectorSize);
          uint64_t next = std::min(stop, (at / kSectorSize + 1) * kSectorSize);
          uint64_t guest = uint64_t{block} * header_.block_size + at;
          if (!emit(present ? Piece::Kind::kFile : absent, guest, next - at, present ? data + at : 0,
                    block)) {
            return count;
          }
          at = next;
        }
      }
    }
    offset += run;
  }
  return count;
}

Status VhdImage::ReadParent(uint64_t offset, std::span<uint8_t> out) {
  if (parent_ == nullptr) {
    return Status::InvalidArgument(path() + ": differencing image opened without its parent");
  }
  // A child may be larger than its parent; what lies beyond the parent reads as zeros.
  uint64_t inside = offset >= parent_->virtual_size()
                        ? 0
                        : std::min<uint64_t>(out.size(), parent_->virtual_size() - offset);
  if (inside > 0) BLK_RETURN_IF_ERROR(parent_->Read(offset, out.first(inside)));
  std::memset(out.data() + inside, 0, out.size() - inside);
  return Status::Ok();
}

Status VhdImage::Read(uint64_t offset, std::span<uint8_t> out) {
  uint64_t end;
  if (!Add(offset, out.size(), &end) || end > virtual_size_) {
    return Status::InvalidArgument(path() + ": read of " + std::to_string(out.size()) + " bytes at " +
                                   std::to_string(offset) + " is beyond the virtual size " +
                                   std::to_string(virtual_size_));
  }
  std::array<Piece, 32> pieces;
  uint64_t done = 0;
  while (done < out.size()) {
    size_t count = Resolve(offset + done, out.size() - done, pieces);
    for (size_t i = 0; i < count; ++i) {
      const Piece& piece = pieces[i];
      std::span<uint8_t> target = out.subspan(piece.guest_offset - offset, piece.length);
      switch (piece.kind) {
        case Piece::Kind::kFile:
          BLK_RETURN_IF_ERROR(file_->ReadAt(piece.file_offset, target));
          break;
        case Piece::Kind::kZero:
          std::memset(target.data(), 0, target.size());
          break;
        case Piece::Kind::kParent:
          BLK_RETURN_IF_ERROR(ReadParent(piece.guest_offset, target));
          break;
        case Piece::Kind::kNeedBitmap:
          BLK_RETURN_IF_ERROR(LoadBitmap(piece.block));
          break;
      }
      if (piece.kind == Piece::Kind::kNeedBitmap) break;
      done = piece.guest_offset + piece.length - offset;
    }
  }
  return Status::Ok();
}

}  // namespace blk::vhd
