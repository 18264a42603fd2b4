// BlkifBackendDevice: one backend device's side of the blkif XenbusState handshake, over the XenStore seam.
//
// It reads the toolstack's keys and the frontend's state, turns them into inputs of the transition table
// (xenstore/blkif_state_machine.h) and carries out the actions: advertise the features and go InitWait; read
// the frontend's transport, have the backend map it, publish the disk and the final features in one
// transaction with Connected; Closing and Closed as the frontend closes; a fresh InitWait when it starts
// over; the error nodes and Closing when something fails; the backend's own nodes removed on online = 0.
// What the backend does with images and rings stays behind BlkifDeviceOps, so this file knows nothing of
// backend/. Every state change is logged once, with the device's "<frontend domid>/<devid>" as subject.
//
// Writes never recreate a directory the toolstack removed: each runs in a transaction that first checks the
// backend directory still holds the toolstack's `frontend-id`.
//
// Threading: used by the thread that owns the XenStore (the daemon's control thread); BlkifDeviceOps is
// called from there too.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "xenstore/blkif_keys.h"
#include "xenstore/blkif_state_machine.h"
#include "xenstore/discovery.h"
#include "xenstore/xenstore.h"

namespace blk {

// What the backend publishes about a disk once the image is open.
struct BlkifDiskInfo {
  uint64_t sectors = 0;  // in 512-byte units, as blkif counts
  uint32_t sector_size = 512;
  uint32_t physical_sector_size = 512;
  bool read_only = false;
  // feature-discard with its discard-granularity (bytes); discard-alignment is always 0. discard-secure only
  // with discard (the operator vouches that the storage erases securely).
  bool discard = false;
  uint32_t discard_granularity = 0;
  bool discard_secure = false;
  // feature-max-indirect-segments; 0: not offered (the node is then not written, as blkif.h asks).
  uint32_t max_indirect_segments = 0;
};

// What the backend must do for the handshake. Implemented in backend/ over blk::Device and the workers.
class BlkifDeviceOps {
 public:
  virtual ~BlkifDeviceOps() = default;
  // Opens the image named by the toolstack's keys (quickly: the control thread waits for it).
  virtual Result<BlkifDiskInfo> Open(const BackendConfig& config) = 0;
  virtual bool is_open() const = 0;
  // Maps and binds every queue of the frontend's transport and starts serving them.
  virtual Status Connect(uint32_t frontend_id, const FrontendTransport& transport) = 0;
  // Stops serving (after in-flight requests are answered), unmaps and unbinds. Idempotent.
  virtual void Disconnect() = 0;
  // A frontend broke a ring's protocol: the device must fail.
  virtual bool broken() const = 0;
};

// What this backend advertises before the frontend connects.
struct BlkifFeatures {
  uint32_t max_ring_page_order = 4;
  uint32_t max_queues = 1;
  bool flush_cache = true;
  bool barrier = true;
  // feature-persistent: offered as 1; a connection is persistent only if the frontend wrote 1 too.
  bool persistent = true;
};

struct BlkifBackendOptions {
  BlkifFeatures features;
  // Go to InitWait only once the backend's hotplug-status reads "connected" (a hotplug script ran).
  bool wait_for_hotplug_status = false;
};

class BlkifBackendDevice {
 public:
  BlkifBackendDevice(XenStore& store, uint32_t own_domid, DeviceId id, std::string backend_path,
                     std::unique_ptr<BlkifDeviceOps> ops, BlkifBackendOptions options);
  // Disconnects and unregisters the watch; writes nothing (the directory may be gone).
  ~BlkifBackendDevice();
  BlkifBackendDevice(const BlkifBackendDevice&) = delete;
  BlkifBackendDevice& operator=(const BlkifBackendDevice&) = delete;

  // If `event` carries this device's token, re-evaluates and returns true.
  bool HandleEvent(const WatchEvent& event);
  // Re-reads the toolstack's and the frontend's keys and takes every transition they call for.
  void Evaluate();
  // The daemon is stopping: stop serving (requests in flight still complete) and publish Closing, so that
  // the frontend knows its backend is gone. Nothing is written if the toolstack removed the directory.
  void StopForShutdown();

  const std::string& name() const { return name_; }
  const std::string& backend_path() const { return backend_path_; }
  const DeviceId& id() const { return id_; }
  BlkifState state() const { return state_; }
  // Connected, but the frontend broke a ring: the next Evaluate fails the device.
  bool ring_broken() const { return state_ == BlkifState::kConnected && ops_->broken(); }
  // The message of the last failure, empty if none.
  const std::string& last_error() const { return last_error_; }
  // The error node (Linux xenbus_dev_fatal's place): /local/domain/<own>/error/backend/<kind>/<fe>/<devid>.
  std::string ErrorPath() const;

  // For the control socket: the backend's operations, the image as the toolstack named it ("" before it was
  // opened), and what this device advertises.
  BlkifDeviceOps& ops() { return *ops_; }
  const std::string& opened_params() const { return opened_params_; }
  const BlkifFeatures& features() const { return options_.features; }
  // Online resize: the backend grew the disk to `sectors`. Writes `sectors` and, when connected, rewrites
  // `state` = Connected in the same transaction: the frontend's watch on our state fires and Linux blkfront
  // re-reads `sectors` (this is how it learns of a new size). Not yet connected: remembered for the connect.
  Status PublishResize(uint64_t sectors);

 private:
  struct Snapshot;

  Snapshot Read();
  // Feeds one input; returns false if it changed nothing.
  bool Step(BlkifInput input, const Snapshot& snapshot);
  Status Act(BlkifAction action, const Snapshot& snapshot);
  Status OpenAndAdvertise(const Snapshot& snapshot);
  Status ConnectFrontend(const Snapshot& snapshot);
  Status PublishState(XenbusState state);
  Status WriteIndirectFeature(Transaction& t);
  void WriteError(const Status& why);
  void RemoveOwnNodes();
  Status EnsureFrontendWatch(const std::string& frontend_path);
  // Runs `body` in a transaction if the backend directory still exists; kNotFound if it is gone.
  Status WriteIfPresent(const std::function<Status(Transaction&)>& body);

  XenStore& store_;
  uint32_t own_domid_;
  DeviceId id_;
  std::string backend_path_;
  std::string name_;
  std::string token_;
  std::unique_ptr<BlkifDeviceOps> ops_;
  BlkifBackendOptions options_;

  BlkifState state_ = BlkifState::kInitialising;
  std::optional<XenbusState> published_;  // what we last wrote to our state node
  std::string watched_frontend_;          // the frontend state path we watch, empty if none
  std::string opened_params_, opened_mode_;
  std::string refused_params_, refused_mode_;  // the last change refused, to log it once
  std::string last_error_;
  std::string pending_failure_;  // the failure to report at the next kFailure input
  BlkifDiskInfo disk_;
};

}  // namespace blk
