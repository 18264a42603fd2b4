// XenbusBlkfront: the frontend's half of the handshake, step by step as Linux blkfront takes it.
#include "frontend/xenbus_blkfront.h"

#include <poll.h>

#include <algorithm>
#include <optional>

#include "xenstore/blkif_keys.h"

namespace blk {

namespace {

using Clock = std::chrono::steady_clock;

// Guest pages for `queues` rings of `ring_pages` with every slot in flight, plus room for a test's own
// grants.
size_t DomainPages(const XenbusBlkfrontConfig& config, uint32_t ring_pages, uint32_t queues) {
  size_t slots = RingSlots(config.abi, ring_pages);
  return size_t{queues} * (ring_pages + std::min<size_t>(slots, config.max_outstanding * 2) *
                                            (std::max(kMaxDirectSegments, config.indirect_segments) + 1)) +
         64;
}

Result<uint64_t> ReadNumber(XenStore& store, const std::string& path, uint64_t fallback, uint64_t max) {
  Result<std::string> text = store.Read(path);
  if (!text.ok()) {
    if (text.status().code() == Status::Code::kNotFound) return fallback;
    return text.status();
  }
  return ParseXsDecimal(*text, max, path);
}

}  // namespace

XenbusBlkfront::XenbusBlkfront(XenStore& store, SimHypervisor& hypervisor, XenbusBlkfrontConfig config)
    : store_(store),
      hypervisor_(hypervisor),
      config_(std::move(config)),
      token_("blkfront:" + config_.frontend_path) {}

XenbusBlkfront::~XenbusBlkfront() {
  queues_.clear();
  if (watching_) (void)store_.Unwatch(backend_path_ + "/state", token_);
}

Status XenbusBlkfront::FindBackend() {
  if (watching_) return Status::Ok();
  Result<std::string> backend = store_.Read(config_.frontend_path + "/backend");
  if (!backend.ok()) return backend.status().Annotate("blkfront: ");
  backend_path_ = *backend;
  BLK_RETURN_IF_ERROR(store_.Watch(backend_path_ + "/state", token_));
  watching_ = true;
  return Status::Ok();
}

Result<XenbusState> XenbusBlkfront::BackendState() {
  Result<std::string> text = store_.Read(backend_path_ + "/state");
  if (!text.ok()) return text.status();
  return ParseXenbusState(*text, backend_path_ + "/state");
}

Result<XenbusState> XenbusBlkfront::WaitForBackend(std::initializer_list<XenbusState> states,
                                                   std::chrono::milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  std::vector<WatchEvent> events;
  for (;;) {
    Result<XenbusState> state = BackendState();
    if (state.ok() && std::find(states.begin(), states.end(), *state) != states.end()) return state;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      std::string now = state.ok() ? std::to_string(*state) : state.status().ToString();
      Result<std::string> error = store_.Read(backend_path_ + "/hotplug-error");
      return Status::Busy("blkfront: timed out waiting for the backend " + backend_path_ +
                          ", still in state " + now + (error.ok() ? " (error: " + *error + ")" : ""));
    }
    pollfd fd{store_.fd(), POLLIN, 0};
    ::poll(&fd, 1, static_cast<int>(left.count()));
    events.clear();
    Result<size_t> read = store_.ReadWatchEvents(&events, 64);
    if (!read.ok()) return read.status();
  }
}

Status XenbusBlkfront::WriteState(XenbusState state) {
  return store_.Write(config_.frontend_path + "/state", std::to_string(state));
}

Status XenbusBlkfront::Connect(std::chrono::milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  auto left = [&] { return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()); };
  if (!queues_.empty()) return Status::InvalidArgument("blkfront: already connected");
  BLK_RETURN_IF_ERROR(FindBackend());
  BLK_RETURN_IF_ERROR(WriteState(XenbusStateInitialising));
  Result<XenbusState> init_wait = WaitForBackend({XenbusStateInitWait}, left());
  if (!init_wait.ok()) return init_wait.status();

  Result<uint64_t> max_order = ReadNumber(store_, backend_path_ + "/max-ring-page-order", 0, 31);
  if (!max_order.ok()) return max_order.status();
  Result<uint64_t> max_queues = ReadNumber(store_, backend_path_ + "/multi-queue-max-queues", 1, 1024);
  if (!max_queues.ok()) return max_queues.status();
  ring_pages_ = std::min<uint32_t>(config_.ring_pages, 1u << std::min<uint64_t>(*max_order, 4));
  uint32_t queues =
      std::max<uint32_t>(1, std::min<uint32_t>(config_.queues, static_cast<uint32_t>(*max_queues)));
  // The backend publishes both features with InitWait; the rings are built for what both sides can do.
  Result<uint64_t> backend_persistent = ReadNumber(store_, backend_path_ + "/feature-persistent", 0, 1);
  persistent_ = config_.persistent && backend_persistent.ok() && *backend_persistent == 1;
  Result<uint64_t> backend_indirect =
      ReadNumber(store_, backend_path_ + "/feature-max-indirect-segments", 0, UINT32_MAX);
  indirect_segments_ = backend_indirect.ok() ? std::min<uint32_t>(config_.indirect_segments,
                                                                  static_cast<uint32_t>(*backend_indirect))
                                             : 0;
  if (indirect_segments_ <= kMaxDirectSegments) indirect_segments_ = 0;

  if (hypervisor_.FindDomain(config_.domid) == nullptr) {
    Result<SimDomain*> domain =
        hypervisor_.CreateDomain(config_.domid, DomainPages(config_, 16, std::max(queues, config_.queues)));
    if (!domain.ok()) return domain.status();
  }
  for (uint32_t q = 0; q < queues; ++q) {
    BlkfrontConfig ring;
    ring.domid = config_.domid;
    ring.backend_domid = hypervisor_.backend_domid();
    ring.abi = config_.abi;
    ring.ring_pages = ring_pages_;
    ring.max_outstanding = config_.max_outstanding;
    ring.spare_pages = 0;
    ring.persistent = persistent_;
    ring.indirect_segments = indirect_segments_;
    Result<std::unique_ptr<Blkfront>> front = Blkfront::Create(hypervisor_, ring);
    if (!front.ok()) {
      queues_.clear();
      return front.status();
    }
    queues_.push_back(std::move(front).value());
  }
  Status published = PublishTransport();
  if (!published.ok()) {
    queues_.clear();
    return published;
  }
  BLK_RETURN_IF_ERROR(WriteState(XenbusStateInitialised));
  Result<XenbusState> connected =
      WaitForBackend({XenbusStateConnected, XenbusStateClosing, XenbusStateClosed}, left());
  if (!connected.ok()) return connected.status();
  if (*connected != XenbusStateConnected) {
    Result<std::string> error = store_.Read(backend_path_ + "/hotplug-error");
    return Status::IoError("blkfront: the backend refused the connection" +
                           (error.ok() ? ": " + *error : std::string()));
  }
  BLK_RETURN_IF_ERROR(ReadDisk());
  return WriteState(XenbusStateConnected);
}

Status XenbusBlkfront::PublishTransport() {
  const std::string& base = config_.frontend_path;
  return RunTransaction(store_, [&](Transaction& t) -> Status {
    bool multi = queues_.size() > 1;
    if (multi) BLK_RETURN_IF_ERROR(t.Write(base + "/multi-queue-num-queues", std::to_string(queues_.size())));
    for (size_t q = 0; q < queues_.size(); ++q) {
      std::string dir = multi ? base + "/queue-" + std::to_string(q) + "/" : base + "/";
      for (const auto& [key, value] : queues_[q]->XenstoreEntries()) {
        bool per_queue = key.starts_with("ring-ref") || key == "event-channel";
        if (!per_queue && q > 0) continue;
        if (key == "protocol" && !config_.write_protocol) continue;
        // Linux blkfront writes what it asks for; whether it is used depends on the backend.
        const std::string& written =
            key == "feature-persistent" ? std::string(config_.persistent ? "1" : "0") : value;
        BLK_RETURN_IF_ERROR(t.Write((per_queue ? dir : base + "/") + key, written));
      }
    }
    return Status::Ok();
  });
}

Status XenbusBlkfront::ReadDisk() {
  Result<uint64_t> sectors = ReadNumber(store_, backend_path_ + "/sectors", 0, UINT64_MAX);
  if (!sectors.ok()) return sectors.status();
  Result<uint64_t> sector_size = ReadNumber(store_, backend_path_ + "/sector-size", 512, 1u << 20);
  if (!sector_size.ok()) return sector_size.status();
  Result<uint64_t> info = ReadNumber(store_, backend_path_ + "/info", 0, UINT32_MAX);
  if (!info.ok()) return info.status();
  Result<uint64_t> flush = ReadNumber(store_, backend_path_ + "/feature-flush-cache", 0, 1);
  if (!flush.ok()) return flush.status();
  Result<uint64_t> barrier = ReadNumber(store_, backend_path_ + "/feature-barrier", 0, 1);
  if (!barrier.ok()) return barrier.status();
  disk_.sectors = *sectors;
  disk_.sector_size = static_cast<uint32_t>(*sector_size);
  disk_.info = static_cast<uint32_t>(*info);
  disk_.flush_cache = *flush == 1;
  disk_.barrier = *barrier == 1;
  return Status::Ok();
}

Status XenbusBlkfront::Close(std::chrono::milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  auto left = [&] { return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()); };
  BLK_RETURN_IF_ERROR(FindBackend());
  Result<XenbusState> now = BackendState();
  if (now.ok() && *now != XenbusStateClosed) {
    BLK_RETURN_IF_ERROR(WriteState(XenbusStateClosing));
    Result<XenbusState> closing = WaitForBackend({XenbusStateClosing, XenbusStateClosed}, left());
    if (!closing.ok()) return closing.status();
  }
  BLK_RETURN_IF_ERROR(WriteState(XenbusStateClosed));
  Result<XenbusState> closed = WaitForBackend({XenbusStateClosed}, left());
  if (!closed.ok()) return closed.status();
  // The backend has unmapped the rings and unbound the ports: they can be ended and closed now.
  queues_.clear();
  // Leave the transport keys out of the next connection, as blkfront removes them.
  return RunTransaction(store_, [&](Transaction& t) -> Status {
    Result<std::vector<std::string>> children = t.Directory(config_.frontend_path);
    if (!children.ok()) return children.status();
    for (const std::string& child : *children) {
      if (child.starts_with("ring-ref") || child.starts_with("queue-") || child == "event-channel" ||
          child == "ring-page-order" || child == "multi-queue-num-queues" || child == "protocol" ||
          child == "feature-persistent") {
        BLK_RETURN_IF_ERROR(t.Remove(config_.frontend_path + "/" + child));
      }
    }
    return Status::Ok();
  });
}

}  // namespace blk
