// Device: an image served over one or more rings.
#include "backend/device.h"

#include <algorithm>

#include "base/log.h"
#include "formats/discard.h"
#include "formats/raw_image.h"

namespace blk {

Result<std::unique_ptr<Device>> Device::Open(const DeviceConfig& config) {
  ImageOpenOptions options;
  options.read_only = config.read_only;
  options.direct = config.direct;
  options.logical_block_size = config.logical_block_size;
  auto image = OpenDiskImage(config.path, config.format, options);
  if (!image.ok()) return image.status().Annotate(config.name + ": ");
  DiskLimits limits;
  limits.sectors = (*image)->size_bytes() >> kSectorShift;
  limits.logical_block_size = (*image)->logical_block_size();
  limits.read_only = (*image)->read_only();
  // Discard punches holes in the image file at the guest's offsets: right for raw images only.
  DiscardSupport discard;
  if ((*image)->format() == ImageFormat::kRaw) discard = ProbeDiscard(static_cast<RawImage&>(**image).fd());
  limits.discard = config.discard && !limits.read_only && discard.supported;
  uint32_t granularity = std::max(discard.granularity, limits.logical_block_size);
  Log(LogLevel::kInfo, config.name.c_str(), "opened %s (%s): %llu bytes, %u-byte sectors, %s%s",
      config.path.c_str(), ImageFormatName((*image)->format()),
      static_cast<unsigned long long>((*image)->size_bytes()), limits.logical_block_size,
      limits.read_only ? "read-only" : "read-write", (*image)->direct_io() ? ", O_DIRECT" : ", buffered");
  return std::unique_ptr<Device>(new Device(config.name, std::move(*image), limits, granularity));
}

Device::~Device() { Disconnect(); }

Status Device::Connect(Hypervisor& hypervisor, const RingConnection& connection, Worker& worker) {
  if (image_->format() == ImageFormat::kVhd && !rings_.empty() && rings_.front().worker != &worker) {
    return Status::InvalidArgument(name_ + ": every ring of a VHD device must be served by one worker");
  }
  std::string ring_name = rings_.empty() ? name_ : name_ + "/q" + std::to_string(rings_.size());
  auto pipeline =
      RequestPipeline::Create(ring_name, hypervisor, connection, image_, limits_, worker.aio(), stats_);
  if (!pipeline.ok()) return pipeline.status();
  Status attached;
  RequestPipeline* raw = pipeline->get();
  worker.Call([&] { attached = worker.Attach(raw); });
  if (!attached.ok()) return attached;
  rings_.push_back({std::move(*pipeline), &worker});
  Log(LogLevel::kInfo, ring_name.c_str(), "connected: %zu-page ring, %s, event channel %u",
      connection.ring_refs.size(), AbiName(connection.abi), connection.event_channel);
  return Status::Ok();
}

void Device::Disconnect() {
  for (Ring& ring : rings_) {
    std::string ring_name = ring.pipeline->name();
    uint32_t in_flight = 0;
    ring.worker->Call([&] {
      in_flight = ring.pipeline->outstanding();
      ring.worker->Retire(std::move(ring.pipeline));
    });
    if (in_flight == 0) {
      Log(LogLevel::kInfo, ring_name.c_str(), "disconnected");
    } else {
      Log(LogLevel::kInfo, ring_name.c_str(),
          "disconnected; %u requests still in flight keep the ring mapped until they complete", in_flight);
    }
  }
  rings_.clear();
}

bool Device::broken() const {
  for (const Ring& ring : rings_) {
    if (ring.pipeline->broken()) return true;
  }
  return false;
}

}  // namespace blk
