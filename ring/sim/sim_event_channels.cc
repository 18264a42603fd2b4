// SimEventChannels and SimBoundChannel: the backend's side of inter-domain event channels, as eventfds.
#include <sys/eventfd.h>

#include <cerrno>
#include <string>

#include "ring/sim/sim_internal.h"

namespace blk {

Result<std::unique_ptr<EventChannel>> SimEventChannels::BindInterdomain(DomId remote,
                                                                        EvtchnPort remote_port) {
  UniqueFd fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, "eventfd");
  const std::string what = StrFormat("bind interdomain d%u port %u", remote, remote_port);
  SimDomain* domain = hypervisor_.FindDomain(remote);
  if (domain == nullptr) return Status::FromErrno(ESRCH, what);
  std::lock_guard lock(domain->mu_);
  SimDomain::Port* port = domain->PortLocked(remote_port);
  if (port == nullptr)
    return Status::Error(Status::Code::kInvalidArgument, StrFormat("%s: no such port", what.c_str()), EINVAL);
  if (port->remote_fd >= 0)
    return Status::Error(Status::Code::kInvalidArgument, StrFormat("%s: already bound", what.c_str()),
                         EINVAL);
  if (port->remote != hypervisor_.backend_domid()) {
    return Status::Error(Status::Code::kInvalidArgument,
                         StrFormat("%s: allocated for d%u", what.c_str(), port->remote), EINVAL);
  }
  port->remote_fd = fd.get();
  const EvtchnPort local_port = hypervisor_.next_backend_port_.fetch_add(1);
  // Xen marks the new local port pending, since the guest may have notified before anyone was bound.
  BLK_RETURN_IF_ERROR(SignalEventFd(fd.get()));
  return std::unique_ptr<EventChannel>(
      std::make_unique<SimBoundChannel>(hypervisor_, *domain, remote_port, std::move(fd), local_port));
}

SimBoundChannel::~SimBoundChannel() {
  std::lock_guard lock(remote_.mu_);
  SimDomain::Port* port = remote_.PortLocked(remote_port_);
  if (port != nullptr && port->remote_fd == fd_.get())
    port->remote_fd = -1;  // the guest's port is unbound again
}

Status SimBoundChannel::Notify() {
  std::lock_guard lock(remote_.mu_);
  hypervisor_.counters_.backend_notifications.fetch_add(1, std::memory_order_relaxed);
  SimDomain::Port* port = remote_.PortLocked(remote_port_);
  return SignalEventFd(port->guest_fd.get());
}

Status SimBoundChannel::Acknowledge() { return DrainEventFd(fd_.get()); }

}  // namespace blk
