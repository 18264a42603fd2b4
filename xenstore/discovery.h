// DeviceDiscovery: finds the backend devices the toolstack creates for us and notices when it removes them.
//
// For each configured kind ("vbd", "qdisk", ...) it watches /local/domain/<own domid>/backend/<kind>; devices
// are the <frontend domid>/<devid> directories below. Watch events share the XenStore's one fd with the
// daemon's other watches, so the caller reads events and offers each to HandleEvent, which claims only its
// own tokens. Each event triggers a re-read of the part of the tree it names and a diff against the known
// devices, so coalesced or collapsed (rescan) events lose nothing and a device is reported added or removed
// exactly once. Directory names that are not strict decimal domids/devids are logged and ignored.
//
// Threading: used by the thread that owns the XenStore.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "xenstore/xenstore.h"

namespace blk {

struct DeviceId {
  std::string kind;
  uint32_t frontend_id = 0;
  uint32_t devid = 0;
  auto operator<=>(const DeviceId&) const = default;
  bool operator==(const DeviceId&) const = default;
};

struct DeviceChange {
  enum class Type { kAdded, kRemoved };
  Type type;
  DeviceId device;
  std::string backend_path;  // /local/domain/<own>/backend/<kind>/<frontend>/<devid>
  bool operator==(const DeviceChange&) const = default;
};

class DeviceDiscovery {
 public:
  DeviceDiscovery(XenStore& store, uint32_t own_domid, std::vector<std::string> kinds);
  DeviceDiscovery(const DeviceDiscovery&) = delete;
  DeviceDiscovery& operator=(const DeviceDiscovery&) = delete;

  // Registers the watches; their initial events lead to a full scan.
  Status Start();
  // Unregisters them. Known devices are kept; a later Start rescans and reports the difference.
  Status Stop();

  // If `event` carries one of our tokens, re-reads what it names, appends the changes and returns true (with
  // the failure, if reading failed, in *status). Returns false for another owner's event.
  bool HandleEvent(const WatchEvent& event, std::vector<DeviceChange>* changes, Status* status);
  // Re-reads one kind's whole tree.
  Status Rescan(std::string_view kind, std::vector<DeviceChange>* changes);

  const std::set<DeviceId>& devices() const { return devices_; }
  std::string BackendRoot(std::string_view kind) const;
  std::string BackendPath(const DeviceId& device) const;

 private:
  std::string Token(std::string_view kind) const;
  Status RescanDomain(const std::string& kind, uint32_t frontend_id, std::vector<DeviceChange>* changes);
  Status RecheckDevice(const DeviceId& device, std::vector<DeviceChange>* changes);
  // The domid/devid a directory name stands for, or false (logged) if it is not a strict decimal in range.
  bool ParseName(std::string_view parent, std::string_view name, uint64_t max, uint32_t* value) const;
  void Add(const DeviceId& device, std::vector<DeviceChange>* changes);
  void Remove(const DeviceId& device, std::vector<DeviceChange>* changes);

  XenStore& store_;
  uint32_t own_domid_;
  std::vector<std::string> kinds_;
  std::set<DeviceId> devices_;
};

}  // namespace blk
