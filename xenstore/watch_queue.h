// WatchEventQueue: the bounded, coalescing queue between a xenstore connection and its consumer (XSA-349).
//
// A guest can write its own nodes in a loop; every write fires our watches. The queue keeps at most one
// pending event per (token, path): a duplicate is dropped, since the consumer re-reads the node anyway and so
// sees the latest value. When distinct events still exceed the capacity, every pending event of a token is
// replaced by one `rescan` event per path that token watches, and further events under a pending rescan are
// absorbed by it. Memory is thus bounded by the capacity plus the number of registered watches, which the
// daemon controls.
//
// Not thread-safe: owned and used by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace blk {

struct WatchEvent {
  std::string path;
  std::string token;
  // Events were dropped for this token: re-read everything at and below `path`, not just `path`.
  bool rescan = false;
  bool operator==(const WatchEvent&) const = default;
};

// True if `path` is `root` or lies below it ("/a" covers "/a" and "/a/b", not "/ab").
bool PathCovers(std::string_view root, std::string_view path);

class WatchEventQueue {
 public:
  static constexpr size_t kDefaultCapacity = 1024;

  struct Stats {
    uint64_t pushed = 0;
    uint64_t coalesced = 0;          // duplicates of a pending event, or absorbed by a pending rescan
    uint64_t overflows = 0;          // times the queue collapsed into rescan events
    uint64_t dropped_unwatched = 0;  // events of tokens no longer registered, dropped on overflow
    size_t high_water = 0;
  };

  explicit WatchEventQueue(size_t capacity = kDefaultCapacity) : capacity_(capacity == 0 ? 1 : capacity) {}

  // The queue must know what each token watches to stand in for dropped events. False if already known.
  bool AddWatch(std::string_view path, std::string_view token);
  void RemoveWatch(std::string_view path, std::string_view token);

  void Push(std::string_view path, std::string_view token);
  // Moves up to `max` events, oldest first, to the end of `out`; returns how many.
  size_t Pop(std::vector<WatchEvent>* out, size_t max);

  size_t size() const { return events_.size(); }
  bool empty() const { return events_.empty(); }
  size_t capacity() const { return capacity_; }
  const Stats& stats() const { return stats_; }

 private:
  static std::string Key(std::string_view token, std::string_view path);
  bool CoveredByRescan(std::string_view path, std::string_view token) const;
  void Append(WatchEvent event);
  void CollapseIntoRescans();

  size_t capacity_;
  std::deque<WatchEvent> events_;
  std::unordered_set<std::string> pending_keys_;  // Key(token, path) of every pending non-rescan event
  std::unordered_map<std::string, std::vector<std::string>> rescans_;  // token -> paths with a pending rescan
  std::unordered_map<std::string, std::vector<std::string>> watches_;  // token -> watched paths
  Stats stats_;
};

}  // namespace blk
