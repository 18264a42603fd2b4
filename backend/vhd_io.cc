// VhdIo: reads mapped through the chain, writes in place, behind a bitmap, or into a newly allocated block.
#include "backend/vhd_io.h"

#include <linux/fs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "base/log.h"
#include "formats/discard.h"

namespace blk {

VhdIo::VhdIo(std::string name, Owner& owner, VhdDiskImage& image, AioEngine& aio, uint32_t slots,
             std::vector<iocb*>& submit)
    : name_(std::move(name)), owner_(owner), image_(image), aio_(aio), submit_(submit), requests_(slots) {
  for (uint32_t i = 0; i < slots; ++i) {
    Request& request = requests_[i];
    request.io = this;
    request.slot = i;
    for (Op& op : request.ops) {
      op.tag.handler = this;
      op.request = &request;
    }
  }
}

void VhdIo::Start(uint32_t slot, bool write, uint64_t offset, uint32_t length, uint8_t* buffer) {
  ++in_round_;
  Request& request = requests_[slot];
  request.write = write;
  request.error = 0;
  request.offset = offset;
  request.length = length;
  request.buffer = buffer;
  request.done = 0;
  request.in_flight = 0;
  if (write) {
    ContinueWrite(request);
  } else {
    request.read_level = 0;
    request.read_offset = offset;
    request.read_length = length;
    request.read_done = 0;
    request.read_target = buffer;
    ContinueRead(request);
  }
  --in_round_;
}

VhdIo::Op& VhdIo::NextOp(Request& request) { return request.ops[request.in_flight++]; }

void VhdIo::QueueRead(Request& request, int fd, uint8_t* buffer, uint64_t length, uint64_t file_offset) {
  Op& op = NextOp(request);
  aio_.PrepareRead(&op.cb, fd, buffer, length, file_offset, &op.tag);
  submit_.push_back(&op.cb);
}

void VhdIo::QueueWrite(Request& request, int fd, const uint8_t* buffer, uint64_t length, uint64_t file_offset,
                       bool durable) {
  Op& op = NextOp(request);
  aio_.PrepareWrite(&op.cb, fd, buffer, length, file_offset, &op.tag);
  // RWF_DSYNC: the write completes once it is durable (as O_DSYNC would make it). One trip through the
  // kernel instead of a write and then an IOCB_CMD_FDSYNC, which the kernel runs from a workqueue: on a busy
  // machine every such hop waits for a CPU, and an allocation would take four of them.
  if (durable) op.cb.aio_rw_flags = RWF_DSYNC;
  submit_.push_back(&op.cb);
}

bool VhdIo::ReadRound(Request& request) {
  std::array<ImageExtent, kOpsPerRequest> extents;
  while (request.read_done < request.read_length) {
    Result<size_t> mapped = image_.MapFrom(request.read_level, request.read_offset + request.read_done,
                                           request.read_length - request.read_done, extents);
    if (!mapped.ok()) {
      request.error = EIO;
      Log(LogLevel::kError, name_.c_str(), "%s", mapped.status().ToString().c_str());
      return false;
    }
    for (size_t i = 0; i < *mapped; ++i) {
      const ImageExtent& extent = extents[i];
      uint8_t* target = request.read_target + request.read_done;
      if (extent.zero()) {
        std::memset(target, 0, extent.length);  // a hole: the disk is not asked
      } else {
        QueueRead(request, extent.fd, target, extent.length, extent.file_offset);
      }
      request.read_done += extent.length;
    }
    if (request.in_flight > 0) return true;
  }
  return false;
}

void VhdIo::ContinueRead(Request& request) {
  request.phase = Phase::kRead;
  if (ReadRound(request)) return;
  bool filling = request.write;  // a new block's parent fill
  if (request.failed()) {
    if (filling) image_.allocation_gate().Open();
    Finish(request, request.error);
  } else if (filling) {
    WriteNewBlock(request);
  } else {
    Finish(request, 0);
  }
}

void VhdIo::ContinueWrite(Request& request) {
  if (request.done == request.length) {
    Finish(request, 0);
    return;
  }
  uint64_t at = request.offset + request.done;
  uint64_t block_size = image_.block_size();
  uint64_t run = std::min<uint64_t>(request.length - request.done, block_size - at % block_size);
  Result<vhd::BlockWritePlan> plan = image_.PlanWrite(at, run);
  if (!plan.ok()) {
    Fail(request, plan.status());
    return;
  }
  request.plan = *plan;
  request.step_end = request.done + run;
  if (plan->action == vhd::BlockWritePlan::Action::kInPlace && plan->block == request.unsaved_bitmap_block)
    request.plan.action = vhd::BlockWritePlan::Action::kWriteThenBitmap;
  switch (request.plan.action) {
    case vhd::BlockWritePlan::Action::kInPlace:
    case vhd::BlockWritePlan::Action::kWriteThenBitmap:
      request.phase = Phase::kWriteData;
      // The bits of a kWriteThenBitmap may only claim data that is durable.
      QueueWrite(request, image_.data_fd(), request.buffer + request.done, run, plan->data_file_offset,
                 request.plan.action == vhd::BlockWritePlan::Action::kWriteThenBitmap);
      return;
    case vhd::BlockWritePlan::Action::kAllocate:
      if (!image_.allocation_gate().TryClose()) {
        // Another write is allocating (maybe this very block): plan again when it is done.
        request.phase = Phase::kWaitAllocation;
        image_.allocation_gate().Wait(request);
        return;
      }
      StartAllocation(request);
      return;
  }
}

void VhdIo::StartAllocation(Request& request) {
  vhd::VhdImage& leaf = image_.leaf();
  const vhd::BlockWritePlan& plan = request.plan;
  if (!leaf.NeedsParentFill(plan)) {
    WriteNewBlock(request);
    return;
  }
  uint64_t block_bytes = leaf.block_sectors(plan.block) * vhd::kSectorSize;
  request.read_level = 1;
  request.read_offset = uint64_t{plan.block} * leaf.header().block_size;
  request.read_length = block_bytes;
  request.read_done = 0;
  request.read_target = image_.new_block_buffer().data() + leaf.bitmap_bytes();
  ContinueRead(request);
}

void VhdIo::WriteNewBlock(Request& request) {
  vhd::VhdImage& leaf = image_.leaf();
  const vhd::BlockWritePlan& plan = request.plan;
  std::span<uint8_t> block = image_.new_block_buffer();
  leaf.BuildNewBlock(plan, std::span<const uint8_t>(request.buffer + request.done, plan.length), block);
  std::array<uint8_t, vhd::kFooterSize> footer = leaf.EncodedFooter();
  std::copy(footer.begin(), footer.end(), image_.footer_buffer().begin());
  request.phase = Phase::kAllocWrite;
  // Neither is reachable until the BAT points at the block: they go out together.
  QueueWrite(request, image_.data_fd(), image_.footer_buffer().data(), vhd::kFooterSize,
             plan.new_footer_offset, /*durable=*/true);
  QueueWrite(request, image_.data_fd(), block.data(), block.size(), plan.block_offset, /*durable=*/true);
}

void VhdIo::StepDone(Request& request) {
  vhd::VhdImage& leaf = image_.leaf();
  const vhd::BlockWritePlan& plan = request.plan;
  switch (request.phase) {
    case Phase::kRead:
      if (request.failed()) {
        if (request.write) image_.allocation_gate().Open();
        Finish(request, request.error);
      } else {
        ContinueRead(request);
      }
      return;
    case Phase::kWriteData:
      if (request.failed()) break;
      if (plan.action == vhd::BlockWritePlan::Action::kInPlace) {
        request.done = request.step_end;
        ContinueWrite(request);
        return;
      }
      [[fallthrough]];  // the data is durable: now the bitmap
    case Phase::kWaitBitmap: {
      if (request.failed()) break;
      if (!image_.bitmap_gate().TryClose()) {
        request.phase = Phase::kWaitBitmap;
        image_.bitmap_gate().Wait(request);
        return;
      }
      // The sectors are copied when the write is issued; the gate keeps an older copy from landing after a
      // newer one.
      vhd::VhdImage::BitmapSectors sectors = leaf.MarkPresent(plan);
      std::copy(sectors.bytes.begin(), sectors.bytes.end(), image_.bitmap_buffer().begin());
      request.phase = Phase::kBitmapWrite;
      QueueWrite(request, image_.metadata_fd(), image_.bitmap_buffer().data(), sectors.bytes.size(),
                 sectors.file_offset, /*durable=*/false);
      return;
    }
    case Phase::kBitmapWrite:
      image_.bitmap_gate().Open();
      if (request.failed()) {
        request.unsaved_bitmap_block = plan.block;
        break;
      }
      // Not durable yet (no RWF_DSYNC): the batmap may claim the block only after the next sync.
      if (leaf.has_batmap() && leaf.BlockFull(plan.block) && !leaf.BatmapBit(plan.block))
        full_unsynced_.push_back(plan.block);
      request.done = request.step_end;
      ContinueWrite(request);
      return;
    case Phase::kWaitAllocation:
      ContinueWrite(request);
      return;
    case Phase::kAllocWrite:
      if (request.failed()) {
        // Nothing points at the new block: the next allocation may reuse its place.
        image_.allocation_gate().Open();
        break;
      }
      {
        std::array<uint8_t, vhd::kSectorSize> sector = leaf.BatSector(plan);
        std::copy(sector.begin(), sector.end(), image_.bat_buffer().begin());
      }
      request.phase = Phase::kBatWrite;
      QueueWrite(request, image_.metadata_fd(), image_.bat_buffer().data(), vhd::kSectorSize,
                 leaf.BatSectorOffset(plan), /*durable=*/true);
      return;
    case Phase::kBatWrite:
      if (request.failed()) {
        // The BAT on disk may or may not point at the block; it stays reserved so nothing else lands there.
        leaf.AbandonAllocation(plan);
        image_.allocation_gate().Open();
        break;
      }
      leaf.CommitAllocation(plan);
      leaf.NoteBlockFull(plan.block);  // the new block, all bits set, and its BAT entry are durable
      request.done = request.step_end;
      image_.allocation_gate().Open();  // waiters plan again: the block is there now
      ContinueWrite(request);
      return;
    case Phase::kIdle:
      Log(LogLevel::kError, name_.c_str(), "completion for a request that is not in flight");
      return;
  }
  Finish(request, request.error);
}

void VhdIo::Resume(Request& request) {
  ++in_round_;
  StepDone(request);
  --in_round_;
  if (in_round_ == 0) owner_.VhdSubmitNow();
}

void VhdIo::Fail(Request& request, const Status& why) {
  Log(LogLevel::kError, name_.c_str(), "%s", why.ToString().c_str());
  Finish(request, why.error_number() != 0 ? why.error_number() : EIO);
}

void VhdIo::Finish(Request& request, int error) {
  request.phase = Phase::kIdle;
  if (error == 0) request.unsaved_bitmap_block = kNoBlock;
  owner_.VhdDataDone(request.slot, error);
}

void VhdIo::OnCompletion(const io_event& event) {
  ++in_round_;
  Op& op = *static_cast<Op*>(event.data);
  Request& request = *op.request;
  auto result = static_cast<long>(event.res);
  if (result < 0 || static_cast<unsigned long>(result) != op.cb.u.c.nbytes) {
    if (!request.failed()) {
      Log(LogLevel::kWarning, name_.c_str(), "vhd %s of %lu bytes at file byte %lld: %s",
          op.cb.aio_lio_opcode == IO_CMD_PREAD    ? "read"
          : op.cb.aio_lio_opcode == IO_CMD_PWRITE ? "write"
                                                  : "sync",
          op.cb.u.c.nbytes, op.cb.u.c.offset,
          result < 0 ? std::strerror(static_cast<int>(-result)) : "short transfer");
      // A short transfer is retried as a whole, like a transient error.
      request.error = result < 0 ? static_cast<int>(-result) : EAGAIN;
    }
  }
  if (--request.in_flight == 0) StepDone(request);
  --in_round_;
}

void VhdIo::FinishCompletions() { owner_.VhdSubmitNow(); }

void VhdIo::Refused(iocb* cb, const Status& why) {
  ++in_round_;
  Op& op = *static_cast<Op*>(cb->data);
  Request& request = *op.request;
  if (!request.failed()) {
    Log(LogLevel::kError, name_.c_str(), "vhd I/O refused: %s", why.ToString().c_str());
    request.error = why.error_number() != 0 ? why.error_number() : EIO;
  }
  if (--request.in_flight == 0) StepDone(request);
  --in_round_;
}

Status VhdIo::Discard(uint64_t offset, uint64_t length) {
  std::array<ImageExtent, kOpsPerRequest> extents;
  while (length > 0) {
    Result<size_t> mapped = image_.MapFrom(0, offset, length, extents);
    if (!mapped.ok()) return mapped.status();
    uint64_t covered = 0;
    for (size_t i = 0; i < *mapped; ++i) {
      const ImageExtent& extent = extents[i];
      // Only the leaf's own data: a parent is never written.
      if (extent.fd == image_.data_fd())
        BLK_RETURN_IF_ERROR(::blk::Discard(extent.fd, extent.file_offset, extent.length));
      covered += extent.length;
    }
    if (covered == 0 || covered > length)
      return Status::Corruption("discard: the image maps no bytes at " + std::to_string(offset));
    offset += covered;
    length -= covered;
  }
  return Status::Ok();
}

void VhdIo::BeforeFlush() {
  vhd::VhdImage& leaf = image_.leaf();
  // A sync already in flight may have been issued before those bitmap writes ended: only the first of
  // overlapping syncs takes them, and any of them that succeeds covers it.
  if (syncs_in_flight_++ == 0) {
    full_syncing_.insert(full_syncing_.end(), full_unsynced_.begin(), full_unsynced_.end());
    full_unsynced_.clear();
  }
  // Both are written synchronously, through the O_DIRECT descriptor, and made durable by the flush's own
  // sync: the batmap only after new blocks since the last flush (a sector or two and its header), the footer
  // once per open of an image opened from its footer copy or an old-style footer.
  if (leaf.batmap_dirty()) {
    Status status;
    for (const vhd::VhdImage::MetadataWrite& write : leaf.PendingBatmapWrites()) {
      status = WriteMetadataNow(write.file_offset, write.bytes);
      if (!status.ok()) break;
    }
    if (status.ok()) {
      leaf.BatmapWritten();
    } else {
      Log(LogLevel::kWarning, name_.c_str(), "batmap not updated (a hint: it may lag): %s",
          status.ToString().c_str());
    }
  }
  if (!footer_rewritten_ && leaf.footer_dirty()) {
    footer_rewritten_ = true;
    Status status;
    if (leaf.footer_offset() % vhd::kSectorSize != 0) {
      // An old 511-byte footer, not where a direct write can go: the image's own buffered file, which syncs
      // at once, so no dirty page stays behind.
      status = leaf.Flush();
    } else {
      std::array<uint8_t, vhd::kFooterSize> footer = leaf.EncodedFooter();
      status = WriteMetadataNow(leaf.footer_offset(), footer);
      // A fixed disk has no copy at offset 0: that is guest data.
      if (status.ok() && leaf.type() != vhd::DiskType::kFixed) status = WriteMetadataNow(0, footer);
      if (status.ok()) leaf.FootersWritten();
    }
    if (!status.ok())
      Log(LogLevel::kError, name_.c_str(), "rewriting the footer: %s", status.ToString().c_str());
  }
}

Status VhdIo::WriteMetadataNow(uint64_t file_offset, std::span<const uint8_t> bytes) {
  std::span<uint8_t> buffer = image_.metadata_buffer();
  if (bytes.size() > buffer.size()) return Status::InvalidArgument("metadata write larger than its buffer");
  std::copy(bytes.begin(), bytes.end(), buffer.begin());
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t wrote = ::pwrite(image_.metadata_fd(), buffer.data() + done, bytes.size() - done,
                             static_cast<off_t>(file_offset + done));
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) {
      return Status::FromErrno(
          wrote < 0 ? errno : EIO,
          "write of " + std::to_string(bytes.size()) + " bytes at file byte " + std::to_string(file_offset));
    }
    done += static_cast<size_t>(wrote);
  }
  return Status::Ok();
}

void VhdIo::AfterSync(bool ok) {
  if (syncs_in_flight_ > 0) --syncs_in_flight_;
  if (ok) {
    for (uint32_t block : full_syncing_) image_.leaf().NoteBlockFull(block);
    full_syncing_.clear();
  } else if (syncs_in_flight_ == 0) {
    full_unsynced_.insert(full_unsynced_.end(), full_syncing_.begin(), full_syncing_.end());
    full_syncing_.clear();
  }
}

}  // namespace blk
