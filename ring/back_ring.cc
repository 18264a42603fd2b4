// BackRing: the consumer side of ring.h's protocol, with read-once access to frontend-written memory.
#include "ring/back_ring.h"

#include <atomic>
#include <cstring>

namespace blk {
namespace {

// Shared indices are accessed through atomic_ref so the compiler performs exactly one load or store each; the
// fences give ring.h's xen_rmb/xen_wmb/xen_mb ordering.
uint32_t LoadShared(uint32_t& field) {
  return std::atomic_ref<uint32_t>(field).load(std::memory_order_relaxed);
}
void StoreShared(uint32_t& field, uint32_t value) {
  std::atomic_ref<uint32_t>(field).store(value, std::memory_order_relaxed);
}

template <typename Response>
void WriteResponse(uint8_t* slot, uint64_t id, uint8_t operation, int16_t status) {
  Response response;
  std::memset(&response, 0, sizeof(response));
  response.id = id;
  response.operation = operation;
  response.status = status;
  std::memcpy(slot, &response, sizeof(response));
}

}  // namespace

BackRing::BackRing(void* shared, size_t pages, Abi abi)
    : header_(static_cast<abi::SharedRingHeader*>(shared)),
      entries_(static_cast<uint8_t*>(shared) + sizeof(abi::SharedRingHeader)),
      abi_(abi),
      slots_(RingSlots(abi, pages)),
      entry_size_(RingEntrySize(abi)) {
  uint32_t start = LoadShared(header_->rsp_prod);
  req_cons_ = start;
  rsp_prod_pvt_ = start;
  rsp_prod_published_ = start;
}

uint32_t BackRing::LoadReqProd() const {
  uint32_t prod = LoadShared(header_->req_prod);
  std::atomic_thread_fence(std::memory_order_acquire);  // slots are read after req_prod
  return prod;
}

Result<size_t> BackRing::Take(std::span<Request> out) {
  uint32_t prod = LoadReqProd();
  uint32_t ahead = prod - rsp_prod_pvt_;
  if (ahead > slots_) {
    return Status::ProtocolError("req_prod " + std::to_string(prod) + " is more than " +
                                 std::to_string(slots_) + " requests ahead of rsp_prod " +
                                 std::to_string(rsp_prod_pvt_));
  }
  if (ahead < outstanding()) {
    return Status::ProtocolError("req_prod " + std::to_string(prod) + " moved back behind req_cons " +
                                 std::to_string(req_cons_));
  }
  size_t available = static_cast<uint32_t>(prod - req_cons_);
  size_t count = available < out.size() ? available : out.size();
  alignas(8) uint8_t copy[sizeof(abi::x86_64::Request)];
  for (size_t i = 0; i < count; ++i) {
    std::memcpy(copy, Slot(req_cons_), entry_size_);
    DecodeRequest(abi_, copy, &out[i]);
    ++req_cons_;
  }
  return count;
}

void BackRing::PutResponse(uint64_t id, uint8_t operation, int16_t status) {
  uint8_t* slot = Slot(rsp_prod_pvt_);
  if (abi_ == Abi::kX86_64) {
    WriteResponse<abi::x86_64::Response>(slot, id, operation, status);
  } else {
    WriteResponse<abi::x86_32::Response>(slot, id, operation, status);
  }
  ++rsp_prod_pvt_;
}

bool BackRing::PushResponses() {
  uint32_t old_prod = rsp_prod_published_;
  uint32_t new_prod = rsp_prod_pvt_;
  if (old_prod == new_prod) return false;
  std::atomic_thread_fence(std::memory_order_release);  // responses before the index that publishes them
  StoreShared(header_->rsp_prod, new_prod);
  rsp_prod_published_ = new_prod;
  std::atomic_thread_fence(std::memory_order_seq_cst);  // publish before reading what the frontend asked for
  uint32_t event = LoadShared(header_->rsp_event);
  return static_cast<uint32_t>(new_prod - event) < static_cast<uint32_t>(new_prod - old_prod);
}

bool BackRing::FinalCheckForRequests() {
  if (LoadReqProd() != req_cons_) return true;
  StoreShared(header_->req_event, req_cons_ + 1);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return LoadReqProd() != req_cons_;
}

}  // namespace blk
