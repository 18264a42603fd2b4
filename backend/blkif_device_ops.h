// BackendDeviceOps: what the blkif handshake (xenstore/blkif_backend.h) asks of the backend, done with a
// blk::Device: open the image the toolstack names, connect one ring per queue (queue i on worker i %
// workers), disconnect.
//
// Threading: called on the daemon's control thread; rings are handed to their workers by Device
// (Worker::Call).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/device.h"
#include "backend/worker.h"
#include "ring/hypervisor.h"
#include "ring/persistent_grants.h"
#include "xenstore/blkif_backend.h"

namespace blk {

class BackendDeviceOps final : public BlkifDeviceOps {
 public:
  // `workers` must outlive this object.
  // `max_indirect_segments`: what the device offers (feature-max-indirect-segments), 0 for none.
  // `discard_secure`: the operator vouches that block devices erase securely (see DeviceConfig).
  BackendDeviceOps(std::string name, Hypervisor hypervisor, std::vector<Worker*> workers, bool direct_io,
                   uint32_t max_indirect_segments = 0,
                   size_t persistent_grants_per_ring = PersistentGrantCache::kDefaultCapacity,
                   bool discard_secure = false);
  ~BackendDeviceOps() override;

  // Raw and VHD images: the params prefix names the format; a bare path is probed (a VHD footer at the end
  // makes it a VHD; a probed differencing VHD is refused). A cdrom or mode "r" opens read-only.
  Result<BlkifDiskInfo> Open(const BackendConfig& config) override;
  bool is_open() const override { return device_ != nullptr; }
  Status Connect(uint32_t frontend_id, const FrontendTransport& transport) override;
  void Disconnect() override;
  bool broken() const override { return device_ != nullptr && device_->broken(); }

  Device* device() const { return device_.get(); }

 private:
  std::string name_;
  Hypervisor hypervisor_;
  std::vector<Worker*> workers_;
  bool direct_io_;
  uint32_t max_indirect_segments_;
  size_t persistent_grants_per_ring_;
  bool discard_secure_;
  std::unique_ptr<Device> device_;
};

}  // namespace blk
