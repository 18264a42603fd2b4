// BlkbackDaemon: the core of blkbackd, without main() or configuration parsing. It owns the XenStore client,
// device discovery for the configured backend kinds (vbd, qdisk, vbd3), the workers and the device table,
// and runs one event loop on the xenstore fd and a stop eventfd.
//
// Devices are created and destroyed as the toolstack's <frontend domid>/<devid> directories appear and
// vanish; each runs its own handshake (BlkifBackendDevice), so one failing device never disturbs another.
// Watch events of a device's backend directory reach it through discovery's watch; each batch of events
// re-evaluates each touched device once, so a guest flooding its nodes costs one re-read per batch.
//
// Threading: one control thread calls Run (or RunOnce); it alone uses the XenStore. Rings live on the
// workers. Stop() and the counters may be used from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/worker.h"
#include "base/status.h"
#include "base/unique_fd.h"
#include "ring/hypervisor.h"
#include "xenstore/blkif_backend.h"
#include "xenstore/discovery.h"
#include "xenstore/xenstore.h"

namespace blk {

class ControlServer;

struct BlkbackDaemonOptions {
  std::vector<std::string> kinds{"vbd"};
  unsigned workers = 2;
  unsigned aio_depth = 256;
  // See Worker::Create.
  unsigned poll_us = 0;
  bool direct_io = true;
  bool wait_for_hotplug_status = false;
  // Our own domid; unset: read from xenstore's relative `domid` key (0 in dom0, set by the toolstack in a
  // driver domain).
  std::optional<uint32_t> own_domid;
  uint32_t max_ring_page_order = 4;
  // 0: as many queues as workers.
  uint32_t max_queues = 0;
  // How long a request whose I/O fails with a transient error (EAGAIN, EINTR, ENOMEM, EBUSY) is retried, with
  // a growing back-off, before it fails; like tapdisk's.
  unsigned io_retry_seconds = 120;
  // feature-max-indirect-segments offered to frontends; 0: indirect descriptors off.
  uint32_t max_indirect_segments = 256;
  // feature-persistent offered, and how many grants each ring keeps mapped (Linux blkback: 1056).
  bool persistent_grants = true;
  uint32_t persistent_grants_per_ring = 1056;
  // discard-secure offered on raw images on block devices (with discard): the operator vouches that the
  // devices served erase securely. Never on files.
  bool discard_secure = false;
  // How often the loop looks for rings a frontend broke, in milliseconds.
  int health_check_ms = 100;
};

class BlkbackDaemon {
 public:
  // Reads our domid from the relative `domid` key (0 in dom0) unless the options give it, starts the
  // workers and discovery.
  static Result<std::unique_ptr<BlkbackDaemon>> Create(std::unique_ptr<XenStore> store, Hypervisor hypervisor,
                                                       const BlkbackDaemonOptions& options);
  // Disconnects every device (writing nothing to xenstore) and stops the workers.
  ~BlkbackDaemon();
  BlkbackDaemon(const BlkbackDaemon&) = delete;
  BlkbackDaemon& operator=(const BlkbackDaemon&) = delete;

  // Serves until Stop(); a failure of the xenstore connection ends it with that status.
  Status Run();
  // Waits up to `timeout_ms` for events and handles them. Returns false once Stop() was called.
  Result<bool> RunOnce(int timeout_ms);
  // Any thread.
  void Stop();
  // After Run returned: every device stops serving and publishes Closing, then waits up to `timeout_ms` for
  // the I/O already taken from the rings to complete. Returns how many requests were still in flight when it
  // gave up (0: everything the frontends were answered is on the storage).
  uint32_t Shutdown(int timeout_ms);

  uint32_t own_domid() const { return own_domid_; }
  // Any thread.
  size_t device_count() const { return device_count_.load(); }
  uint64_t evaluations() const { return evaluations_.load(); }
  // Control thread only (or while the loop is not running).
  const BlkifBackendDevice* FindDevice(const std::string& backend_path) const;

  // The control socket (backend/control_server.h), served from this loop: its fd joins the loop's epoll set
  // and its commands run on the control thread. `server` must outlive the loop; nullptr detaches it.
  // Before Run(), or on the control thread.
  Status AttachControl(ControlServer* server);
  // Control thread only: every device, in backend-path order (the control target's view).
  void ForEachDevice(const std::function<void(BlkifBackendDevice&)>& visit);

 private:
  BlkbackDaemon(std::unique_ptr<XenStore> store, Hypervisor hypervisor, const BlkbackDaemonOptions& options,
                uint32_t own_domid, UniqueFd epoll, UniqueFd stop);
  Status StartWorkersAndDiscovery();
  Status HandleEvents();
  void Apply(const DeviceChange& change);
  // The device whose backend directory holds `path`, or "" if none.
  std::string DeviceFor(const std::string& path) const;
  void CheckHealth();

  std::unique_ptr<XenStore> store_;
  Hypervisor hypervisor_;
  BlkbackDaemonOptions options_;
  uint32_t own_domid_;
  UniqueFd epoll_;
  UniqueFd stop_;
  std::vector<std::unique_ptr<Worker>> workers_;
  DeviceDiscovery discovery_;
  // Declared after the workers: devices hand their rings back to the workers when destroyed.
  std::map<std::string, std::unique_ptr<BlkifBackendDevice>> devices_;  // by backend path
  std::atomic<size_t> device_count_{0};
  std::atomic<uint64_t> evaluations_{0};
  std::vector<WatchEvent> events_;
  ControlServer* control_ = nullptr;
};

}  // namespace blk
