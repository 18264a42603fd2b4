// Device -> control protocol data.
#include "backend/control_device.h"

#include "base/format.h"
#include "ring/blkif_abi.h"

namespace blk {

ControlDeviceStats ControlStatsOf(const std::string& name, const Device& device) {
  const DeviceStats& counters = device.stats();
  auto load = [](const std::atomic<uint64_t>& counter) { return counter.load(std::memory_order_relaxed); };
  ControlDeviceStats stats;
  stats.name = name;
  stats.io = PauseStateName(device.pause_state());
  stats.oo_req = load(counters.oo_req);
  stats.rd_req = load(counters.rd_req);
  stats.wr_req = load(counters.wr_req);
  stats.f_req = load(counters.f_req);
  stats.ds_req = load(counters.ds_req);
  stats.rd_sect = load(counters.rd_sect);
  stats.wr_sect = load(counters.wr_sect);
  stats.bad_req = load(counters.bad_req);
  stats.io_errors = load(counters.io_errors);
  stats.in_flight = device.InFlight();
  LatencySummary latency = device.Latency();
  stats.latency_count = latency.count;
  stats.latency_p50_ns = latency.p50_ns;
  stats.latency_p99_ns = latency.p99_ns;
  stats.latency_p999_ns = latency.p999_ns;
  stats.latency_max_ns = latency.max_ns;
  return stats;
}

std::vector<std::string> ControlFeaturesOf(const Device& device, std::vector<std::string> advertised) {
  std::vector<Device::RingLayout> layouts = device.RingLayouts();
  if (!layouts.empty()) {
    advertised.push_back("ring-pages=" + std::to_string(layouts.front().pages));
    advertised.push_back(std::string("protocol=") + AbiName(layouts.front().abi));
    if (layouts.front().persistent) advertised.push_back("persistent");
  }
  // Offered: a frontend sends indirect requests of up to this many segments if it wants to.
  if (device.limits().max_indirect_segments > 0)
    advertised.push_back("max-indirect-segments=" + std::to_string(device.limits().max_indirect_segments));
  if (device.limits().read_only) advertised.push_back("read-only");
  return advertised;
}

Status UnknownControlDevice(const std::string& name) {
  return Status::NotFound("no device " + name + " (see list)");
}

void DeviceControlTarget::Add(std::string name, Device& device) {
  devices_.emplace_back(std::move(name), &device);
}

Device* DeviceControlTarget::Find(const std::string& name) {
  for (auto& [known, device] : devices_) {
    if (known == name) return device;
  }
  return nullptr;
}

std::vector<ControlDeviceInfo> DeviceControlTarget::List() {
  std::vector<ControlDeviceInfo> list;
  for (auto& [name, device] : devices_) {
    ControlDeviceInfo info;
    info.name = name;
    info.state = device->rings() > 0 ? "connected" : "open";
    info.io = PauseStateName(device->pause_state());
    info.images = ImageChainPaths(device->image());
    info.features = ControlFeaturesOf(*device, {"flush-cache", "barrier"});
    info.queues = device->rings();
    info.size_bytes = device->size_bytes();
    list.push_back(std::move(info));
  }
  return list;
}

Result<std::vector<ControlDeviceStats>> DeviceControlTarget::Stats(const std::string& name) {
  std::vector<ControlDeviceStats> stats;
  for (auto& [known, device] : devices_) {
    if (name.empty() || name == known) stats.push_back(ControlStatsOf(known, *device));
  }
  if (!name.empty() && stats.empty()) return UnknownControlDevice(name);
  return stats;
}

Status DeviceControlTarget::Pause(const std::string& name, std::function<void(Status)> done) {
  Device* device = Find(name);
  if (device == nullptr) return UnknownControlDevice(name);
  return device->Pause(std::move(done));
}

std::vector<std::string> DeviceControlTarget::DescribePause(const std::string& name) {
  Device* device = Find(name);
  return device == nullptr ? std::vector<std::string>{} : device->DescribeOutstanding(16);
}

Status DeviceControlTarget::Resume(const std::string& name) {
  Device* device = Find(name);
  if (device == nullptr) return UnknownControlDevice(name);
  return device->Resume();
}

Status DeviceControlTarget::SwapImage(const std::string& name, const std::string& image) {
  Device* device = Find(name);
  if (device == nullptr) return UnknownControlDevice(name);
  return device->SwapImage(image);
}

Status DeviceControlTarget::CheckSnapshot(const std::string& name, const std::string& child) {
  Device* device = Find(name);
  if (device == nullptr) return UnknownControlDevice(name);
  return device->CheckSnapshot(child);
}

Status DeviceControlTarget::Snapshot(const std::string& name, const std::string& child) {
  Device* device = Find(name);
  if (device == nullptr) return UnknownControlDevice(name);
  return device->Snapshot(child);
}

Result<std::string> DeviceControlTarget::Resize(const std::string& name, uint64_t bytes) {
  Device* device = Find(name);
  if (device == nullptr) return UnknownControlDevice(name);
  uint64_t before = device->size_bytes();
  BLK_RETURN_IF_ERROR(device->Resize(bytes));
  return StrFormat("%s: %llu -> %llu bytes (no xenstore here: no frontend is told)", name.c_str(),
                   static_cast<unsigned long long>(before), static_cast<unsigned long long>(bytes));
}

}  // namespace blk
