// XenHypervisor: opening the real ports.
#include "ring/xen/xen_hypervisor.h"

namespace blk {

Result<std::unique_ptr<XenHypervisor>> XenHypervisor::Open(XenLibrary& library) {
  std::unique_ptr<XenHypervisor> hypervisor(new XenHypervisor(library));
  auto grants = XenGrantTable::Open(library, hypervisor->counters_);
  if (!grants.ok()) return grants.status();
  hypervisor->grants_ = std::move(*grants);

  xenevtchn_handle* probe = library.EvtchnOpen();
  if (probe == nullptr) return XenOpenFailure("/dev/xen/evtchn", LastXenErrno());
  library.EvtchnClose(probe);
  return hypervisor;
}

}  // namespace blk
