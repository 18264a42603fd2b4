// XenbusBlkfront: Linux blkfront's side of the blkif XenbusState handshake, over the XenStore seam, on top of
// the userspace Blkfront (one per queue) and the simulated hypervisor.
//
// Connect: Initialising; wait for the backend's InitWait; read max-ring-page-order and
// multi-queue-max-queues; create the rings; write ring-ref(s), event-channel(s), protocol and the queue count
// in one transaction; Initialised; wait for Connected; read sectors, sector-size and info; Connected. Close:
// Closing, wait for the backend to close, Closed, wait for the backend to be Closed, then free the rings (the
// backend has unmapped them). Connect again after Close reconnects in the same guest domain, as a rebooted
// or kexec'd guest does.
//
// Waiting uses a watch on the backend's state node and polls the XenStore fd with a deadline; an event of
// another owner only wakes the wait (the state is re-read each time).
//
// Threading: one thread (the guest's) uses the object and its XenStore.
#pragma once

#include <xen/io/xenbus.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "frontend/blkfront.h"
#include "ring/sim/sim_hypervisor.h"
#include "xenstore/xenstore.h"

namespace blk {

struct XenbusBlkfrontConfig {
  DomId domid = 1;
  std::string frontend_path;  // /local/domain/<domid>/device/vbd/<devid>; its `backend` key names the backend
  Abi abi = kNativeAbi;
  bool write_protocol = true;  // false: leave `protocol` out, which means the backend's native ABI
  uint32_t ring_pages = 1;     // wanted; fewer if the backend's max-ring-page-order is lower
  uint32_t queues = 1;         // wanted; fewer if the backend's multi-queue-max-queues is lower
  uint32_t max_outstanding = 32;
  // Asked for: feature-persistent = 1 is written, and used if the backend offers it too.
  bool persistent = false;
  // Wanted per indirect request; fewer (or none) if the backend's feature-max-indirect-segments is lower.
  uint32_t indirect_segments = 0;
};

struct XenbusDiskInfo {
  uint64_t sectors = 0;
  uint32_t sector_size = 0;
  uint32_t info = 0;  // VDISK_* bits
  bool flush_cache = false;
  bool barrier = false;
};

class XenbusBlkfront {
 public:
  XenbusBlkfront(XenStore& store, SimHypervisor& hypervisor, XenbusBlkfrontConfig config);
  ~XenbusBlkfront();
  XenbusBlkfront(const XenbusBlkfront&) = delete;
  XenbusBlkfront& operator=(const XenbusBlkfront&) = delete;

  Status Connect(std::chrono::milliseconds timeout);
  Status Close(std::chrono::milliseconds timeout);

  // Waits until the backend's state is one of `states`; a timeout names the state it stayed in.
  Result<XenbusState> WaitForBackend(std::initializer_list<XenbusState> states,
                                     std::chrono::milliseconds timeout);
  Result<XenbusState> BackendState();
  const std::string& backend_path() const { return backend_path_; }

  const XenbusDiskInfo& disk() const { return disk_; }
  size_t queue_count() const { return queues_.size(); }
  Blkfront& queue(size_t i) { return *queues_[i]; }
  uint32_t ring_pages() const { return ring_pages_; }
  // What was negotiated (valid once connected).
  bool persistent() const { return persistent_; }
  uint32_t indirect_segments() const { return indirect_segments_; }

 private:
  Status FindBackend();
  Status WriteState(XenbusState state);
  Status PublishTransport();
  Status ReadDisk();

  XenStore& store_;
  SimHypervisor& hypervisor_;
  XenbusBlkfrontConfig config_;
  std::string backend_path_;
  std::string token_;
  bool watching_ = false;
  uint32_t ring_pages_ = 1;
  bool persistent_ = false;
  uint32_t indirect_segments_ = 0;
  std::vector<std::unique_ptr<Blkfront>> queues_;
  XenbusDiskInfo disk_;
};

}  // namespace blk
