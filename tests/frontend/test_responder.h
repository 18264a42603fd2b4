// A minimal blkif backend for testing the frontend: it maps the shared ring through the simulated grant
// table, binds the event channel, reads requests (copied out of the ring, as a backend must), moves data by
// grant copy against an in-memory disk and writes responses, with the index and notification rules of
// <xen/io/ring.h>. Tests call its steps one by one to hold requests back, answer out of order or answer
// wrongly.
//
// Threading: one thread at a time.
#pragma once

#include <array>
#include <memory>
#include <vector>

#include "frontend/blkfront.h"

namespace blk {

struct ParsedRequest {
  uint32_t index;  // ring index the request was read from
  uint8_t operation;
  uint8_t nr_segments;
  uint16_t handle;
  uint64_t id;
  uint64_t sector;
  std::array<abi::Segment, kMaxDirectSegments> seg;
};

class TestResponder {
 public:
  TestResponder(SimHypervisor& sim, const Blkfront& front, size_t disk_sectors);
  // Maps the ring, binds the event channel and attaches (BACK_RING_ATTACH from the shared rsp_prod).
  Status Attach();

  // Every request published and not yet consumed.
  std::vector<ParsedRequest> Consume();
  // Moves the data of `request` between the disk and the guest by one grant copy batch; returns a
  // BLKIF_RSP_*.
  int16_t Execute(const ParsedRequest& request);
  // Writes a response into the next response slot, unpublished.
  void Respond(uint64_t id, uint8_t operation, int16_t status);
  // RING_PUSH_RESPONSES_AND_CHECK_NOTIFY, notifying when told to; returns whether it notified.
  bool PushResponses();
  // RING_FINAL_CHECK_FOR_REQUESTS: re-arms req_event; true if requests arrived meanwhile.
  bool FinalCheckForRequests();
  // Consume, execute, respond and push until the ring is idle; returns the requests served.
  size_t ServeAll();

  std::vector<uint8_t>& disk() { return disk_; }
  uint8_t* ring_bytes() const { return static_cast<uint8_t*>(ring_.addr()); }
  EventChannel& channel() { return *channel_; }
  uint32_t req_cons() const { return req_cons_; }

 private:
  SimHypervisor& sim_;
  const Blkfront& front_;
  const Abi abi_;
  const uint32_t slots_;
  std::vector<uint8_t> disk_;
  GrantMapping ring_;
  abi::SharedRingHeader* header_ = nullptr;
  std::unique_ptr<EventChannel> channel_;
  uint32_t req_cons_ = 0;
  uint32_t rsp_prod_pvt_ = 0;
};

}  // namespace blk
