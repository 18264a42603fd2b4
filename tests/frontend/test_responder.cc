// TestResponder: a hand-rolled backend for the frontend's tests.
#include "tests/frontend/test_responder.h"

#include <atomic>
#include <cstring>

namespace blk {
namespace {

uint32_t LoadShared(uint32_t& field) {
  return std::atomic_ref<uint32_t>(field).load(std::memory_order_acquire);
}
void StoreShared(uint32_t& field, uint32_t value) {
  std::atomic_ref<uint32_t>(field).store(value, std::memory_order_release);
}

template <typename Request>
ParsedRequest Parse(const uint8_t* slot, uint32_t index) {
  Request request;
  std::memcpy(&request, slot, sizeof(request));
  ParsedRequest parsed{
      index, request.operation, request.nr_segments, request.handle, request.id, request.sector_number, {}};
  std::memcpy(parsed.seg.data(), request.seg, sizeof(request.seg));
  return parsed;
}

}  // namespace

TestResponder::TestResponder(SimHypervisor& sim, const Blkfront& front, size_t disk_sectors)
    : sim_(sim),
      front_(front),
      abi_(front.config().abi),
      slots_(front.ring_slots()),
      disk_(disk_sectors << kSectorShift, 0) {}

Status TestResponder::Attach() {
  auto ring = sim_.grants().Map(front_.config().domid, front_.ring_refs(), true);
  if (!ring.ok()) return ring.status();
  ring_ = std::move(ring.value());
  header_ = static_cast<abi::SharedRingHeader*>(ring_.addr());
  auto channel = sim_.events().BindInterdomain(front_.config().domid, front_.event_channel());
  if (!channel.ok()) return channel.status();
  channel_ = std::move(channel.value());
  req_cons_ = rsp_prod_pvt_ = LoadShared(header_->rsp_prod);
  return Status::Ok();
}

std::vector<ParsedRequest> TestResponder::Consume() {
  std::vector<ParsedRequest> requests;
  const uint32_t req_prod = LoadShared(header_->req_prod);
  for (; req_cons_ != req_prod && req_cons_ - rsp_prod_pvt_ < slots_; ++req_cons_) {
    const uint8_t* slot =
        ring_bytes() + sizeof(abi::SharedRingHeader) + size_t{req_cons_ & (slots_ - 1)} * RingEntrySize(abi_);
    requests.push_back(abi_ == Abi::kX86_64 ? Parse<abi::x86_64::Request>(slot, req_cons_)
                                            : Parse<abi::x86_32::Request>(slot, req_cons_));
  }
  return requests;
}

int16_t TestResponder::Execute(const ParsedRequest& request) {
  if (request.nr_segments > kMaxDirectSegments) return BLKIF_RSP_ERROR;
  const bool to_guest = request.operation == BLKIF_OP_READ;
  std::vector<GrantCopySegment> segments;
  uint64_t sector = request.sector;
  for (uint32_t i = 0; i < request.nr_segments; ++i) {
    const abi::Segment& seg = request.seg[i];
    if (seg.first_sect > seg.last_sect || seg.last_sect >= kSectorsPerPage) return BLKIF_RSP_ERROR;
    const uint32_t sectors = seg.last_sect - seg.first_sect + 1u;
    if ((sector + sectors) << kSectorShift > disk_.size()) return BLKIF_RSP_ERROR;
    segments.push_back(GrantCopySegment{
        to_guest ? GrantCopySegment::Direction::kToGuest : GrantCopySegment::Direction::kFromGuest,
        front_.config().domid, seg.gref, static_cast<uint16_t>(seg.first_sect << kSectorShift),
        static_cast<uint16_t>(sectors << kSectorShift), disk_.data() + (sector << kSectorShift), 0});
    sector += sectors;
  }
  if (segments.empty()) return BLKIF_RSP_OKAY;
  if (!sim_.grants().Copy(segments).ok()) return BLKIF_RSP_ERROR;
  for (const GrantCopySegment& segment : segments) {
    if (segment.status != GNTST_okay) return BLKIF_RSP_ERROR;
  }
  return BLKIF_RSP_OKAY;
}

void TestResponder::Respond(uint64_t id, uint8_t operation, int16_t status) {
  uint8_t* slot = ring_bytes() + sizeof(abi::SharedRingHeader) +
                  size_t{rsp_prod_pvt_ & (slots_ - 1)} * RingEntrySize(abi_);
  if (abi_ == Abi::kX86_64) {
    abi::x86_64::Response response{id, operation, 0, status, 0};
    std::memcpy(slot, &response, sizeof(response));
  } else {
    abi::x86_32::Response response{id, operation, 0, status};
    std::memcpy(slot, &response, sizeof(response));
  }
  ++rsp_prod_pvt_;
}

bool TestResponder::PushResponses() {
  const uint32_t old_prod = LoadShared(header_->rsp_prod);
  const uint32_t new_prod = rsp_prod_pvt_;
  StoreShared(header_->rsp_prod, new_prod);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const bool notify = new_prod - LoadShared(header_->rsp_event) < new_prod - old_prod;
  if (notify) (void)channel_->Notify();
  return notify;
}

bool TestResponder::FinalCheckForRequests() {
  if (LoadShared(header_->req_prod) != req_cons_) return true;
  StoreShared(header_->req_event, req_cons_ + 1);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return LoadShared(header_->req_prod) != req_cons_;
}

size_t TestResponder::ServeAll() {
  size_t served = 0;
  do {
    for (const ParsedRequest& request : Consume()) {
      Respond(request.id, request.operation, Execute(request));
      ++served;
    }
    PushResponses();
  } while (FinalCheckForRequests());
  return served;
}

}  // namespace blk
