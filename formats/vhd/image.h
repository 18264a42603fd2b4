// One VHD file opened and validated: where each guest byte lives (Resolve), what an allocating write must do
// and in which order (PlanWrite), and a synchronous Read/Write/Flush built on those for vhdtool and the
// tests. A differencing image reads its parent's pieces through `parent()`, which VhdChain wires up.
//
// Opening checks every offset and size in 64-bit arithmetic against the file and refuses hostile images with
// a Corruption naming the file and the field. Threading: one thread at a time per image (and its chain).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "formats/vhd/file_io.h"
#include "formats/vhd/format.h"

namespace blk::vhd {

// A run of guest bytes and where to find them.
struct Piece {
  enum class Kind : uint8_t {
    kFile,        // `length` bytes at `file_offset` in this image's file
    kZero,        // reads as zeros
    kParent,      // the same guest range in the parent image
    kNeedBitmap,  // block `block`'s sector bitmap must be loaded (LoadBitmap) before this range can be
                  // resolved
  };
  Kind kind;
  uint64_t guest_offset;
  uint64_t length;
  uint64_t file_offset;
  uint32_t block;
};

// What writing guest bytes inside one block takes. Steps for kAllocate, in order, each after the previous is
// durable: (1) the footer at `new_footer_offset` and the full block (bitmap with every bit set, then data:
// the parent's or zeros, overlaid with the guest's) at `block_offset`; (2) the BAT sector holding `block`'s
// entry; (3) the batmap, when the image has one. kWriteThenBitmap: the data, then (once durable) the bitmap
// sector.
struct BlockWritePlan {
  enum class Action : uint8_t { kInPlace, kWriteThenBitmap, kAllocate };
  Action action;
  uint32_t block;
  uint64_t guest_offset;
  uint64_t length;
  uint64_t data_file_offset;   // where the guest bytes go
  uint64_t block_offset;       // kAllocate: where the block's bitmap starts
  uint64_t new_footer_offset;  // kAllocate: the end of the new block
};

class VhdImage {
 public:
  static Result<std::unique_ptr<VhdImage>> Open(std::unique_ptr<FileIo> file, bool writable);
  ~VhdImage();

  const std::string& path() const { return file_->path(); }
  const Footer& footer() const { return footer_; }
  const DynamicHeader& header() const { return header_; }  // meaningful for dynamic and differencing images
  DiskType type() const { return footer_.type(); }
  uint64_t virtual_size() const { return virtual_size_; }
  bool has_batmap() const { return has_batmap_; }
  uint64_t batmap_bytes() const { return batmap_.size(); }
  // Warnings found while opening (a footer copy used, the size rule applied, a stale batmap).
  const std::vector<std::string>& notes() const { return notes_; }
  uint32_t block_count() const { return block_count_; }
  uint32_t bat_entry(uint32_t block) const { return GetBatEntry(bat_, block); }
  uint64_t metadata_end() const { return metadata_end_; }
  uint64_t footer_offset() const { return footer_offset_; }
  FileIo& file() { return *file_; }

  VhdImage* parent() const { return parent_; }
  void set_parent(VhdImage* parent) { parent_ = parent; }

  // Fills `out` with the pieces of [offset, offset + length) in order and returns how many it wrote; they
  // cover a prefix of the range (all of it unless `out` filled up or a kNeedBitmap piece ended the list). No
  // allocation.
  size_t Resolve(uint64_t offset, uint64_t length, std::span<Piece> out) const;
  Status LoadBitmap(uint32_t block);
  // Plans the write of [offset, offset + length), which must lie inside one block, given the bitmap (loaded).
  Result<BlockWritePlan> PlanWrite(uint64_t offset, uint64_t length) const;

  // The steps of a kAllocate plan, for an engine that does its own I/O (Allocate below is the synchronous
  // one):
  //   1. if NeedsParentFill(plan), read the block's guest range [plan.block * block size, + block_sectors *
  //   512)
  //      from the parent into block[bitmap_bytes()...]; BuildNewBlock then lays the bitmap and the guest's
  //      data in;
  //   2. write EncodedFooter() at plan.new_footer_offset and the block at plan.block_offset; fdatasync;
  //   3. write BatSector(plan) at BatSectorOffset(plan); fdatasync; acknowledge; CommitAllocation(plan);
  //   4. NoteBlockFull(plan.block); the batmap reaches the file with WriteBatmap (a flush, Close).
  // Two writes to one unallocated block must not both allocate it: the engine holds the second until step 3
  // ends.
  uint64_t new_block_bytes() const { return bitmap_bytes_ + header_.block_size; }
  bool NeedsParentFill(const BlockWritePlan& plan) const;
  void BuildNewBlock(const BlockWritePlan& plan, std::span<const uint8_t> data,
                     std::span<uint8_t> block) const;
  std::array<uint8_t, kFooterSize> EncodedFooter() const;
  uint64_t BatSectorOffset(const BlockWritePlan& plan) const;
  std::array<uint8_t, kSectorSize> BatSector(const BlockWritePlan& plan) const;
  void CommitAllocation(const BlockWritePlan& plan);
  // An allocation failed after its block and footer became durable (the BAT write failed or was not
  // confirmed): the space stays taken, so that no later block lands where the BAT on disk may point.
  void AbandonAllocation(const BlockWritePlan& plan);
  // Writes `block`'s batmap bit at once (a sector and the batmap header, synced).
  Status SetBatmapBit(uint32_t block);
  // The batmap is a hint that may lag but never runs ahead of the bitmaps: call this only once the block's
  // full bitmap (or the new block with all bits set) is durable. The bit is set in memory; WriteBatmap (or
  // Flush, Close) writes it.
  void NoteBlockFull(uint32_t block);
  bool batmap_dirty() const { return batmap_dirty_first_ != kBatmapClean; }
  // Writes the batmap sectors changed by NoteBlockFull since the last call, and the header with its new
  // checksum, through this image's file; no sync (Flush syncs after it).
  Status WriteBatmap();
  // The same for an engine that writes through its own (O_DIRECT) descriptor: a buffered write there would
  // leave a dirty page-cache page that the engine's direct writes into the same page collide with. The
  // changed batmap sectors, then the header sector (checksum updated); BatmapWritten() once both are written.
  struct MetadataWrite {
    uint64_t file_offset;
    std::span<const uint8_t> bytes;
  };
  std::array<MetadataWrite, 2> PendingBatmapWrites();
  void BatmapWritten() { batmap_dirty_first_ = kBatmapClean; }
  // FootersWritten(): EncodedFooter() is now at footer_offset() and, unless fixed, at offset 0.
  void FootersWritten() { footer_dirty_ = false; }
  // Clears `block`'s batmap bit in the file (synced): tests make the partly filled blocks tapdisk leaves.
  Status ClearBatmapBitForTesting(uint32_t block);
  // Whether every sector of `block` is present (cached: an unloaded partly filled block says false).
  bool BlockFull(uint32_t block) const;

  // kWriteThenBitmap for an engine that does its own I/O, once the data is durable: sets the plan's bits in
  // the cached bitmap (loaded) and returns the whole bitmap sectors that hold them and where they go. The
  // bytes stay valid until the next call for the same block.
  struct BitmapSectors {
    uint64_t file_offset;
    std::span<const uint8_t> bytes;
  };
  BitmapSectors MarkPresent(const BlockWritePlan& plan);
  // The footer must be rewritten (Flush does it): it was read from the copy or an old-style footer.
  bool footer_dirty() const { return footer_dirty_; }

  // Synchronous API.
  Status Read(uint64_t offset, std::span<uint8_t> out);
  Status Write(uint64_t offset, std::span<const uint8_t> data);
  Status Flush();
  // Flushes and, for dynamic images, rewrites the trailing footer. Also done by the destructor (errors
  // logged).
  Status Close();

  // For check and coalesce: the block's bitmap (loads it), and whether a batmap bit is set.
  Result<std::span<const uint8_t>> Bitmap(uint32_t block);
  bool BatmapBit(uint32_t block) const;
  uint64_t bitmap_bytes() const { return bitmap_bytes_; }
  // Sectors of `block` that lie inside the virtual size.
  uint64_t block_sectors(uint32_t block) const;

 private:
  struct CachedBitmap {
    std::vector<uint8_t> bits;
    bool full;
  };
  explicit VhdImage(std::unique_ptr<FileIo> file, bool writable)
      : file_(std::move(file)), writable_(writable) {}
  Status Load();
  Status LoadFooter(uint64_t file_size);
  Status LoadDynamic(uint64_t file_size);
  Status LoadBatmap(uint64_t file_size);
  Status ValidateBat(uint64_t file_size);
  Status Corrupt(const std::string& what) const;
  Status ReadParent(uint64_t offset, std::span<uint8_t> out);
  Status WriteInBlock(uint64_t offset, std::span<const uint8_t> data);
  Status Allocate(const BlockWritePlan& plan, std::span<const uint8_t> data);
  Status WriteFooters();

  std::unique_ptr<FileIo> file_;
  bool writable_;
  bool closed_ = false;
  Footer footer_;
  DynamicHeader header_;
  uint64_t footer_offset_ = 0;  // where the trailing footer lives; new blocks go here
  uint64_t virtual_size_ = 0;
  uint32_t block_count_ = 0;
  uint64_t bitmap_bytes_ = 0;
  uint64_t metadata_end_ = 0;
  std::vector<uint8_t> bat_;
  bool has_batmap_ = false;
  BatmapHeader batmap_header_;
  uint64_t batmap_header_offset_ = 0;
  std::vector<uint8_t> batmap_;
  std::array<uint8_t, kSectorSize> batmap_header_sector_;  // what PendingBatmapWrites hands out
  static constexpr uint32_t kBatmapClean = ~0u;
  uint32_t batmap_dirty_first_ = kBatmapClean;  // the batmap sectors NoteBlockFull changed, first to last
  uint32_t batmap_dirty_last_ = 0;
  std::unordered_map<uint32_t, CachedBitmap> bitmaps_;
  std::vector<uint8_t> full_bitmap_;  // what Bitmap() shows for a full block
  std::vector<std::string> notes_;
  bool footer_dirty_ = false;
  VhdImage* parent_ = nullptr;
};

}  // namespace blk::vhd
