// RequestPipeline: kick -> validate -> grant copy in -> io_submit -> completion -> grant copy out -> respond.
#include "backend/request_pipeline.h"

#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

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

uint64_t NowNs() {
  timespec now;
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000000000ull + static_cast<uint64_t>(now.tv_nsec);
}

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
  uint32_t slots = RingSlots(connection.abi, pages);
  size_t buffer_bytes = slots * kSlotBufferBytes;
  void* buffers = ::mmap(nullptr, buffer_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buffers == MAP_FAILED) return Status::FromErrno(errno, name + ": allocating bounce buffers");
  return std::unique_ptr<RequestPipeline>(
      new RequestPipeline(std::move(name), hypervisor, std::move(*ring), pages, connection.abi,
                          std::move(*channel), connection.frontend_domid, std::move(image), limits, aio,
                          std::move(stats), Mapping(buffers, buffer_bytes)));
}

RequestPipeline::RequestPipeline(std::string name, Hypervisor& hypervisor, GrantMapping ring_mapping,
                                 size_t ring_pages, Abi abi, std::unique_ptr<EventChannel> channel,
                                 DomId frontend, std::shared_ptr<DiskImage> image, const DiskLimits& limits,
                                 AioEngine& aio, std::shared_ptr<DeviceStats> stats, Mapping buffers)
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
  slots_.resize(slots);
  free_slots_.reserve(slots);
  for (uint32_t i = 0; i < slots; ++i) {
    Slot& slot = slots_[i];
    slot.tag.handler = this;
    slot.buffer = buffers_.as<uint8_t>() + static_cast<size_t>(i) * kSlotBufferBytes;
    slot.stage = Stage::kFree;
    free_slots_.push_back(slots - 1 - i);
  }
  iovecs_.resize(static_cast<size_t>(slots) * kMaxMergedRequests);
  for (uint32_t i = 0; i < slots; ++i)
    slots_[i].iovecs = &iovecs_[static_cast<size_t>(i) * kMaxMergedRequests];
  ready_.reserve(slots);
  queue_.resize(slots);
  taken_.resize(slots);
  copies_.reserve(static_cast<size_t>(slots) * kMaxDirectSegments);
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
  if (broken() || stopped_ || pause_state_ != PauseState::kRunning || !ring_.HasUnconsumedRequests())
    return false;
  Pump();
  PushResponses();
  return true;
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
      if (ring_.FinalCheckForRequests()) continue;
      break;
    }
    budget -= *taken;
    for (size_t i = 0; i < *taken; ++i) Admit(taken_[i]);
  }
  StartQueued();
}

void RequestPipeline::Admit(const Request& request) {
  Validation validation = ValidateRequest(request, limits_);
  switch (request.operation) {
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
  slot.stage = Stage::kQueued;
  slot.may_merge = true;
  slot.taken_ns = NowNs();
  in_flight_.store(in_flight_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  queue_[(queue_head_ + queue_size_) % queue_.size()] = SlotIndex(slot);
  ++queue_size_;
}

void RequestPipeline::StartQueued() {
  bool retry = true;
  while (retry) {
    retry = false;
    copies_.clear();
    copy_slots_.clear();
    while (queue_size_ > 0 && !barrier_running_) {
      Slot& slot = slots_[queue_[queue_head_]];
      bool barrier = slot.request.operation == BLKIF_OP_WRITE_BARRIER;
      if (barrier && started_ > 0) break;  // everything before a barrier is answered before it starts
      queue_head_ = (queue_head_ + 1) % queue_.size();
      --queue_size_;
      ++started_;
      barrier_running_ = barrier;
      if (slot.writes) {
        AddCopies(slot, GrantCopySegment::Direction::kFromGuest);
        copy_slots_.push_back(&slot);
      } else if (slot.length > 0) {
        PrepareData(slot);
      } else if (slot.request.operation == BLKIF_OP_DISCARD) {
        DiscardNow(slot);
      } else {
        PrepareSync(slot);
      }
    }
    if (copies_.empty()) break;
    Status copied = hypervisor_.grants.Copy(copies_);
    for (Slot* slot : copy_slots_) {
      if (int16_t failure = CopyFailure(*slot, copied); failure != GNTST_okay) {
        Log(LogLevel::kWarning, name_.c_str(), "write id %llu: grant copy from the guest failed (status %d)",
            static_cast<unsigned long long>(slot->request.id), failure);
        DeviceStats::Add(stats_.io_errors, 1);
        Respond(*slot, BLKIF_RSP_ERROR);
        retry = true;  // a failed barrier no longer holds the queue back
      } else if (slot->pre_sync) {
        slot->stage = Stage::kPreSync;
        aio_.PrepareFdsync(&slot->cb, fd_, &slot->tag);
        submit_.push_back(&slot->cb);
      } else {
        PrepareData(*slot);
      }
    }
  }
  if (!reads_done_.empty()) CopyReadsOut();  // VHD reads of holes only: done without the disk
  Submit();
}

void RequestPipeline::DiscardNow(Slot& slot) {
  Status discarded =
      Discard(fd_, slot.request.sector_number << kSectorShift, slot.request.discard_sectors << kSectorShift);
  if (discarded.ok()) {
    Respond(slot, BLKIF_RSP_OKAY);
    return;
  }
  if (discarded.code() == Status::Code::kNotSupported) {
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

void RequestPipeline::VhdDataDone(uint32_t index, bool ok) {
  Slot& slot = slots_[index];
  if (ok) {
    CompleteData(slot);
    return;
  }
  DeviceStats::Add(stats_.io_errors, 1);
  Respond(slot, BLKIF_RSP_ERROR);
}

void RequestPipeline::BuildDataIocbs() {
  Slot* head = nullptr;
  Slot* last = nullptr;
  for (uint32_t index : ready_) {
    Slot& slot = slots_[index];
    slot.chain_count = 1;
    slot.chain_bytes = slot.length;
    slot.chain_next = kNoSlot;
    bool plain = !slot.pre_sync && !slot.post_sync;
    if (head != nullptr && plain && slot.may_merge && head->may_merge && !head->post_sync &&
        !head->pre_sync && slot.writes == head->writes && last->offset + last->length == slot.offset &&
        head->chain_count < kMaxMergedRequests && head->chain_bytes + slot.length <= kMaxMergedBytes) {
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
  if (head.chain_count == 1) {
    if (head.writes) {
      aio_.PrepareWrite(&head.cb, fd_, head.buffer, head.length, head.offset, &head.tag);
    } else {
      aio_.PrepareRead(&head.cb, fd_, head.buffer, head.length, head.offset, &head.tag);
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
  size_t next = 0;
  while (next < submit_.size()) {
    Status refused;
    size_t accepted = aio_.Submit(std::span(submit_).subspan(next), &refused);
    DeviceStats::Add(stats_.iocbs, accepted);
    next += accepted;
    if (next == submit_.size()) break;
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
      DeviceStats::Add(stats_.io_errors, 1);
      Respond(slot, BLKIF_RSP_ERROR);
    }
    ++next;
  }
  submit_.clear();
  if (!ready_.empty()) Submit();  // requests of a refused merged I/O, now on their own
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
  bool failed = slot.stage == Stage::kData ? result != static_cast<long>(slot.chain_bytes) : result < 0;
  if (failed && slot.stage == Stage::kData && slot.chain_count > 1) {
    // Which of the merged requests failed is not known: retry each alone.
    SplitChain(slot);
    return;
  }
  if (failed) {
    if (result < 0) {
      Log(LogLevel::kError, name_.c_str(), "%s id %llu at byte %llu: %s",
          OperationName(slot.request.operation), static_cast<unsigned long long>(slot.request.id),
          static_cast<unsigned long long>(slot.offset), std::strerror(static_cast<int>(-result)));
    } else {
      Log(LogLevel::kError, name_.c_str(), "%s id %llu at byte %llu: short transfer of %ld of %u bytes",
          OperationName(slot.request.operation), static_cast<unsigned long long>(slot.request.id),
          static_cast<unsigned long long>(slot.offset), result, slot.length);
    }
    DeviceStats::Add(stats_.io_errors, 1);
    Respond(slot, BLKIF_RSP_ERROR);
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
      Respond(slot, BLKIF_RSP_OKAY);
      break;
    case Stage::kFree:
    case Stage::kQueued:
      Log(LogLevel::kError, name_.c_str(), "completion for a slot that is not in flight");
      break;
  }
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

void RequestPipeline::FinishCompletions() {
  CopyReadsOut();
  Submit();
  Pump();
  PushResponses();
}

void RequestPipeline::CopyReadsOut() {
  if (reads_done_.empty()) return;
  copies_.clear();
  for (Slot* slot : reads_done_) AddCopies(*slot, GrantCopySegment::Direction::kToGuest);
  Status copied = hypervisor_.grants.Copy(copies_);
  for (Slot* slot : reads_done_) {
    int16_t failure = CopyFailure(*slot, copied);
    if (failure != GNTST_okay) {
      Log(LogLevel::kWarning, name_.c_str(), "read id %llu: grant copy to the guest failed (status %d)",
          static_cast<unsigned long long>(slot->request.id), failure);
      DeviceStats::Add(stats_.io_errors, 1);
    }
    Respond(*slot, failure == GNTST_okay ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR);
  }
  reads_done_.clear();
}

void RequestPipeline::AddCopies(Slot& slot, GrantCopySegment::Direction direction) {
  slot.first_copy = static_cast<uint16_t>(copies_.size());
  uint32_t packed = 0;  // the segments' data lies back to back in the bounce buffer, in disk order
  for (unsigned i = 0; i < slot.request.nr_segments; ++i) {
    const RequestSegment& segment = slot.request.segments[i];
    uint16_t bytes = static_cast<uint16_t>((segment.last_sect - segment.first_sect + 1u) << kSectorShift);
    copies_.push_back({direction, frontend_, segment.gref,
                       static_cast<uint16_t>(segment.first_sect << kSectorShift), bytes, slot.buffer + packed,
                       GNTST_okay});
    packed += bytes;
  }
}

int16_t RequestPipeline::CopyFailure(const Slot& slot, const Status& batch) const {
  if (!batch.ok()) return GNTST_general_error;
  for (unsigned i = 0; i < slot.request.nr_segments; ++i) {
    int16_t status = copies_[slot.first_copy + i].status;
    if (status != GNTST_okay) return status;
  }
  return GNTST_okay;
}

void RequestPipeline::Respond(Slot& slot, int16_t status) {
  ring_.PutResponse(slot.request.id, slot.request.operation, status);
  responses_pending_ = true;
  if (slot.request.operation == BLKIF_OP_WRITE_BARRIER) barrier_running_ = false;
  --started_;
  latency_.Record(NowNs() - slot.taken_ns);
  in_flight_.store(in_flight_.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  slot.stage = Stage::kFree;
  free_slots_.push_back(SlotIndex(slot));
}

void RequestPipeline::RespondNow(const Request& request, int16_t status) {
  ring_.PutResponse(request.id, request.operation, status);
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
  FinishPause(::fdatasync(fd_) == 0 ? Status::Ok() : Status::FromErrno(errno, name_ + ": sync before pause"));
}

void RequestPipeline::OnPauseSynced(long result) {
  pause_sync_in_flight_ = false;
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
