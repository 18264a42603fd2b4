// XenGrantTable: grant map, unmap and copy through libxengnttab, each failure a Status naming the call.
#include "ring/xen/xen_grant_table.h"

#include <sys/mman.h>

#include <cerrno>
#include <limits>
#include <vector>

#include "base/log.h"
#include "ring/blkif_abi.h"

namespace blk {
namespace {

bool FitsInPage(const GrantCopySegment& segment) {
  return size_t{segment.offset} + segment.length <= kPageSize;
}

xengnttab_grant_copy_segment_t ToXen(const GrantCopySegment& segment) {
  xengnttab_grant_copy_segment_t xen{};
  const bool from_guest = segment.direction == GrantCopySegment::Direction::kFromGuest;
  auto& guest = from_guest ? xen.source : xen.dest;
  auto& local = from_guest ? xen.dest : xen.source;
  guest.foreign.ref = segment.ref;
  guest.foreign.offset = segment.offset;
  guest.foreign.domid = segment.domid;
  local.virt = segment.local;
  xen.len = segment.length;
  xen.flags = from_guest ? GNTCOPY_source_gref : GNTCOPY_dest_gref;
  xen.status = GNTST_okay;
  return xen;
}

}  // namespace

Result<std::unique_ptr<XenGrantTable>> XenGrantTable::Open(XenLibrary& library,
                                                           HypervisorCounters& counters) {
  xengnttab_handle* handle = library.GnttabOpen();
  if (handle == nullptr) return XenOpenFailure("/dev/xen/gntdev", LastXenErrno());
  return std::make_unique<XenGrantTable>(library, handle, counters);
}

XenGrantTable::~XenGrantTable() {
  if (library_.GnttabClose(handle_) != 0)
    Log(LogLevel::kWarning, "xen", "xengnttab_close: errno %d", LastXenErrno());
}

Result<GrantMapping> XenGrantTable::Map(DomId domid, std::span<const GrantRef> refs, bool writable) {
  if (refs.empty()) return Status::InvalidArgument(StrFormat("grant map d%u: no refs", domid));
  if (refs.size() > std::numeric_limits<uint32_t>::max())
    return Status::InvalidArgument(StrFormat("grant map d%u: %zu refs", domid, refs.size()));
  const auto count = static_cast<uint32_t>(refs.size());
  counters_.map_calls.fetch_add(1, std::memory_order_relaxed);
  // The library only reads the refs; its prototype predates const.
  void* addr = library_.GnttabMapDomainGrantRefs(handle_, count, domid, const_cast<GrantRef*>(refs.data()),
                                                 writable ? PROT_READ | PROT_WRITE : PROT_READ);
  if (addr == nullptr) {
    return Status::FromErrno(
        LastXenErrno(), StrFormat("xengnttab_map_domain_grant_refs d%u ref %u (%u refs, %s)", domid, refs[0],
                                  count, writable ? "writable" : "read-only"));
  }
  counters_.pages_mapped.fetch_add(count, std::memory_order_relaxed);
  return GrantMapping(this, addr, count);
}

void XenGrantTable::Unmap(void* addr, size_t pages) {
  counters_.unmap_calls.fetch_add(1, std::memory_order_relaxed);
  if (library_.GnttabUnmap(handle_, addr, static_cast<uint32_t>(pages)) != 0) {
    // Nothing to hand the error to (a destructor is unmapping); the address range stays reserved.
    Log(LogLevel::kError, "xen", "xengnttab_unmap of %zu pages at %p: errno %d", pages, addr, LastXenErrno());
  }
}

Status XenGrantTable::Copy(std::span<GrantCopySegment> segments) {
  for (const GrantCopySegment& segment : segments) {
    if (segment.local == nullptr && segment.length != 0)
      return Status::InvalidArgument("grant copy: a segment has no local buffer");
  }
  if (segments.size() > std::numeric_limits<uint32_t>::max())
    return Status::InvalidArgument(StrFormat("grant copy: %zu segments", segments.size()));

  thread_local std::vector<xengnttab_grant_copy_segment_t> scratch;
  scratch.clear();  // keeps its capacity: no allocation once this thread has seen a batch this big
  for (GrantCopySegment& segment : segments) {
    if (FitsInPage(segment)) {
      scratch.push_back(ToXen(segment));
    } else {
      segment.status = GNTST_bad_copy_arg;
    }
  }
  if (scratch.empty()) return Status::Ok();

  counters_.copy_calls.fetch_add(1, std::memory_order_relaxed);
  counters_.copy_segments.fetch_add(scratch.size(), std::memory_order_relaxed);
  if (library_.GnttabGrantCopy(handle_, static_cast<uint32_t>(scratch.size()), scratch.data()) != 0) {
    const int err = LastXenErrno();
    for (GrantCopySegment& segment : segments) {
      if (FitsInPage(segment)) segment.status = GNTST_general_error;
    }
    const xengnttab_grant_copy_segment_t& first = scratch.front();
    const auto& guest = (first.flags & GNTCOPY_source_gref) ? first.source : first.dest;
    return Status::FromErrno(err, StrFormat("xengnttab_grant_copy of %zu segments (first d%u ref %u)",
                                            scratch.size(), guest.foreign.domid, guest.foreign.ref));
  }
  size_t issued = 0;
  for (GrantCopySegment& segment : segments) {
    if (FitsInPage(segment)) segment.status = scratch[issued++].status;
  }
  return Status::Ok();
}

}  // namespace blk
