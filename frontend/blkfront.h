// A userspace blkfront: the guest's half of a blkif ring, driving the simulated hypervisor the way Linux's
// xen-blkfront drives Xen, with its multi-page rings, indirect descriptors and persistent grants.
//
// It owns a guest domain: the shared ring in granted pages, an unbound event channel for the backend, and
// the data pages of requests: the I/O buffer's own pages when it lies in guest memory (AllocateGuestBuffer),
// or guest pages the data is copied through, each granted afresh per request (read-only to the backend for
// writes, writable for reads) and ended again when the response arrives; with persistent grants, a pool of
// pages granted once that the data is copied through (or the I/O's own buffer, when it lies in a granted
// buffer). Beyond Linux, it can
// poll its ring for responses instead of sleeping (BlkfrontConfig::poll_us). It publishes what blkfront
// writes to xenstore; the test or benchmark hands that to the backend. A backend that breaks the protocol (a
// response id that is not ours, a response count beyond the ring, a grant still mapped when its response
// arrives) breaks the frontend, as it does Linux's: every later call fails with the Status that explains why.
//
// Hostile mode lets a test act as a malicious guest: place arbitrary bytes as a request, read its response by
// id, write the shared indices directly.
//
// Threading: a Blkfront belongs to one thread (the guest's). The backend works concurrently in other threads;
// the two share only the ring and the granted pages, ordered with the barriers of <xen/io/ring.h>.
// Hot path: Queue, Push, Reap and Wait allocate nothing; all per-request and per-I/O state is made at Create.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "ring/blkif_abi.h"
#include "ring/hypervisor.h"
#include "ring/request.h"
#include "ring/sim/sim_hypervisor.h"

namespace blk {

struct BlkfrontConfig {
  DomId domid = 1;
  // Whom the ring, the data pages and the event channel are for. Normally the hypervisor's backend_domid();
  // anything else makes a (deliberately) misconfigured guest whose grants the backend may not use.
  DomId backend_domid = 0;
  Abi abi = kNativeAbi;
  uint32_t ring_pages = 1;  // 1, 2, 4, 8 or 16 (ring-page-order 0..4)
  // Where the ring's indices start: req_prod = rsp_prod = start_index and, as SHARED_RING_INIT sets them one
  // past the producers, req_event = rsp_event = start_index + 1. Tests start near 2^32 to exercise
  // wrap-around; the backend must attach with BACK_RING_ATTACH semantics (private indices from rsp_prod).
  uint32_t start_index = 0;
  uint32_t max_outstanding = 64;  // I/Os queued or in flight at once
  uint16_t handle = 0;        // the `handle` of every request (blkfront puts its virtual-device number there)
  uint32_t spare_pages = 16;  // guest pages left free for a test to grant by hand
  // Segments per READ/WRITE request with indirect descriptors (what the backend's
  // feature-max-indirect-segments allows); 0 or up to 11: direct requests only. A request needing more than
  // 11 segments then goes as BLKIF_OP_INDIRECT, its descriptors in indirect pages granted read-only.
  uint32_t indirect_segments = 0;
  // Persistent grants, as Linux blkfront does them: data pages come from a pool granted (writable) once and
  // reused, the I/O's data memcpy'd into and out of them; feature-persistent = 1 is published. Only right
  // when the backend negotiated feature-persistent (it must not expect the grants to end at a response).
  bool persistent = false;
  // Wait spins on the ring this long for a response before it sleeps on the event channel (0: never), like a
  // guest whose block layer polls its queue instead of taking the interrupt. While it spins, rsp_event is
  // left behind, so the backend publishes responses without notifying; it is re-armed before sleeping.
  uint32_t poll_us = 0;
};

enum class IoOp : uint8_t {
  kRead = BLKIF_OP_READ,
  kWrite = BLKIF_OP_WRITE,
  kWriteBarrier = BLKIF_OP_WRITE_BARRIER,
  kFlushDiskCache = BLKIF_OP_FLUSH_DISKCACHE,
  kDiscard = BLKIF_OP_DISCARD,  // `length` bytes from `sector`, no buffer; one request
};

struct Io {
  IoOp op = IoOp::kRead;
  uint64_t sector = 0;  // 512-byte units
  size_t length = 0;    // bytes, a multiple of 512; 0 only for a flush or barrier without data
  // 512-byte aligned. Its offset within a 4 KiB page is kept on the ring (a buffer starting mid-page yields a
  // first segment with first_sect > 0), as blkfront keeps the offsets of a bio's pages. Must stay valid until
  // the I/O completes. A flush or barrier with data writes it (preflush), in one request of at most 11 pages.
  void* buffer = nullptr;
  uint64_t tag = 0;  // returned with the completion
};

struct IoCompletion {
  uint64_t tag;
  int16_t status;  // the worst BLKIF_RSP_* of the I/O's requests (ERROR over EOPNOTSUPP over OKAY)
};

// A response to a request placed with PlaceRaw, kept until taken.
struct RawResponse {
  uint64_t id;
  uint8_t operation;
  int16_t status;
};

struct BlkfrontStats {
  uint64_t ios_queued = 0;
  uint64_t requests_pushed = 0;
  uint64_t publishes = 0;      // req_prod updates
  uint64_t notifications = 0;  // publishes that had to notify (req_event said so)
  uint64_t responses = 0;
  uint64_t ring_full = 0;  // times a queued request waited for a free slot
};

class Blkfront {
 public:
  // Creates the guest domain, sized for one full ring of 11-page requests plus spare_pages, then the ring and
  // the event channel. An existing domain is reused (a reconnect, or a guest's second disk: create the domain
  // beforehand with enough pages for all its disks; a request waits in the queue while pages run short).
  static Result<std::unique_ptr<Blkfront>> Create(SimHypervisor& hypervisor, const BlkfrontConfig& config);
  Blkfront(const Blkfront&) = delete;
  Blkfront& operator=(const Blkfront&) = delete;
  ~Blkfront();

  // What blkfront publishes in xenstore.
  std::span<const GrantRef> ring_refs() const { return ring_refs_; }
  EvtchnPort event_channel() const { return port_; }
  const char* protocol() const { return AbiName(config_.abi); }
  uint32_t ring_page_order() const;
  // The keys and values blkfront writes to its xenstore directory: "ring-ref" (or "ring-page-order" and
  // "ring-refN"), "event-channel", "protocol", "feature-persistent".
  std::vector<std::pair<std::string, std::string>> XenstoreEntries() const;

  const BlkfrontConfig& config() const { return config_; }
  uint32_t ring_slots() const { return slots_; }
  SimDomain& domain() const { return domain_; }

  // Accepts an I/O (kBusy when max_outstanding I/Os are already queued or in flight); nothing reaches the
  // ring before Push.
  Status Queue(const Io& io);
  // Puts as many queued requests on the ring as fit, publishes them and notifies the backend if req_event
  // asks.
  Status Push();
  Status Submit(const Io& io);  // Queue + Push

  // Consumes the responses on the ring, then pushes requests that were waiting for a free slot. Writes the
  // I/Os that completed into `out` (those that do not fit stay for the next call); returns how many.
  Result<size_t> Reap(std::span<IoCompletion> out);
  // Reaps, and if nothing completed, sleeps on fd() until something does or `timeout` passes (then returns
  // 0).
  Result<size_t> Wait(std::span<IoCompletion> out, std::chrono::milliseconds timeout);
  // Readable while the backend has notified us.
  int fd() const;

  size_t outstanding() const { return io_count_; }  // I/Os queued, in flight, or completed but not reaped
  const BlkfrontStats& stats() const { return stats_; }
  // Persistent grants only: pages granted so far (each stays granted until the frontend goes).
  size_t persistent_pages() const { return persistent_pages_; }
  // `bytes` (rounded up to pages) of guest memory, contiguous, for I/O buffers: a real guest's buffers are
  // its own pages. Without persistent grants each request grants the buffer pages it covers (read-only for a
  // write) and ends those grants at its response, with no copy in the guest, as Linux's blkfront grants a
  // bio's pages. With persistent grants the data is copied through the persistent pool, as Linux copies it.
  // Other buffers (outside guest memory) are always copied through data pages of the guest.
  Result<uint8_t*> AllocateGuestBuffer(size_t bytes);
  // Persistent grants only: guest memory as above, granted to the backend once and kept until the frontend
  // goes. An I/O whose buffer lies in it needs no copy in the guest: its pages go on the ring as they are (a
  // guest whose I/O buffers are its granted pages, as a driver with a fixed buffer pool keeps them).
  Result<uint8_t*> AllocateGrantedBuffer(size_t bytes);
  // Ok while healthy; otherwise why the backend broke the frontend.
  const Status& broken() const { return broken_; }

  // --- Hostile mode ---
  // Places `entry` (at most one ring slot of bytes, in whatever ABI layout the test wants) in the next slot
  // without publishing; the rest of the slot is zeroed. Its response is kept for TakeRawResponse, matched by
  // the id read at the ABI's id offset (when `entry` is long enough to hold one).
  Status PlaceRaw(std::span<const uint8_t> entry);
  std::optional<RawResponse> TakeRawResponse(uint64_t id);
  // The shared ring: write any index here (e.g. req_prod far ahead), then NotifyBackend.
  abi::SharedRingHeader& shared_ring() const { return *ring_header_; }
  uint8_t* RingEntry(uint32_t index) const;
  uint32_t req_prod_pvt() const { return req_prod_pvt_; }
  uint32_t rsp_cons() const { return rsp_cons_; }
  Status NotifyBackend();

 private:
  struct Shadow;
  struct IoState;
  Blkfront(SimDomain& domain, const BlkfrontConfig& config);
  Status Init();

  bool BuildRequest(IoState& io, uint32_t io_index);
  // A data page granted to the backend: from the persistent pool (granting a new one if it is empty), or a
  // fresh page and grant. False if guest resources ran out.
  bool TakeDataPage(bool readonly, uint32_t* frame, GrantRef* ref);
  // Where a request's data page comes from.
  enum class PageKind : uint8_t {
    kPool,           // a data page of the guest's (fresh, or the persistent pool's), the data copied
    kBuffer,         // the I/O buffer's own page, granted for this request only
    kGrantedBuffer,  // the I/O buffer's own page, granted once (AllocateGrantedBuffer)
  };
  // What a request whose data lies at `address` puts on the ring; for a buffer page, its frame and (when
  // granted once) its grant.
  PageKind BufferPage(const uint8_t* address, uint32_t* frame, GrantRef* ref) const;
  Result<uint8_t*> AllocateBuffer(size_t bytes, bool granted);
  void PutDataPage(uint32_t frame, GrantRef ref);
  // Ends the grants of the first `count` data pages and of any indirect pages, and frees them.
  void ReleaseSegments(Shadow& shadow, uint32_t count);
  void ReleaseIndirectPages(Shadow& shadow);
  // Fills and grants the indirect pages describing `segments`; false if guest resources ran out.
  bool WriteIndirectPages(Shadow& shadow, std::span<const RequestSegment> segments);
  Status Publish();
  // Reap; `arm`: also re-arm rsp_event (RING_FINAL_CHECK_FOR_RESPONSES), as anyone about to sleep must.
  Result<size_t> Consume(std::span<IoCompletion> out, bool arm);
  Status ProcessResponse(const uint8_t* slot);
  Status CompleteRequest(uint32_t id, int16_t status);
  Status Break(Status why);

  SimDomain& domain_;
  const BlkfrontConfig config_;
  uint32_t slots_ = 0;
  uint32_t max_segments_ = kMaxDirectSegments;  // per READ/WRITE request
  std::vector<RequestSegment> segments_scratch_;
  struct PersistentPage {
    uint32_t frame;
    GrantRef ref;
  };
  std::vector<PersistentPage> persistent_pool_;  // a stack: the most recently used page goes out first
  size_t persistent_pages_ = 0;                  // granted so far (pool + in flight)
  // Per guest frame: 0 (no I/O buffer's), kGrantedPerRequest (a guest buffer's), or its granted buffer's
  // grant.
  static constexpr GrantRef kGrantedPerRequest = ~GrantRef{0};
  std::vector<GrantRef> buffer_grants_;
  std::vector<GrantRef> ring_refs_;
  std::vector<uint32_t> ring_frames_;
  abi::SharedRingHeader* ring_header_ = nullptr;
  uint8_t* ring_entries_ = nullptr;
  EvtchnPort port_ = 0;
  int event_fd_ = -1;
  uint32_t req_prod_pvt_ = 0;
  uint32_t rsp_cons_ = 0;

  std::vector<Shadow> shadows_;  // one per ring slot; a request's id is its shadow's index
  std::vector<uint32_t> free_shadows_;
  std::vector<IoState> ios_;
  std::vector<uint32_t> free_ios_;
  std::vector<uint32_t> pending_;  // FIFO of I/Os with requests still to put on the ring
  size_t pending_head_ = 0, pending_count_ = 0;
  std::vector<uint32_t> completed_;  // FIFO of I/Os done but not yet reaped
  size_t completed_head_ = 0, completed_count_ = 0;
  size_t io_count_ = 0;
  std::vector<uint64_t> raw_ids_;  // ids of raw requests still waiting for a response
  std::vector<RawResponse> raw_responses_;
  BlkfrontStats stats_;
  Status broken_;
};

}  // namespace blk
