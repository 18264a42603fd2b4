// XenEventChannels and XenEventChannel: bind, notify and acknowledge through libxenevtchn.
#include "ring/xen/xen_event_channels.h"

#include <fcntl.h>

#include <cerrno>
#include <string>

#include "base/log.h"

namespace blk {

Result<std::unique_ptr<EventChannel>> XenEventChannels::BindInterdomain(DomId remote,
                                                                        EvtchnPort remote_port) {
  xenevtchn_handle* handle = library_.EvtchnOpen();
  if (handle == nullptr) {
    return XenOpenFailure("/dev/xen/evtchn", LastXenErrno())
        .Annotate(StrFormat("bind d%u port %u: ", remote, remote_port));
  }
  const xenevtchn_port_or_error_t local_port = library_.EvtchnBindInterdomain(handle, remote, remote_port);
  if (local_port < 0) {
    const int err = LastXenErrno();
    library_.EvtchnClose(handle);
    return Status::FromErrno(err, StrFormat("xenevtchn_bind_interdomain d%u port %u", remote, remote_port));
  }
  // From here on the channel owns the handle and the binding, and releases both on every exit path.
  auto channel = std::make_unique<XenEventChannel>(library_, counters_, handle,
                                                   static_cast<EvtchnPort>(local_port), remote, remote_port);
  BLK_RETURN_IF_ERROR(channel->Init());
  return std::unique_ptr<EventChannel>(std::move(channel));
}

XenEventChannel::~XenEventChannel() {
  if (library_.EvtchnUnbind(handle_, local_port_) != 0)
    Log(LogLevel::kWarning, "xen", "xenevtchn_unbind %s: errno %d", Describe().c_str(), LastXenErrno());
  if (library_.EvtchnClose(handle_) != 0)
    Log(LogLevel::kWarning, "xen", "xenevtchn_close %s: errno %d", Describe().c_str(), LastXenErrno());
}

std::string XenEventChannel::Describe() const {
  return StrFormat("port %u (d%u port %u)", local_port_, remote_, remote_port_);
}

Status XenEventChannel::Init() {
  const int fd = library_.EvtchnFd(handle_);
  if (fd < 0) return Status::FromErrno(LastXenErrno(), "xenevtchn_fd " + Describe());
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
    return Status::FromErrno(errno, "make the event channel fd non-blocking, " + Describe());
  fd_ = fd;
  return Status::Ok();
}

Status XenEventChannel::Notify() {
  counters_.backend_notifications.fetch_add(1, std::memory_order_relaxed);
  if (library_.EvtchnNotify(handle_, local_port_) != 0)
    return Status::FromErrno(LastXenErrno(), "xenevtchn_notify " + Describe());
  return Status::Ok();
}

Status XenEventChannel::Acknowledge() {
  // The kernel masks a port when it queues it and queues it once until unmasked, so this loop normally
  // reads one port; reading until EAGAIN leaves the fd unreadable whatever the kernel did.
  bool consumed = false;
  Status status;
  for (;;) {
    const xenevtchn_port_or_error_t port = library_.EvtchnPending(handle_);
    if (port < 0) {
      const int err = LastXenErrno();
      if (err != EAGAIN && err != EWOULDBLOCK)
        status = Status::FromErrno(err, "xenevtchn_pending " + Describe());
      break;
    }
    if (static_cast<EvtchnPort>(port) != local_port_) {
      status =
          Status::Error(Status::Code::kIoError,
                        StrFormat("xenevtchn_pending %s: returned port %d, which this handle did not bind",
                                  Describe().c_str(), port),
                        EINVAL);
      break;
    }
    consumed = true;
    counters_.frontend_notifications.fetch_add(1, std::memory_order_relaxed);
  }
  // Unmask even after an error: a port left masked would never signal again.
  if (consumed && library_.EvtchnUnmask(handle_, local_port_) != 0 && status.ok())
    status = Status::FromErrno(LastXenErrno(), "xenevtchn_unmask " + Describe());
  return status;
}

}  // namespace blk
