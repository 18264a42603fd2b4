// A device: one frontend disk, named "<frontend domid>/<devid>". Owns its image, its statistics and its rings
// (one request pipeline per queue), each ring served by a worker.
//
// Threading: Connect, Disconnect, Pause, Resume, Resize and the reports run on one control thread; they
// reach each ring through its worker (Worker::Call/Post), so the ring itself is only ever touched by the
// worker. pause_state() and the statistics may be read from any thread. A VHD image's metadata is used by
// one thread at a time: every ring of a VHD device must be connected on the same worker.
//
// Pause is asynchronous: every ring stops taking requests, drains and syncs on its own worker, and the last
// one to finish reports. Resume, SwapImage and Snapshot (which belong between the two) run synchronously.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
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
  // Offer discard-secure with discard on a raw image on a block device: the operator vouches that the device
  // erases securely (user space cannot ask it). A file never is offered it.
  bool discard_secure = false;
  uint32_t max_indirect_segments = 0;  // feature-max-indirect-segments offered; 0: none
};

enum class PauseState : uint8_t { kRunning, kPausing, kPaused };
const char* PauseStateName(PauseState state);

// "vhd:PATH" (a VHD, differencing allowed), "raw:PATH" or "aio:PATH" (raw), or a bare PATH (probed).
std::pair<ImageFormatHint, std::string> ParseImageSpec(const std::string& spec);
// The files of `image`, leaf first: a VHD's whole chain, a raw image's one path.
std::vector<std::string> ImageChainPaths(const DiskImage& image);
// Whether `next` may replace the image of a device with `limits` (named `device`, served on `workers`
// workers) under a running frontend: same size, sector size and read-only state; discard offered only
// where it stays right (raw), discard-secure only onto a raw block device; a VHD only where one worker serves
// every ring. The refusal is one line.
Status CheckImageSwap(const std::string& device, const DiskLimits& limits, size_t workers,
                      const DiskImage& next);

class Device {
 public:
  static Result<std::unique_ptr<Device>> Open(const DeviceConfig& config);
  ~Device();

  const std::string& name() const { return name_; }
  const DiskImage& image() const { return *image_; }
  // Whether a snapshot or resume --image replaced the image the device was opened on.
  bool image_swapped() const { return image_swapped_; }
  const DiskLimits& limits() const { return limits_; }
  // Bytes the storage frees in, when limits().discard.
  uint32_t discard_granularity() const { return discard_granularity_; }
  DeviceStats& stats() { return *stats_; }
  const DeviceStats& stats() const { return *stats_; }

  // Maps and starts serving one more ring (a queue) on `worker`.
  Status Connect(Hypervisor& hypervisor, const RingConnection& connection, Worker& worker);
  // Stops every ring at once. A ring with I/O still in flight is handed to its worker, which unmaps and
  // unbinds it when the last I/O completes; so this returns quickly whatever the storage is doing.
  void Disconnect();
  // A frontend broke a ring's protocol; the device must be closed.
  bool broken() const;
  size_t rings() const { return rings_.size(); }
  // What each ring's frontend negotiated, in queue order.
  struct RingLayout {
    size_t pages;
    Abi abi;
    bool persistent;  // feature-persistent: the frontend reuses its grants
  };
  std::vector<RingLayout> RingLayouts() const;

  // Starts pausing every ring; `done` runs on a worker thread (or at once, on this thread, without rings)
  // once all are drained and synced, with the first failure if any. Refused if not running.
  Status Pause(std::function<void(Status)> done);
  // Serves everything the frontend queued while paused. Refused if not pausing or paused. A pause still
  // draining is abandoned (its `done` gets a kBusy status).
  Status Resume();
  // Any thread.
  PauseState pause_state() const { return pause_->state.load(std::memory_order_acquire); }
  // Up to `max` requests still outstanding over all rings, one line each ("q0: write id 7 sector 2048, in
  // I/O"), for a pause that does not finish.
  std::vector<std::string> DescribeOutstanding(size_t max);
  // Grows the image file to `bytes` (a multiple of the sector size) and lets every ring accept requests up
  // to it. Shrinking is refused: the guest may have data there. Block devices are refused (grow them with
  // their own tools).
  Status Resize(uint64_t bytes);
  uint64_t size_bytes() const { return limits_.sectors << kSectorShift; }
  // Paused only: reopens the device on `spec` (ParseImageSpec) and has every ring serve it, on its worker,
  // before anything resumes. Refused (staying paused on the old image, as the one-line refusal ends) when it
  // cannot open or CheckImageSwap says no. The old image closes when no ring holds it any more.
  Status SwapImage(const std::string& spec);
  // Whether a snapshot to `child` could start: the device runs (not paused by someone else), its image is a
  // writable VHD and nothing exists at `child`. Checked before pausing, so that the usual refusals cost the
  // guest nothing.
  Status CheckSnapshot(const std::string& child) const;
  // Paused only: creates `child`, a differencing VHD whose parent is the current leaf, and serves it; the
  // old leaf is from then on opened read-only, as part of the chain. On failure a half-made child is
  // removed and the device stays on its old leaf.
  Status Snapshot(const std::string& child);
  // Any thread: requests taken and not answered, and the latency of those answered, over all rings.
  uint32_t InFlight() const;
  LatencySummary Latency() const;

 private:
  struct Ring {
    std::unique_ptr<RequestPipeline> pipeline;
    Worker* worker;
    RingLayout layout;
  };
  // Shared with the workers' pause callbacks, which may run after the device is gone.
  struct PauseControl {
    std::mutex mutex;
    std::atomic<PauseState> state{PauseState::kRunning};
    uint64_t generation = 0;  // bumped by every Pause and Resume: a late drain of an old pause is ignored
  };
  class PauseWaiter;
  // SwapImage once the state is checked; a refusal does not say what the device does next.
  Status ReplacePausedImage(const std::string& spec);
  // CheckSnapshot without the pause state: the image and the child's path.
  Status CheckSnapshotTarget(const std::string& child) const;
  Device(std::string name, ImageOpenOptions open_options, std::shared_ptr<DiskImage> image, DiskLimits limits,
         uint32_t discard_granularity)
      : name_(std::move(name)),
        open_options_(open_options),
        image_(std::move(image)),
        limits_(limits),
        discard_granularity_(discard_granularity),
        stats_(std::make_shared<DeviceStats>()),
        pause_(std::make_shared<PauseControl>()) {}

  std::string name_;
  ImageOpenOptions open_options_;     // how the image was opened: a swapped-in image opens the same way
  std::shared_ptr<DiskImage> image_;  // shared with the rings, which may outlive the device (see Disconnect)
  bool image_swapped_ = false;
  DiskLimits limits_;
  uint32_t discard_granularity_;
  std::shared_ptr<DeviceStats> stats_;
  std::shared_ptr<PauseControl> pause_;
  std::vector<Ring> rings_;
};

}  // namespace blk
