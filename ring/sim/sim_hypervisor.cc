// SimHypervisor: the set of domains, and the backend's handles on them.
#include "ring/sim/sim_hypervisor.h"

#include <cstdarg>
#include <cstdio>
#include <string>

#include "ring/sim/sim_internal.h"

namespace blk {

SimHypervisor::SimHypervisor(DomId backend_domid)
    : backend_domid_(backend_domid),
      by_id_(std::make_unique<std::atomic<SimDomain*>[]>(DOMID_FIRST_RESERVED)),
      grant_table_(std::make_unique<SimGrantTable>(*this)),
      event_channels_(std::make_unique<SimEventChannels>(*this)) {}

SimHypervisor::~SimHypervisor() = default;

Result<SimDomain*> SimHypervisor::CreateDomain(DomId domid, size_t pages, size_t grant_entries) {
  const std::string name = StrFormat("create d%u", domid);
  if (domid == backend_domid_)
    return Status::InvalidArgument(StrFormat("%s: that is the backend's domain", name.c_str()));
  if (domid >= DOMID_FIRST_RESERVED)
    return Status::InvalidArgument(StrFormat("%s: a reserved domain id", name.c_str()));
  if (pages == 0 || pages > (size_t{1} << 32))
    return Status::InvalidArgument(StrFormat("%s: bad memory size", name.c_str()));
  if (grant_entries <= SimDomain::kFirstFreeGrantRef)
    return Status::InvalidArgument(StrFormat("%s: grant table too small", name.c_str()));
  std::unique_ptr<SimDomain> domain(new SimDomain(*this, domid, pages, grant_entries));
  BLK_RETURN_IF_ERROR(domain->Init());
  std::lock_guard lock(mu_);
  auto [it, inserted] = domains_.emplace(domid, std::move(domain));
  if (!inserted) return Status::InvalidArgument(StrFormat("%s: the domain exists", name.c_str()));
  by_id_[domid].store(it->second.get(), std::memory_order_release);
  return it->second.get();
}

SimDomain* SimHypervisor::FindDomain(DomId domid) {
  return domid < DOMID_FIRST_RESERVED ? by_id_[domid].load(std::memory_order_acquire) : nullptr;
}

Hypervisor SimHypervisor::hypervisor() { return Hypervisor{*grant_table_, *event_channels_, counters_}; }
GrantTable& SimHypervisor::grants() { return *grant_table_; }
EventChannels& SimHypervisor::events() { return *event_channels_; }

}  // namespace blk
