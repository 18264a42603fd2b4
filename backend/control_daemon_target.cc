// DaemonControlTarget: control commands on the daemon's device table.
#include "backend/control_daemon_target.h"

#include "backend/blkif_device_ops.h"
#include "backend/control_device.h"
#include "base/format.h"

namespace blk {
namespace {

Device* OpenDevice(BlkifBackendDevice& handshake) {
  auto* ops = dynamic_cast<BackendDeviceOps*>(&handshake.ops());
  return ops == nullptr ? nullptr : ops->device();
}

}  // namespace

BlkifBackendDevice* DaemonControlTarget::FindHandshake(const std::string& name) {
  BlkifBackendDevice* found = nullptr;
  daemon_.ForEachDevice([&](BlkifBackendDevice& handshake) {
    if (found == nullptr && handshake.name() == name) found = &handshake;
  });
  return found;
}

Result<Device*> DaemonControlTarget::FindDevice(const std::string& name) {
  BlkifBackendDevice* handshake = FindHandshake(name);
  if (handshake == nullptr) return UnknownControlDevice(name);
  Device* device = OpenDevice(*handshake);
  if (device == nullptr) {
    return Status::InvalidArgument(StrFormat("%s has no open image (handshake state %s)", name.c_str(),
                                             BlkifStateName(handshake->state())));
  }
  return device;
}

std::vector<ControlDeviceInfo> DaemonControlTarget::List() {
  std::vector<ControlDeviceInfo> list;
  daemon_.ForEachDevice([&](BlkifBackendDevice& handshake) {
    ControlDeviceInfo info;
    info.name = handshake.name();
    info.state = BlkifStateName(handshake.state());
    if (!handshake.opened_params().empty()) info.images = {handshake.opened_params()};
    Device* device = OpenDevice(handshake);
    if (device == nullptr) {
      info.io = "closed";  // no image open yet
    } else {
      info.io = PauseStateName(device->pause_state());
      // After a snapshot or resume --image the device serves other files than the toolstack named.
      if (device->image_swapped()) info.images = ImageChainPaths(device->image());
      std::vector<std::string> advertised;
      if (handshake.features().flush_cache) advertised.push_back("flush-cache");
      if (handshake.features().barrier) advertised.push_back("barrier");
      info.features = ControlFeaturesOf(*device, std::move(advertised));
      info.queues = device->rings();
      info.size_bytes = device->size_bytes();
    }
    list.push_back(std::move(info));
  });
  return list;
}

Result<std::vector<ControlDeviceStats>> DaemonControlTarget::Stats(const std::string& name) {
  std::vector<ControlDeviceStats> stats;
  bool named_found = false;
  daemon_.ForEachDevice([&](BlkifBackendDevice& handshake) {
    if (!name.empty() && handshake.name() != name) return;
    named_found = true;
    if (Device* device = OpenDevice(handshake); device != nullptr) {
      stats.push_back(ControlStatsOf(handshake.name(), *device));
    }
  });
  if (!name.empty() && !named_found) return UnknownControlDevice(name);
  if (!name.empty() && stats.empty()) return FindDevice(name).status();
  return stats;
}

Status DaemonControlTarget::Pause(const std::string& name, std::function<void(Status)> done) {
  Result<Device*> device = FindDevice(name);
  if (!device.ok()) return device.status();
  return (*device)->Pause(std::move(done));
}

std::vector<std::string> DaemonControlTarget::DescribePause(const std::string& name) {
  Result<Device*> device = FindDevice(name);
  return device.ok() ? (*device)->DescribeOutstanding(16) : std::vector<std::string>{};
}

Status DaemonControlTarget::SwapImage(const std::string& name, const std::string& image) {
  Result<Device*> device = FindDevice(name);
  if (!device.ok()) return device.status();
  return (*device)->SwapImage(image);
}

Status DaemonControlTarget::CheckSnapshot(const std::string& name, const std::string& child) {
  Result<Device*> device = FindDevice(name);
  if (!device.ok()) return device.status();
  return (*device)->CheckSnapshot(child);
}

Status DaemonControlTarget::Snapshot(const std::string& name, const std::string& child) {
  Result<Device*> device = FindDevice(name);
  if (!device.ok()) return device.status();
  return (*device)->Snapshot(child);
}

Status DaemonControlTarget::Resume(const std::string& name) {
  Result<Device*> device = FindDevice(name);
  if (!device.ok()) return device.status();
  return (*device)->Resume();
}

Result<std::string> DaemonControlTarget::Resize(const std::string& name, uint64_t bytes) {
  Result<Device*> device = FindDevice(name);
  if (!device.ok()) return device.status();
  uint64_t before = (*device)->size_bytes();
  BLK_RETURN_IF_ERROR((*device)->Resize(bytes));
  Status published = FindHandshake(name)->PublishResize(bytes >> kSectorShift);
  if (!published.ok()) {
    return published.Annotate(StrFormat("%s: grown to %llu bytes, but the frontend was not told: ",
                                        name.c_str(), static_cast<unsigned long long>(bytes)));
  }
  return StrFormat("%s: %llu -> %llu bytes, published to the frontend", name.c_str(),
                   static_cast<unsigned long long>(before), static_cast<unsigned long long>(bytes));
}

}  // namespace blk
