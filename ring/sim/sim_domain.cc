// SimDomain: a guest's memory, page allocator, grant table (guest side) and event channel ports (guest side).
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "ring/sim/sim_internal.h"

namespace blk {
namespace {

Result<Mapping> MapShared(int fd, size_t length) {
  void* addr = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) return Status::FromErrno(errno, "mmap guest memory");
  return Mapping(addr, length);
}

}  // namespace

SimDomain::SimDomain(SimHypervisor& hypervisor, DomId domid, size_t pages, size_t grant_entries)
    : hypervisor_(hypervisor),
      domid_(domid),
      pages_(pages),
      frame_allocated_(pages, false),
      grants_(grant_entries) {
  free_frames_.reserve(pages);
  for (size_t frame = pages; frame > 0; --frame) free_frames_.push_back(static_cast<uint32_t>(frame - 1));
  free_refs_.reserve(grant_entries);
  for (size_t ref = grant_entries; ref > kFirstFreeGrantRef; --ref)
    free_refs_.push_back(static_cast<GrantRef>(ref - 1));
  ports_.emplace_back();  // port 0 is invalid in Xen
}

SimDomain::~SimDomain() = default;

Status SimDomain::Init() {
  std::string name = StrFormat("blk-sim-d%u", domid_);
  memfd_.Reset(::memfd_create(name.c_str(), MFD_CLOEXEC));
  if (!memfd_.valid()) return Status::FromErrno(errno, StrFormat("memfd_create %s", name.c_str()));
  if (::ftruncate(memfd_.get(), static_cast<off_t>(pages_ * kPageSize)) != 0) {
    return Status::FromErrno(errno, StrFormat("ftruncate %s", name.c_str()));
  }
  auto guest = MapShared(memfd_.get(), pages_ * kPageSize);
  if (!guest.ok()) return guest.status();
  auto hyper = MapShared(memfd_.get(), pages_ * kPageSize);
  if (!hyper.ok()) return hyper.status();
  guest_view_ = std::move(guest.value());
  hypervisor_view_ = std::move(hyper.value());
  return Status::Ok();
}

Result<uint32_t> SimDomain::AllocPage() {
  std::lock_guard lock(alloc_mu_);
  if (free_frames_.empty())
    return Status::Error(Status::Code::kNoSpace, StrFormat("d%u: out of pages", domid_));
  uint32_t frame = free_frames_.back();
  free_frames_.pop_back();
  frame_allocated_[frame] = true;
  return frame;
}

Result<uint32_t> SimDomain::AllocContiguous(size_t count) {
  std::lock_guard lock(alloc_mu_);
  size_t run = 0;
  for (size_t frame = 0; frame < pages_ && count > 0; ++frame) {
    run = frame_allocated_[frame] ? 0 : run + 1;
    if (run < count) continue;
    const uint32_t first = static_cast<uint32_t>(frame + 1 - count);
    for (uint32_t taken = first; taken <= frame; ++taken) frame_allocated_[taken] = true;
    std::erase_if(free_frames_, [this](uint32_t candidate) { return frame_allocated_[candidate]; });
    return first;
  }
  return Status::Error(Status::Code::kNoSpace,
                       StrFormat("d%u: no %zu consecutive free pages", domid_, count));
}

Status SimDomain::FreePage(uint32_t frame) {
  std::lock_guard lock(alloc_mu_);
  if (frame >= pages_ || !frame_allocated_[frame]) {
    return Status::InvalidArgument(StrFormat("d%u: freeing frame %u which is not allocated", domid_, frame));
  }
  frame_allocated_[frame] = false;
  free_frames_.push_back(frame);
  return Status::Ok();
}

size_t SimDomain::free_pages() const {
  std::lock_guard lock(alloc_mu_);
  return free_frames_.size();
}

SimDomain::GrantEntry* SimDomain::EntryLocked(GrantRef ref) {
  return ref < grants_.size() ? &grants_[ref] : nullptr;
}

void SimDomain::ReleaseRefLocked(GrantRef ref) {
  grants_[ref] = GrantEntry{};
  free_refs_.push_back(ref);
}

Result<GrantRef> SimDomain::GrantAccess(DomId to, uint32_t frame, bool readonly) {
  if (frame >= pages_) {
    return Status::InvalidArgument(
        StrFormat("d%u: cannot grant frame %u beyond its %zu pages", domid_, frame, pages_));
  }
  std::lock_guard lock(mu_);
  if (free_refs_.empty()) return Status::Busy(StrFormat("d%u: grant table full", domid_));
  GrantRef ref = free_refs_.back();
  free_refs_.pop_back();
  grants_[ref] = GrantEntry{.allocated = true,
                            .in_use = true,
                            .readonly = readonly,
                            .grantee = to,
                            .frame = frame,
                            .pins = 0,
                            .write_pins = 0};
  ++grants_in_use_;
  return ref;
}

Status SimDomain::EndAccess(GrantRef ref) {
  std::lock_guard lock(mu_);
  GrantEntry* entry = EntryLocked(ref);
  if (entry == nullptr || !entry->allocated)
    return Status::InvalidArgument(StrFormat("d%u grant ref %u is not allocated", domid_, ref));
  if (entry->pins > 0) {
    return Status::Busy(StrFormat("d%u grant ref %u is still mapped by d%u", domid_, ref, entry->grantee));
  }
  ReleaseRefLocked(ref);
  --grants_in_use_;
  return Status::Ok();
}

Status SimDomain::SetReadOnly(GrantRef ref, bool readonly) {
  std::lock_guard lock(mu_);
  GrantEntry* entry = EntryLocked(ref);
  if (entry == nullptr || !entry->in_use)
    return Status::InvalidArgument(StrFormat("d%u grant ref %u is not in use", domid_, ref));
  entry->readonly = readonly;
  return Status::Ok();
}

Status SimDomain::Revoke(GrantRef ref) {
  std::lock_guard lock(mu_);
  GrantEntry* entry = EntryLocked(ref);
  if (entry == nullptr || !entry->in_use)
    return Status::InvalidArgument(StrFormat("d%u grant ref %u is not in use", domid_, ref));
  entry->in_use = false;
  return Status::Ok();
}

uint32_t SimDomain::MapCount(GrantRef ref) const {
  std::lock_guard lock(mu_);
  return ref < grants_.size() ? grants_[ref].pins : 0;
}

size_t SimDomain::grants_in_use() const {
  std::lock_guard lock(mu_);
  return grants_in_use_;
}

SimDomain::Port* SimDomain::PortLocked(EvtchnPort port) const {
  return port < ports_.size() ? ports_[port].get() : nullptr;
}

Result<EvtchnPort> SimDomain::AllocUnbound(DomId remote) {
  UniqueFd fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, "eventfd");
  std::lock_guard lock(mu_);
  auto port = std::make_unique<Port>();
  port->remote = remote;
  port->guest_fd = std::move(fd);
  for (size_t i = 1; i < ports_.size(); ++i) {
    if (ports_[i] == nullptr) {
      ports_[i] = std::move(port);
      return static_cast<EvtchnPort>(i);
    }
  }
  ports_.push_back(std::move(port));
  return static_cast<EvtchnPort>(ports_.size() - 1);
}

Status SimDomain::ClosePort(EvtchnPort port) {
  std::lock_guard lock(mu_);
  Port* p = PortLocked(port);
  if (p == nullptr) return Status::InvalidArgument(StrFormat("d%u: no event channel port %u", domid_, port));
  if (p->remote_end != nullptr) return Status::Busy(StrFormat("d%u: port %u is still bound", domid_, port));
  ports_[port].reset();
  return Status::Ok();
}

int SimDomain::EventFd(EvtchnPort port) const {
  std::lock_guard lock(mu_);
  Port* p = PortLocked(port);
  return p != nullptr ? p->guest_fd.get() : -1;
}

Status SimDomain::Notify(EvtchnPort port) {
  std::shared_ptr<const UniqueFd> remote_end;
  {
    std::lock_guard lock(mu_);
    Port* p = PortLocked(port);
    if (p == nullptr)
      return Status::InvalidArgument(StrFormat("d%u: no event channel port %u", domid_, port));
    hypervisor_.counters_.frontend_notifications.fetch_add(1, std::memory_order_relaxed);
    remote_end = p->remote_end;
  }
  // Signalled unlocked: the backend, woken on this CPU, may run at once and need mu_ for a grant copy.
  return remote_end == nullptr ? Status::Ok() : SignalEventFd(remote_end->get());
}

Status SimDomain::Acknowledge(EvtchnPort port) {
  int fd = EventFd(port);
  if (fd < 0) return Status::InvalidArgument(StrFormat("d%u: no event channel port %u", domid_, port));
  return DrainEventFd(fd);
}

bool SimDomain::IsBound(EvtchnPort port) const {
  std::lock_guard lock(mu_);
  Port* p = PortLocked(port);
  return p != nullptr && p->remote_end != nullptr;
}

Status SignalEventFd(int fd) {
  uint64_t one = 1;
  if (::write(fd, &one, sizeof(one)) != sizeof(one) && errno != EAGAIN)
    return Status::FromErrno(errno, "eventfd write");
  return Status::Ok();
}

Status DrainEventFd(int fd) {
  uint64_t count;
  if (::read(fd, &count, sizeof(count)) != sizeof(count) && errno != EAGAIN) {
    return Status::FromErrno(errno, "eventfd read");
  }
  return Status::Ok();
}

}  // namespace blk
