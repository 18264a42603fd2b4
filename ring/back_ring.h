// The backend's end of a blkif shared ring: takes requests out, puts responses in.
//
// Shared memory is written by a hostile frontend at any time. This class reads `req_prod` once per Take(),
// copies every slot it takes into private memory before decoding it, and treats a `req_prod` more than a
// ring's worth ahead of the responses as a broken frontend. Responses are built in private memory and copied
// into the slot whole, with every byte defined (no stale padding reaches the guest).
//
// Index arithmetic is modulo 2^32 as in ring.h; the ring attaches at the frontend's current `rsp_prod`
// (BACK_RING_ATTACH), so a reconnecting frontend keeps its indices.
//
// Threading: one owning thread (the worker that serves the ring).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/status.h"
#include "ring/blkif_abi.h"
#include "ring/request.h"

namespace blk {

class BackRing {
 public:
  // `shared` points at `pages` mapped pages holding the ring; it must outlive this object.
  BackRing(void* shared, size_t pages, Abi abi);

  uint32_t slots() const { return slots_; }
  Abi abi() const { return abi_; }
  // Requests taken and not yet answered.
  uint32_t outstanding() const { return req_cons_ - rsp_prod_pvt_; }

  // Takes up to `out.size()` requests. Fails (ProtocolError) if the frontend's req_prod is more than a ring
  // ahead of the responses: the ring must then be abandoned.
  Result<size_t> Take(std::span<Request> out);

  // Queues a response in the next slot; visible to the frontend after PushResponses().
  void PutResponse(uint64_t id, uint8_t operation, int16_t status);
  // Publishes queued responses. Returns true if the frontend asked to be notified (rsp_event).
  bool PushResponses();
  // RING_FINAL_CHECK_FOR_REQUESTS: true if requests are waiting; if none, asks the frontend (req_event) to
  // notify on the next one, then checks once more so that a request published in between is not missed.
  bool FinalCheckForRequests();
  // True if the frontend has published requests not yet taken. One read of req_prod; arms nothing.
  bool HasUnconsumedRequests() const { return LoadReqProd() != req_cons_; }

 private:
  uint32_t LoadReqProd() const;
  uint8_t* Slot(uint32_t index) const {
    return entries_ + static_cast<size_t>(index & (slots_ - 1)) * entry_size_;
  }

  abi::SharedRingHeader* header_;
  uint8_t* entries_;
  Abi abi_;
  uint32_t slots_;
  size_t entry_size_;
  uint32_t req_cons_;
  uint32_t rsp_prod_pvt_;
  uint32_t rsp_prod_published_;
};

}  // namespace blk
