// The data stage of a ring's requests on a VHD image, done asynchronously on the ring's worker.
//
// Reads map their range to extents (the leaf's or a parent's file, or zeros): zeros are filled in the bounce
// buffer, every file extent becomes an iocb, and the request is done when all of them are. Writes go block by
// block, as the leaf plans them (vhd::BlockWritePlan):
//   kInPlace         the data;
//   kWriteThenBitmap the data, durably, then the bitmap sectors (one bitmap write per image at a time, so
//                    that an older copy of a sector never lands after a newer one);
//   kAllocate        (differencing: the parent's data read into the new block), the footer past the new
//                    block and the block itself, durably, then the BAT sector, durably; only then is the
//                    allocation committed and the request's block done. One allocation per image at a time:
//                    a write that finds one running waits for it and then plans again, so a block being
//                    allocated is allocated once and later writes to it go in place.
// "Durably" is a write with RWF_DSYNC: it completes once it is on stable storage, as a write followed by
// fdatasync would, in one trip through the kernel.
// The batmap is not updated: it is a hint, and an unset bit only makes readers look at the bitmap.
// Every iocb goes into the pipeline's submission list, so it leaves in the pipeline's one io_submit per
// round. Memory: per-slot state and iocbs are allocated with the ring; the new-block buffer belongs to the
// image.
//
// Threading: owned by one pipeline, on its worker; the image is shared only with rings on the same worker.
#pragma once

#include <libaio.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "backend/aio_engine.h"
#include "backend/completion_handler.h"
#include "formats/vhd_disk_image.h"

namespace blk {

class VhdIo final : public CompletionHandler {
 public:
  // The pipeline's side.
  class Owner {
   public:
    // The data stage of slot `slot` ended (all its I/O done): `error` is 0, or the errno of its first failure
    // (EAGAIN for a short transfer: the owner may start the whole stage again).
    virtual void VhdDataDone(uint32_t slot, int error) = 0;
    // Iocbs were queued (or requests answered) outside the pipeline's own rounds: submit and answer now.
    virtual void VhdSubmitNow() = 0;

   protected:
    ~Owner() = default;
  };
  // Iocbs a request may have in flight at once (a fragmented read takes several rounds).
  static constexpr uint32_t kOpsPerRequest = 16;

  VhdIo(std::string name, Owner& owner, VhdDiskImage& image, AioEngine& aio, uint32_t slots,
        std::vector<iocb*>& submit);
  VhdIo(const VhdIo&) = delete;
  VhdIo& operator=(const VhdIo&) = delete;

  // Starts the data I/O of `slot`: `length` bytes at guest byte `offset`, from or into `buffer`.
  void Start(uint32_t slot, bool write, uint64_t offset, uint32_t length, uint8_t* buffer);
  // The kernel refused one of our iocbs at submission, for good.
  void Refused(iocb* cb, const Status& why);
  // Discards guest bytes [offset, offset + length): punches holes in the leaf's allocated data there, which
  // then reads as zeros (to us and to qemu alike; bitmaps and BAT stay as they are, so the image stays
  // valid for every reader). What the leaf does not hold (holes, a parent's data under a differencing disk)
  // is left alone: a discarded range reads as undefined. Synchronous, as a raw image's discard.
  Status Discard(uint64_t offset, uint64_t length);
  // A flush is about to sync the leaf: rewrites the footer first if the image says it must (once), and
  // writes the batmap bits of blocks known to be full and durable.
  void BeforeFlush();
  // The sync that followed BeforeFlush ended (`ok`: it succeeded): blocks whose bitmaps became full before it
  // may now be marked in the batmap.
  void AfterSync(bool ok);

  void OnCompletion(const io_event& event) override;
  void FinishCompletions() override;

 private:
  enum class Phase : uint8_t {
    kIdle,
    kRead,        // a round of reads (the request's, or a new block's parent fill)
    kWriteData,   // in place, or the data of a kWriteThenBitmap (durable)
    kWaitBitmap,  // waiting for the image's bitmap gate
    kBitmapWrite,
    kWaitAllocation,  // waiting for the image's allocation gate
    kAllocWrite,      // the footer and the new block, durable
    kBatWrite,        // the BAT sector, durable
  };
  static constexpr uint32_t kNoBlock = ~0u;
  struct Request;
  struct Op {
    AioTag tag;  // first: the worker finds this engine through it
    iocb cb;
    Request* request;
  };
  struct Request final : public VhdDiskImage::Waiter {
    VhdIo* io = nullptr;
    uint32_t slot = 0;
    bool write = false;
    int error = 0;  // the first failure's errno
    // A bitmap write of this slot's request failed after the cached bits were set: until a request of the
    // slot succeeds, its in-place writes to this block write the bitmap too, so that a retry that finds the
    // bits already set (in memory only) still puts them on disk.
    uint32_t unsaved_bitmap_block = kNoBlock;
    bool failed() const { return error != 0; }
    Phase phase = Phase::kIdle;
    uint64_t offset = 0;  // guest byte of the request
    uint32_t length = 0;
    uint8_t* buffer = nullptr;
    uint64_t done = 0;      // bytes of the request finished
    uint64_t step_end = 0;  // request bytes finished when the current block's step completes
    vhd::BlockWritePlan plan{};
    // The range being read: the request's own, or a new block's parent fill.
    size_t read_level = 0;
    uint64_t read_offset = 0;
    uint64_t read_length = 0;
    uint64_t read_done = 0;
    uint8_t* read_target = nullptr;
    uint32_t in_flight = 0;
    Op ops[kOpsPerRequest];
    void Wake() override { io->Resume(*this); }
  };

  void Resume(Request& request);
  // Issues the next round of reads; returns false when the range is complete (nothing issued).
  bool ReadRound(Request& request);
  void ContinueRead(Request& request);
  void ContinueWrite(Request& request);
  void StartAllocation(Request& request);
  void WriteNewBlock(Request& request);
  // Every iocb of the request's current step has completed (or the gate it waited on opened).
  void StepDone(Request& request);
  void Finish(Request& request, int error);
  void Fail(Request& request, const Status& why);
  Op& NextOp(Request& request);
  // A synchronous write through the metadata descriptor (O_DIRECT), from the image's aligned metadata buffer.
  Status WriteMetadataNow(uint64_t file_offset, std::span<const uint8_t> bytes);
  void QueueRead(Request& request, int fd, uint8_t* buffer, uint64_t length, uint64_t file_offset);
  // `durable`: with RWF_DSYNC.
  void QueueWrite(Request& request, int fd, const uint8_t* buffer, uint64_t length, uint64_t file_offset,
                  bool durable);

  std::string name_;
  Owner& owner_;
  VhdDiskImage& image_;
  AioEngine& aio_;
  std::vector<iocb*>& submit_;
  std::vector<Request> requests_;
  // Nonzero while a caller up the stack will submit what we queue (Start, a completion, a refusal).
  unsigned in_round_ = 0;
  bool footer_rewritten_ = false;
  // Blocks filled by a bitmap write that no sync covers yet, and those the sync in flight covers.
  std::vector<uint32_t> full_unsynced_;
  std::vector<uint32_t> full_syncing_;
  unsigned syncs_in_flight_ = 0;
};

}  // namespace blk
