// The seam between the backend and Xen: grant mapping, grant copy and event channels.
//
// Two implementations stand behind these interfaces: the real one on libxengnttab/libxenevtchn, and the
// simulated hypervisor in ring/sim/ (guest memory in a memfd, grant map = a real shared mapping, grant copy =
// memcpy, event channels = eventfds). Everything the backend asks of Xen goes through here, so a test can
// also put a fault-injecting double in between.
//
// Threading: a GrantTable may be used from several threads at once (each worker maps and copies for its own
// rings). An EventChannel belongs to the thread that serves its ring, except Notify(), which any thread may
// call.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>

#include "base/status.h"

namespace blk {

using DomId = uint16_t;
using GrantRef = uint32_t;
using EvtchnPort = uint32_t;

// What a real hypervisor would have been asked for; a benchmark divides these by the I/Os it made.
struct HypervisorCounters {
  std::atomic<uint64_t> map_calls{0};
  std::atomic<uint64_t> pages_mapped{0};
  std::atomic<uint64_t> unmap_calls{0};
  std::atomic<uint64_t> copy_calls{0};
  std::atomic<uint64_t> copy_segments{0};
  std::atomic<uint64_t> backend_notifications{0};   // backend -> frontend
  std::atomic<uint64_t> frontend_notifications{0};  // frontend -> backend
};

class GrantUnmapper {
 public:
  virtual void Unmap(void* addr, size_t pages) = 0;

 protected:
  ~GrantUnmapper() = default;
};

// Grant refs mapped into this process as one contiguous range; unmapped when destroyed.
class GrantMapping {
 public:
  GrantMapping() = default;
  GrantMapping(GrantUnmapper* owner, void* addr, size_t pages) : owner_(owner), addr_(addr), pages_(pages) {}
  GrantMapping(GrantMapping&& other) noexcept
      : owner_(std::exchange(other.owner_, nullptr)),
        addr_(std::exchange(other.addr_, nullptr)),
        pages_(std::exchange(other.pages_, 0)) {}
  GrantMapping& operator=(GrantMapping&& other) noexcept {
    if (this != &other) {
      Reset();
      owner_ = std::exchange(other.owner_, nullptr);
      addr_ = std::exchange(other.addr_, nullptr);
      pages_ = std::exchange(other.pages_, 0);
    }
    return *this;
  }
  GrantMapping(const GrantMapping&) = delete;
  GrantMapping& operator=(const GrantMapping&) = delete;
  ~GrantMapping() { Reset(); }

  void* addr() const { return addr_; }
  size_t pages() const { return pages_; }
  bool valid() const { return addr_ != nullptr; }
  void Reset() {
    if (owner_ != nullptr && addr_ != nullptr) owner_->Unmap(addr_, pages_);
    owner_ = nullptr;
    addr_ = nullptr;
    pages_ = 0;
  }

 private:
  GrantUnmapper* owner_ = nullptr;
  void* addr_ = nullptr;
  size_t pages_ = 0;
};

// One piece of a batched grant copy between a guest's granted page and local memory.
struct GrantCopySegment {
  enum class Direction : uint8_t { kFromGuest, kToGuest };
  Direction direction;
  DomId domid;
  GrantRef ref;
  uint16_t offset;  // within the granted page; offset + length <= kPageSize
  uint16_t length;
  void* local;
  int16_t status;  // GNTST_* after Copy()
};

class GrantTable {
 public:
  virtual ~GrantTable() = default;
  // Maps `refs` granted by `domid` as one contiguous range, writable unless `writable` is false.
  // Fails as a whole if any ref is bad (nothing stays mapped).
  virtual Result<GrantMapping> Map(DomId domid, std::span<const GrantRef> refs, bool writable) = 0;
  // Issues all segments as one batch. Each segment gets its own GNTST_* status; the Status returned is not ok
  // only when the batch itself could not be issued (then no segment was copied).
  virtual Status Copy(std::span<GrantCopySegment> segments) = 0;
};

// One bound inter-domain event channel.
class EventChannel {
 public:
  virtual ~EventChannel() = default;
  // Readable (poll/epoll) while an event is pending.
  virtual int fd() const = 0;
  virtual EvtchnPort local_port() const = 0;
  virtual Status Notify() = 0;
  // Consumes the pending event and unmasks the port. Call when fd() polls readable, before looking at the
  // ring, so that a kick arriving after the look is not lost.
  virtual Status Acknowledge() = 0;
};

class EventChannels {
 public:
  virtual ~EventChannels() = default;
  // Binds to the unbound port `remote_port` that domain `remote` allocated for us.
  virtual Result<std::unique_ptr<EventChannel>> BindInterdomain(DomId remote, EvtchnPort remote_port) = 0;
};

// Everything the backend needs of a hypervisor, and what it was asked for.
struct Hypervisor {
  GrantTable& grants;
  EventChannels& events;
  HypervisorCounters& counters;
};

}  // namespace blk
