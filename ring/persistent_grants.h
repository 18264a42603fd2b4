// PersistentGrantCache: the grants a frontend reuses (feature-persistent), each mapped once and then kept, so
// that steady-state I/O needs no map, unmap or copy hypercall at all.
//
// The cache is bounded. When it is full, the least recently used grant that no request is using is unmapped
// to make room; when every cached grant is in use, Acquire says kBusy and the caller moves that segment by
// grant copy instead, so a frontend that cycles through more distinct grants than the bound is served
// correctly with bounded memory. Sweep() unmaps grants left unused for a while. A grant that an in-flight
// request already uses is refused a second time: two requests writing one page at once is a frontend bug,
// and serving it would let one request's data land in the other's.
//
// Nothing allocates after construction: entries, the hash index and the LRU links are sized to the capacity.
// Threading: owned by the worker that serves the ring.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/status.h"
#include "ring/hypervisor.h"

namespace blk {

struct PersistentGrantStats {
  uint64_t hits = 0;         // Acquire found the grant mapped
  uint64_t maps = 0;         // Acquire mapped it
  uint64_t evictions = 0;    // unmapped to make room
  uint64_t idle_unmaps = 0;  // unmapped by Sweep
  uint64_t full = 0;         // Acquire refused: every cached grant in use
};

class PersistentGrantCache {
 public:
  // Linux's blkback keeps up to 1056 per ring (32 requests of 11 segments, times 3).
  static constexpr size_t kDefaultCapacity = 1056;

  PersistentGrantCache(GrantTable& grants, DomId domid, size_t capacity = kDefaultCapacity);
  ~PersistentGrantCache();
  PersistentGrantCache(const PersistentGrantCache&) = delete;
  PersistentGrantCache& operator=(const PersistentGrantCache&) = delete;

  // The page of `ref`, mapped writable, marked in use until Release. kBusy: the cache is full of grants in
  // use (copy this segment instead). kInvalidArgument: `ref` is in use already. Otherwise the map's error.
  Result<uint8_t*> Acquire(GrantRef ref);
  void Release(GrantRef ref);
  // Unmaps every grant not acquired during the last `idle_sweeps` calls of Sweep. Returns how many.
  size_t Sweep(unsigned idle_sweeps);

  size_t size() const { return size_; }
  size_t capacity() const { return entries_.size(); }
  const PersistentGrantStats& stats() const { return stats_; }

 private:
  static constexpr uint32_t kNone = ~0u;
  struct Entry {
    GrantRef ref = 0;
    GrantMapping mapping;
    uint32_t users = 0;
    uint64_t last_sweep = 0;  // the sweep count when it was last acquired
    uint32_t newer = kNone;   // LRU links: towards the most recently used
    uint32_t older = kNone;
  };

  uint32_t Find(GrantRef ref) const;
  void IndexInsert(GrantRef ref, uint32_t entry);
  void IndexErase(GrantRef ref);
  void Unlink(uint32_t entry);
  void PushNewest(uint32_t entry);
  void Drop(uint32_t entry);
  size_t Slot(GrantRef ref) const { return (ref * 0x9E3779B1u) & (index_.size() - 1); }

  GrantTable& grants_;
  DomId domid_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> free_;   // unused entries, a stack
  std::vector<uint32_t> index_;  // open addressing: entry numbers, kNone where empty
  uint32_t newest_ = kNone;
  uint32_t oldest_ = kNone;
  size_t size_ = 0;
  uint64_t sweeps_ = 0;
  PersistentGrantStats stats_;
};

}  // namespace blk
