// BlkifBackendDevice: reading xenstore into state-machine inputs and carrying out the actions.
#include "xenstore/blkif_backend.h"

#include <cerrno>
#include <cstdint>
#include <string>

#include "base/log.h"

// Xen's public headers need the fixed-width integer types declared before them.
#include <xen/grant_table.h>
#include <xen/io/blkif.h>
#include <xen/xen.h>

namespace blk {

namespace {

// The nodes this backend writes in its directory (the toolstack's are left alone).
constexpr const char* kOwnNodes[] = {
    "feature-flush-cache",
    "feature-barrier",
    "max-ring-page-order",
    "multi-queue-max-queues",
    "sectors",
    "info",
    "sector-size",
    "physical-sector-size",
    "feature-discard",
    "discard-granularity",
    "discard-alignment",
    "discard-secure",
    "feature-max-indirect-segments",
    "feature-persistent",
    "hotplug-error",
};

}  // namespace

struct BlkifBackendDevice::Snapshot {
  bool backend_present = true;
  bool offline = false;
  Status config_status;
  BackendConfig config;
  std::string params, mode;
  bool toolstack_closing = false;
  bool hotplug_connected = false;
  bool frontend_known = false;  // the frontend's state was read (or found absent)
  bool frontend_gone = false;
  Status frontend_status;  // a frontend state that does not parse
  XenbusState frontend_state = XenbusStateUnknown;
};

BlkifBackendDevice::BlkifBackendDevice(XenStore& store, uint32_t own_domid, DeviceId id,
                                       std::string backend_path, std::unique_ptr<BlkifDeviceOps> ops,
                                       BlkifBackendOptions options)
    : store_(store),
      own_domid_(own_domid),
      id_(std::move(id)),
      backend_path_(std::move(backend_path)),
      name_(std::to_string(id_.frontend_id) + "/" + std::to_string(id_.devid)),
      token_("blkif:" + backend_path_),
      ops_(std::move(ops)),
      options_(options) {}

BlkifBackendDevice::~BlkifBackendDevice() {
  ops_->Disconnect();
  if (!watched_frontend_.empty()) (void)store_.Unwatch(watched_frontend_, token_);
}

std::string BlkifBackendDevice::ErrorPath() const {
  return "/local/domain/" + std::to_string(own_domid_) + "/error/backend/" + id_.kind + "/" +
         std::to_string(id_.frontend_id) + "/" + std::to_string(id_.devid);
}

bool BlkifBackendDevice::HandleEvent(const WatchEvent& event) {
  if (event.token != token_) return false;
  Evaluate();
  return true;
}

BlkifBackendDevice::Snapshot BlkifBackendDevice::Read() {
  Snapshot s;
  KeyReader backend = KeyReader::ForStore(store_, backend_path_);
  Result<std::optional<std::string>> frontend_id = backend.ReadOptional("frontend-id");
  if (frontend_id.ok() && !frontend_id->has_value()) {
    s.backend_present = false;
    return s;
  }
  Result<std::optional<std::string>> online = backend.ReadOptional("online");
  s.offline = online.ok() && online->has_value() && **online == "0";
  for (auto [key, out] : {std::pair{"params", &s.params}, std::pair{"mode", &s.mode}}) {
    Result<std::optional<std::string>> value = backend.ReadOptional(key);
    if (value.ok() && value->has_value()) *out = **value;
  }
  Result<BackendConfig> config = ReadBackendConfig(backend);
  if (config.ok()) {
    s.config = std::move(config).value();
    if (s.config.frontend_id != id_.frontend_id) {
      s.config_status = Status::InvalidArgument(backend.PathOf("frontend-id") + ": " +
                                                std::to_string(s.config.frontend_id) + " is not the domain " +
                                                std::to_string(id_.frontend_id) + " the directory names");
    }
  } else {
    s.config_status = config.status();
  }
  Result<std::optional<std::string>> state = backend.ReadOptional("state");
  if (state.ok() && state->has_value()) {
    Result<XenbusState> parsed = ParseXenbusState(**state, backend.PathOf("state"));
    s.toolstack_closing = parsed.ok() && *parsed == XenbusStateClosing && published_ != XenbusStateClosing;
  }
  if (options_.wait_for_hotplug_status) {
    Result<std::optional<std::string>> hotplug = backend.ReadOptional("hotplug-status");
    s.hotplug_connected = hotplug.ok() && hotplug->has_value() && **hotplug == "connected";
  }

  if (!s.config_status.ok()) return s;
  if (Status watched = EnsureFrontendWatch(s.config.frontend_path + "/state"); !watched.ok()) {
    Log(LogLevel::kWarning, name_.c_str(), "cannot watch the frontend: %s", watched.ToString().c_str());
  }
  KeyReader frontend = KeyReader::ForStore(store_, s.config.frontend_path);
  Result<std::optional<std::string>> frontend_state = frontend.ReadOptional("state");
  if (!frontend_state.ok()) {
    s.frontend_status = frontend_state.status();
    s.frontend_known = true;
    return s;
  }
  s.frontend_known = true;
  if (!frontend_state->has_value()) {
    Result<std::string> domain = store_.Read("/local/domain/" + std::to_string(s.config.frontend_id));
    s.frontend_gone = !domain.ok() && domain.status().code() == Status::Code::kNotFound;
    s.frontend_state = XenbusStateUnknown;
    return s;
  }
  Result<XenbusState> parsed = ParseXenbusState(**frontend_state, frontend.PathOf("state"));
  if (parsed.ok()) {
    s.frontend_state = *parsed;
  } else {
    s.frontend_status = parsed.status();
  }
  return s;
}

void BlkifBackendDevice::Evaluate() {
  if (state_ == BlkifState::kRemoved) return;
  Snapshot s = Read();
  if (!s.backend_present) return;  // the toolstack removed the device; discovery drops us
  if (s.offline) {
    Step(BlkifInput::kOffline, s);
    return;
  }
  if (s.frontend_gone) {
    Step(BlkifInput::kFrontendGone, s);
    return;
  }
  if (s.toolstack_closing) Step(BlkifInput::kToolstackClosing, s);
  if (ops_->broken()) {
    pending_failure_ = "the frontend broke the ring protocol";
    Step(BlkifInput::kFailure, s);
  }
  if (!s.config_status.ok()) {
    // A toolstack that writes its keys one by one (not in one transaction as libxl does) is waited for.
    if (state_ == BlkifState::kInitialising && s.config_status.code() == Status::Code::kNotFound) return;
    pending_failure_ = s.config_status.ToString();
    Step(BlkifInput::kFailure, s);
    return;
  }
  if (ops_->is_open() && (s.params != opened_params_ || s.mode != opened_mode_))
    Step(BlkifInput::kConfigChanged, s);
  if (!options_.wait_for_hotplug_status || s.hotplug_connected) Step(BlkifInput::kConfigReady, s);
  if (!s.frontend_status.ok()) {
    pending_failure_ = s.frontend_status.ToString();
    Step(BlkifInput::kFailure, s);
    return;
  }
  if (!s.frontend_known) return;
  // A frontend that is already further along (Initialised while we reopen) is followed in one evaluation.
  for (int i = 0; i < 3 && Step(InputForFrontendState(s.frontend_state), s); ++i) {
  }
}

void BlkifBackendDevice::StopForShutdown() { Step(BlkifInput::kDaemonStopping, Snapshot{}); }

bool BlkifBackendDevice::Step(BlkifInput input, const Snapshot& snapshot) {
  BlkifTransition t = NextBlkifState(state_, input);
  if (t.action == BlkifAction::kRefuseChange) {
    if (snapshot.params != refused_params_ || snapshot.mode != refused_mode_) {
      refused_params_ = snapshot.params;
      refused_mode_ = snapshot.mode;
      Log(LogLevel::kWarning, name_.c_str(),
          "refusing the toolstack's change to params \"%s\" mode \"%s\" while %s: still serving \"%s\" mode "
          "\"%s\"",
          snapshot.params.c_str(), snapshot.mode.c_str(), BlkifStateName(state_), opened_params_.c_str(),
          opened_mode_.c_str());
    }
    return false;
  }
  if (t.action == BlkifAction::kNone && t.next == state_) return false;
  // Logged before acting, so the line precedes what the toolstack and the frontend see of the change.
  if (t.next != state_) {
    Log(LogLevel::kNotice, name_.c_str(), "%s -> %s (%s)", BlkifStateName(state_), BlkifStateName(t.next),
        BlkifInputName(input));
  }
  Status done = Act(t.action, snapshot);
  state_ = t.next;
  if (!done.ok()) {
    if (t.action == BlkifAction::kFail || t.action == BlkifAction::kDisconnect ||
        t.action == BlkifAction::kRemove || t.action == BlkifAction::kWriteClosing ||
        t.action == BlkifAction::kStop) {
      Log(LogLevel::kWarning, name_.c_str(), "%s: %s", BlkifActionName(t.action), done.ToString().c_str());
    } else {
      pending_failure_ = done.ToString();
      Step(BlkifInput::kFailure, snapshot);
    }
  }
  return true;
}

Status BlkifBackendDevice::Act(BlkifAction action, const Snapshot& snapshot) {
  switch (action) {
    case BlkifAction::kNone:
    case BlkifAction::kRefuseChange:
      return Status::Ok();
    case BlkifAction::kOpen:
      return OpenAndAdvertise(snapshot);
    case BlkifAction::kReset:
      ops_->Disconnect();
      return OpenAndAdvertise(snapshot);
    case BlkifAction::kConnect:
      return ConnectFrontend(snapshot);
    case BlkifAction::kWriteClosing:
      return PublishState(XenbusStateClosing);
    case BlkifAction::kDisconnect:
      ops_->Disconnect();
      return PublishState(XenbusStateClosed);
    case BlkifAction::kFail:
      ops_->Disconnect();
      WriteError(Status::IoError(pending_failure_));
      return PublishState(XenbusStateClosing);
    case BlkifAction::kStop:
      ops_->Disconnect();
      return PublishState(XenbusStateClosing);
    case BlkifAction::kRemove: {
      ops_->Disconnect();
      Status closed = PublishState(XenbusStateClosed);
      RemoveOwnNodes();
      return closed;
    }
  }
  return Status::Ok();
}

// Linux blkfront reads it when it connects; blkif.h wants no node at all rather than 0.
Status BlkifBackendDevice::WriteIndirectFeature(Transaction& t) {
  if (disk_.max_indirect_segments == 0) return Status::Ok();
  return t.Write(backend_path_ + "/feature-max-indirect-segments",
                 std::to_string(disk_.max_indirect_segments));
}

Status BlkifBackendDevice::OpenAndAdvertise(const Snapshot& snapshot) {
  if (!snapshot.config_status.ok()) return snapshot.config_status;
  if (!ops_->is_open()) {
    Result<BlkifDiskInfo> disk = ops_->Open(snapshot.config);
    if (!disk.ok()) return disk.status();
    disk_ = *disk;
    opened_params_ = snapshot.params;
    opened_mode_ = snapshot.mode;
  }
  const BlkifFeatures& f = options_.features;
  BLK_RETURN_IF_ERROR(WriteIfPresent([&](Transaction& t) -> Status {
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/feature-flush-cache", f.flush_cache ? "1" : "0"));
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/feature-barrier", f.barrier ? "1" : "0"));
    BLK_RETURN_IF_ERROR(
        t.Write(backend_path_ + "/max-ring-page-order", std::to_string(f.max_ring_page_order)));
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/multi-queue-max-queues", std::to_string(f.max_queues)));
    BLK_RETURN_IF_ERROR(WriteIndirectFeature(t));
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/feature-persistent", f.persistent ? "1" : "0"));
    return t.Write(backend_path_ + "/state", std::to_string(XenbusStateInitWait));
  }));
  published_ = XenbusStateInitWait;
  return Status::Ok();
}

Status BlkifBackendDevice::ConnectFrontend(const Snapshot& snapshot) {
  TransportLimits limits;
  limits.max_ring_page_order = options_.features.max_ring_page_order;
  limits.max_queues = options_.features.max_queues;
  Result<FrontendTransport> transport =
      ReadFrontendTransport(KeyReader::ForStore(store_, snapshot.config.frontend_path), limits);
  if (!transport.ok()) return transport.status();
  // Persistent only if both sides said so: a frontend's 1 is not enough when we did not offer it.
  transport->persistent = transport->persistent && options_.features.persistent;
  BLK_RETURN_IF_ERROR(ops_->Connect(snapshot.config.frontend_id, *transport));
  uint32_t info = 0;
  if (snapshot.config.device_type == DeviceType::kCdrom) info |= VDISK_CDROM | VDISK_REMOVABLE;
  if (disk_.read_only) info |= VDISK_READONLY;
  Status published = WriteIfPresent([&](Transaction& t) -> Status {
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/sectors", std::to_string(disk_.sectors)));
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/info", std::to_string(info)));
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/sector-size", std::to_string(disk_.sector_size)));
    BLK_RETURN_IF_ERROR(
        t.Write(backend_path_ + "/physical-sector-size", std::to_string(disk_.physical_sector_size)));
    BLK_RETURN_IF_ERROR(
        t.Write(backend_path_ + "/feature-flush-cache", options_.features.flush_cache ? "1" : "0"));
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/feature-barrier", options_.features.barrier ? "1" : "0"));
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/feature-discard", disk_.discard ? "1" : "0"));
    if (disk_.discard) {
      BLK_RETURN_IF_ERROR(
          t.Write(backend_path_ + "/discard-granularity", std::to_string(disk_.discard_granularity)));
      BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/discard-alignment", "0"));
      BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/discard-secure", disk_.discard_secure ? "1" : "0"));
    }
    BLK_RETURN_IF_ERROR(WriteIndirectFeature(t));
    BLK_RETURN_IF_ERROR(
        t.Write(backend_path_ + "/feature-persistent", options_.features.persistent ? "1" : "0"));
    return t.Write(backend_path_ + "/state", std::to_string(XenbusStateConnected));
  });
  if (!published.ok()) {
    ops_->Disconnect();
    return published;
  }
  published_ = XenbusStateConnected;
  Log(LogLevel::kInfo, name_.c_str(), "frontend %s: %zu queue(s) of %u-page rings, protocol %s",
      snapshot.config.frontend_path.c_str(), transport->queues.size(), 1u << transport->ring_page_order,
      transport->protocol.c_str());
  return Status::Ok();
}

Status BlkifBackendDevice::PublishResize(uint64_t sectors) {
  disk_.sectors = sectors;
  if (published_ != XenbusStateConnected) return Status::Ok();
  BLK_RETURN_IF_ERROR(WriteIfPresent([&](Transaction& t) -> Status {
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/sectors", std::to_string(sectors)));
    return t.Write(backend_path_ + "/state", std::to_string(XenbusStateConnected));
  }));
  Log(LogLevel::kNotice, name_.c_str(), "published the new size: %llu sectors",
      static_cast<unsigned long long>(sectors));
  return Status::Ok();
}

Status BlkifBackendDevice::PublishState(XenbusState state) {
  Status written = WriteIfPresent(
      [&](Transaction& t) { return t.Write(backend_path_ + "/state", std::to_string(state)); });
  if (written.ok()) published_ = state;
  return written;
}

void BlkifBackendDevice::WriteError(const Status& why) {
  last_error_ = why.message();
  Log(LogLevel::kError, name_.c_str(), "failed: %s", last_error_.c_str());
  // libxl reports a backend's hotplug-error when hotplug-status says error; Linux's xenbus_dev_fatal writes
  // "<errno> <message>" under error/<device path>. Write both, so either reader finds why.
  std::string errno_text = std::to_string(why.error_number() != 0 ? why.error_number() : EIO);
  Status written = WriteIfPresent([&](Transaction& t) -> Status {
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/hotplug-error", last_error_));
    BLK_RETURN_IF_ERROR(t.Write(backend_path_ + "/hotplug-status", "error"));
    return t.Write(ErrorPath() + "/error", errno_text + " " + last_error_);
  });
  if (!written.ok())
    Log(LogLevel::kWarning, name_.c_str(), "cannot write the error nodes: %s", written.ToString().c_str());
}

void BlkifBackendDevice::RemoveOwnNodes() {
  Status removed = WriteIfPresent([&](Transaction& t) -> Status {
    for (const char* node : kOwnNodes) {
      Status status = t.Remove(backend_path_ + "/" + node);
      if (!status.ok() && status.code() != Status::Code::kNotFound) return status;
    }
    Status status = t.Remove(ErrorPath());
    if (!status.ok() && status.code() != Status::Code::kNotFound) return status;
    return Status::Ok();
  });
  if (!removed.ok())
    Log(LogLevel::kWarning, name_.c_str(), "cannot remove the backend's nodes: %s",
        removed.ToString().c_str());
}

Status BlkifBackendDevice::EnsureFrontendWatch(const std::string& frontend_state_path) {
  if (watched_frontend_ == frontend_state_path) return Status::Ok();
  if (!watched_frontend_.empty()) (void)store_.Unwatch(watched_frontend_, token_);
  watched_frontend_.clear();
  BLK_RETURN_IF_ERROR(store_.Watch(frontend_state_path, token_));
  watched_frontend_ = frontend_state_path;
  return Status::Ok();
}

Status BlkifBackendDevice::WriteIfPresent(const std::function<Status(Transaction&)>& body) {
  return RunTransaction(store_, [&](Transaction& t) -> Status {
    Result<std::string> present = t.Read(backend_path_ + "/frontend-id");
    if (!present.ok()) return present.status();
    return body(t);
  });
}

}  // namespace blk
