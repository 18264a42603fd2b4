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
  std::lock_guard lock(mapped_mu_);
  for (auto& [addr, range] : mapped_) ::munmap(addr, range.refs.size() * kPageSize);
}

Result<GrantMapping> SimGrantTable::Map(DomId domid, std::span<const GrantRef> refs, bool writable) {
  if (refs.empty()) return Status::InvalidArgument("grant map: no refs");
  hypervisor_.counters_.map_calls.fetch_add(1, std::memory_order_relaxed);
  SimDomain* domain = hypervisor_.FindDomain(domid);
  if (domain == nullptr) return MapFailure(GNTST_bad_domain, domid, refs[0], "no such domain");
  const DomId accessor = hypervisor_.backend_domid();
  std::vector<uint32_t> frames(refs.size());
  {
    // Validate everything before pinning anything, so that a failed map leaves no trace.
    std::lock_guard lock(domain->mu_);
    for (GrantRef ref : refs) {
      const char* reason = "";
      int16_t status = CheckAccess(domain->EntryLocked(ref), accessor, writable, &reason);
      if (status != GNTST_okay) return MapFailure(status, domid, ref, reason);
    }
    for (size_t i = 0; i < refs.size(); ++i) {
      SimDomain::GrantEntry* entry = domain->EntryLocked(refs[i]);
      ++entry->pins;
      if (writable) ++entry->write_pins;
      frames[i] = entry->frame;
    }
  }

  // Reserve the whole range first so that the pages land contiguously, then put each granted frame in its
  // place. The pins keep the entries (and so the frames) from changing meanwhile.
  const size_t length = refs.size() * kPageSize;
  void* base = ::mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  Status failure;
  if (base == MAP_FAILED) failure = Status::FromErrno(errno, "grant map: reserve address space");
  const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  for (size_t i = 0; failure.ok() && i < refs.size(); ++i) {
    uint8_t* page = static_cast<uint8_t*>(base) + i * kPageSize;
    const off_t offset = static_cast<off_t>(frames[i]) * static_cast<off_t>(kPageSize);
    if (::mmap(page, kPageSize, prot, MAP_SHARED | MAP_FIXED, domain->memfd_.get(), offset) == MAP_FAILED) {
      failure = Status::FromErrno(errno, "grant map: map frame");
      ::munmap(base, length);
    }
  }
  if (!failure.ok()) {
    Unpin(*domain, refs, writable);
    return failure;
  }
  {
    std::lock_guard lock(mapped_mu_);
    mapped_.emplace(base, MappedRange{domid, writable, std::vector<GrantRef>(refs.begin(), refs.end())});
  }
  hypervisor_.counters_.pages_mapped.fetch_add(refs.size(), std::memory_order_relaxed);
  return GrantMapping(this, base, refs.size());
}

void SimGrantTable::Unpin(SimDomain& domain, std::span<const GrantRef> refs, bool writable) {
  std::lock_guard lock(domain.mu_);
  for (GrantRef ref : refs) {
    SimDomain::GrantEntry* entry = domain.EntryLocked(ref);
    --entry->pins;
    if (writable) --entry->write_pins;
  }
}

void SimGrantTable::Unmap(void* addr, size_t pages) {
  hypervisor_.counters_.unmap_calls.fetch_add(1, std::memory_order_relaxed);
  MappedRange range;
  {
    std::lock_guard lock(mapped_mu_);
    auto it = mapped_.find(addr);
    if (it == mapped_.end() || it->second.refs.size() != pages) {
      Log(LogLevel::kError, "sim", "unmap of %zu pages at %p that no grant map returned", pages, addr);
      return;
    }
    range = std::move(it->second);
    mapped_.erase(it);
  }
  // Unmap before unpinning: once unpinned, the guest may end access and reuse the page.
  ::munmap(addr, pages * kPageSize);
  Unpin(*hypervisor_.FindDomain(range.domid), range.refs, range.writable);
}

Status SimGrantTable::Copy(std::span<GrantCopySegment> segments) {
  for (const GrantCopySegment& segment : segments) {
    if (segment.local == nullptr && segment.length != 0) {
      return Status::InvalidArgument("grant copy: a segment has no local buffer");
    }
  }
  hypervisor_.counters_.copy_calls.fetch_add(1, std::memory_order_relaxed);
  hypervisor_.counters_.copy_segments.fetch_add(segments.size(), std::memory_order_relaxed);
  const DomId accessor = hypervisor_.backend_domid();
  // Where each segment's guest bytes are, or null when it copies nothing; kept per thread to spare an
  // allocation per batch.
  thread_local std::vector<uint8_t*> guest_bytes;
  if (guest_bytes.size() < segments.size()) guest_bytes.resize(segments.size());

  // Runs of segments for the same domain: validate and pin under its lock, copy unlocked, unpin under it.
  for (size_t begin = 0, end = 0; begin < segments.size(); begin = end) {
    const DomId domid = segments[begin].domid;
    for (end = begin; end < segments.size() && segments[end].domid == domid;) ++end;
    SimDomain* domain = hypervisor_.FindDomain(domid);
    if (domain == nullptr) {
      for (size_t i = begin; i < end; ++i) segments[i].status = GNTST_bad_domain;
      continue;
    }
    uint8_t* const memory = domain->hypervisor_view_.as<uint8_t>();
    {
      std::lock_guard lock(domain->mu_);
      for (size_t i = begin; i < end; ++i) {
        GrantCopySegment& segment = segments[i];
        guest_bytes[i] = nullptr;
        const bool to_guest = segment.direction == GrantCopySegment::Direction::kToGuest;
        SimDomain::GrantEntry* entry = domain->EntryLocked(segment.ref);
        const char* reason = "";
        segment.status = CheckAccess(entry, accessor, to_guest, &reason);
        if (segment.status != GNTST_okay) continue;
        // Xen checks the bounds after acquiring the grant, so a bad ref wins over a bad offset.
        if (size_t{segment.offset} + segment.length > kPageSize) {
          segment.status = GNTST_bad_copy_arg;
          continue;
        }
        if (segment.length == 0) continue;
        ++entry->pins;
        if (to_guest) ++entry->write_pins;
        guest_bytes[i] = memory + size_t{entry->frame} * kPageSize + segment.offset;
      }
    }
    for (size_t i = begin; i < end; ++i) {
      if (guest_bytes[i] == nullptr) continue;
      if (segments[i].direction == GrantCopySegment::Direction::kToGuest) {
        std::memcpy(guest_bytes[i], segments[i].local, segments[i].length);
      } else {
        std::memcpy(segments[i].local, guest_bytes[i], segments[i].length);
      }
    }
    std::lock_guard lock(domain->mu_);
    for (size_t i = begin; i < end; ++i) {
      if (guest_bytes[i] == nullptr) continue;
      SimDomain::GrantEntry* entry = domain->EntryLocked(segments[i].ref);
      --entry->pins;
      if (segments[i].direction == GrantCopySegment::Direction::kToGuest) --entry->write_pins;
    }
  }
  return Status::Ok();
}

}  // namespace blk
