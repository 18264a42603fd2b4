// A VHD chain (formats/vhd/) served as a DiskImage: guest ranges map to the leaf's or a parent's file, or to
// zeros; writes are planned per block by the leaf (vhd::VhdImage::PlanWrite), and an engine that does its
// own asynchronous I/O carries the plans out (backend/vhd_io.h).
//
// Every image of the chain gets a second descriptor for data I/O, with O_DIRECT where the file system allows
// it; metadata is read through the chain's own (buffered) files. The leaf's metadata changes only through
// the allocation and bitmap-write gates below, which serialise them: one allocation, and one bitmap-sector
// write, at a time per image. Writers that find a gate closed wait on it (an intrusive FIFO: no allocation)
// and are woken when it opens, to plan again.
//
// Threading: one thread at a time (every ring of a VHD device is served by one worker).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "base/unique_fd.h"
#include "formats/disk_image.h"
#include "formats/vhd/chain.h"
#include "formats/vhd/image.h"

namespace blk {

class VhdDiskImage final : public DiskImage {
 public:
  // Something waiting for a gate to open. Linked into the gate's FIFO through `next_waiter`.
  class Waiter {
   public:
    virtual void Wake() = 0;
    Waiter* next_waiter = nullptr;

   protected:
    ~Waiter() = default;
  };
  // A FIFO of waiters; Open() wakes all of them (each then plans again, and may wait again).
  class Gate {
   public:
    bool closed() const { return closed_; }
    // Closes the gate for the caller; false if it was already closed.
    bool TryClose();
    void Wait(Waiter& waiter);
    void Open();

   private:
    bool closed_ = false;
    Waiter* head_ = nullptr;
    Waiter* tail_ = nullptr;
  };

  // `allow_differencing` false refuses a differencing disk (a probed image: see OpenDiskImage).
  // `wrap` wraps the leaf's metadata file (crash tests inject faults there).
  static Result<std::unique_ptr<VhdDiskImage>> Open(const std::string& path, const ImageOpenOptions& options,
                                                    bool allow_differencing = true,
                                                    vhd::VhdChain::WrapFile wrap = nullptr);
  ~VhdDiskImage() override;

  Result<size_t> Map(uint64_t offset, uint64_t length, std::span<ImageExtent> out) override;
  // As Map, but from the chain's image `level` down (0 is the leaf): a new block of a differencing disk is
  // filled from level 1.
  Result<size_t> MapFrom(size_t level, uint64_t offset, uint64_t length, std::span<ImageExtent> out);

  vhd::VhdImage& leaf() { return chain_->top(); }
  vhd::VhdChain& chain() { return *chain_; }
  const vhd::VhdChain& chain() const { return *chain_; }
  // The leaf's data descriptor: guest data, new blocks and syncs go there.
  int data_fd() const { return data_fds_.front().get(); }
  // Where the engine writes BAT and bitmap sectors: the data descriptor, unless a test pointed it elsewhere
  // (at a descriptor whose writes fail) to see that exactly the affected request fails.
  int metadata_fd() const { return metadata_fd_ >= 0 ? metadata_fd_ : data_fd(); }
  void OverrideMetadataFdForTesting(int fd) { metadata_fd_ = fd; }
  // Bytes of guest data per block (the whole disk for a fixed VHD, whose writes never span blocks).
  uint64_t block_size() const;
  // Plans a write inside one block, loading the block's bitmap first if needed (a synchronous 512-byte read,
  // once per block while the image is open: the bitmap is cached).
  Result<vhd::BlockWritePlan> PlanWrite(uint64_t offset, uint64_t length);

  Gate& allocation_gate() { return allocation_gate_; }
  Gate& bitmap_gate() { return bitmap_gate_; }
  // Memory for the one allocation at a time, aligned for O_DIRECT: the new block (bitmap, then data), then a
  // sector for the footer and one for the BAT sector.
  std::span<uint8_t> new_block_buffer();
  std::span<uint8_t> footer_buffer();
  std::span<uint8_t> bat_buffer();
  // For the bitmap sectors of one kWriteThenBitmap at a time.
  std::span<uint8_t> bitmap_buffer();
  // For the batmap, or a footer, written at a flush (the whole batmap fits).
  std::span<uint8_t> metadata_buffer();

 private:
  VhdDiskImage() : DiskImage(ImageFormat::kVhd) {}
  Status MapInto(size_t level, uint64_t offset, uint64_t length, std::span<ImageExtent> out, size_t* count,
                 uint64_t* covered);

  std::unique_ptr<vhd::VhdChain> chain_;
  std::vector<UniqueFd> data_fds_;  // one per chain level
  int metadata_fd_ = -1;
  Gate allocation_gate_;
  Gate bitmap_gate_;
  Mapping scratch_;  // new block + footer + BAT sector, then the bitmap buffer
  uint64_t bitmap_buffer_bytes_ = 0;
  uint64_t metadata_buffer_bytes_ = 0;
};

}  // namespace blk
