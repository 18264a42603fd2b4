// SimGrantTable: grant map as a real shared mapping of the guest's memfd, grant copy as memcpy, both
// validated the way Xen's grant_table.c validates them.
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "base/log.h"
#include "ring/sim/sim_internal.h"

namespace blk {
namespace {

Status MapFailure(int16_t status, DomId domid, GrantRef ref, const char* reason) {
  Status::Code code = status == GNTST_bad_domain   ? Status::Code::kNotFound
                      : status == GNTST_bad_gntref ? Status::Code::kInvalidArgument
                                                   : Status::Code::kPermissionDenied;
  return Status::Error(
      code, StrFormat("grant map d%u ref %u: %s (%s)", domid, ref, GrantStatusName(status), reason));
}

}  // namespace

// The shared entry is only consulted when the active entry does not already vouch for the access (not pinned,
// or pinned read-only and wanted writable); a pinned entry skips the type and domain check, but a write pin
// still needs GTF_readonly clear.
int16_t SimGrantTable::CheckAccess(const SimDomain::GrantEntry* entry, DomId accessor, bool want_write,
                                   const char** reason) {
  if (entry == nullptr) {
    *reason = "no such grant ref";
    return GNTST_bad_gntref;
  }
  if (entry->pins != 0 && (!want_write || entry->write_pins != 0)) return GNTST_okay;
  if (entry->pins == 0 && !entry->in_use) {
    *reason = "grant ref not in use";
    return GNTST_general_error;
  }
  if (entry->pins == 0 && entry->grantee != accessor) {
    *reason = "granted to another domain";
    return GNTST_general_error;
  }
  if (want_write && entry->readonly) {
    *reason = "write access to a read-only grant";
    return GNTST_general_error;
  }
  return GNTST_okay;
}

const char* GrantStatusName(int16_t status) {
  switch (status) {
    case GNTST_okay:
      return "GNTST_okay";
    case GNTST_general_error:
      return "GNTST_general_error";
    case GNTST_bad_domain:
      return "GNTST_bad_domain";
    case GNTST_bad_gntref:
      return "GNTST_bad_gntref";
    case GNTST_bad_handle:
      return "GNTST_bad_handle";
    case GNTST_bad_virt_addr:
      return "GNTST_bad_virt_addr";
    case GNTST_bad_dev_addr:
      return "GNTST_bad_dev_addr";
    case GNTST_no_device_space:
      return "GNTST_no_device_space";
    case GNTST_permission_denied:
      return "GNTST_permission_denied";
    case GNTST_bad_page:
      return "GNTST_bad_page";
    case GNTST_bad_copy_arg:
      return "GNTST_bad_copy_arg";
    case GNTST_address_too_big:
      return "GNTST_address_too_big";
    case GNTST_eagain:
      return "GNTST_eagain";
    case GNTST_no_space:
      return "GNTST_no_space";
  }
  return "GNTST_unknown";
}

SimGrantTable::~SimGrantTable() {
  // Mappings outliving the hypervisor are a bug of the user; release the address space anyway.
  for (auto& [addr, range] : mapped_) ::munmap(addr, range.refs.size() * kPageSize);
}

Result<GrantMapping> SimGrantTable::Map(DomId domid, std::span<const GrantRef> refs, bool writable) {
  if (refs.empty()) return Status::InvalidArgument("grant map: no refs");
  const DomId accessor = hypervisor_.backend_domid();
  std::lock_guard lock(hypervisor_.mu_);
  hypervisor_.counters_.map_calls.fetch_add(1, std::memory_order_relaxed);
  SimDomain* domain = hypervisor_.FindDomainLocked(domid);
  if (domain == nullptr) return MapFailure(GNTST_bad_domain, domid, refs[0], "no such domain");
  for (GrantRef ref : refs) {
    const char* reason = "";
    int16_t status = CheckAccess(domain->EntryLocked(ref), accessor, writable, &reason);
    if (status != GNTST_okay) return MapFailure(status, domid, ref, reason);
  }

  // Reserve the whole range first so that the pages land contiguously, then put each granted frame in its
  // place.
  const size_t length = refs.size() * kPageSize;
  void* base = ::mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return Status::FromErrno(errno, "grant map: reserve address space");
  const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  for (size_t i = 0; i < refs.size(); ++i) {
    uint8_t* page = static_cast<uint8_t*>(base) + i * kPageSize;
    off_t offset = static_cast<off_t>(domain->EntryLocked(refs[i])->frame) * static_cast<off_t>(kPageSize);
    if (::mmap(page, kPageSize, prot, MAP_SHARED | MAP_FIXED, domain->memfd_.get(), offset) == MAP_FAILED) {
      int err = errno;
      ::munmap(base, length);
      return Status::FromErrno(err, "grant map: map frame");
    }
  }
  for (GrantRef ref : refs) {
    SimDomain::GrantEntry* entry = domain->EntryLocked(ref);
    ++entry->pins;
    if (writable) ++entry->write_pins;
  }
  mapped_.emplace(base, MappedRange{domid, writable, std::vector<GrantRef>(refs.begin(), refs.end())});
  hypervisor_.counters_.pages_mapped.fetch_add(refs.size(), std::memory_order_relaxed);
  return GrantMapping(this, base, refs.size());
}

void SimGrantTable::Unmap(void* addr, size_t pages) {
  std::lock_guard lock(hypervisor_.mu_);
  hypervisor_.counters_.unmap_calls.fetch_add(1, std::memory_order_relaxed);
  auto it = mapped_.find(addr);
  if (it == mapped_.end() || it->second.refs.size() != pages) {
    Log(LogLevel::kError, "sim", "unmap of %zu pages at %p that no grant map returned", pages, addr);
    return;
  }
  SimDomain* domain = hypervisor_.FindDomainLocked(it->second.domid);
  for (GrantRef ref : it->second.refs) {
    SimDomain::GrantEntry* entry = domain->EntryLocked(ref);
    --entry->pins;
    if (it->second.writable) --entry->write_pins;
  }
  ::munmap(addr, pages * kPageSize);
  mapped_.erase(it);
}

Status SimGrantTable::Copy(std::span<GrantCopySegment> segments) {
  for (const GrantCopySegment& segment : segments) {
    if (segment.local == nullptr && segment.length != 0) {
      return Status::InvalidArgument("grant copy: a segment has no local buffer");
    }
  }
  const DomId accessor = hypervisor_.backend_domid();
  std::lock_guard lock(hypervisor_.mu_);
  hypervisor_.counters_.copy_calls.fetch_add(1, std::memory_order_relaxed);
  hypervisor_.counters_.copy_segments.fetch_add(segments.size(), std::memory_order_relaxed);
  SimDomain* domain = nullptr;
  for (GrantCopySegment& segment : segments) {
    if (domain == nullptr || domain->domid() != segment.domid)
      domain = hypervisor_.FindDomainLocked(segment.domid);
    if (domain == nullptr) {
      segment.status = GNTST_bad_domain;
      continue;
    }
    const bool to_guest = segment.direction == GrantCopySegment::Direction::kToGuest;
    const SimDomain::GrantEntry* entry = domain->EntryLocked(segment.ref);
    const char* reason = "";
    segment.status = CheckAccess(entry, accessor, to_guest, &reason);
    if (segment.status != GNTST_okay) continue;
    // Xen checks the bounds after acquiring the grant, so a bad ref wins over a bad offset.
    if (size_t{segment.offset} + segment.length > kPageSize) {
      segment.status = GNTST_bad_copy_arg;
      continue;
    }
    if (segment.length == 0) continue;
    uint8_t* guest =
        domain->hypervisor_view_.as<uint8_t>() + size_t{entry->frame} * kPageSize + segment.offset;
    if (to_guest) {
      std::memcpy(guest, segment.local, segment.length);
    } else {
      std::memcpy(segment.local, guest, segment.length);
    }
  }
  return Status::Ok();
}

}  // namespace blk
