// WatchEventQueue: coalescing and overflow collapse.
#include "xenstore/watch_queue.h"

#include <algorithm>
#include <utility>

namespace blk {

bool PathCovers(std::string_view root, std::string_view path) {
  if (!path.starts_with(root)) return false;
  if (path.size() == root.size()) return true;
  return root.ends_with('/') || path[root.size()] == '/';
}

std::string WatchEventQueue::Key(std::string_view token, std::string_view path) {
  std::string key(token);
  key.push_back('\0');  // cannot occur in a token or path delivered by xenstore
  key.append(path);
  return key;
}

bool WatchEventQueue::AddWatch(std::string_view path, std::string_view token) {
  auto& paths = watches_[std::string(token)];
  if (std::find(paths.begin(), paths.end(), path) != paths.end()) return false;
  paths.emplace_back(path);
  return true;
}

void WatchEventQueue::RemoveWatch(std::string_view path, std::string_view token) {
  auto it = watches_.find(std::string(token));
  if (it == watches_.end()) return;
  std::erase(it->second, path);
  if (it->second.empty()) watches_.erase(it);
}

bool WatchEventQueue::CoveredByRescan(std::string_view path, std::string_view token) const {
  auto it = rescans_.find(std::string(token));
  if (it == rescans_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(),
                     [&](const std::string& root) { return PathCovers(root, path); });
}

void WatchEventQueue::Append(WatchEvent event) {
  if (event.rescan) {
    rescans_[event.token].push_back(event.path);
  } else {
    pending_keys_.insert(Key(event.token, event.path));
  }
  events_.push_back(std::move(event));
  stats_.high_water = std::max(stats_.high_water, events_.size());
}

void WatchEventQueue::Push(std::string_view path, std::string_view token) {
  ++stats_.pushed;
  if (CoveredByRescan(path, token) || pending_keys_.contains(Key(token, path))) {
    ++stats_.coalesced;
    return;
  }
  if (events_.size() >= capacity_) {
    CollapseIntoRescans();
    if (CoveredByRescan(path, token)) {
      ++stats_.coalesced;
      return;
    }
    if (!watches_.contains(std::string(token))) {
      ++stats_.dropped_unwatched;
      return;
    }
    // A watch registered after the collapse, or more watches than capacity: keep the event regardless, the
    // queue stays bounded by the number of registered watches.
  }
  Append(WatchEvent{std::string(path), std::string(token), false});
}

void WatchEventQueue::CollapseIntoRescans() {
  ++stats_.overflows;
  std::deque<WatchEvent> old = std::move(events_);
  events_.clear();
  pending_keys_.clear();
  rescans_.clear();
  std::unordered_set<std::string> tokens_done;
  for (WatchEvent& event : old) {
    auto it = watches_.find(event.token);
    if (it == watches_.end()) {
      ++stats_.dropped_unwatched;
      continue;
    }
    if (!tokens_done.insert(event.token).second) {
      ++stats_.coalesced;
      continue;
    }
    for (const std::string& root : it->second) Append(WatchEvent{root, event.token, true});
  }
}

size_t WatchEventQueue::Pop(std::vector<WatchEvent>* out, size_t max) {
  size_t popped = 0;
  while (popped < max && !events_.empty()) {
    WatchEvent event = std::move(events_.front());
    events_.pop_front();
    if (event.rescan) {
      auto it = rescans_.find(event.token);
      if (it != rescans_.end()) {
        std::erase(it->second, event.path);
        if (it->second.empty()) rescans_.erase(it);
      }
    } else {
      pending_keys_.erase(Key(event.token, event.path));
    }
    out->push_back(std::move(event));
    ++popped;
  }
  return popped;
}

}  // namespace blk
