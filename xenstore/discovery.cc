// DeviceDiscovery: watch tokens per kind, and re-reading the backend tree at the depth an event names.
#include "xenstore/discovery.h"

#include <algorithm>
#include <utility>

#include "base/log.h"
#include "xenstore/blkif_keys.h"

namespace blk {
namespace {

constexpr std::string_view kTokenPrefix = "blkbackd-discovery:";
constexpr uint32_t kFirstReservedDomid = 0x7FF0;  // DOMID_FIRST_RESERVED

std::vector<std::string_view> SplitComponents(std::string_view rest) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (start < rest.size()) {
    size_t end = rest.find('/', start);
    if (end == std::string_view::npos) end = rest.size();
    if (end > start) parts.push_back(rest.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

// The children of `path`; a missing directory has none.
Result<std::vector<std::string>> ChildrenOrNone(XenStore& store, const std::string& path) {
  Result<std::vector<std::string>> children = store.Directory(path);
  if (!children.ok() && children.status().code() == Status::Code::kNotFound)
    return std::vector<std::string>();
  return children;
}

}  // namespace

DeviceDiscovery::DeviceDiscovery(XenStore& store, uint32_t own_domid, std::vector<std::string> kinds)
    : store_(store), own_domid_(own_domid), kinds_(std::move(kinds)) {}

std::string DeviceDiscovery::BackendRoot(std::string_view kind) const {
  std::string root = "/local/domain/" + std::to_string(own_domid_) + "/backend/";
  root += kind;
  return root;
}

std::string DeviceDiscovery::BackendPath(const DeviceId& device) const {
  return BackendRoot(device.kind) + "/" + std::to_string(device.frontend_id) + "/" +
         std::to_string(device.devid);
}

std::string DeviceDiscovery::Token(std::string_view kind) const {
  std::string token(kTokenPrefix);
  token += kind;
  return token;
}

Status DeviceDiscovery::Start() {
  for (const std::string& kind : kinds_) BLK_RETURN_IF_ERROR(store_.Watch(BackendRoot(kind), Token(kind)));
  return Status::Ok();
}

Status DeviceDiscovery::Stop() {
  Status first;
  for (const std::string& kind : kinds_) {
    Status status = store_.Unwatch(BackendRoot(kind), Token(kind));
    if (first.ok()) first = std::move(status);
  }
  return first;
}

bool DeviceDiscovery::ParseName(std::string_view parent, std::string_view name, uint64_t max,
                                uint32_t* value) const {
  std::string path(parent);
  path += '/';
  path += name;
  Result<uint64_t> parsed = ParseXsDecimal(name, max, path);
  if (!parsed.ok()) {
    Log(LogLevel::kWarning, "xenstore", "ignoring backend entry: %s", parsed.status().ToString().c_str());
    return false;
  }
  *value = static_cast<uint32_t>(*parsed);
  return true;
}

void DeviceDiscovery::Add(const DeviceId& device, std::vector<DeviceChange>* changes) {
  if (devices_.insert(device).second) {
    changes->push_back(DeviceChange{DeviceChange::Type::kAdded, device, BackendPath(device)});
  }
}

void DeviceDiscovery::Remove(const DeviceId& device, std::vector<DeviceChange>* changes) {
  if (devices_.erase(device) != 0) {
    changes->push_back(DeviceChange{DeviceChange::Type::kRemoved, device, BackendPath(device)});
  }
}

bool DeviceDiscovery::HandleEvent(const WatchEvent& event, std::vector<DeviceChange>* changes,
                                  Status* status) {
  if (!std::string_view(event.token).starts_with(kTokenPrefix)) return false;
  std::string kind = event.token.substr(kTokenPrefix.size());
  if (std::find(kinds_.begin(), kinds_.end(), kind) == kinds_.end()) return false;
  *status = Status::Ok();
  std::string root = BackendRoot(kind);
  if (!PathCovers(root, event.path)) return true;  // not below our watch: nothing of ours changed
  std::vector<std::string_view> parts = SplitComponents(std::string_view(event.path).substr(root.size()));
  if (parts.empty()) {
    *status = Rescan(kind, changes);
    return true;
  }
  uint32_t frontend_id = 0;
  if (!ParseName(root, parts[0], kFirstReservedDomid - 1, &frontend_id)) return true;
  if (parts.size() == 1) {
    *status = RescanDomain(kind, frontend_id, changes);
    return true;
  }
  uint32_t devid = 0;
  if (!ParseName(root + "/" + std::string(parts[0]), parts[1], UINT32_MAX, &devid)) return true;
  *status = RecheckDevice(DeviceId{kind, frontend_id, devid}, changes);
  return true;
}

Status DeviceDiscovery::Rescan(std::string_view kind, std::vector<DeviceChange>* changes) {
  std::string root = BackendRoot(kind);
  Result<std::vector<std::string>> domains = ChildrenOrNone(store_, root);
  if (!domains.ok()) return domains.status();
  std::set<uint32_t> present;
  for (const std::string& name : *domains) {
    uint32_t frontend_id = 0;
    if (ParseName(root, name, kFirstReservedDomid - 1, &frontend_id)) present.insert(frontend_id);
  }
  std::vector<DeviceId> gone;
  for (const DeviceId& device : devices_) {
    if (device.kind == kind && !present.contains(device.frontend_id)) gone.push_back(device);
  }
  for (const DeviceId& device : gone) Remove(device, changes);
  for (uint32_t frontend_id : present)
    BLK_RETURN_IF_ERROR(RescanDomain(std::string(kind), frontend_id, changes));
  return Status::Ok();
}

Status DeviceDiscovery::RescanDomain(const std::string& kind, uint32_t frontend_id,
                                     std::vector<DeviceChange>* changes) {
  std::string dir = BackendRoot(kind) + "/" + std::to_string(frontend_id);
  Result<std::vector<std::string>> names = ChildrenOrNone(store_, dir);
  if (!names.ok()) return names.status();
  std::set<uint32_t> present;
  for (const std::string& name : *names) {
    uint32_t devid = 0;
    if (ParseName(dir, name, UINT32_MAX, &devid)) present.insert(devid);
  }
  std::vector<DeviceId> gone;
  for (auto it = devices_.lower_bound(DeviceId{kind, frontend_id, 0});
       it != devices_.end() && it->kind == kind && it->frontend_id == frontend_id; ++it) {
    if (!present.contains(it->devid)) gone.push_back(*it);
  }
  for (const DeviceId& device : gone) Remove(device, changes);
  for (uint32_t devid : present) Add(DeviceId{kind, frontend_id, devid}, changes);
  return Status::Ok();
}

Status DeviceDiscovery::RecheckDevice(const DeviceId& device, std::vector<DeviceChange>* changes) {
  Result<std::string> node = store_.Read(BackendPath(device));
  if (node.ok()) {
    Add(device, changes);
  } else if (node.status().code() == Status::Code::kNotFound) {
    Remove(device, changes);
  } else {
    return node.status();
  }
  return Status::Ok();
}

}  // namespace blk
