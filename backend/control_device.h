// What the control targets of the daemon and of blkbench share: a blk::Device seen through the control
// protocol's data types; and DeviceControlTarget, the target for devices served without xenstore (blkbench,
// tests), whose resize therefore tells no frontend.
//
// Threading: the devices' control thread.
#pragma once

#include <string>
#include <vector>

#include "backend/control_protocol.h"
#include "backend/control_server.h"
#include "backend/device.h"

namespace blk {

// The counters, in-flight requests and latency of `device`, under `name`.
ControlDeviceStats ControlStatsOf(const std::string& name, const Device& device);
// The rings as negotiated: "ring-pages=N" and "protocol=..." of the first ring, plus `advertised`.
std::vector<std::string> ControlFeaturesOf(const Device& device, std::vector<std::string> advertised);

// The kNotFound status for a device name no target knows.
Status UnknownControlDevice(const std::string& name);

class DeviceControlTarget final : public ControlTarget {
 public:
  // `device` must outlive the target (and the server using it); `name` is "DOMID/DEVID".
  void Add(std::string name, Device& device);

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
  Device* Find(const std::string& name);
  std::vector<std::pair<std::string, Device*>> devices_;
};

}  // namespace blk
