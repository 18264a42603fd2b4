// FakeXenLibrary: grant maps over anonymous memory, grant copies over fake guest pages, event channels over
// pipes, and failures on demand.
#include "tests/ring/xen/fake_xen_library.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace blk {

FakeXenLibrary::~FakeXenLibrary() {
  for (auto& [addr, mapping] : mappings_) ::munmap(addr, mapping.pages * kPageSize);
  for (auto& [handle, evtchn] : evtchns_) {
    ::close(evtchn->read_fd);
    ::close(evtchn->write_fd);
  }
}

void FakeXenLibrary::FailCall(XenCall call, int err, int nth) {
  std::lock_guard lock(mu_);
  failures_[call] = Failure{nth, err};
}

int FakeXenLibrary::calls(XenCall call) const {
  std::lock_guard lock(mu_);
  return calls_[static_cast<size_t>(call)];
}

bool FakeXenLibrary::CountAndMaybeFailLocked(XenCall call) {
  ++calls_[static_cast<size_t>(call)];
  auto it = failures_.find(call);
  if (it == failures_.end() || --it->second.countdown > 0) return false;
  errno = it->second.err;
  failures_.erase(it);
  return true;
}

uint8_t* FakeXenLibrary::GuestPage(DomId domid, GrantRef ref) {
  std::lock_guard lock(mu_);
  std::unique_ptr<Page>& page = pages_[{domid, ref}];
  if (page == nullptr) page = std::make_unique<Page>();
  return page->bytes.data();
}

void FakeXenLibrary::SetCopyStatus(DomId domid, GrantRef ref, int16_t status) {
  GuestPage(domid, ref);
  std::lock_guard lock(mu_);
  pages_[{domid, ref}]->copy_status = status;
}

std::vector<FakeXenLibrary::LiveMapping> FakeXenLibrary::live_mappings() const {
  std::lock_guard lock(mu_);
  std::vector<LiveMapping> result;
  for (const auto& [addr, mapping] : mappings_) result.push_back(mapping);
  return result;
}

int FakeXenLibrary::bad_unmaps() const {
  std::lock_guard lock(mu_);
  return bad_unmaps_;
}

std::vector<xengnttab_grant_copy_segment_t> FakeXenLibrary::last_copy() const {
  std::lock_guard lock(mu_);
  return last_copy_;
}

int FakeXenLibrary::open_gnttab_handles() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(gnttab_handles_.size());
}

xengnttab_handle* FakeXenLibrary::GnttabOpen() {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kGnttabOpen)) return nullptr;
  gnttab_handles_.push_back(std::make_unique<int>(0));
  return reinterpret_cast<xengnttab_handle*>(gnttab_handles_.back().get());
}

int FakeXenLibrary::GnttabClose(xengnttab_handle* handle) {
  std::lock_guard lock(mu_);
  auto it = std::find_if(gnttab_handles_.begin(), gnttab_handles_.end(), [&](const std::unique_ptr<int>& h) {
    return reinterpret_cast<xengnttab_handle*>(h.get()) == handle;
  });
  if (it == gnttab_handles_.end()) {
    errno = EBADF;
    return -1;
  }
  gnttab_handles_.erase(it);  // closed even when told to fail, as the library's close always is
  return CountAndMaybeFailLocked(XenCall::kGnttabClose) ? -1 : 0;
}

void* FakeXenLibrary::GnttabMapDomainGrantRefs(xengnttab_handle* /*handle*/, uint32_t count, uint32_t domid,
                                               uint32_t* refs, int prot) {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kMap)) return nullptr;
  // As gntdev: any bad ref fails the whole map, and nothing stays mapped.
  for (uint32_t i = 0; i < count; ++i) {
    if (pages_.count({domid, refs[i]}) == 0) {
      errno = EINVAL;
      return nullptr;
    }
  }
  void* addr = ::mmap(nullptr, count * kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED) return nullptr;
  for (uint32_t i = 0; i < count; ++i)
    std::memcpy(static_cast<uint8_t*>(addr) + i * kPageSize, pages_[{domid, refs[i]}]->bytes.data(),
                kPageSize);
  ::mprotect(addr, count * kPageSize, prot);
  mappings_[addr] = LiveMapping{addr, count, domid, std::vector<uint32_t>(refs, refs + count), prot};
  return addr;
}

int FakeXenLibrary::GnttabUnmap(xengnttab_handle* /*handle*/, void* addr, uint32_t count) {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kUnmap)) return -1;
  auto it = mappings_.find(addr);
  if (it == mappings_.end() || it->second.pages != count) {
    ++bad_unmaps_;
    errno = EINVAL;
    return -1;
  }
  ::munmap(addr, count * kPageSize);
  mappings_.erase(it);
  return 0;
}

void FakeXenLibrary::SetCopyHook(std::function<void()> hook) {
  std::lock_guard lock(mu_);
  copy_hook_ = std::move(hook);
}

int FakeXenLibrary::GnttabGrantCopy(xengnttab_handle* /*handle*/, uint32_t count,
                                    xengnttab_grant_copy_segment_t* segments) {
  std::function<void()> hook;
  {
    std::lock_guard lock(mu_);
    hook = std::exchange(copy_hook_, nullptr);
  }
  if (hook) hook();
  std::lock_guard lock(mu_);
  last_copy_.assign(segments, segments + count);
  if (CountAndMaybeFailLocked(XenCall::kCopy)) return -1;
  for (uint32_t i = 0; i < count; ++i) {
    xengnttab_grant_copy_segment_t& segment = segments[i];
    const bool from_guest = segment.flags == GNTCOPY_source_gref;
    if (!from_guest && segment.flags != GNTCOPY_dest_gref) {
      errno = EINVAL;  // gntdev refuses local-to-local copies, and this fake guest-to-guest ones
      return -1;
    }
    const auto& guest = from_guest ? segment.source.foreign : segment.dest.foreign;
    if (guest.offset + segment.len > kPageSize) {
      errno = EINVAL;  // as gntdev: the whole ioctl fails
      return -1;
    }
    auto page = pages_.find({guest.domid, guest.ref});
    if (page == pages_.end()) {
      segment.status = GNTST_bad_gntref;
      continue;
    }
    segment.status = page->second->copy_status;
    if (segment.status != GNTST_okay) continue;
    uint8_t* guest_bytes = page->second->bytes.data() + guest.offset;
    if (from_guest) {
      std::memcpy(segment.dest.virt, guest_bytes, segment.len);
    } else {
      std::memcpy(guest_bytes, segment.source.virt, segment.len);
    }
  }
  return 0;
}

FakeXenLibrary::Evtchn* FakeXenLibrary::FindEvtchnLocked(xenevtchn_handle* handle) {
  auto it = evtchns_.find(handle);
  return it == evtchns_.end() ? nullptr : it->second.get();
}

void FakeXenLibrary::QueuePending(EvtchnPort local_port, int returned_port) {
  std::lock_guard lock(mu_);
  for (auto& [handle, evtchn] : evtchns_) {
    if (evtchn->bound_port != static_cast<int>(local_port)) continue;
    evtchn->pending.push_back(returned_port);
    const char byte = 1;
    if (::write(evtchn->write_fd, &byte, 1) != 1) evtchn->pending.pop_back();
  }
}

std::map<EvtchnPort, FakeXenLibrary::Binding> FakeXenLibrary::bound_ports() const {
  std::lock_guard lock(mu_);
  return bindings_;
}

std::vector<EvtchnPort> FakeXenLibrary::notified() const {
  std::lock_guard lock(mu_);
  return notified_;
}

std::vector<EvtchnPort> FakeXenLibrary::unmasked() const {
  std::lock_guard lock(mu_);
  return unmasked_;
}

std::vector<EvtchnPort> FakeXenLibrary::unbound() const {
  std::lock_guard lock(mu_);
  return unbound_;
}

int FakeXenLibrary::open_evtchn_handles() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(evtchns_.size());
}

xenevtchn_handle* FakeXenLibrary::EvtchnOpen() {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kEvtchnOpen)) return nullptr;
  auto evtchn = std::make_unique<Evtchn>();
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return nullptr;
  evtchn->read_fd = fds[0];
  evtchn->write_fd = fds[1];
  auto* handle = reinterpret_cast<xenevtchn_handle*>(evtchn.get());
  evtchns_[handle] = std::move(evtchn);
  return handle;
}

int FakeXenLibrary::EvtchnClose(xenevtchn_handle* handle) {
  std::lock_guard lock(mu_);
  Evtchn* evtchn = FindEvtchnLocked(handle);
  if (evtchn == nullptr) {
    errno = EBADF;
    return -1;
  }
  ::close(evtchn->read_fd);
  ::close(evtchn->write_fd);
  evtchns_.erase(handle);
  return CountAndMaybeFailLocked(XenCall::kEvtchnClose) ? -1 : 0;
}

int FakeXenLibrary::EvtchnFd(xenevtchn_handle* handle) {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kEvtchnFd)) return -1;
  Evtchn* evtchn = FindEvtchnLocked(handle);
  return evtchn != nullptr ? evtchn->read_fd : (errno = EBADF, -1);
}

xenevtchn_port_or_error_t FakeXenLibrary::EvtchnBindInterdomain(xenevtchn_handle* handle, uint32_t domid,
                                                                evtchn_port_t remote_port) {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kBind)) return -1;
  Evtchn* evtchn = FindEvtchnLocked(handle);
  if (evtchn == nullptr) return errno = EBADF, -1;
  const EvtchnPort port = next_port_++;
  evtchn->bound_port = static_cast<int>(port);
  bindings_[port] = Binding{domid, remote_port};
  return static_cast<xenevtchn_port_or_error_t>(port);
}

int FakeXenLibrary::EvtchnUnbind(xenevtchn_handle* handle, evtchn_port_t port) {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kUnbind)) return -1;
  Evtchn* evtchn = FindEvtchnLocked(handle);
  if (evtchn == nullptr || evtchn->bound_port != static_cast<int>(port)) return errno = EINVAL, -1;
  evtchn->bound_port = -1;
  bindings_.erase(port);
  unbound_.push_back(port);
  return 0;
}

int FakeXenLibrary::EvtchnNotify(xenevtchn_handle* handle, evtchn_port_t port) {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kNotify)) return -1;
  Evtchn* evtchn = FindEvtchnLocked(handle);
  if (evtchn == nullptr || evtchn->bound_port != static_cast<int>(port)) return errno = EINVAL, -1;
  notified_.push_back(port);
  return 0;
}

xenevtchn_port_or_error_t FakeXenLibrary::EvtchnPending(xenevtchn_handle* handle) {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kPending)) return -1;
  Evtchn* evtchn = FindEvtchnLocked(handle);
  if (evtchn == nullptr) return errno = EBADF, -1;
  if (evtchn->pending.empty()) return errno = EAGAIN, -1;
  char byte;
  if (::read(evtchn->read_fd, &byte, 1) != 1) return -1;
  const int port = evtchn->pending.front();
  evtchn->pending.pop_front();
  return port;
}

int FakeXenLibrary::EvtchnUnmask(xenevtchn_handle* handle, evtchn_port_t port) {
  std::lock_guard lock(mu_);
  if (CountAndMaybeFailLocked(XenCall::kUnmask)) return -1;
  Evtchn* evtchn = FindEvtchnLocked(handle);
  if (evtchn == nullptr || evtchn->bound_port != static_cast<int>(port)) return errno = EINVAL, -1;
  unmasked_.push_back(port);
  return 0;
}

}  // namespace blk
