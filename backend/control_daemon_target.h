// DaemonControlTarget: what the control socket commands, done on blkbackd's devices. A device is found by
// the "<frontend domid>/<devid>" its handshake is named by; its image and rings are the BackendDeviceOps'
// blk::Device; a resize is published to the frontend through the handshake (BlkifBackendDevice).
//
// Threading: the daemon's control thread (the ControlServer attached to the daemon runs there).
#pragma once

#include <string>
#include <vector>

#include "backend/blkback_daemon.h"
#include "backend/control_server.h"
#include "backend/device.h"

namespace blk {

class DaemonControlTarget final : public ControlTarget {
 public:
  explicit DaemonControlTarget(BlkbackDaemon& daemon) : daemon_(daemon) {}

  std::vector<ControlDeviceInfo> List() override;
  Result<std::vector<ControlDeviceStats>> Stats(const std::string& device) override;
  Status Pause(const std::string& device, std::function<void(Status)> done) override;
  std::vector<std::string> DescribePause(const std::string& device) override;
  Status Resume(const std::string& device) override;
  Status SwapImage(const std::string& device, const std::string& image) override;
  Status CheckSnapshot(const std::string& device, const std::string& child) override;
  Status Snapshot(const std::string& device, const std::string& child) override;
  Result<std::string> Resize(const std::string& device, uint64_t bytes) override;

 private:
  // The handshake named `name`, or nullptr.
  BlkifBackendDevice* FindHandshake(const std::string& name);
  // The open device named `name`, or why there is none.
  Result<Device*> FindDevice(const std::string& name);

  BlkbackDaemon& daemon_;
};

}  // namespace blk
