// The simulated hypervisor's implementations of the backend-facing interfaces of ring/hypervisor.h. Private
// to ring/sim/: users reach them through SimHypervisor::grants() and events().
//
// Threading: as ring/hypervisor.h promises; see sim_hypervisor.h for which locks are taken when.
#pragma once

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/format.h"
#include "ring/sim/sim_hypervisor.h"

namespace blk {

class SimGrantTable final : public GrantTable, public GrantUnmapper {
 public:
  explicit SimGrantTable(SimHypervisor& hypervisor) : hypervisor_(hypervisor) {}
  ~SimGrantTable() override;

  Result<GrantMapping> Map(DomId domid, std::span<const GrantRef> refs, bool writable) override;
  Status Copy(std::span<GrantCopySegment> segments) override;
  void Unmap(void* addr, size_t pages) override;

 private:
  // Xen's decision for one grant access (map or copy) by `accessor`; sets `reason` when it refuses.
  static int16_t CheckAccess(const SimDomain::GrantEntry* entry, DomId accessor, bool want_write,
                             const char** reason);

  // Drops the pins one mapping (or one copy) holds on `refs`.
  static void Unpin(SimDomain& domain, std::span<const GrantRef> refs, bool writable);

  struct MappedRange {
    DomId domid;
    bool writable;
    std::vector<GrantRef> refs;
  };

  SimHypervisor& hypervisor_;
  std::mutex mapped_mu_;
  std::unordered_map<void*, MappedRange> mapped_;  // guarded by mapped_mu_
};

class SimEventChannels final : public EventChannels {
 public:
  explicit SimEventChannels(SimHypervisor& hypervisor) : hypervisor_(hypervisor) {}
  Result<std::unique_ptr<EventChannel>> BindInterdomain(DomId remote, EvtchnPort remote_port) override;

 private:
  SimHypervisor& hypervisor_;
};

// The backend's end of an inter-domain channel; unbinds the guest's port when destroyed.
class SimBoundChannel final : public EventChannel {
 public:
  SimBoundChannel(SimHypervisor& hypervisor, SimDomain& remote, EvtchnPort remote_port, int guest_fd,
                  UniqueFd fd, EvtchnPort local_port)
      : hypervisor_(hypervisor),
        remote_(remote),
        remote_port_(remote_port),
        guest_fd_(guest_fd),
        fd_(std::move(fd)),
        local_port_(local_port) {}
  ~SimBoundChannel() override;

  int fd() const override { return fd_.get(); }
  EvtchnPort local_port() const override { return local_port_; }
  Status Notify() override;
  Status Acknowledge() override;

 private:
  SimHypervisor& hypervisor_;
  SimDomain& remote_;
  const EvtchnPort remote_port_;
  // The guest's end of the port: it stays open while we are bound (SimDomain::ClosePort refuses a bound
  // port), so Notify signals it without the domain's lock, as EVTCHNOP_send takes no lock the guest needs.
  const int guest_fd_;
  UniqueFd fd_;
  const EvtchnPort local_port_;
};

// Signals / drains an eventfd; both tolerate a counter that is already set / already empty.
Status SignalEventFd(int fd);
Status DrainEventFd(int fd);

}  // namespace blk
