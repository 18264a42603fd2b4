// XenGrantTable: GrantTable (ring/hypervisor.h) on libxengnttab, i.e. on /dev/xen/gntdev.
//
// Map is one xengnttab_map_domain_grant_refs call (the kernel maps all refs or none); each GrantMapping
// unmaps its whole range with one xengnttab_unmap. Copy is one xengnttab_grant_copy ioctl per batch.
//
// Threading: Map, Copy and unmapping may run on several threads at once. The table keeps no mutable state
// of its own besides the counters: Copy translates segments into a scratch array that belongs to the
// calling thread (thread_local, grown only when a thread brings a bigger batch than before, never shrunk),
// so concurrent copies neither allocate nor lock. Lifetime: every GrantMapping must be destroyed before
// the table (closing the handle would tear the mappings down under their owners).
#pragma once

#include <memory>
#include <span>

#include "base/status.h"
#include "ring/hypervisor.h"
#include "ring/xen/xen_library.h"

namespace blk {

class XenGrantTable final : public GrantTable, public GrantUnmapper {
 public:
  // Opens /dev/xen/gntdev through `library`; fails cleanly where there is no Xen.
  static Result<std::unique_ptr<XenGrantTable>> Open(XenLibrary& library, HypervisorCounters& counters);

  XenGrantTable(XenLibrary& library, xengnttab_handle* handle, HypervisorCounters& counters)
      : library_(library), handle_(handle), counters_(counters) {}
  XenGrantTable(const XenGrantTable&) = delete;
  XenGrantTable& operator=(const XenGrantTable&) = delete;
  ~XenGrantTable() override;

  Result<GrantMapping> Map(DomId domid, std::span<const GrantRef> refs, bool writable) override;
  // Segments whose offset + length overruns the granted page get GNTST_bad_copy_arg and are left out of
  // the batch: the kernel would reject the whole ioctl for them, after copying the segments before them.
  // If the ioctl itself fails, every issued segment gets GNTST_general_error.
  Status Copy(std::span<GrantCopySegment> segments) override;
  void Unmap(void* addr, size_t pages) override;

 private:
  XenLibrary& library_;
  xengnttab_handle* const handle_;  // owned
  HypervisorCounters& counters_;
};

}  // namespace blk
