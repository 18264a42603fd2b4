// PersistentGrantCache: an open-addressing index over preallocated entries, and an LRU list that holds only
// the entries no request is using, so that the oldest one is always the one to evict.
#include "ring/persistent_grants.h"

#include <bit>
#include <span>

#include "base/format.h"

namespace blk {

PersistentGrantCache::PersistentGrantCache(GrantTable& grants, DomId domid, size_t capacity)
    : grants_(grants), domid_(domid), entries_(capacity == 0 ? 1 : capacity) {
  free_.reserve(entries_.size());
  for (size_t i = entries_.size(); i > 0; --i) free_.push_back(static_cast<uint32_t>(i - 1));
  // At most half full, so probes stay short.
  index_.assign(std::bit_ceil(entries_.size() * 2), kNone);
}

PersistentGrantCache::~PersistentGrantCache() = default;

uint32_t PersistentGrantCache::Find(GrantRef ref) const {
  for (size_t slot = Slot(ref);; slot = (slot + 1) & (index_.size() - 1)) {
    uint32_t entry = index_[slot];
    if (entry == kNone) return kNone;
    if (entries_[entry].ref == ref) return entry;
  }
}

void PersistentGrantCache::IndexInsert(GrantRef ref, uint32_t entry) {
  size_t slot = Slot(ref);
  while (index_[slot] != kNone) slot = (slot + 1) & (index_.size() - 1);
  index_[slot] = entry;
}

void PersistentGrantCache::IndexErase(GrantRef ref) {
  const size_t mask = index_.size() - 1;
  size_t hole = Slot(ref);
  while (entries_[index_[hole]].ref != ref) hole = (hole + 1) & mask;
  // Backward shift: move later members of the probe run into the hole, so that lookups never stop early.
  for (size_t next = (hole + 1) & mask; index_[next] != kNone; next = (next + 1) & mask) {
    size_t home = Slot(entries_[index_[next]].ref);
    bool movable = hole <= next ? (home <= hole || home > next) : (home <= hole && home > next);
    if (movable) {
      index_[hole] = index_[next];
      hole = next;
    }
  }
  index_[hole] = kNone;
}

void PersistentGrantCache::Unlink(uint32_t entry) {
  Entry& e = entries_[entry];
  if (e.newer != kNone)
    entries_[e.newer].older = e.older;
  else
    newest_ = e.older;
  if (e.older != kNone)
    entries_[e.older].newer = e.newer;
  else
    oldest_ = e.newer;
  e.newer = e.older = kNone;
}

void PersistentGrantCache::PushNewest(uint32_t entry) {
  Entry& e = entries_[entry];
  e.older = newest_;
  e.newer = kNone;
  if (newest_ != kNone)
    entries_[newest_].newer = entry;
  else
    oldest_ = entry;
  newest_ = entry;
}

void PersistentGrantCache::Drop(uint32_t entry) {
  Unlink(entry);
  IndexErase(entries_[entry].ref);
  entries_[entry].mapping.Reset();
  free_.push_back(entry);
  --size_;
}

Result<uint8_t*> PersistentGrantCache::Acquire(GrantRef ref) {
  uint32_t entry = Find(ref);
  if (entry != kNone) {
    Entry& e = entries_[entry];
    if (e.users > 0)
      return Status::InvalidArgument(StrFormat("grant %u is already in use by another request", ref));
    Unlink(entry);  // in use: out of the eviction order
    e.users = 1;
    e.last_sweep = sweeps_;
    ++stats_.hits;
    return static_cast<uint8_t*>(e.mapping.addr());
  }
  if (free_.empty()) {
    if (oldest_ == kNone) {
      ++stats_.full;
      return Status::Busy("every persistent grant is in use");
    }
    Drop(oldest_);
    ++stats_.evictions;
  }
  GrantRef refs[1] = {ref};
  Result<GrantMapping> mapping = grants_.Map(domid_, refs, /*writable=*/true);
  if (!mapping.ok()) return mapping.status();
  entry = free_.back();
  free_.pop_back();
  Entry& e = entries_[entry];
  e.ref = ref;
  e.mapping = std::move(mapping).value();
  e.users = 1;
  e.last_sweep = sweeps_;
  IndexInsert(ref, entry);
  ++size_;
  ++stats_.maps;
  return static_cast<uint8_t*>(e.mapping.addr());
}

void PersistentGrantCache::Release(GrantRef ref) {
  uint32_t entry = Find(ref);
  if (entry == kNone || entries_[entry].users == 0) return;
  if (--entries_[entry].users == 0) {
    entries_[entry].last_sweep = sweeps_;  // so the list, ordered by release, is ordered by last use too
    PushNewest(entry);
  }
}

size_t PersistentGrantCache::Sweep(unsigned idle_sweeps) {
  ++sweeps_;
  size_t unmapped = 0;
  // The list runs from the least recently released; stop at the first one used recently enough.
  while (oldest_ != kNone && sweeps_ - entries_[oldest_].last_sweep > idle_sweeps) {
    Drop(oldest_);
    ++unmapped;
  }
  stats_.idle_unmaps += unmapped;
  return unmapped;
}

}  // namespace blk
