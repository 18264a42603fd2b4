// RequestPipeline: kick -> validate -> grant copy in -> io_submit -> completion -> grant copy out -> respond.
#include "backend/request_pipeline.h"

#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/clock.h"
#include "base/log.h"
#include "formats/discard.h"
#include "formats/raw_image.h"
#include "formats/vhd_disk_image.h"

namespace blk {
namespace {

constexpr size_t kSlotBufferBytes = kMaxDirectSegments * kPageSize;
constexpr uint16_t kMaxMergedRequests = 64;
constexpr uint32_t kMaxMergedBytes = 1u << 20;
// A hostile frontend can send bad requests forever; the log gets the first ones and then a sample.
constexpr uint64_t kBadRequestsLoggedInFull = 20;
constexpr uint64_t kBadRequestLogSampling = 10000;

const char* OperationName(uint8_t operation) {
  switch (operation) {
    case BLKIF_OP_READ:
      return "read";
    case BLKIF_OP_WRITE:
      return "write";
    case BLKIF_OP_WRITE_BARRIER:
      return "barrier";
    case BLKIF_OP_FLUSH_DISKCACHE:
      return "flush";
    case BLKIF_OP_DISCARD:
      return "discard";
    case BLKIF_OP_INDIRECT:
      return "indirect";
    default:
      return "unknown";
  }
}

// Errors that say "not now" rather than "not ever": the I/O is tried again after a back-off.
bool IsTransient(int error) { return error == EAGAIN || error == EINTR || error == ENOMEM || error == EBUSY; }

// What a response names: an INDIRECT request is answered as the READ or WRITE it carried (Linux blkfront
// matches the response's operation against the one it queued).
uint8_t ResponseOperation(const Request& request) {
  return request.operation == BLKIF_OP_INDIRECT ? request.indirect_op : request.operation;
}

size_t LargeBufferBytes(uint32_t max_segments) {
  return (size_t{max_segments} + IndirectPages(max_segments)) * kPageSize;
}

constexpr uint32_t kFirstRetryDelayMs = 1;
constexpr uint32_t kMaxRetryDelayMs = 1000;

}  // namespace

const char* BlkifOperationName(uint8_t operation) { return OperationName(operation); }

Result<std::unique_ptr<RequestPipeline>> RequestPipeline::Create(std::string name, Hypervisor& hypervisor,
                                                                 const RingConnection& connection,
                                                                 std::shared_ptr<DiskImage> image,
                                                                 const DiskLimits& limits, AioEngine& aio,
                                                                 std::shared_ptr<DeviceStats> stats) {
  size_t pages = connection.ring_refs.size();
  if (pages == 0 || (pages & (pages - 1)) != 0) {
    return Status::InvalidArgument(name + ": a ring of " + std::to_string(pages) +
                                   " pages is not a power of two");
  }
  auto ring = hypervisor.grants.Map(connection.frontend_domid, connection.ring_refs, /*writable=*/true);
  if (!ring.ok()) return ring.status().Annotate(name + ": mapping the ring: ");
  auto channel = hypervisor.events.BindInterdomain(connection.frontend_domid, connection.event_channel);
  if (!channel.ok()) return channel.status().Annotate(name + ": binding the event channel: ");
  if (limits.max_indirect_segments > kMaxIndirectSegments) {
    return Status::InvalidArgument(name + ": max-indirect-segments " +
                                   std::to_string(limits.max_indirect_segments) + " beyond " +
                                   std::to_string(kMaxIndirectSegments));
  }
  uint32_t slots = RingSlots(connection.abi, pages);
  uint32_t large_buffers = limits.max_indirect_segments == 0 ? 0 : std::min(slots, kIndirectBuffers);
  size_t buffer_bytes =
      slots * kSlotBufferBytes + large_buffers * LargeBufferBytes(limits.max_indirect_segments);
  void* buffers = ::mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buffers == MAP_FAILED) return Status::FromErrno(errno, name + ": allocating bounce buffers");
  return std::unique_ptr<RequestPipeline>(new RequestPipeline(
      std::move(name), hypervisor, std::move(*ring), pages, connection.abi, std::move(*channel),
      connection.frontend_domid, std::move(image), limits, aio, std::move(stats),
      Mapping(buffers, buffer_bytes), large_buffers, connection.persistent, connection.persistent_capacity));
}

RequestPipeline::RequestPipeline(std::string name, Hypervisor& hypervisor, GrantMapping ring_mapping,
                                 size_t ring_pages, Abi abi, std::unique_ptr<EventChannel> channel,
                                 DomId frontend, std::shared_ptr<DiskImage> image, const DiskLimits& limits,
                                 AioEngine& aio, std::shared_ptr<DeviceStats> stats, Mapping buffers,
                                 uint32_t large_buffers, bool persistent, size_t persistent_capacity)
    : name_(std::move(name)),
      hypervisor_(hypervisor),
      ring_mapping_(std::move(ring_mapping)),
      ring_(ring_mapping_.addr(), ring_pages, abi),
      channel_(std::move(channel)),
      frontend_(frontend),
      image_(std::move(image)),
      fd_(image_->format() == ImageFormat::kRaw ? static_cast<RawImage&>(*image_).fd()
                                                : static_cast<VhdDiskImage&>(*image_).data_fd()),
      limits_(limits),
      aio_(aio),
      stats_owner_(std::move(stats)),
      stats_(*stats_owner_),
      buffers_(std::move(buffers)) {
  uint32_t slots = ring_.slots();
  const uint32_t max_indirect = limits_.max_indirect_segments;
  if (persistent) {
    persistent_ = std::make_unique<PersistentGrantCache>(hypervisor_.grants, frontend_, persistent_capacity);
    size_t segments = size_t{slots} * kMaxDirectSegments + size_t{large_buffers} * max_indirect;
    direct_iovecs_.resize(segments);
    direct_mapped_.resize(segments);
  }
  slots_.resize(slots);
  free_slots_.reserve(slots);
  for (uint32_t i = 0; i < slots; ++i) {
    Slot& slot = slots_[i];
    slot.tag.handler = this;
    slot.buffer = buffers_.as<uint8_t>() + static_cast<size_t>(i) * kSlotBufferBytes;
    slot.stage = Stage::kFree;
    slot.large = kNoSlot;
    slot.fetching_indirect = false;
    slot.segments = slot.request.segments.data();
    slot.segment_count = 0;
    slot.zero_copy = false;
    slot.segment_iovecs = persistent ? &direct_iovecs_[size_t{i} * kMaxDirectSegments] : nullptr;
    slot.segment_mapped = persistent ? &direct_mapped_[size_t{i} * kMaxDirectSegments] : nullptr;
    free_slots_.push_back(slots - 1 - i);
  }
  uint8_t* large_area = buffers_.as<uint8_t>() + static_cast<size_t>(slots) * kSlotBufferBytes;
  indirect_segments_.resize(static_cast<size_t>(large_buffers) * max_indirect);
  for (uint32_t i = 0; i < large_buffers; ++i) {
    uint8_t* data = large_area + static_cast<size_t>(i) * LargeBufferBytes(max_indirect);
    size_t first_segment = size_t{slots} * kMaxDirectSegments + size_t{i} * max_indirect;
    large_.push_back({data, data + static_cast<size_t>(max_indirect) * kPageSize,
                      indirect_segments_.data() + static_cast<size_t>(i) * max_indirect,
                      persistent ? &direct_iovecs_[first_segment] : nullptr,
                      persistent ? &direct_mapped_[first_segment] : nullptr});
    free_large_.push_back(large_buffers - 1 - i);
  }
  indirect_writes_.reserve(large_buffers);
  iovecs_.resize(static_cast<size_t>(slots) * kMaxMergedRequests);
  for (uint32_t i = 0; i < slots; ++i)
    slots_[i].iovecs = &iovecs_[static_cast<size_t>(i) * kMaxMergedRequests];
  ready_.reserve(slots);
  queue_.resize(slots);
  taken_.resize(slots);
  copies_.reserve(static_cast<size_t>(slots) * kMaxDirectSegments +
                  static_cast<size_t>(large_buffers) * (max_indirect + IndirectPages(max_indirect)));
  copy_slots_.reserve(slots);
  // A VHD request may have several iocbs in flight (its pieces, or a new block and its footer).
  size_t iocbs = image_->format() == ImageFormat::kVhd ? size_t{slots} * VhdIo::kOpsPerRequest : slots;
  submit_.reserve(iocbs);
  deferred_.reserve(iocbs);
  if (image_->format() == ImageFormat::kVhd) {
    vhd_ = std::make_unique<VhdIo>(name_, static_cast<VhdIo::Owner&>(*this),
                                   static_cast<VhdDiskImage&>(*image_), aio_, slots, submit_);
  }
  reads_done_.reserve(slots);
  retrying_.reserve(slots);
}

RequestPipeline::~RequestPipeline() {
  if (started_ != 0) {
    Log(LogLevel::kError, name_.c_str(), "destroyed with %u requests in flight", started_);
  }
  if (pause_done_) pause_done_(Status::IoError(name_ + ": disconnected while pausing"));
}

void RequestPipeline::OnKick() {
  Status acknowledged = channel_->Acknowledge();
  if (!acknowledged.ok()) Log(LogLevel::kWarning, name_.c_str(), "%s", acknowledged.ToString().c_str());
  Pump();
  PushResponses();
}

bool RequestPipeline::PollRing() {
  // With every slot taken, requests on the ring wait for a completion, which the worker polls for anyway.
  if (broken() || stopped_ || pause_state_ != PauseState::kRunning || free_slots_.empty() ||
      !ring_.HasUnconsumedRequests())
    return false;
  Pump();
  PushResponses();
  return true;
}

bool RequestPipeline::ArmForSleep() {
  // A full ring is taken from again when a completion frees a slot, not on a notification.
  if (broken() || stopped_ || pause_state_ != PauseState::kRunning || free_slots_.empty()) return false;
  return ring_.FinalCheckForRequests();
}

void RequestPipeline::TakeAnotherRound() {
  Pump();
  PushResponses();
}

void RequestPipeline::Pump() {
  // Refused requests are answered at once and hold no slot, so a frontend publishing them as fast as we
  // answer would keep this loop, and every other ring of the worker, waiting: a round takes a ring's worth.
  size_t budget = ring_.slots();
  another_round_ = false;
  if (persistent_) SweepPersistentGrants();
  for (;;) {
    while (!broken() && !stopped_ && pause_state_ == PauseState::kRunning && !free_slots_.empty()) {
      if (budget == 0) {
        another_round_ = true;
        break;
      }
      auto taken = ring_.Take(std::span(taken_).first(std::min(free_slots_.size(), budget)));
      if (!taken.ok()) {
        broken_.store(true, std::memory_order_relaxed);
        Log(LogLevel::kError, name_.c_str(), "broken frontend, ring stopped: %s",
            taken.status().ToString().c_str());
        break;
      }
      if (*taken == 0) {
        if (!polling_ && ring_.FinalCheckForRequests()) continue;
        break;
      }
      budget -= *taken;
      for (size_t i = 0; i < *taken; ++i) Admit(taken_[i]);
    }
    const bool slots_ran_out = free_slots_.empty();
    StartQueued();
    // Requests answered without I/O (VHD reads of holes) free their slots here, and no completion will come
    // to take the rest: with the slots full, the ring was neither emptied nor re-armed (req_event), so the
    // frontend would not kick again. Take more now, within the round's budget.
    if (slots_ran_out && !free_slots_.empty() && !another_round_) {
      if (budget > 0) continue;
      another_round_ = true;  // the worker comes back to this ring after the others had their turn
    }
    break;
  }
}

void RequestPipeline::SweepPersistentGrants() {
  // Once a second of activity; a grant not used for kIdleSweeps of them is unmapped.
  constexpr uint64_t kSweepIntervalNs = 1000000000ull;
  constexpr unsigned kIdleSweeps = 10;
  uint64_t now = MonotonicNs();
  if (now - last_sweep_ns_ < kSweepIntervalNs) return;
  last_sweep_ns_ = now;
  persistent_->Sweep(kIdleSweeps);
}

void RequestPipeline::Admit(const Request& request) {
  Validation validation = ValidateRequest(request, limits_);
  switch (ResponseOperation(request)) {
    case BLKIF_OP_READ:
      DeviceStats::Add(stats_.rd_req, 1);
      break;
    case BLKIF_OP_WRITE:
      DeviceStats::Add(stats_.wr_req, 1);
      break;
    case BLKIF_OP_WRITE_BARRIER:
    case BLKIF_OP_FLUSH_DISKCACHE:
      DeviceStats::Add(stats_.f_req, 1);
      break;
    case BLKIF_OP_DISCARD:
      DeviceStats::Add(stats_.ds_req, 1);
      break;
    default:
      break;
  }
  if (validation.verdict != Verdict::kOk) {
    NoteBadRequest(request, validation.reason);
    RespondNow(request, ResponseStatus(validation.verdict));
    return;
  }
  if (request.operation != BLKIF_OP_DISCARD)
    DeviceStats::Add(validation.is_write ? stats_.wr_sect : stats_.rd_sect, validation.sectors);
  Slot& slot = slots_[free_slots_.back()];
  free_slots_.pop_back();
  slot.request = request;
  slot.offset = request.sector_number << kSectorShift;
  // A discard's sectors are a range to drop, not data to move.
  slot.length =
      request.operation == BLKIF_OP_DISCARD ? 0 : static_cast<uint32_t>(validation.sectors << kSectorShift);
  slot.writes = validation.is_write && slot.length > 0;
  slot.pre_sync = request.operation == BLKIF_OP_WRITE_BARRIER && slot.length > 0;
  slot.post_sync =
      request.operation == BLKIF_OP_WRITE_BARRIER || request.operation == BLKIF_OP_FLUSH_DISKCACHE;
  slot.segments = slot.request.segments.data();
  slot.segment_count = request.operation == BLKIF_OP_DISCARD ? 0 : request.nr_segments;
  if (request.operation == BLKIF_OP_INDIRECT) {
    // The data size is known once the indirect pages are read; until then it moves nothing.
    slot.writes = validation.is_write;
    slot.segment_count = 0;
  }
  slot.stage = Stage::kQueued;
  slot.may_merge = true;
  slot.taken_ns = MonotonicNs();
  slot.done = 0;
  slot.retry_deadline_ns = 0;
  in_flight_.store(in_flight_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  queue_[(queue_head_ + queue_size_) % queue_.size()] = SlotIndex(slot);
  ++queue_size_;
}

void RequestPipeline::StartQueued() {
  for (;;) {
    StartQueuedRound();
    if (reads_done_.empty()) break;
    // VHD reads of holes, done without the disk. Answering them gives back large buffers and lowers
    // started_, which requests still queued may wait for (an indirect one, a barrier); no completion will
    // come to start those, and the frontend, waiting for them, sends no kick.
    CopyReadsOut();
    if (queue_size_ == 0) break;
  }
  Submit();
}

void RequestPipeline::StartQueuedRound() {
  const uint64_t piece_bytes = MaxMergedBytes();
  bool retry = true;
  while (retry) {
    retry = false;
    copies_.clear();
    copy_slots_.clear();
    uint64_t copy_bytes = 0;  // of the writes whose data this batch copies in
    bool piece_full = false;
    for (Slot* slot : indirect_writes_) BeginData(*slot);
    indirect_writes_.clear();
    while (queue_size_ > 0 && !barrier_running_) {
      Slot& slot = slots_[queue_[queue_head_]];
      if (slot.writes && copy_bytes > 0 && copy_bytes + slot.length > piece_bytes) {
        piece_full = true;  // this piece goes to the device before the next is copied
        break;
      }
      bool barrier = slot.request.operation == BLKIF_OP_WRITE_BARRIER;
      if (barrier && started_ > 0) break;  // everything before a barrier is answered before it starts
      bool indirect = slot.request.operation == BLKIF_OP_INDIRECT;
      if (indirect && free_large_.empty()) break;  // waits for an indirect request to be answered
      queue_head_ = (queue_head_ + 1) % queue_.size();
      --queue_size_;
      ++started_;
      barrier_running_ = barrier;
      if (indirect) {
        slot.large = free_large_.back();
        free_large_.pop_back();
        slot.buffer = large_[slot.large].data;
        AddIndirectPageCopies(slot);
        copy_slots_.push_back(&slot);
      } else if (slot.length > 0) {
        const size_t copying = copy_slots_.size();
        BeginData(slot);
        if (copy_slots_.size() > copying) copy_bytes += slot.length;
      } else if (slot.request.operation == BLKIF_OP_DISCARD) {
        DiscardNow(slot);
      } else {
        PrepareSync(slot);
      }
    }
    if (copies_.empty()) break;
    Status copied = hypervisor_.grants.Copy(copies_);
    for (Slot* slot : copy_slots_) {
      if (slot->fetching_indirect) {
        FinishIndirectFetch(*slot, CopyFailure(*slot, copied));
        retry = true;  // its data to copy in, or its large buffer free again
        continue;
      }
      if (int16_t failure = CopyFailure(*slot, copied); failure != GNTST_okay) {
        Log(LogLevel::kWarning, name_.c_str(), "write id %llu: grant copy from the guest failed (status %d)",
            static_cast<unsigned long long>(slot->request.id), failure);
        DeviceStats::Add(stats_.io_errors, 1);
        Respond(*slot, BLKIF_RSP_ERROR);
        retry = true;  // a failed barrier no longer holds the queue back
      } else {
        WriteDataArrived(*slot);
      }
    }
    if (piece_full) {
      Submit();
      retry = true;
    }
  }
}

void RequestPipeline::BeginData(Slot& slot) {
  if (persistent_ && !vhd_) {
    int16_t failure = MapSegments(slot);
    if (failure != GNTST_okay) {
      Log(LogLevel::kWarning, name_.c_str(), "%s id %llu: mapping a persistent grant failed (status %d)",
          OperationName(ResponseOperation(slot.request)), static_cast<unsigned long long>(slot.request.id),
          failure);
      DeviceStats::Add(stats_.io_errors, 1);
      Respond(slot, BLKIF_RSP_ERROR);
      return;
    }
  }
  if (!slot.writes) {
    PrepareData(slot);
    return;
  }
  AddCopies(slot, GrantCopySegment::Direction::kFromGuest);
  if (slot.copy_count > 0) {
    copy_slots_.push_back(&slot);
  } else {
    WriteDataArrived(slot);  // every segment is a persistently mapped page: nothing to copy
  }
}

void RequestPipeline::WriteDataArrived(Slot& slot) {
  if (slot.pre_sync) {
    slot.stage = Stage::kPreSync;
    aio_.PrepareFdsync(&slot.cb, fd_, &slot.tag);
    submit_.push_back(&slot.cb);
  } else {
    PrepareData(slot);
  }
}

int16_t RequestPipeline::MapSegments(Slot& slot) {
  uint32_t packed = 0;
  for (unsigned i = 0; i < slot.segment_count; ++i) {
    const RequestSegment& segment = slot.segments[i];
    size_t bytes = size_t{segment.last_sect - segment.first_sect + 1u} << kSectorShift;
    Result<uint8_t*> page = persistent_->Acquire(segment.gref);
    if (page.ok()) {
      slot.segment_iovecs[i] = {*page + (size_t{segment.first_sect} << kSectorShift), bytes};
      slot.segment_mapped[i] = 1;
    } else if (page.status().code() == Status::Code::kBusy) {
      // Every cached grant is in use: this segment goes through the bounce buffer.
      slot.segment_iovecs[i] = {slot.buffer + packed, bytes};
      slot.segment_mapped[i] = 0;
    } else {
      for (unsigned j = 0; j < i; ++j) {
        if (slot.segment_mapped[j]) persistent_->Release(slot.segments[j].gref);
      }
      return GNTST_general_error;
    }
    packed += static_cast<uint32_t>(bytes);
  }
  slot.zero_copy = true;
  return GNTST_okay;
}

void RequestPipeline::ReleaseSegments(Slot& slot) {
  if (!slot.zero_copy) return;
  for (unsigned i = 0; i < slot.segment_count; ++i) {
    if (slot.segment_mapped[i]) persistent_->Release(slot.segments[i].gref);
  }
  slot.zero_copy = false;
}

void RequestPipeline::DiscardNow(Slot& slot) {
  uint64_t offset = slot.request.sector_number << kSectorShift;
  uint64_t length = slot.request.discard_sectors << kSectorShift;
  // Validation lets a secure discard through only where discard-secure was offered: a raw block device.
  bool secure = slot.request.discard_flag & BLKIF_DISCARD_SECURE;
  Status discarded;
  if (!secure) {
    discarded = vhd_ ? vhd_->Discard(offset, length) : Discard(fd_, offset, length);
  } else {
    discarded = vhd_ ? Status::NotSupported("a VHD cannot erase securely") : SecureErase(fd_, offset, length);
  }
  if (discarded.ok()) {
    Respond(slot, BLKIF_RSP_OKAY);
    return;
  }
  if (discarded.code() == Status::Code::kNotSupported) {
    // The operator offered discard-secure on a device that cannot keep it: worth a line (once), the guest
    // only sees EOPNOTSUPP.
    if (secure && !secure_erase_refusal_logged_) {
      secure_erase_refusal_logged_ = true;
      Log(LogLevel::kWarning, name_.c_str(), "secure discard id %llu: %s",
          static_cast<unsigned long long>(slot.request.id), discarded.message().c_str());
    }
    Respond(slot, BLKIF_RSP_EOPNOTSUPP);
    return;
  }
  Log(LogLevel::kWarning, name_.c_str(), "discard id %llu: %s",
      static_cast<unsigned long long>(slot.request.id), discarded.ToString().c_str());
  DeviceStats::Add(stats_.io_errors, 1);
  Respond(slot, BLKIF_RSP_ERROR);
}

void RequestPipeline::PrepareData(Slot& slot) {
  slot.stage = Stage::kData;
  if (vhd_) {
    slot.chain_count = 1;
    slot.chain_bytes = slot.length;
    slot.chain_next = kNoSlot;
    vhd_->Start(SlotIndex(slot), slot.writes, slot.offset, slot.length, slot.buffer);
    return;
  }
  ready_.push_back(SlotIndex(slot));
}

void RequestPipeline::VhdDataDone(uint32_t index, int error) {
  Slot& slot = slots_[index];
  if (error == 0) {
    CompleteData(slot);
  } else if (IsTransient(error)) {
    // The whole data stage runs again: its writes are idempotent, and an allocation that failed was either
    // committed (the retry writes in place) or left nothing the BAT points at.
    RetryLater(slot, std::strerror(error));
  } else {
    FailIo(slot, std::strerror(error));
  }
}

void RequestPipeline::BuildDataIocbs() {
  const uint32_t max_merged_bytes = MaxMergedBytes();
  Slot* head = nullptr;
  Slot* last = nullptr;
  for (uint32_t index : ready_) {
    Slot& slot = slots_[index];
    slot.chain_count = 1;
    slot.chain_bytes = slot.length;
    slot.chain_next = kNoSlot;
    bool plain = !slot.pre_sync && !slot.post_sync;
    if (head != nullptr && plain && slot.may_merge && head->may_merge && !slot.zero_copy &&
        !head->zero_copy && !head->post_sync && !head->pre_sync && slot.writes == head->writes &&
        last->offset + last->length == slot.offset && head->chain_count < kMaxMergedRequests &&
        head->chain_bytes + slot.length <= max_merged_bytes) {
      last->chain_next = index;
      ++head->chain_count;
      head->chain_bytes += slot.length;
      last = &slot;
      continue;
    }
    if (head != nullptr) SubmitChain(*head);
    head = &slot;
    last = &slot;
  }
  if (head != nullptr) SubmitChain(*head);
  ready_.clear();
}

void RequestPipeline::SubmitChain(Slot& head) {
  if (head.zero_copy) {
    // An iovec per segment: persistently mapped pages, and bounce-buffer pieces for those not cached.
    if (head.writes) {
      aio_.PrepareWritev(&head.cb, fd_, head.segment_iovecs, head.segment_count, head.offset, &head.tag);
    } else {
      aio_.PrepareReadv(&head.cb, fd_, head.segment_iovecs, head.segment_count, head.offset, &head.tag);
    }
  } else if (head.chain_count == 1) {
    // `done`: what a short transfer already moved.
    if (head.writes) {
      aio_.PrepareWrite(&head.cb, fd_, head.buffer + head.done, head.length - head.done,
                        head.offset + head.done, &head.tag);
    } else {
      aio_.PrepareRead(&head.cb, fd_, head.buffer + head.done, head.length - head.done,
                       head.offset + head.done, &head.tag);
    }
  } else {
    int count = 0;
    for (uint32_t index = SlotIndex(head); index != kNoSlot; index = slots_[index].chain_next) {
      head.iovecs[count++] = {slots_[index].buffer, slots_[index].length};
    }
    if (head.writes) {
      aio_.PrepareWritev(&head.cb, fd_, head.iovecs, count, head.offset, &head.tag);
    } else {
      aio_.PrepareReadv(&head.cb, fd_, head.iovecs, count, head.offset, &head.tag);
    }
  }
  submit_.push_back(&head.cb);
}

void RequestPipeline::PrepareSync(Slot& slot) {
  slot.stage = Stage::kPostSync;
  if (vhd_) vhd_->BeforeFlush();
  aio_.PrepareFdsync(&slot.cb, fd_, &slot.tag);
  submit_.push_back(&slot.cb);
}

void RequestPipeline::Submit() {
  BuildDataIocbs();
  if (submit_.empty()) return;
  const size_t per_call = IocbsPerSubmit();
  size_t next = 0;
  bool held = false;
  while (next < submit_.size()) {
    Status refused;
    size_t wanted = 0;
    uint64_t bytes = 0;
    while (next + wanted < submit_.size() && wanted < per_call && bytes < kSubmitChunkBytes) {
      bytes += DataBytes(*submit_[next + wanted]);
      ++wanted;
    }
    size_t accepted = aio_.Submit(std::span(submit_).subspan(next, wanted), &refused);
    // The device's latency counts from the call's return: storage that works within the call (tmpfs) is
    // fast however long a large copy took, and a call does not count the calls before it.
    const uint64_t now = MonotonicNs();
    for (size_t i = next; i < next + accepted; ++i) {
      if (static_cast<AioTag*>(submit_[i]->data)->handler == this)
        reinterpret_cast<Slot*>(submit_[i]->data)->submitted_ns = now;
    }
    DeviceStats::Add(stats_.iocbs, accepted);
    next += accepted;
    if (accepted == wanted) {
      // Storage that does the I/O within io_submit (tmpfs) has completed this piece already: its responses go
      // out before the next piece is copied, so that the guest refills the ring meanwhile. A completion of
      // this piece's data brings the worker back here (FinishCompletions).
      if (per_call > 1 && bytes > 0 && next < submit_.size() && aio_.HasCompletions()) {
        held = true;
        break;
      }
      continue;
    }
    if (refused.retryable()) {
      DeviceStats::Add(stats_.oo_req, submit_.size() - next);
      deferred_.insert(deferred_.end(), submit_.begin() + static_cast<long>(next), submit_.end());
      break;
    }
    // The kernel refused this one iocb for good (a bad fd, an unsupported operation): only it fails.
    if (static_cast<AioTag*>(submit_[next]->data)->handler != this) {
      vhd_->Refused(submit_[next], refused);
      ++next;
      continue;
    }
    Slot& slot = *reinterpret_cast<Slot*>(submit_[next]->data);
    Log(LogLevel::kError, name_.c_str(), "%s id %llu: %s", OperationName(slot.request.operation),
        static_cast<unsigned long long>(slot.request.id), refused.ToString().c_str());
    if (slot.stage == Stage::kData && slot.chain_count > 1) {
      SplitChain(slot);
    } else {
      if (vhd_ && slot.stage == Stage::kPostSync) vhd_->AfterSync(false);
      DeviceStats::Add(stats_.io_errors, 1);
      Respond(slot, BLKIF_RSP_ERROR);
    }
    ++next;
  }
  if (held) {
    submit_.erase(submit_.begin(), submit_.begin() + static_cast<long>(next));
    return;
  }
  submit_.clear();
  if (!ready_.empty()) Submit();  // requests of a refused merged I/O, now on their own
}

uint32_t RequestPipeline::MaxMergedBytes() const {
  return device_slow() ? static_cast<uint32_t>(kSubmitChunkBytes) : kMaxMergedBytes;
}

uint64_t RequestPipeline::DataBytes(const iocb& cb) const {
  if (static_cast<AioTag*>(cb.data)->handler != this) return 0;
  const Slot& slot = *reinterpret_cast<const Slot*>(cb.data);
  return slot.stage == Stage::kData ? slot.chain_bytes - slot.done : 0;
}

void RequestPipeline::SplitChain(Slot& head) {
  uint32_t index = SlotIndex(head);
  while (index != kNoSlot) {
    Slot& member = slots_[index];
    index = member.chain_next;
    member.may_merge = false;
    PrepareData(member);
  }
}

void RequestPipeline::RetryDeferred() {
  submit_.swap(deferred_);
  Submit();
  PushResponses();
}

void RequestPipeline::OnCompletion(const io_event& event) {
  Slot& slot = *reinterpret_cast<Slot*>(event.data);
  long result = static_cast<long>(event.res);
  bool data = slot.stage == Stage::kData;
  if (data) NoteDeviceLatency(slot);
  long expected = data ? static_cast<long>(slot.chain_bytes - slot.done) : 0;
  bool failed = data ? result != expected : result < 0;
  if (failed && data && slot.chain_count > 1) {
    // Which of the merged requests failed is not known: retry each alone.
    SplitChain(slot);
    return;
  }
  if (failed) {
    if (data && result > 0) {
      // A short transfer moved part of the data: go on with the rest at once. (A zero-copy I/O's iovecs
      // point into the guest's pages: it runs again whole, which is idempotent.)
      if (!slot.zero_copy) slot.done += static_cast<uint32_t>(result);
      slot.may_merge = false;
      PrepareData(slot);
      return;
    }
    // Nothing moved without an error: the file ends before this range (the image shrank under the disk).
    // That does not clear by waiting, so it fails the request at once.
    int error = result < 0 ? static_cast<int>(-result) : EIO;
    const char* why =
        result < 0 ? std::strerror(error) : "nothing transferred: the image file ends before this range";
    if (!data) {
      if (vhd_ && slot.stage == Stage::kPostSync) vhd_->AfterSync(false);
      // A failed sync is never retried: the kernel may have dropped the dirty pages it could not write, and
      // reports that once per open file (errseq), so a second fdatasync could succeed over lost data.
      DeviceStats::Add(stats_.sync_errors, 1);
      FailIo(slot, why);
    } else if (IsTransient(error)) {
      RetryLater(slot, why);
    } else {
      FailIo(slot, why);
    }
    return;
  }
  switch (slot.stage) {
    case Stage::kPreSync:
      PrepareData(slot);
      break;
    case Stage::kData: {
      uint32_t index = SlotIndex(slot);
      while (index != kNoSlot) {
        Slot& member = slots_[index];
        index = member.chain_next;  // read before CompleteData may free the slot
        CompleteData(member);
      }
      break;
    }
    case Stage::kPostSync:
      if (vhd_) vhd_->AfterSync(true);
      // Sticky: after any failed sync of this image, no flush may claim that earlier writes are durable.
      if (stats_.sync_errors.load(std::memory_order_relaxed) != 0) {
        FailIo(slot, "an earlier sync of this image failed");
      } else {
        Respond(slot, BLKIF_RSP_OKAY);
      }
      break;
    case Stage::kFree:
    case Stage::kQueued:
      Log(LogLevel::kError, name_.c_str(), "completion for a slot that is not in flight");
      break;
  }
}

void RequestPipeline::FailIo(Slot& slot, const char* why) {
  Log(LogLevel::kError, name_.c_str(), "%s id %llu at byte %llu: %s", OperationName(slot.request.operation),
      static_cast<unsigned long long>(slot.request.id), static_cast<unsigned long long>(slot.offset), why);
  DeviceStats::Add(stats_.io_errors, 1);
  Respond(slot, BLKIF_RSP_ERROR);
}

void RequestPipeline::RetryLater(Slot& slot, const char* why) {
  uint64_t now = MonotonicNs();
  if (slot.retry_deadline_ns == 0) {
    slot.retry_deadline_ns = now + aio_.io_retry_ns();
    slot.retry_delay_ms = kFirstRetryDelayMs;
    Log(LogLevel::kWarning, name_.c_str(), "%s id %llu at byte %llu: %s; retrying",
        OperationName(slot.request.operation), static_cast<unsigned long long>(slot.request.id),
        static_cast<unsigned long long>(slot.offset), why);
  } else {
    slot.retry_delay_ms = std::min(slot.retry_delay_ms * 2, kMaxRetryDelayMs);
  }
  if (now >= slot.retry_deadline_ns) {
    FailIo(slot, "transient errors did not clear within io-retry-seconds");
    return;
  }
  slot.retry_at_ns =
      std::min<uint64_t>(now + uint64_t{slot.retry_delay_ms} * 1000000ull, slot.retry_deadline_ns);
  slot.may_merge = false;
  retrying_.push_back(SlotIndex(slot));
  if (next_retry_ns_ == 0 || slot.retry_at_ns < next_retry_ns_) next_retry_ns_ = slot.retry_at_ns;
}

void RequestPipeline::RunDueRetries() {
  uint64_t now = MonotonicNs();
  next_retry_ns_ = 0;
  for (size_t i = 0; i < retrying_.size();) {
    Slot& slot = slots_[retrying_[i]];
    if (slot.retry_at_ns > now) {
      if (next_retry_ns_ == 0 || slot.retry_at_ns < next_retry_ns_) next_retry_ns_ = slot.retry_at_ns;
      ++i;
      continue;
    }
    retrying_[i] = retrying_.back();
    retrying_.pop_back();
    PrepareData(slot);  // only data stages are retried
  }
  FinishCompletions();
}

void RequestPipeline::CompleteData(Slot& slot) {
  if (!slot.writes) {
    reads_done_.push_back(&slot);
  } else if (slot.post_sync) {
    PrepareSync(slot);
  } else {
    Respond(slot, BLKIF_RSP_OKAY);
  }
}

void RequestPipeline::NoteDeviceLatency(const Slot& slot) {
  if (reaped_at_ns_ == 0) reaped_at_ns_ = MonotonicNs();
  const uint64_t sample = reaped_at_ns_ > slot.submitted_ns ? reaped_at_ns_ - slot.submitted_ns : 0;
  // An eighth of each sample: a few dozen I/Os settle it, one odd I/O does not flip it.
  device_latency_ns_ = device_latency_ns_ - device_latency_ns_ / 8 + sample / 8;
}

void RequestPipeline::FinishCompletions() {
  reaped_at_ns_ = 0;
  // A slow device answers a whole queue at once and then idles until the guest's next requests reach it:
  // copying out every read first keeps it idle for the copy and for the guest's work on every response. A
  // few answers bring the guest's first requests back (a guest woken on this CPU runs at once), and the
  // device works on those while the rest are copied out.
  if (device_slow() && reads_done_.size() > kFirstAnswers) {
    CopyReadsOut(kFirstAnswers);
    PushResponses();
    Pump();
  }
  CopyReadsOut();
  // A submission held back for these completions (see Submit) goes on once their responses are out.
  if (!submit_.empty()) PushResponses();
  Submit();
  Pump();
  PushResponses();
}

void RequestPipeline::CopyReadsOut(size_t count) {
  if (reads_done_.empty()) return;
  const auto done = std::span(reads_done_).first(std::min(count, reads_done_.size()));
  copies_.clear();
  for (Slot* slot : done) AddCopies(*slot, GrantCopySegment::Direction::kToGuest);
  // Reads into persistently mapped pages are already in the guest: no copy at all.
  Status copied = copies_.empty() ? Status::Ok() : hypervisor_.grants.Copy(copies_);
  for (Slot* slot : done) {
    int16_t failure = CopyFailure(*slot, copied);
    if (failure != GNTST_okay) {
      Log(LogLevel::kWarning, name_.c_str(), "read id %llu: grant copy to the guest failed (status %d)",
          static_cast<unsigned long long>(slot->request.id), failure);
      DeviceStats::Add(stats_.io_errors, 1);
    }
    Respond(*slot, failure == GNTST_okay ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR);
  }
  reads_done_.erase(reads_done_.begin(), reads_done_.begin() + static_cast<std::ptrdiff_t>(done.size()));
}

void RequestPipeline::AddCopies(Slot& slot, GrantCopySegment::Direction direction) {
  slot.first_copy = static_cast<uint32_t>(copies_.size());
  uint32_t packed = 0;  // the segments' data lies back to back in the bounce buffer, in disk order
  for (unsigned i = 0; i < slot.segment_count; ++i) {
    const RequestSegment& segment = slot.segments[i];
    uint16_t bytes = static_cast<uint16_t>((segment.last_sect - segment.first_sect + 1u) << kSectorShift);
    if (slot.zero_copy && slot.segment_mapped[i]) {
      packed += bytes;
      continue;
    }
    copies_.push_back({direction, frontend_, segment.gref,
                       static_cast<uint16_t>(segment.first_sect << kSectorShift), bytes, slot.buffer + packed,
                       GNTST_okay});
    packed += bytes;
  }
  slot.copy_count = static_cast<uint32_t>(copies_.size()) - slot.first_copy;
}

void RequestPipeline::AddIndirectPageCopies(Slot& slot) {
  slot.fetching_indirect = true;
  slot.first_copy = static_cast<uint32_t>(copies_.size());
  unsigned pages = IndirectPages(slot.request.nr_segments);
  slot.copy_count = pages;
  // Only the descriptors in use are read: the rest of the last page is none of our business.
  size_t remaining = size_t{slot.request.nr_segments} * sizeof(abi::Segment);
  for (unsigned i = 0; i < pages; ++i) {
    uint16_t bytes = static_cast<uint16_t>(std::min<size_t>(remaining, kPageSize));
    copies_.push_back({GrantCopySegment::Direction::kFromGuest, frontend_, slot.request.indirect_grefs[i], 0,
                       bytes, large_[slot.large].indirect_pages + static_cast<size_t>(i) * kPageSize,
                       GNTST_okay});
    remaining -= bytes;
  }
}

void RequestPipeline::FinishIndirectFetch(Slot& slot, int16_t copy_failure) {
  slot.fetching_indirect = false;
  if (copy_failure != GNTST_okay) {
    Log(LogLevel::kWarning, name_.c_str(),
        "indirect id %llu: grant copy of its indirect pages failed (status %d)",
        static_cast<unsigned long long>(slot.request.id), copy_failure);
    DeviceStats::Add(stats_.io_errors, 1);
    Respond(slot, BLKIF_RSP_ERROR);
    return;
  }
  const LargeBuffer& large = large_[slot.large];
  size_t page_bytes = size_t{IndirectPages(slot.request.nr_segments)} * kPageSize;
  Validation validation =
      DecodeIndirectSegments(slot.request, std::span<const uint8_t>(large.indirect_pages, page_bytes),
                             limits_, std::span(large.segments, limits_.max_indirect_segments));
  if (validation.verdict != Verdict::kOk) {
    NoteBadRequest(slot.request, validation.reason);
    Respond(slot, ResponseStatus(validation.verdict));
    return;
  }
  DeviceStats::Add(validation.is_write ? stats_.wr_sect : stats_.rd_sect, validation.sectors);
  slot.segments = large.segments;
  slot.segment_iovecs = large.iovecs;
  slot.segment_mapped = large.mapped;
  slot.segment_count = slot.request.nr_segments;
  slot.length = static_cast<uint32_t>(validation.sectors << kSectorShift);
  slot.writes = validation.is_write;
  if (slot.writes) {
    indirect_writes_.push_back(&slot);  // its data joins the next copy batch of this round
  } else {
    BeginData(slot);
  }
}

void RequestPipeline::ReleaseLargeBuffer(Slot& slot) {
  if (slot.large == kNoSlot) return;
  free_large_.push_back(slot.large);
  slot.large = kNoSlot;
  slot.buffer = buffers_.as<uint8_t>() + static_cast<size_t>(SlotIndex(slot)) * kSlotBufferBytes;
  slot.segments = slot.request.segments.data();
  if (persistent_) {
    slot.segment_iovecs = &direct_iovecs_[size_t{SlotIndex(slot)} * kMaxDirectSegments];
    slot.segment_mapped = &direct_mapped_[size_t{SlotIndex(slot)} * kMaxDirectSegments];
  }
}

int16_t RequestPipeline::CopyFailure(const Slot& slot, const Status& batch) const {
  if (!batch.ok()) return GNTST_general_error;
  for (unsigned i = 0; i < slot.copy_count; ++i) {
    int16_t status = copies_[slot.first_copy + i].status;
    if (status != GNTST_okay) return status;
  }
  return GNTST_okay;
}

void RequestPipeline::Respond(Slot& slot, int16_t status) {
  ring_.PutResponse(slot.request.id, ResponseOperation(slot.request), status);
  responses_pending_ = true;
  if (slot.request.operation == BLKIF_OP_WRITE_BARRIER) barrier_running_ = false;
  ReleaseSegments(slot);
  ReleaseLargeBuffer(slot);
  --started_;
  latency_.Record(MonotonicNs() - slot.taken_ns);
  in_flight_.store(in_flight_.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  slot.stage = Stage::kFree;
  free_slots_.push_back(SlotIndex(slot));
}

void RequestPipeline::RespondNow(const Request& request, int16_t status) {
  ring_.PutResponse(request.id, ResponseOperation(request), status);
  responses_pending_ = true;
}

void RequestPipeline::PushResponses() {
  if (responses_pending_) {
    responses_pending_ = false;
    if (ring_.PushResponses()) {
      Status notified = channel_->Notify();
      if (!notified.ok()) Log(LogLevel::kWarning, name_.c_str(), "%s", notified.ToString().c_str());
    }
  }
  // Only once the last responses are on the ring may a pause be reported.
  if (pause_state_ == PauseState::kDraining) MaybeFinishDrain();
}

void RequestPipeline::Pause(std::function<void(Status)> done) {
  if (pause_done_) pause_done_(Status::Busy(name_ + ": paused again before the pause completed"));
  pause_done_ = std::move(done);
  if (pause_state_ == PauseState::kPaused) {
    FinishPause(Status::Ok());
    return;
  }
  pause_state_ = PauseState::kDraining;
  MaybeFinishDrain();
}

void RequestPipeline::MaybeFinishDrain() {
  if (pause_state_ != PauseState::kDraining || ring_.outstanding() != 0 || pause_sync_in_flight_) return;
  pause_state_ = PauseState::kSyncing;
  if (vhd_) vhd_->BeforeFlush();  // a paused VHD is a whole image on disk, footer included
  aio_.PrepareFdsync(&pause_sync_.cb, fd_, &pause_sync_.tag);
  iocb* batch[] = {&pause_sync_.cb};
  Status refused;
  if (aio_.Submit(batch, &refused) == 1) {
    pause_sync_in_flight_ = true;
    return;
  }
  // Nothing else of this ring is in flight: a synchronous sync holds up only this worker, and only once.
  Log(LogLevel::kInfo, name_.c_str(), "pause: AIO fdsync refused (%s), syncing synchronously",
      refused.ToString().c_str());
  Status synced =
      ::fdatasync(fd_) == 0 ? Status::Ok() : Status::FromErrno(errno, name_ + ": sync before pause");
  if (vhd_) vhd_->AfterSync(synced.ok());
  FinishPause(std::move(synced));
}

void RequestPipeline::OnPauseSynced(long result) {
  pause_sync_in_flight_ = false;
  if (result < 0) DeviceStats::Add(stats_.sync_errors, 1);  // sticky, as a flush's (see OnCompletion)
  if (vhd_) vhd_->AfterSync(result >= 0);
  if (pause_state_ == PauseState::kDraining) {
    // Resumed and paused again while this sync ran: what was written since needs a sync of its own.
    MaybeFinishDrain();
    return;
  }
  if (pause_state_ != PauseState::kSyncing) return;  // resumed meanwhile
  FinishPause(result < 0 ? Status::FromErrno(static_cast<int>(-result), name_ + ": sync before pause")
                         : Status::Ok());
}

void RequestPipeline::FinishPause(Status status) {
  pause_state_ = PauseState::kPaused;
  std::function<void(Status)> done = std::move(pause_done_);
  pause_done_ = nullptr;
  if (done) done(std::move(status));
}

Status RequestPipeline::SwapImage(std::shared_ptr<DiskImage> image) {
  if (pause_state_ != PauseState::kPaused || ring_.outstanding() != 0 || pause_sync_in_flight_) {
    return Status::Busy(name_ + ": the image changes only while paused");
  }
  uint32_t slots = ring_.slots();
  std::unique_ptr<VhdIo> vhd;
  if (image->format() == ImageFormat::kVhd) {
    size_t iocbs = size_t{slots} * VhdIo::kOpsPerRequest;
    submit_.reserve(iocbs);
    deferred_.reserve(iocbs);
    vhd = std::make_unique<VhdIo>(name_, static_cast<VhdIo::Owner&>(*this),
                                  static_cast<VhdDiskImage&>(*image), aio_, slots, submit_);
  }
  // The old engine refers to the old image: it goes first.
  vhd_ = std::move(vhd);
  fd_ = image->format() == ImageFormat::kRaw ? static_cast<RawImage&>(*image).fd()
                                             : static_cast<VhdDiskImage&>(*image).data_fd();
  image_ = std::move(image);
  return Status::Ok();
}

void RequestPipeline::Resume() {
  if (pause_state_ == PauseState::kRunning) return;
  pause_state_ = PauseState::kRunning;
  if (pause_done_) {
    std::function<void(Status)> done = std::move(pause_done_);
    pause_done_ = nullptr;
    done(Status::Busy(name_ + ": resumed before the pause completed"));
  }
  Pump();
  PushResponses();
}

std::vector<OutstandingRequest> RequestPipeline::Outstanding(size_t max) const {
  std::vector<OutstandingRequest> found;
  for (const Slot& slot : slots_) {
    if (found.size() >= max) break;
    const char* stage = nullptr;
    switch (slot.stage) {
      case Stage::kFree:
        continue;
      case Stage::kQueued:
        stage = "queued";
        break;
      case Stage::kPreSync:
      case Stage::kPostSync:
        stage = "syncing";
        break;
      case Stage::kData:
        stage = "in I/O";
        break;
    }
    found.push_back({slot.request.id, slot.request.operation, slot.request.sector_number, stage});
  }
  return found;
}

void RequestPipeline::NoteBadRequest(const Request& request, const char* reason) {
  DeviceStats::Add(stats_.bad_req, 1);
  uint64_t count = ++bad_requests_logged_;
  if (count <= kBadRequestsLoggedInFull || count % kBadRequestLogSampling == 0) {
    Log(LogLevel::kWarning, name_.c_str(), "bad request #%llu (op %u id %llu sector %llu segments %u): %s",
        static_cast<unsigned long long>(count), request.operation,
        static_cast<unsigned long long>(request.id), static_cast<unsigned long long>(request.sector_number),
        request.nr_segments, reason);
  }
}

}  // namespace blk
