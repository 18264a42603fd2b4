// BlkbackDaemon: discovery, the device table and the control loop.
#include "backend/blkback_daemon.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <set>

#include "backend/blkif_device_ops.h"
#include "backend/control_server.h"
#include "base/log.h"
#include "xenstore/blkif_keys.h"

namespace blk {

namespace {

constexpr size_t kEventBatch = 256;
constexpr const char* kSubject = "blkbackd";

}  // namespace

Result<std::unique_ptr<BlkbackDaemon>> BlkbackDaemon::Create(std::unique_ptr<XenStore> store,
                                                             Hypervisor hypervisor,
                                                             const BlkbackDaemonOptions& options) {
  if (options.kinds.empty()) return Status::InvalidArgument("blkbackd: no backend kind to serve");
  if (options.workers == 0) return Status::InvalidArgument("blkbackd: at least one worker is needed");
  if (options.max_ring_page_order > 4)
    return Status::InvalidArgument("blkbackd: max-ring-page-order " +
                                   std::to_string(options.max_ring_page_order) +
                                   " is above 4 (16 pages), the most blkif allows");
  uint32_t own_domid = 0;
  if (options.own_domid.has_value()) {
    own_domid = *options.own_domid;
  } else {
    Result<std::string> domid_text = store->Read("domid");
    if (!domid_text.ok()) return domid_text.status().Annotate("blkbackd: reading our domid: ");
    Result<uint64_t> domid = ParseXsDecimal(*domid_text, 0x7fef, "domid");
    if (!domid.ok()) return domid.status();
    own_domid = static_cast<uint32_t>(*domid);
  }

  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return Status::FromErrno(errno, "epoll_create1");
  UniqueFd stop(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!stop.valid()) return Status::FromErrno(errno, "eventfd");
  for (int fd : {store->fd(), stop.get()}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &event) != 0)
      return Status::FromErrno(errno, "epoll_ctl");
  }
  std::unique_ptr<BlkbackDaemon> daemon(
      new BlkbackDaemon(std::move(store), hypervisor, options, own_domid, std::move(epoll), std::move(stop)));
  BLK_RETURN_IF_ERROR(daemon->StartWorkersAndDiscovery());
  return daemon;
}

BlkbackDaemon::BlkbackDaemon(std::unique_ptr<XenStore> store, Hypervisor hypervisor,
                             const BlkbackDaemonOptions& options, uint32_t own_domid, UniqueFd epoll,
                             UniqueFd stop)
    : store_(std::move(store)),
      hypervisor_(hypervisor),
      options_(options),
      own_domid_(own_domid),
      epoll_(std::move(epoll)),
      stop_(std::move(stop)),
      discovery_(*store_, own_domid, options.kinds) {}

BlkbackDaemon::~BlkbackDaemon() {
  devices_.clear();
  device_count_ = 0;
  (void)discovery_.Stop();
}

Status BlkbackDaemon::StartWorkersAndDiscovery() {
  for (unsigned i = 0; i < options_.workers; ++i) {
    Result<std::unique_ptr<Worker>> worker =
        Worker::Create("worker" + std::to_string(i), options_.aio_depth, options_.poll_us);
    if (!worker.ok()) return worker.status();
    (*worker)->aio().set_io_retry_ns(uint64_t{options_.io_retry_seconds} * 1000000000ull);
    (*worker)->Start();
    workers_.push_back(std::move(worker).value());
  }
  BLK_RETURN_IF_ERROR(discovery_.Start());
  std::string kinds;
  for (const std::string& kind : options_.kinds) kinds += (kinds.empty() ? "" : ", ") + kind;
  Log(LogLevel::kNotice, kSubject, "domain %u, serving %s with %u workers", own_domid_, kinds.c_str(),
      options_.workers);
  return Status::Ok();
}

Status BlkbackDaemon::Run() {
  for (;;) {
    Result<bool> running = RunOnce(options_.health_check_ms);
    if (!running.ok()) return running.status();
    if (!*running) return Status::Ok();
  }
}

void BlkbackDaemon::Stop() {
  uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof(one));
}

Result<bool> BlkbackDaemon::RunOnce(int timeout_ms) {
  epoll_event ready[3];
  int count = ::epoll_wait(epoll_.get(), ready, 3, timeout_ms);
  if (count < 0 && errno != EINTR) return Status::FromErrno(errno, "epoll_wait");
  for (int i = 0; i < count; ++i) {
    if (ready[i].data.fd == stop_.get()) return false;
  }
  for (int i = 0; i < count; ++i) {
    if (control_ != nullptr && ready[i].data.fd == control_->fd()) control_->HandleEvents();
  }
  BLK_RETURN_IF_ERROR(HandleEvents());
  CheckHealth();
  return true;
}

Status BlkbackDaemon::HandleEvents() {
  for (;;) {
    events_.clear();
    Result<size_t> read = store_->ReadWatchEvents(&events_, kEventBatch);
    if (!read.ok()) return read.status();
    if (*read == 0) return Status::Ok();
    std::set<std::string> touched;
    for (const WatchEvent& event : events_) {
      std::vector<DeviceChange> changes;
      Status status;
      if (discovery_.HandleEvent(event, &changes, &status)) {
        if (!status.ok()) Log(LogLevel::kWarning, kSubject, "discovery: %s", status.ToString().c_str());
        for (const DeviceChange& change : changes) Apply(change);
        if (event.rescan) {
          for (const auto& [path, device] : devices_) {
            if (PathCovers(event.path, path) || PathCovers(path, event.path)) touched.insert(path);
          }
        } else if (std::string device = DeviceFor(event.path); !device.empty()) {
          touched.insert(device);
        }
        continue;
      }
      if (event.token.starts_with("blkif:")) {
        std::string path = event.token.substr(6);
        if (devices_.contains(path)) touched.insert(path);
      }
    }
    for (const std::string& path : touched) {
      auto it = devices_.find(path);
      if (it == devices_.end()) continue;
      it->second->Evaluate();
      evaluations_.fetch_add(1);
    }
  }
}

void BlkbackDaemon::Apply(const DeviceChange& change) {
  const std::string& path = change.backend_path;
  if (change.type == DeviceChange::Type::kRemoved) {
    if (devices_.erase(path) > 0) {
      Log(LogLevel::kNotice,
          (std::to_string(change.device.frontend_id) + "/" + std::to_string(change.device.devid)).c_str(),
          "removed by the toolstack (%s)", path.c_str());
    }
    device_count_ = devices_.size();
    return;
  }
  if (devices_.contains(path)) return;
  std::string name = std::to_string(change.device.frontend_id) + "/" + std::to_string(change.device.devid);
  std::vector<Worker*> workers;
  for (const auto& worker : workers_) workers.push_back(worker.get());
  BlkifBackendOptions options;
  options.features.max_ring_page_order = options_.max_ring_page_order;
  options.features.max_queues = options_.max_queues != 0 ? options_.max_queues : options_.workers;
  options.features.persistent = options_.persistent_grants;
  options.wait_for_hotplug_status = options_.wait_for_hotplug_status;
  auto ops = std::make_unique<BackendDeviceOps>(name, hypervisor_, std::move(workers), options_.direct_io,
                                                options_.max_indirect_segments,
                                                options_.persistent_grants_per_ring, options_.discard_secure);
  Log(LogLevel::kNotice, name.c_str(), "new %s device (%s)", change.device.kind.c_str(), path.c_str());
  auto device =
      std::make_unique<BlkifBackendDevice>(*store_, own_domid_, change.device, path, std::move(ops), options);
  BlkifBackendDevice* raw = device.get();
  devices_.emplace(path, std::move(device));
  device_count_ = devices_.size();
  raw->Evaluate();
  evaluations_.fetch_add(1);
}

std::string BlkbackDaemon::DeviceFor(const std::string& path) const {
  // /local/domain/<own>/backend/<kind>/<frontend>/<devid>[/...]: the first seven components.
  size_t end = 0;
  for (int component = 0; component < 7; ++component) {
    end = path.find('/', end + 1);
    if (end == std::string::npos) {
      end = path.size();
      if (component < 6) return {};
      break;
    }
  }
  std::string device = path.substr(0, end);
  return devices_.contains(device) ? device : std::string();
}

void BlkbackDaemon::CheckHealth() {
  for (const auto& [path, device] : devices_) {
    if (device->ring_broken()) {
      device->Evaluate();
      evaluations_.fetch_add(1);
    }
  }
}

uint32_t BlkbackDaemon::Shutdown(int timeout_ms) {
  for (const auto& [path, device] : devices_) device->StopForShutdown();
  // Stopped rings whose I/O is still in flight live on in their workers until it completes.
  auto in_flight = [&] {
    uint32_t total = 0;
    for (const auto& worker : workers_) {
      worker->Call([&] { total += worker->retiring_requests(); });
    }
    return total;
  };
  constexpr int kPollMs = 10;
  uint32_t left = in_flight();
  for (int waited = 0; left != 0 && waited < timeout_ms; waited += kPollMs) {
    ::usleep(kPollMs * 1000);
    left = in_flight();
  }
  if (left != 0) {
    Log(LogLevel::kWarning, kSubject, "stopping with %u requests still in flight after %d ms", left,
        timeout_ms);
  }
  return left;
}

Status BlkbackDaemon::AttachControl(ControlServer* server) {
  if (control_ != nullptr) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, control_->fd(), nullptr);
  control_ = nullptr;
  if (server == nullptr) return Status::Ok();
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.fd = server->fd();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, server->fd(), &event) != 0) {
    return Status::FromErrno(errno, "epoll_ctl (control socket)");
  }
  control_ = server;
  return Status::Ok();
}

void BlkbackDaemon::ForEachDevice(const std::function<void(BlkifBackendDevice&)>& visit) {
  for (auto& [path, device] : devices_) visit(*device);
}

const BlkifBackendDevice* BlkbackDaemon::FindDevice(const std::string& backend_path) const {
  auto it = devices_.find(backend_path);
  return it == devices_.end() ? nullptr : it->second.get();
}

}  // namespace blk
