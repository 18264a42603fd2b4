// SimEventChannels and SimBoundChannel: the backend's side of inter-domain event channels, as eventfds.
#include <fcntl.h>
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
  if (port->remote_end != nullptr)
    return Status::Error(Status::Code::kInvalidArgument, StrFormat("%s: already bound", what.c_str()),
                         EINVAL);
  if (port->remote != hypervisor_.backend_domid()) {
    return Status::Error(Status::Code::kInvalidArgument,
                         StrFormat("%s: allocated for d%u", what.c_str(), port->remote), EINVAL);
  }
  UniqueFd remote_end(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!remote_end.valid()) return Status::FromErrno(errno, what + ": dup");
  // Xen marks the new local port pending, since the guest may have notified before anyone was bound.
  BLK_RETURN_IF_ERROR(SignalEventFd(fd.get()));
  port->remote_end = std::make_shared<const UniqueFd>(std::move(remote_end));
  const EvtchnPort local_port = hypervisor_.next_backend_port_.fetch_add(1);
  return std::unique_ptr<EventChannel>(std::make_unique<SimBoundChannel>(
      hypervisor_, *domain, remote_port, port->guest_fd.get(), std::move(fd), local_port));
}

SimBoundChannel::~SimBoundChannel() {
  std::lock_guard lock(remote_.mu_);
  SimDomain::Port* port = remote_.PortLocked(remote_port_);
  // A bound port cannot be closed, so the port here is still the one we bound.
  if (port != nullptr) port->remote_end.reset();  // the guest's port is unbound again
}

Status SimBoundChannel::Notify() {
  // Under the lock the guest, woken on this CPU, would run at once and then wait for the lock we hold.
  hypervisor_.counters_.backend_notifications.fetch_add(1, std::memory_order_relaxed);
  return SignalEventFd(guest_fd_);
}

Status SimBoundChannel::Acknowledge() { return DrainEventFd(fd_.get()); }

}  // namespace blk
