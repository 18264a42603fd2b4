// A device: one frontend disk, named "<frontend domid>/<devid>". Owns its image, its statistics and its rings
// (one request pipeline per queue), each ring served by a worker.
//
// Threading: Connect and Disconnect run on a control thread; they hand each ring to its worker with
// Worker::Call, so the ring itself is only ever touched by the worker. A VHD image's metadata is used by one
// thread at a time: every ring of a VHD device must be connected on the same worker.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/device_stats.h"
#include "backend/request_pipeline.h"
#include "backend/worker.h"
#include "base/status.h"
#include "formats/disk_image.h"
#include "ring/hypervisor.h"
#include "ring/request.h"

namespace blk {

struct DeviceConfig {
  std::string name;  // "<domid>/<devid>", used in every log line
  std::string path;  // the image
  ImageFormatHint format = ImageFormatHint::kRaw;
  bool read_only = false;
  bool direct = true;
  uint32_t logical_block_size = 0;  // 0: the image's own
  bool discard = true;              // offer discard where the storage takes it (the toolstack may forbid it)
};

class Device {
 public:
  static Result<std::unique_ptr<Device>> Open(const DeviceConfig& config);
  ~Device();

  const std::string& name() const { return name_; }
  const DiskImage& image() const { return *image_; }
  const DiskLimits& limits() const { return limits_; }
  // Bytes the storage frees in, when limits().discard.
  uint32_t discard_granularity() const { return discard_granularity_; }
  DeviceStats& stats() { return *stats_; }

  // Maps and starts serving one more ring (a queue) on `worker`.
  Status Connect(Hypervisor& hypervisor, const RingConnection& connection, Worker& worker);
  // Stops every ring at once. A ring with I/O still in flight is handed to its worker, which unmaps and
  // unbinds it when the last I/O completes; so this returns quickly whatever the storage is doing.
  void Disconnect();
  // A frontend broke a ring's protocol; the device must be closed.
  bool broken() const;
  size_t rings() const { return rings_.size(); }

 private:
  struct Ring {
    std::unique_ptr<RequestPipeline> pipeline;
    Worker* worker;
  };
  Device(std::string name, std::shared_ptr<DiskImage> image, DiskLimits limits, uint32_t discard_granularity)
      : name_(std::move(name)),
        image_(std::move(image)),
        limits_(limits),
        discard_granularity_(discard_granularity),
        stats_(std::make_shared<DeviceStats>()) {}

  std::string name_;
  std::shared_ptr<DiskImage> image_;  // shared with the rings, which may outlive the device (see Disconnect)
  DiskLimits limits_;
  uint32_t discard_granularity_;
  std::shared_ptr<DeviceStats> stats_;
  std::vector<Ring> rings_;
};

}  // namespace blk
