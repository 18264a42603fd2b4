// Device: an image served over one or more rings.
#include "backend/device.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "base/format.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "formats/discard.h"
#include "formats/raw_image.h"
#include "formats/vhd/create.h"
#include "formats/vhd_disk_image.h"

namespace blk {

namespace {

// Discard punches holes in the file that holds the guest's data: a raw image's own, or a VHD leaf's (inside
// the blocks it has allocated; see VhdIo::Discard).
DiscardSupport ProbeImageDiscard(const DiskImage& image) {
  if (image.read_only()) return {};
  if (const auto* raw = dynamic_cast<const RawImage*>(&image)) return ProbeDiscard(raw->fd());
  if (const auto* vhd = dynamic_cast<const VhdDiskImage*>(&image)) return ProbeDiscard(vhd->data_fd());
  return {};
}

// Only a block device can erase securely (BLKSECDISCARD); a VHD's data lives in a file.
bool IsRawBlockDevice(const DiskImage& image) {
  const auto* raw = dynamic_cast<const RawImage*>(&image);
  return raw != nullptr && raw->is_block_device();
}

}  // namespace

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
  DiscardSupport discard = ProbeImageDiscard(**image);
  limits.discard = config.discard && !limits.read_only && discard.supported;
  limits.discard_secure = limits.discard && config.discard_secure && IsRawBlockDevice(**image);
  limits.max_indirect_segments = config.max_indirect_segments;
  uint32_t granularity = std::max(discard.granularity, limits.logical_block_size);
  Log(LogLevel::kInfo, config.name.c_str(), "opened %s (%s): %llu bytes, %u-byte sectors, %s%s%s",
      config.path.c_str(), ImageFormatName((*image)->format()),
      static_cast<unsigned long long>((*image)->size_bytes()), limits.logical_block_size,
      limits.read_only ? "read-only" : "read-write", (*image)->direct_io() ? ", O_DIRECT" : ", buffered",
      limits.discard_secure ? ", discard-secure" : "");
  return std::unique_ptr<Device>(new Device(config.name, options, std::move(*image), limits, granularity));
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
  bool paused = pause_state() != PauseState::kRunning;
  worker.Call([&] {
    if (paused) raw->Pause(nullptr);  // a ring that connects while the device is paused starts paused
    attached = worker.Attach(raw);
  });
  if (!attached.ok()) return attached;
  rings_.push_back(
      {std::move(*pipeline), &worker, {connection.ring_refs.size(), connection.abi, connection.persistent}});
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

const char* PauseStateName(PauseState state) {
  switch (state) {
    case PauseState::kRunning:
      return "running";
    case PauseState::kPausing:
      return "pausing";
    case PauseState::kPaused:
      return "paused";
  }
  return "?";
}

std::vector<Device::RingLayout> Device::RingLayouts() const {
  std::vector<RingLayout> layouts;
  for (const Ring& ring : rings_) layouts.push_back(ring.layout);
  return layouts;
}

// Collects each ring's outcome; the last ring to report settles the pause, unless a Resume (or another
// Pause) came in between.
class Device::PauseWaiter {
 public:
  PauseWaiter(std::shared_ptr<PauseControl> control, uint64_t generation, size_t rings,
              std::function<void(Status)> done)
      : control_(std::move(control)), generation_(generation), remaining_(rings), done_(std::move(done)) {}

  void Arrive(Status status) {
    {
      std::lock_guard lock(mutex_);
      if (!status.ok() && first_failure_.ok()) first_failure_ = std::move(status);
      if (--remaining_ > 0) return;
    }
    Settle();
  }

  void Settle() {
    bool current;
    {
      std::lock_guard lock(control_->mutex);
      current = control_->generation == generation_ && control_->state == PauseState::kPausing;
      if (current) control_->state.store(PauseState::kPaused, std::memory_order_release);
    }
    if (!done_) return;
    if (!current) {
      done_(Status::Busy("resumed before the pause completed"));
    } else {
      done_(first_failure_);
    }
  }

 private:
  std::shared_ptr<PauseControl> control_;
  uint64_t generation_;
  std::mutex mutex_;
  size_t remaining_;
  Status first_failure_;
  std::function<void(Status)> done_;
};

Status Device::Pause(std::function<void(Status)> done) {
  uint64_t generation;
  {
    std::lock_guard lock(pause_->mutex);
    PauseState state = pause_->state.load();
    if (state != PauseState::kRunning) {
      return Status::Error(Status::Code::kBusy, name_ + " is already " + PauseStateName(state));
    }
    pause_->state.store(PauseState::kPausing, std::memory_order_release);
    generation = ++pause_->generation;
  }
  Log(LogLevel::kNotice, name_.c_str(), "pausing %zu ring(s)", rings_.size());
  auto waiter = std::make_shared<PauseWaiter>(pause_, generation, rings_.size(), std::move(done));
  if (rings_.empty()) {
    waiter->Settle();
    return Status::Ok();
  }
  // Starting is quick (the drain is not waited for); a ring retired while draining reports when it drains, or
  // with an error when it is destroyed.
  for (Ring& ring : rings_) {
    ring.worker->Call(
        [&] { ring.pipeline->Pause([waiter](Status status) { waiter->Arrive(std::move(status)); }); });
  }
  return Status::Ok();
}

Status Device::Resume() {
  PauseState was;
  {
    std::lock_guard lock(pause_->mutex);
    was = pause_->state.load();
    if (was == PauseState::kRunning) return Status::InvalidArgument(name_ + " is not paused");
    pause_->state.store(PauseState::kRunning, std::memory_order_release);
    ++pause_->generation;
  }
  for (Ring& ring : rings_) ring.worker->Call([&] { ring.pipeline->Resume(); });
  Log(LogLevel::kNotice, name_.c_str(), "resumed (was %s)", PauseStateName(was));
  return Status::Ok();
}

std::vector<std::string> Device::DescribeOutstanding(size_t max) {
  std::vector<std::string> lines;
  for (size_t q = 0; q < rings_.size() && lines.size() < max; ++q) {
    std::vector<OutstandingRequest> found;
    Ring& ring = rings_[q];
    ring.worker->Call([&] { found = ring.pipeline->Outstanding(max - lines.size()); });
    for (const OutstandingRequest& request : found) {
      lines.push_back(StrFormat("q%zu: %s id %llu sector %llu, %s", q, BlkifOperationName(request.operation),
                                static_cast<unsigned long long>(request.id),
                                static_cast<unsigned long long>(request.sector), request.stage));
    }
  }
  return lines;
}

Status Device::Resize(uint64_t bytes) {
  uint64_t current = size_bytes();
  if (limits_.read_only) return Status::InvalidArgument(name_ + ": cannot resize a read-only disk");
  if (image_->format() != ImageFormat::kRaw) {
    return Status::NotSupported(name_ + ": " + image_->path() + " is a " + ImageFormatName(image_->format()) +
                                " image: online resize serves raw images only");
  }
  auto& raw = static_cast<RawImage&>(*image_);
  if (raw.is_block_device()) {
    return Status::NotSupported(name_ + ": " + image_->path() +
                                " is a block device: grow it with its own tools, not blkbackd");
  }
  if (bytes % limits_.logical_block_size != 0) {
    return Status::InvalidArgument(StrFormat("%s: %llu bytes is not a multiple of the %u-byte sector",
                                             name_.c_str(), static_cast<unsigned long long>(bytes),
                                             limits_.logical_block_size));
  }
  if (bytes < current) {
    return Status::InvalidArgument(StrFormat(
        "%s: refusing to shrink from %llu to %llu bytes: the guest may have data there", name_.c_str(),
        static_cast<unsigned long long>(current), static_cast<unsigned long long>(bytes)));
  }
  if (bytes == current) return Status::Ok();
  if (::ftruncate(raw.fd(), static_cast<off_t>(bytes)) != 0) {
    return Status::FromErrno(errno, name_ + ": growing " + image_->path());
  }
  limits_.sectors = bytes >> kSectorShift;
  // The rings accept the new sectors before anyone tells the frontend about them.
  for (Ring& ring : rings_) ring.worker->Call([&] { ring.pipeline->SetSectors(limits_.sectors); });
  Log(LogLevel::kNotice, name_.c_str(), "grown from %llu to %llu bytes",
      static_cast<unsigned long long>(current), static_cast<unsigned long long>(bytes));
  return Status::Ok();
}

namespace {

Status SyncDirectoryOf(const std::string& path) {
  std::filesystem::path directory = std::filesystem::path(path).parent_path();
  if (directory.empty()) directory = std::filesystem::current_path();
  UniqueFd fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, "open " + directory.string());
  if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, "fsync " + directory.string());
  return Status::Ok();
}

}  // namespace

std::pair<ImageFormatHint, std::string> ParseImageSpec(const std::string& spec) {
  if (spec.starts_with("vhd:")) return {ImageFormatHint::kVhd, spec.substr(4)};
  if (spec.starts_with("raw:") || spec.starts_with("aio:")) return {ImageFormatHint::kRaw, spec.substr(4)};
  return {ImageFormatHint::kProbe, spec};
}

std::vector<std::string> ImageChainPaths(const DiskImage& image) {
  if (image.format() == ImageFormat::kVhd) return static_cast<const VhdDiskImage&>(image).chain().paths();
  return {image.path()};
}

Status CheckImageSwap(const std::string& device, const DiskLimits& limits, size_t workers,
                      const DiskImage& next) {
  const std::string& path = next.path();
  uint64_t bytes = limits.sectors << kSectorShift;
  if (next.size_bytes() != bytes) {
    return Status::InvalidArgument(
        StrFormat("%s: %s holds %llu bytes, the disk %llu: the guest's disk cannot change size under it",
                  device.c_str(), path.c_str(), static_cast<unsigned long long>(next.size_bytes()),
                  static_cast<unsigned long long>(bytes)));
  }
  if (next.logical_block_size() != limits.logical_block_size) {
    return Status::InvalidArgument(StrFormat("%s: %s has %u-byte sectors, the disk %u-byte ones",
                                             device.c_str(), path.c_str(), next.logical_block_size(),
                                             limits.logical_block_size));
  }
  if (next.read_only() != limits.read_only) {
    return Status::InvalidArgument(StrFormat("%s: %s is %s, the disk %s", device.c_str(), path.c_str(),
                                             next.read_only() ? "read-only" : "read-write",
                                             limits.read_only ? "read-only" : "read-write"));
  }
  if (limits.discard && !ProbeImageDiscard(next).supported) {
    return Status::NotSupported(device + ": the guest was offered discard, which " + path + " (" +
                                ImageFormatName(next.format()) + ") cannot take");
  }
  if (limits.discard_secure && !IsRawBlockDevice(next)) {
    return Status::NotSupported(device + ": the guest was offered discard-secure, which " + path +
                                " (not a raw block device) cannot keep");
  }
  if (next.format() == ImageFormat::kVhd && workers > 1) {
    return Status::NotSupported(device + ": its rings run on several workers; a VHD needs them on one");
  }
  return Status::Ok();
}

Status Device::SwapImage(const std::string& spec) {
  if (pause_state() != PauseState::kPaused) {
    return Status::InvalidArgument(name_ + " is " + PauseStateName(pause_state()) +
                                   ": the image changes only while paused");
  }
  Status swapped = ReplacePausedImage(spec);
  if (swapped.ok()) return swapped;
  return Status::Error(swapped.code(), swapped.message() + " (still paused on the old image)",
                       swapped.error_number());
}

Status Device::ReplacePausedImage(const std::string& spec) {
  auto [hint, path] = ParseImageSpec(spec);
  auto opened = OpenDiskImage(path, hint, open_options_);
  if (!opened.ok()) return opened.status().Annotate(name_ + ": cannot open the new image: ");
  std::shared_ptr<DiskImage> next = std::move(*opened);
  size_t workers = 0;
  for (size_t i = 0; i < rings_.size(); ++i) {
    bool seen = false;
    for (size_t j = 0; j < i; ++j) seen = seen || rings_[j].worker == rings_[i].worker;
    if (!seen) ++workers;
  }
  BLK_RETURN_IF_ERROR(CheckImageSwap(name_, limits_, workers, *next));
  // Every ring is paused and holds no request: each switches on its own worker, and none can fail but for
  // a pause that is not one (which the state above rules out).
  Status swapped;
  for (Ring& ring : rings_) {
    ring.worker->Call([&] {
      Status status = ring.pipeline->SwapImage(next);
      if (swapped.ok()) swapped = std::move(status);
    });
  }
  if (!swapped.ok()) {
    for (Ring& ring : rings_) ring.worker->Call([&] { (void)ring.pipeline->SwapImage(image_); });
    return swapped;
  }
  std::string old_path = image_->path();
  image_ = std::move(next);
  image_swapped_ = true;
  Log(LogLevel::kNotice, name_.c_str(), "now serving %s (%s) instead of %s", image_->path().c_str(),
      ImageFormatName(image_->format()), old_path.c_str());
  return Status::Ok();
}

Status Device::CheckSnapshot(const std::string& child) const {
  if (PauseState state = pause_state(); state != PauseState::kRunning) {
    return Status::Busy(name_ + " is " + PauseStateName(state) +
                        ": a snapshot pauses and resumes by itself (resume first, or resume --image)");
  }
  return CheckSnapshotTarget(child);
}

Status Device::CheckSnapshotTarget(const std::string& child) const {
  if (image_->format() != ImageFormat::kVhd) {
    return Status::NotSupported(name_ + ": " + image_->path() + " is a " + ImageFormatName(image_->format()) +
                                " image: a snapshot needs a VHD leaf (VHD has no differencing child of a "
                                "raw parent)");
  }
  if (limits_.read_only) return Status::InvalidArgument(name_ + ": a read-only disk has nothing to snapshot");
  if (child.empty()) return Status::InvalidArgument(name_ + ": no path for the snapshot's child");
  struct stat st;
  if (::lstat(child.c_str(), &st) == 0) {
    return Status::InvalidArgument(name_ + ": " + child + " exists; refusing to replace it");
  }
  if (errno != ENOENT) return Status::FromErrno(errno, name_ + ": " + child);
  return Status::Ok();
}

Status Device::Snapshot(const std::string& child) {
  if (pause_state() != PauseState::kPaused) {
    return Status::InvalidArgument(name_ + " is " + PauseStateName(pause_state()) +
                                   ": a snapshot is taken only while paused");
  }
  BLK_RETURN_IF_ERROR(CheckSnapshotTarget(child));
  // Claims the name first, so that a file someone else creates meanwhile is never replaced or removed.
  UniqueFd claim(::open(child.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!claim.valid()) return Status::FromErrno(errno, name_ + ": creating " + child);
  claim.Reset();
  std::string parent = image_->path();
  Status made = vhd::CreateImage(child, vhd::CreateOptions::Differencing(parent));
  // CreateImage synced the file; its name must survive a crash too before the guest writes into it.
  if (made.ok()) made = SyncDirectoryOf(child);
  if (!made.ok()) made = made.Annotate(name_ + ": making " + child + ": ");
  if (made.ok()) made = ReplacePausedImage("vhd:" + child);  // its refusals name the device already
  if (!made.ok()) {
    ::unlink(child.c_str());
    return made;
  }
  Log(LogLevel::kNotice, name_.c_str(), "snapshot: %s is now the leaf, %s its read-only parent",
      child.c_str(), parent.c_str());
  return Status::Ok();
}

uint32_t Device::InFlight() const {
  uint32_t total = 0;
  for (const Ring& ring : rings_) total += ring.pipeline->in_flight();
  return total;
}

LatencySummary Device::Latency() const {
  std::array<uint64_t, LatencyBuckets::kBuckets> totals{};
  uint64_t max_ns = 0;
  for (const Ring& ring : rings_) ring.pipeline->latency().AddTo(totals, max_ns);
  return LatencyBuckets::Summarize(totals, max_ns);
}

}  // namespace blk
