// XenHypervisor: the real hypervisor behind ring/hypervisor.h — a grant table on /dev/xen/gntdev, event
// channels on /dev/xen/evtchn, and the counters of what they were asked for.
//
// Open() fails cleanly (a Status, never a crash) where there is no Xen, naming the device and the likely
// cause. The daemon needs read/write access to both devices (root, as they are 0600 root by default).
//
// Threading: as ring/hypervisor.h promises. Lifetime: every GrantMapping and EventChannel obtained from a
// XenHypervisor must be destroyed before it.
#pragma once

#include <memory>

#include "base/status.h"
#include "ring/hypervisor.h"
#include "ring/xen/xen_event_channels.h"
#include "ring/xen/xen_grant_table.h"
#include "ring/xen/xen_library.h"

namespace blk {

class XenHypervisor {
 public:
  // Opens the grant table and checks that event channels can be opened too, so that a missing evtchn
  // driver shows at start-up rather than at the first device. `library` must outlive the hypervisor.
  static Result<std::unique_ptr<XenHypervisor>> Open(XenLibrary& library = RealXenLibrary());

  XenHypervisor(const XenHypervisor&) = delete;
  XenHypervisor& operator=(const XenHypervisor&) = delete;

  // What the backend is given.
  Hypervisor hypervisor() { return Hypervisor{*grants_, *events_, counters_}; }
  GrantTable& grants() { return *grants_; }
  EventChannels& events() { return *events_; }
  HypervisorCounters& counters() { return counters_; }

 private:
  explicit XenHypervisor(XenLibrary& library)
      : events_(std::make_unique<XenEventChannels>(library, counters_)) {}

  HypervisorCounters counters_;  // declared first: the ports keep a reference to it
  std::unique_ptr<XenGrantTable> grants_;
  std::unique_ptr<XenEventChannels> events_;
};

}  // namespace blk
