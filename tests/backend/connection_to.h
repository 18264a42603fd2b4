// The ring a userspace blkfront offers, as the backend's side of the handshake would read it from xenstore:
// for tests that connect a Device to a Blkfront directly.
#pragma once

#include "backend/device.h"
#include "frontend/blkfront.h"

namespace blk {

inline RingConnection ConnectionTo(const Blkfront& front) {
  RingConnection connection;
  connection.frontend_domid = front.config().domid;
  connection.ring_refs.assign(front.ring_refs().begin(), front.ring_refs().end());
  connection.event_channel = front.event_channel();
  connection.abi = front.config().abi;
  return connection;
}

}  // namespace blk
