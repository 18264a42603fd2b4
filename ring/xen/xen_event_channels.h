// XenEventChannels: EventChannels (ring/hypervisor.h) on libxenevtchn, i.e. on /dev/xen/evtchn.
//
// Each bound channel has its own xenevtchn handle, so each ring gets its own pollable fd that is readable
// exactly while its own port is pending. The fd is made non-blocking: Acknowledge() with nothing pending
// returns at once instead of blocking a worker in read(2).
//
// Threading: BindInterdomain may be called from any thread. A XenEventChannel belongs to the thread that
// serves its ring, except Notify(), which any thread may call (one ioctl, no state of ours).
#pragma once

#include <memory>

#include "base/status.h"
#include "ring/hypervisor.h"
#include "ring/xen/xen_library.h"

namespace blk {

class XenEventChannels final : public EventChannels {
 public:
  XenEventChannels(XenLibrary& library, HypervisorCounters& counters)
      : library_(library), counters_(counters) {}
  Result<std::unique_ptr<EventChannel>> BindInterdomain(DomId remote, EvtchnPort remote_port) override;

 private:
  XenLibrary& library_;
  HypervisorCounters& counters_;
};

// One bound inter-domain channel and the handle it was bound on; unbinds and closes when destroyed.
class XenEventChannel final : public EventChannel {
 public:
  XenEventChannel(XenLibrary& library, HypervisorCounters& counters, xenevtchn_handle* handle,
                  EvtchnPort local_port, DomId remote, EvtchnPort remote_port)
      : library_(library),
        counters_(counters),
        handle_(handle),
        local_port_(local_port),
        remote_(remote),
        remote_port_(remote_port) {}
  XenEventChannel(const XenEventChannel&) = delete;
  XenEventChannel& operator=(const XenEventChannel&) = delete;
  ~XenEventChannel() override;

  // Fetches the handle's fd and makes it non-blocking.
  Status Init();

  int fd() const override { return fd_; }
  EvtchnPort local_port() const override { return local_port_; }
  Status Notify() override;
  // Reads every pending port of the handle (each must be ours), then unmasks ours if an event was consumed.
  // Counts each consumed event as a frontend notification.
  Status Acknowledge() override;

 private:
  // "port 7 (d3 port 12)", for messages.
  std::string Describe() const;

  XenLibrary& library_;
  HypervisorCounters& counters_;
  xenevtchn_handle* const handle_;  // owned
  const EvtchnPort local_port_;
  const DomId remote_;
  const EvtchnPort remote_port_;
  int fd_ = -1;  // owned by the handle
};

}  // namespace blk
