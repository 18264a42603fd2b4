// Blkfront: ring set-up, request building, pushing and reaping, in the manner of Linux's xen-blkfront.
#include "frontend/blkfront.h"

#include <poll.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "base/format.h"
#include "base/spin.h"
#include "ring/request.h"

namespace blk {
namespace {

uint32_t LoadShared(const uint32_t& field) {
  return std::atomic_ref<uint32_t>(const_cast<uint32_t&>(field)).load(std::memory_order_acquire);
}
void StoreShared(uint32_t& field, uint32_t value) {
  std::atomic_ref<uint32_t>(field).store(value, std::memory_order_release);
}

// Orders a response status from best to worst; anything unknown counts as an error.
int Severity(int16_t status) {
  switch (status) {
    case BLKIF_RSP_OKAY:
      return 0;
    case BLKIF_RSP_EOPNOTSUPP:
      return 1;
    default:
      return 2;
  }
}

bool WritesData(IoOp op) { return op != IoOp::kRead; }

uint32_t PagesSpanned(const Io& io) {
  size_t first = reinterpret_cast<uintptr_t>(io.buffer) % kPageSize;
  return static_cast<uint32_t>((first + io.length + kPageSize - 1) / kPageSize);
}

}  // namespace

// Sized once, at Init, for the most segments a request may carry.
struct Blkfront::Shadow {
  bool in_use = false;
  uint8_t operation = 0;
  uint16_t nr_segments = 0;
  uint32_t io = 0;           // index into ios_
  size_t buffer_offset = 0;  // where this request's data starts in the I/O's buffer
  std::vector<GrantRef> refs;
  std::vector<uint32_t> frames;
  std::vector<uint16_t> page_offset;
  std::vector<uint16_t> bytes;
  std::vector<PageKind> kinds;
  uint32_t indirect_pages = 0;
  std::array<GrantRef, kMaxIndirectPages> indirect_refs{};
  std::array<uint32_t, kMaxIndirectPages> indirect_frames{};
};

struct Blkfront::IoState {
  Io io;
  size_t issued = 0;  // bytes already turned into requests
  bool fully_issued = false;
  uint32_t in_flight = 0;  // requests on the ring
  int16_t status = BLKIF_RSP_OKAY;
};

Blkfront::Blkfront(SimDomain& domain, const BlkfrontConfig& config)
    : domain_(domain),
      config_(config),
      slots_(RingSlots(config.abi, config.ring_pages)),
      max_segments_(std::max(kMaxDirectSegments, config.indirect_segments)),
      req_prod_pvt_(config.start_index),
      rsp_cons_(config.start_index) {}

Result<std::unique_ptr<Blkfront>> Blkfront::Create(SimHypervisor& hypervisor, const BlkfrontConfig& config) {
  if (config.ring_pages == 0 || config.ring_pages > 16 ||
      (config.ring_pages & (config.ring_pages - 1)) != 0) {
    return Status::InvalidArgument("blkfront: ring pages must be 1, 2, 4, 8 or 16");
  }
  if (config.max_outstanding == 0)
    return Status::InvalidArgument("blkfront: max_outstanding must be positive");
  if (config.indirect_segments > kMaxIndirectSegments)
    return Status::InvalidArgument("blkfront: at most 4096 indirect segments");
  const uint32_t slots = RingSlots(config.abi, config.ring_pages);
  const uint32_t segments = std::max(kMaxDirectSegments, config.indirect_segments);
  const size_t pages =
      config.ring_pages + size_t{slots} * (segments + IndirectPages(segments)) + config.spare_pages;
  const size_t grant_entries =
      std::max(SimDomain::kDefaultGrantEntries, SimDomain::kFirstFreeGrantRef + pages * 2);
  // A domain that already exists is reused, as a guest reconnects its disk after the previous frontend is
  // gone.
  SimDomain* domain = hypervisor.FindDomain(config.domid);
  if (domain == nullptr) {
    auto created = hypervisor.CreateDomain(config.domid, pages, grant_entries);
    if (!created.ok()) return created.status();
    domain = *created;
  }
  std::unique_ptr<Blkfront> front(new Blkfront(*domain, config));
  BLK_RETURN_IF_ERROR(front->Init());
  return front;
}

Status Blkfront::Init() {
  // The ring must be contiguous in the guest's view.
  auto first_frame = domain_.AllocContiguous(config_.ring_pages);
  if (!first_frame.ok()) return first_frame.status();
  for (uint32_t i = 0; i < config_.ring_pages; ++i) {
    ring_frames_.push_back(*first_frame + i);
    auto ref = domain_.GrantAccess(config_.backend_domid, *first_frame + i, false);
    if (!ref.ok()) return ref.status();
    ring_refs_.push_back(*ref);
  }
  uint8_t* ring = domain_.PageAddress(ring_frames_[0]);
  std::memset(ring, 0, config_.ring_pages * kPageSize);
  ring_header_ = reinterpret_cast<abi::SharedRingHeader*>(ring);
  ring_entries_ = ring + sizeof(abi::SharedRingHeader);
  // SHARED_RING_INIT, moved to the starting index: producers at it, events one past it, padding zeroed.
  ring_header_->req_prod = config_.start_index;
  ring_header_->rsp_prod = config_.start_index;
  ring_header_->req_event = config_.start_index + 1;
  ring_header_->rsp_event = config_.start_index + 1;

  auto port = domain_.AllocUnbound(config_.backend_domid);
  if (!port.ok()) return port.status();
  port_ = *port;
  event_fd_ = domain_.EventFd(port_);

  segments_scratch_.resize(max_segments_);
  if (config_.persistent) persistent_pool_.reserve(size_t{slots_} * max_segments_);
  shadows_.resize(slots_);
  for (Shadow& shadow : shadows_) {
    shadow.refs.resize(max_segments_);
    shadow.frames.resize(max_segments_);
    shadow.page_offset.resize(max_segments_);
    shadow.bytes.resize(max_segments_);
    shadow.kinds.resize(max_segments_);
  }
  free_shadows_.reserve(slots_);
  for (uint32_t id = slots_; id > 0; --id) free_shadows_.push_back(id - 1);
  ios_.resize(config_.max_outstanding);
  free_ios_.reserve(config_.max_outstanding);
  for (uint32_t i = config_.max_outstanding; i > 0; --i) free_ios_.push_back(i - 1);
  pending_.resize(config_.max_outstanding);
  completed_.resize(config_.max_outstanding);
  return Status::Ok();
}

Blkfront::~Blkfront() {
  // Grants the backend still maps cannot be ended; their pages stay with the domain, which outlives us.
  for (Shadow& shadow : shadows_) {
    if (shadow.in_use) ReleaseSegments(shadow, shadow.nr_segments);
  }
  for (const PersistentPage& page : persistent_pool_) {
    if (domain_.EndAccess(page.ref).ok()) (void)domain_.FreePage(page.frame);
  }
  for (uint32_t frame = 0; frame < buffer_grants_.size(); ++frame) {
    const GrantRef grant = buffer_grants_[frame];
    if (grant == kGrantedPerRequest || (grant != 0 && domain_.EndAccess(grant).ok()))
      (void)domain_.FreePage(frame);
  }
  for (size_t i = 0; i < ring_refs_.size(); ++i) {
    if (domain_.EndAccess(ring_refs_[i]).ok()) (void)domain_.FreePage(ring_frames_[i]);
  }
  // A port the backend still has bound stays open, as its grants do.
  if (port_ != 0) (void)domain_.ClosePort(port_);
}

uint32_t Blkfront::ring_page_order() const {
  uint32_t order = 0;
  while ((1u << order) < config_.ring_pages) ++order;
  return order;
}

std::vector<std::pair<std::string, std::string>> Blkfront::XenstoreEntries() const {
  std::vector<std::pair<std::string, std::string>> entries;
  if (config_.ring_pages == 1) {
    entries.emplace_back("ring-ref", std::to_string(ring_refs_[0]));
  } else {
    entries.emplace_back("ring-page-order", std::to_string(ring_page_order()));
    for (size_t i = 0; i < ring_refs_.size(); ++i) {
      entries.emplace_back(StrFormat("ring-ref%zu", i), std::to_string(ring_refs_[i]));
    }
  }
  entries.emplace_back("event-channel", std::to_string(port_));
  entries.emplace_back("protocol", protocol());
  entries.emplace_back("feature-persistent", config_.persistent ? "1" : "0");
  return entries;
}

int Blkfront::fd() const { return event_fd_; }

uint8_t* Blkfront::RingEntry(uint32_t index) const {
  return ring_entries_ + size_t{index & (slots_ - 1)} * RingEntrySize(config_.abi);
}

Status Blkfront::Break(Status why) {
  if (broken_.ok()) broken_ = why.Annotate("blkfront: backend broke the protocol: ");
  return broken_;
}

Status Blkfront::Queue(const Io& io) {
  if (!broken_.ok()) return broken_;
  if (io.length % (1u << kSectorShift) != 0)
    return Status::InvalidArgument("blkfront: length not a multiple of 512");
  if (io.op != IoOp::kDiscard && io.length != 0 &&
      (io.buffer == nullptr || reinterpret_cast<uintptr_t>(io.buffer) % 512 != 0)) {
    return Status::InvalidArgument("blkfront: buffer missing or not 512-byte aligned");
  }
  switch (io.op) {
    case IoOp::kRead:
    case IoOp::kWrite:
      if (io.length == 0) return Status::InvalidArgument("blkfront: a read or write needs data");
      break;
    case IoOp::kWriteBarrier:
    case IoOp::kFlushDiskCache:
      if (io.length != 0 && PagesSpanned(io) > kMaxDirectSegments) {
        return Status::InvalidArgument("blkfront: a flush or barrier carries at most 11 pages");
      }
      break;
    case IoOp::kDiscard:
      break;
    default:
      return Status::InvalidArgument("blkfront: unknown operation");
  }
  if (free_ios_.empty()) return Status::Busy("blkfront: too many outstanding I/Os");
  uint32_t index = free_ios_.back();
  free_ios_.pop_back();
  ios_[index] = IoState{io, 0, false, 0, BLKIF_RSP_OKAY};
  pending_[(pending_head_ + pending_count_) % pending_.size()] = index;
  ++pending_count_;
  ++io_count_;
  ++stats_.ios_queued;
  return Status::Ok();
}

Status Blkfront::Submit(const Io& io) {
  BLK_RETURN_IF_ERROR(Queue(io));
  return Push();
}

bool Blkfront::TakeDataPage(bool readonly, uint32_t* frame, GrantRef* ref) {
  if (config_.persistent && !persistent_pool_.empty()) {
    *frame = persistent_pool_.back().frame;
    *ref = persistent_pool_.back().ref;
    persistent_pool_.pop_back();
    return true;
  }
  auto page = domain_.AllocPage();
  if (!page.ok()) return false;
  // A persistent page serves reads and writes alike, so the backend may map it writable.
  auto granted = domain_.GrantAccess(config_.backend_domid, *page, readonly && !config_.persistent);
  if (!granted.ok()) {
    (void)domain_.FreePage(*page);
    return false;
  }
  if (config_.persistent) ++persistent_pages_;
  *frame = *page;
  *ref = *granted;
  return true;
}

Result<uint8_t*> Blkfront::AllocateGuestBuffer(size_t bytes) { return AllocateBuffer(bytes, false); }

Result<uint8_t*> Blkfront::AllocateGrantedBuffer(size_t bytes) {
  if (!config_.persistent) return Status::InvalidArgument("blkfront: granted buffers need persistent grants");
  return AllocateBuffer(bytes, true);
}

Result<uint8_t*> Blkfront::AllocateBuffer(size_t bytes, bool granted) {
  const size_t pages = (bytes + kPageSize - 1) / kPageSize;
  if (pages == 0) return Status::InvalidArgument("blkfront: an empty buffer");
  auto first = domain_.AllocContiguous(pages);
  if (!first.ok()) return first.status();
  if (buffer_grants_.empty()) buffer_grants_.assign(domain_.pages(), 0);
  for (uint32_t frame = *first; frame < *first + pages; ++frame) {
    if (!granted) {
      buffer_grants_[frame] = kGrantedPerRequest;
      continue;
    }
    auto ref = domain_.GrantAccess(config_.backend_domid, frame, /*readonly=*/false);
    if (!ref.ok()) {
      for (uint32_t done = *first; done < frame; ++done) {
        (void)domain_.EndAccess(buffer_grants_[done]);
        buffer_grants_[done] = 0;
      }
      for (uint32_t page = *first; page < *first + pages; ++page) (void)domain_.FreePage(page);
      return ref.status();
    }
    buffer_grants_[frame] = *ref;
  }
  return domain_.PageAddress(*first);
}

Blkfront::PageKind Blkfront::BufferPage(const uint8_t* address, uint32_t* frame, GrantRef* ref) const {
  if (buffer_grants_.empty() || address < domain_.memory()) return PageKind::kPool;
  const size_t page = static_cast<size_t>(address - domain_.memory()) / kPageSize;
  if (page >= buffer_grants_.size() || buffer_grants_[page] == 0) return PageKind::kPool;
  *frame = static_cast<uint32_t>(page);
  *ref = buffer_grants_[page];
  if (*ref != kGrantedPerRequest) return PageKind::kGrantedBuffer;
  // With persistent grants a page granted per request would be one more mapping for the backend to cache;
  // Linux copies a bio's data through its persistent pool instead, and so do we.
  return config_.persistent ? PageKind::kPool : PageKind::kBuffer;
}

void Blkfront::PutDataPage(uint32_t frame, GrantRef ref) {
  if (config_.persistent) {
    persistent_pool_.push_back({frame, ref});
    return;
  }
  if (domain_.EndAccess(ref).ok()) (void)domain_.FreePage(frame);
}

void Blkfront::ReleaseSegments(Shadow& shadow, uint32_t count) {
  for (uint32_t i = 0; i < count; ++i) {
    switch (shadow.kinds[i]) {
      case PageKind::kPool:
        PutDataPage(shadow.frames[i], shadow.refs[i]);
        break;
      case PageKind::kBuffer:
        // A grant the backend still maps keeps its page from being freed with the buffer.
        if (!domain_.EndAccess(shadow.refs[i]).ok()) buffer_grants_[shadow.frames[i]] = 0;
        break;
      case PageKind::kGrantedBuffer:
        break;
    }
  }
  ReleaseIndirectPages(shadow);
}

void Blkfront::ReleaseIndirectPages(Shadow& shadow) {
  for (uint32_t i = 0; i < shadow.indirect_pages; ++i) {
    if (domain_.EndAccess(shadow.indirect_refs[i]).ok()) (void)domain_.FreePage(shadow.indirect_frames[i]);
  }
  shadow.indirect_pages = 0;
}

bool Blkfront::WriteIndirectPages(Shadow& shadow, std::span<const RequestSegment> segments) {
  const uint32_t pages = IndirectPages(static_cast<uint32_t>(segments.size()));
  for (uint32_t page = 0; page < pages; ++page) {
    auto frame = domain_.AllocPage();
    if (!frame.ok()) break;
    uint8_t* memory = domain_.PageAddress(*frame);
    std::memset(memory, 0, kPageSize);
    for (uint32_t i = 0; i < kSegmentsPerIndirectPage; ++i) {
      size_t index = size_t{page} * kSegmentsPerIndirectPage + i;
      if (index >= segments.size()) break;
      abi::Segment raw{segments[index].gref, segments[index].first_sect, segments[index].last_sect, 0};
      std::memcpy(memory + i * sizeof(raw), &raw, sizeof(raw));
    }
    auto ref = domain_.GrantAccess(config_.backend_domid, *frame, /*readonly=*/true);
    if (!ref.ok()) {
      (void)domain_.FreePage(*frame);
      break;
    }
    shadow.indirect_frames[page] = *frame;
    shadow.indirect_refs[page] = *ref;
    shadow.indirect_pages = page + 1;
  }
  if (shadow.indirect_pages == pages) return true;
  ReleaseIndirectPages(shadow);
  return false;
}

// Turns the next part of `io` into one request in the next ring slot. False if guest resources (pages, grant
// refs) ran out; the I/O then stays queued.
bool Blkfront::BuildRequest(IoState& state, uint32_t io_index) {
  const Io& io = state.io;
  const uint32_t id = free_shadows_.back();
  Shadow& shadow = shadows_[id];
  shadow.operation = static_cast<uint8_t>(io.op);
  shadow.io = io_index;
  shadow.buffer_offset = state.issued;
  if (io.op == IoOp::kDiscard) {
    shadow.nr_segments = 0;
    shadow.in_use = true;
    free_shadows_.pop_back();
    Request request;
    request.operation = BLKIF_OP_DISCARD;
    request.handle = config_.handle;
    request.id = id;
    request.sector_number = io.sector;
    request.discard_sectors = io.length >> kSectorShift;
    EncodeRequest(config_.abi, request, RingEntry(req_prod_pvt_));
    ++req_prod_pvt_;
    state.issued = io.length;
    state.fully_issued = true;
    ++state.in_flight;
    ++stats_.requests_pushed;
    return true;
  }
  const bool data_op = io.op == IoOp::kRead || io.op == IoOp::kWrite;
  const uint32_t limit = data_op ? max_segments_ : kMaxDirectSegments;
  std::span<RequestSegment> segments(segments_scratch_.data(), limit);
  uint32_t count = 0;
  size_t issued = state.issued;
  const bool readonly = WritesData(io.op);
  while (count < limit && issued < io.length) {
    const uint8_t* source = static_cast<const uint8_t*>(io.buffer) + issued;
    const size_t offset = reinterpret_cast<uintptr_t>(source) % kPageSize;
    const size_t bytes = std::min(kPageSize - offset, io.length - issued);
    uint32_t frame;
    GrantRef ref;
    const PageKind kind = BufferPage(source, &frame, &ref);
    if (kind == PageKind::kBuffer) {
      auto granted = domain_.GrantAccess(config_.backend_domid, frame, readonly);
      if (!granted.ok()) break;
      ref = *granted;
    } else if (kind == PageKind::kPool) {
      if (!TakeDataPage(readonly, &frame, &ref)) break;
      if (readonly) std::memcpy(domain_.PageAddress(frame) + offset, source, bytes);
    }
    shadow.kinds[count] = kind;
    shadow.refs[count] = ref;
    shadow.frames[count] = frame;
    shadow.page_offset[count] = static_cast<uint16_t>(offset);
    shadow.bytes[count] = static_cast<uint16_t>(bytes);
    segments[count] = RequestSegment{ref, static_cast<uint8_t>(offset >> kSectorShift),
                                     static_cast<uint8_t>(((offset + bytes) >> kSectorShift) - 1)};
    issued += bytes;
    ++count;
  }
  // Out of guest resources in mid-request: a read or write goes with the segments it got; a flush or barrier
  // carries all its data in one request or waits.
  const bool single_request = io.op == IoOp::kWriteBarrier || io.op == IoOp::kFlushDiskCache;
  if (issued < io.length && count < kMaxDirectSegments && (count == 0 || single_request)) {
    ReleaseSegments(shadow, count);
    return false;
  }
  const bool indirect = count > kMaxDirectSegments;
  if (indirect && !WriteIndirectPages(shadow, segments.first(count))) {
    ReleaseSegments(shadow, count);
    return false;
  }
  shadow.nr_segments = static_cast<uint16_t>(count);
  shadow.in_use = true;
  free_shadows_.pop_back();

  Request request;
  request.operation = shadow.operation;
  request.nr_segments = shadow.nr_segments;
  request.handle = config_.handle;
  request.id = id;
  request.sector_number = io.sector + (state.issued >> kSectorShift);
  if (indirect) {
    request.operation = BLKIF_OP_INDIRECT;
    request.indirect_op = shadow.operation;
    std::copy_n(shadow.indirect_refs.begin(), shadow.indirect_pages, request.indirect_grefs.begin());
  } else {
    std::copy_n(segments.begin(), count, request.segments.begin());
  }
  EncodeRequest(config_.abi, request, RingEntry(req_prod_pvt_));
  ++req_prod_pvt_;
  state.issued = issued;
  state.fully_issued = issued == io.length;
  ++state.in_flight;
  ++stats_.requests_pushed;
  return true;
}

Status Blkfront::Push() {
  if (!broken_.ok()) return broken_;
  while (pending_count_ > 0) {
    if (req_prod_pvt_ - rsp_cons_ >= slots_ || free_shadows_.empty()) {
      ++stats_.ring_full;
      break;
    }
    const uint32_t index = pending_[pending_head_];
    if (!BuildRequest(ios_[index], index)) break;
    if (ios_[index].fully_issued) {
      pending_head_ = (pending_head_ + 1) % pending_.size();
      --pending_count_;
    }
  }
  return Publish();
}

// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY.
Status Blkfront::Publish() {
  const uint32_t old_prod = LoadShared(ring_header_->req_prod);
  const uint32_t new_prod = req_prod_pvt_;
  if (old_prod == new_prod) return Status::Ok();
  StoreShared(ring_header_->req_prod, new_prod);
  // The backend must see the new requests before we read req_event, or both could decide not to act.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  ++stats_.publishes;
  const uint32_t req_event = LoadShared(ring_header_->req_event);
  if (static_cast<uint32_t>(new_prod - req_event) < static_cast<uint32_t>(new_prod - old_prod)) {
    ++stats_.notifications;
    return domain_.Notify(port_);
  }
  return Status::Ok();
}

Status Blkfront::NotifyBackend() { return domain_.Notify(port_); }

Status Blkfront::PlaceRaw(std::span<const uint8_t> entry) {
  const size_t size = RingEntrySize(config_.abi);
  if (entry.size() > size) return Status::InvalidArgument("blkfront: raw entry larger than a ring slot");
  if (req_prod_pvt_ - rsp_cons_ >= slots_) return Status::Busy("blkfront: ring full");
  uint8_t* slot = RingEntry(req_prod_pvt_);
  std::memset(slot, 0, size);
  std::memcpy(slot, entry.data(), entry.size());
  const size_t id_offset =
      config_.abi == Abi::kX86_64 ? offsetof(abi::x86_64::Request, id) : offsetof(abi::x86_32::Request, id);
  if (entry.size() >= id_offset + sizeof(uint64_t)) {
    uint64_t id;
    std::memcpy(&id, entry.data() + id_offset, sizeof(id));
    raw_ids_.push_back(id);
  }
  ++req_prod_pvt_;
  return Status::Ok();
}

std::optional<RawResponse> Blkfront::TakeRawResponse(uint64_t id) {
  auto it = std::find_if(raw_responses_.begin(), raw_responses_.end(),
                         [id](const RawResponse& response) { return response.id == id; });
  if (it == raw_responses_.end()) return std::nullopt;
  RawResponse response = *it;
  raw_responses_.erase(it);
  return response;
}

Status Blkfront::CompleteRequest(uint32_t id, int16_t status) {
  Shadow& shadow = shadows_[id];
  IoState& state = ios_[shadow.io];
  // Without persistent grants every grant must be unmapped by now; one still mapped is the backend's bug
  // (Linux's blkfront fails the device the same way).
  for (uint32_t i = 0; i < shadow.nr_segments; ++i) {
    // A persistent grant stays granted (and mapped by the backend) for the next request.
    const bool ends =
        shadow.kinds[i] == PageKind::kBuffer || (shadow.kinds[i] == PageKind::kPool && !config_.persistent);
    Status ended = ends ? domain_.EndAccess(shadow.refs[i]) : Status::Ok();
    if (!ended.ok()) {
      return Break(
          Status::ProtocolError(StrFormat("grant still in use at response: %s", ended.message().c_str())));
    }
    if (shadow.kinds[i] != PageKind::kPool) {  // the data is in the I/O's own buffer already
      shadow.buffer_offset += shadow.bytes[i];
      continue;
    }
    if (state.io.op == IoOp::kRead && status == BLKIF_RSP_OKAY) {
      uint8_t* target = static_cast<uint8_t*>(state.io.buffer) + shadow.buffer_offset;
      std::memcpy(target, domain_.PageAddress(shadow.frames[i]) + shadow.page_offset[i], shadow.bytes[i]);
      shadow.buffer_offset += shadow.bytes[i];
    }
    if (config_.persistent) {
      persistent_pool_.push_back({shadow.frames[i], shadow.refs[i]});
    } else {
      (void)domain_.FreePage(shadow.frames[i]);
    }
  }
  for (uint32_t i = 0; i < shadow.indirect_pages; ++i) {
    Status ended = domain_.EndAccess(shadow.indirect_refs[i]);
    if (!ended.ok()) {
      return Break(Status::ProtocolError(
          StrFormat("indirect page grant still in use at response: %s", ended.message().c_str())));
    }
    (void)domain_.FreePage(shadow.indirect_frames[i]);
  }
  shadow.indirect_pages = 0;
  shadow.in_use = false;
  free_shadows_.push_back(id);
  if (Severity(status) > Severity(state.status))
    state.status = Severity(status) == 2 ? BLKIF_RSP_ERROR : status;
  --state.in_flight;
  if (state.in_flight == 0 && state.fully_issued) {
    completed_[(completed_head_ + completed_count_) % completed_.size()] = shadow.io;
    ++completed_count_;
  }
  return Status::Ok();
}

Status Blkfront::ProcessResponse(const uint8_t* slot) {
  uint64_t id;
  uint8_t operation;
  int16_t status;
  if (config_.abi == Abi::kX86_64) {
    abi::x86_64::Response response;
    std::memcpy(&response, slot, sizeof(response));
    id = response.id, operation = response.operation, status = response.status;
  } else {
    abi::x86_32::Response response;
    std::memcpy(&response, slot, sizeof(response));
    id = response.id, operation = response.operation, status = response.status;
  }
  ++stats_.responses;
  if (!raw_ids_.empty()) {
    auto it = std::find(raw_ids_.begin(), raw_ids_.end(), id);
    if (it != raw_ids_.end()) {
      raw_ids_.erase(it);
      raw_responses_.push_back(RawResponse{id, operation, status});
      return Status::Ok();
    }
  }
  if (id >= slots_) return Break(Status::ProtocolError(StrFormat("response has incorrect id %" PRIu64, id)));
  const Shadow& shadow = shadows_[id];
  if (!shadow.in_use) {
    return Break(
        Status::ProtocolError(StrFormat("response id %" PRIu64 " references no pending request", id)));
  }
  if (operation != shadow.operation) {
    return Break(Status::ProtocolError(
        StrFormat("response id %" PRIu64 " has operation %u, not %u", id, operation, shadow.operation)));
  }
  return CompleteRequest(static_cast<uint32_t>(id), status);
}

Result<size_t> Blkfront::Reap(std::span<IoCompletion> out) { return Consume(out, /*arm=*/true); }

Result<size_t> Blkfront::Consume(std::span<IoCompletion> out, bool arm) {
  if (!broken_.ok()) return broken_;
  // Acknowledge before looking, so that a notification sent after the look wakes the next Wait.
  if (arm) BLK_RETURN_IF_ERROR(domain_.Acknowledge(port_));
  for (;;) {
    const uint32_t rsp_prod = LoadShared(ring_header_->rsp_prod);
    if (static_cast<uint32_t>(rsp_prod - rsp_cons_) > slots_) {
      return Break(Status::ProtocolError(
          StrFormat("illegal number of responses (rsp_prod %u, rsp_cons %u)", rsp_prod, rsp_cons_)));
    }
    for (; rsp_cons_ != rsp_prod; ++rsp_cons_) BLK_RETURN_IF_ERROR(ProcessResponse(RingEntry(rsp_cons_)));
    if (!arm) break;
    // RING_FINAL_CHECK_FOR_RESPONSES while requests are out; with none out, just re-arm rsp_event.
    if (rsp_cons_ == req_prod_pvt_) {
      StoreShared(ring_header_->rsp_event, rsp_cons_ + 1);
      break;
    }
    if (LoadShared(ring_header_->rsp_prod) != rsp_cons_) continue;
    StoreShared(ring_header_->rsp_event, rsp_cons_ + 1);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (LoadShared(ring_header_->rsp_prod) == rsp_cons_) break;
  }
  BLK_RETURN_IF_ERROR(Push());  // slots were freed: requests waiting for them go now

  size_t count = 0;
  while (count < out.size() && completed_count_ > 0) {
    const uint32_t index = completed_[completed_head_];
    completed_head_ = (completed_head_ + 1) % completed_.size();
    --completed_count_;
    out[count++] = IoCompletion{ios_[index].io.tag, ios_[index].status};
    free_ios_.push_back(index);
    --io_count_;
  }
  return count;
}

Result<size_t> Blkfront::Wait(std::span<IoCompletion> out, std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  const bool polling = config_.poll_us > 0;
  for (;;) {
    auto reaped = Consume(out, /*arm=*/!polling);
    if (!reaped.ok() || *reaped > 0 || out.empty() || io_count_ == 0) return reaped;
    if (polling) {
      const auto spin_until = std::min(deadline, Clock::now() + std::chrono::microseconds(config_.poll_us));
      SpinYielder yielder;
      for (auto now = Clock::now(); LoadShared(ring_header_->rsp_prod) == rsp_cons_ && now < spin_until;
           now = Clock::now()) {
        yielder.Idle(now);
      }
      if (LoadShared(ring_header_->rsp_prod) != rsp_cons_) continue;
      reaped = Consume(out, /*arm=*/true);  // nothing came: from here on the backend must notify
      if (!reaped.ok() || *reaped > 0) return reaped;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return size_t{0};
    pollfd waiter{event_fd_, POLLIN, 0};
    int ready = ::poll(&waiter, 1, static_cast<int>(left.count()) + 1);
    if (ready < 0 && errno != EINTR) return Status::FromErrno(errno, "blkfront: poll");
  }
}

}  // namespace blk
