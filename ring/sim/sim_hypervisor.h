// The simulated hypervisor: guest domains whose memory is a memfd, grant tables whose map is a real shared
// mapping of that memfd and whose copy is a memcpy, and event channels made of eventfds. It stands behind the
// same interfaces (ring/hypervisor.h) the backend uses on Xen, validates what Xen validates, and counts what
// Xen would have been asked for. A test drives the guest side through SimDomain, and may misbehave there on
// purpose (revoke a grant that is mapped, make it read-only, notify a port nobody bound).
//
// Threading: every method of SimHypervisor and SimDomain may be called from any thread. Each domain has one
// mutex over its grant table and ports: a Map takes it once (an unmap once more); a Copy batch takes it twice
// per domain it touches, to validate and pin the entries and then to unpin them, with the memcpy in between
// unlocked (Xen too copies with the entries pinned), so that backend workers copy in parallel and the guest
// may grant meanwhile. Guest memory itself is not guarded: guest and backend share it as on real hardware.
// Lifetime: every GrantMapping and EventChannel obtained from a SimHypervisor must be destroyed
// before it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "base/status.h"
#include "base/unique_fd.h"
#include "ring/blkif_abi.h"
#include "ring/hypervisor.h"

namespace blk {

class SimHypervisor;

// The name of a GNTST_* value ("GNTST_bad_gntref"), for messages.
const char* GrantStatusName(int16_t status);

// One guest: its memory, a page allocator over it, its grant table and its event channel ports.
class SimDomain {
 public:
  // Xen's frontends keep the first grant refs for the console and xenstore; so does this one.
  static constexpr GrantRef kFirstFreeGrantRef = 8;
  static constexpr size_t kDefaultGrantEntries = 16384;  // 32 grant frames of v1 entries

  SimDomain(const SimDomain&) = delete;
  SimDomain& operator=(const SimDomain&) = delete;
  ~SimDomain();

  DomId domid() const { return domid_; }
  size_t pages() const { return pages_; }

  // The guest's own view of its memory (a shared mapping of the memfd).
  uint8_t* memory() const { return guest_view_.as<uint8_t>(); }
  uint8_t* PageAddress(uint32_t frame) const { return memory() + size_t{frame} * kPageSize; }

  // A frame allocator for the guest: lowest free frame first, so a fresh domain hands out 0, 1, 2...
  Result<uint32_t> AllocPage();
  // `count` consecutive frames (for a multi-page ring, which the guest needs contiguous); returns the first.
  Result<uint32_t> AllocContiguous(size_t count);
  Status FreePage(uint32_t frame);
  size_t free_pages() const;

  // Grant table, guest side (gnttab_grant_foreign_access and friends).
  Result<GrantRef> GrantAccess(DomId to, uint32_t frame, bool readonly);
  // Clears the entry and frees the ref (also after Revoke). Fails (kBusy) while the grantee still has the
  // page mapped, as Xen reports the entry in use; the ref then stays allocated.
  Status EndAccess(GrantRef ref);
  // Hostile: flips GTF_readonly without looking at existing mappings (they keep their access, as on Xen).
  Status SetReadOnly(GrantRef ref, bool readonly);
  // Hostile: invalidates the entry (clears GTF_permit_access) even while mapped; the ref stays allocated
  // until EndAccess. Existing mappings stay valid until unmapped. As on Xen, the entry is only looked at
  // again when it is not pinned (or pinned read-only and wanted writable): while a mapping pins it, further
  // maps and copies with the same access still succeed.
  Status Revoke(GrantRef ref);
  // Live mappings of `ref` by its grantee (Xen's pin count), 0 for an unknown ref.
  uint32_t MapCount(GrantRef ref) const;
  size_t grants_in_use() const;  // allocated refs

  // Event channels, guest side.
  Result<EvtchnPort> AllocUnbound(DomId remote);
  // Closes a port the guest allocated (EVTCHNOP_close), so that a guest reconnecting its disk again and again
  // does not pile up ports; the number may be handed out again. Fails (kBusy) while the remote end is bound.
  Status ClosePort(EvtchnPort port);
  // Readable while an event from the remote end is pending on `port`; -1 for an unknown port.
  int EventFd(EvtchnPort port) const;
  // Sends an event; dropped silently (as by Xen) while the port is unbound.
  Status Notify(EvtchnPort port);
  // Consumes the pending event of `port`.
  Status Acknowledge(EvtchnPort port);
  bool IsBound(EvtchnPort port) const;

 private:
  friend class SimHypervisor;
  friend class SimGrantTable;
  friend class SimEventChannels;
  friend class SimBoundChannel;

  struct GrantEntry {
    bool allocated = false;  // handed out by GrantAccess, not yet freed by EndAccess
    bool in_use = false;     // GTF_permit_access
    bool readonly = false;   // GTF_readonly
    DomId grantee = 0;
    uint32_t frame = 0;
    uint32_t pins = 0;        // live mappings by the grantee (Xen's active entry pin count)
    uint32_t write_pins = 0;  // of which writable
  };
  struct Port {
    DomId remote = 0;
    UniqueFd guest_fd;  // signalled by the remote end
    // The bound remote end's eventfd (a duplicate of its SimBoundChannel's), null while unbound. Shared, so
    // that Notify signals it after letting go of mu_ while an unbind may drop the port's reference.
    std::shared_ptr<const UniqueFd> remote_end;
  };

  SimDomain(SimHypervisor& hypervisor, DomId domid, size_t pages, size_t grant_entries);
  Status Init();
  // mu_ must be held by the callers of these.
  GrantEntry* EntryLocked(GrantRef ref);
  void ReleaseRefLocked(GrantRef ref);
  Port* PortLocked(EvtchnPort port) const;

  SimHypervisor& hypervisor_;
  const DomId domid_;
  const size_t pages_;
  UniqueFd memfd_;
  Mapping guest_view_;
  Mapping hypervisor_view_;  // what grant copy reads and writes through

  mutable std::mutex alloc_mu_;        // the page allocator only
  std::vector<uint32_t> free_frames_;  // a stack, lowest frame on top
  std::vector<bool> frame_allocated_;

  mutable std::mutex mu_;  // the grant table and the ports
  std::vector<GrantEntry> grants_;
  std::vector<GrantRef> free_refs_;  // a stack, lowest ref on top
  size_t grants_in_use_ = 0;
  std::vector<std::unique_ptr<Port>> ports_;  // index = port number; port 0 is never allocated
};

class SimGrantTable;
class SimEventChannels;

class SimHypervisor {
 public:
  explicit SimHypervisor(DomId backend_domid = 0);
  SimHypervisor(const SimHypervisor&) = delete;
  SimHypervisor& operator=(const SimHypervisor&) = delete;
  ~SimHypervisor();

  // A guest with `pages` pages of zeroed memory. The domain lives as long as the hypervisor.
  Result<SimDomain*> CreateDomain(DomId domid, size_t pages,
                                  size_t grant_entries = SimDomain::kDefaultGrantEntries);
  SimDomain* FindDomain(DomId domid);

  DomId backend_domid() const { return backend_domid_; }
  // What the backend is given: grant table, event channels and counters, all acting as `backend_domid`.
  Hypervisor hypervisor();
  GrantTable& grants();
  EventChannels& events();
  HypervisorCounters& counters() { return counters_; }

 private:
  friend class SimDomain;
  friend class SimGrantTable;
  friend class SimEventChannels;
  friend class SimBoundChannel;

  const DomId backend_domid_;
  HypervisorCounters counters_;
  std::mutex mu_;                                        // creation of domains
  std::map<DomId, std::unique_ptr<SimDomain>> domains_;  // owners; guarded by mu_
  // Lookup without a lock: a domain, once published here, lives as long as the hypervisor.
  std::unique_ptr<std::atomic<SimDomain*>[]> by_id_;
  std::atomic<EvtchnPort> next_backend_port_{1};
  std::unique_ptr<SimGrantTable> grant_table_;
  std::unique_ptr<SimEventChannels> event_channels_;
};

}  // namespace blk
