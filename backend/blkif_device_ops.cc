// BackendDeviceOps: the handshake's requests carried out on a blk::Device.
#include "backend/blkif_device_ops.h"

#include <functional>
#include <optional>

#include "ring/blkif_abi.h"

namespace blk {

BackendDeviceOps::BackendDeviceOps(std::string name, Hypervisor hypervisor, std::vector<Worker*> workers,
                                   bool direct_io, uint32_t max_indirect_segments,
                                   size_t persistent_grants_per_ring, bool discard_secure)
    : name_(std::move(name)),
      hypervisor_(hypervisor),
      workers_(std::move(workers)),
      direct_io_(direct_io),
      max_indirect_segments_(max_indirect_segments),
      persistent_grants_per_ring_(persistent_grants_per_ring),
      discard_secure_(discard_secure) {}

BackendDeviceOps::~BackendDeviceOps() { Disconnect(); }

Result<BlkifDiskInfo> BackendDeviceOps::Open(const BackendConfig& config) {
  DeviceConfig device_config;
  device_config.name = name_;
  device_config.path = config.disk.path;
  device_config.format = config.disk.format == DiskFormat::kVhd ? ImageFormatHint::kVhd
                         : config.disk.probe                    ? ImageFormatHint::kProbe
                                                                : ImageFormatHint::kRaw;
  device_config.read_only = !config.writable || config.device_type == DeviceType::kCdrom;
  device_config.direct = direct_io_;
  device_config.discard = config.discard_enable;
  device_config.discard_secure = discard_secure_;
  device_config.max_indirect_segments = max_indirect_segments_;
  Result<std::unique_ptr<Device>> device = Device::Open(device_config);
  if (!device.ok()) return device.status();
  device_ = std::move(device).value();
  BlkifDiskInfo info;
  info.sectors = device_->limits().sectors;
  info.sector_size = device_->limits().logical_block_size;
  info.physical_sector_size = device_->image().physical_block_size();
  info.read_only = device_->limits().read_only;
  info.discard = device_->limits().discard;
  info.discard_granularity = device_->discard_granularity();
  info.discard_secure = device_->limits().discard_secure;
  info.max_indirect_segments = device_->limits().max_indirect_segments;
  return info;
}

Status BackendDeviceOps::Connect(uint32_t frontend_id, const FrontendTransport& transport) {
  if (device_ == nullptr) return Status::InvalidArgument(name_ + ": connect before the image is open");
  if (workers_.empty()) return Status::InvalidArgument(name_ + ": no worker to serve the rings");
  std::optional<Abi> abi = ParseProtocol(transport.protocol);
  if (!abi) return Status::NotSupported(name_ + ": protocol " + transport.protocol);
  // A VHD image's metadata is single-threaded: all its queues share one worker (chosen by the device's name,
  // so that VHD devices spread over the workers).
  bool one_worker = device_->image().format() == ImageFormat::kVhd;
  size_t vhd_worker = std::hash<std::string>{}(name_) % workers_.size();
  for (size_t q = 0; q < transport.queues.size(); ++q) {
    RingConnection connection;
    connection.frontend_domid = static_cast<DomId>(frontend_id);
    connection.ring_refs.assign(transport.queues[q].ring_refs.begin(), transport.queues[q].ring_refs.end());
    connection.event_channel = transport.queues[q].event_channel;
    connection.abi = *abi;
    connection.persistent = transport.persistent;
    connection.persistent_capacity = persistent_grants_per_ring_;
    Status connected =
        device_->Connect(hypervisor_, connection, *workers_[one_worker ? vhd_worker : q % workers_.size()]);
    if (!connected.ok()) {
      device_->Disconnect();
      return connected.Annotate("queue " + std::to_string(q) + ": ");
    }
  }
  return Status::Ok();
}

void BackendDeviceOps::Disconnect() {
  if (device_ != nullptr) device_->Disconnect();
}

}  // namespace blk
