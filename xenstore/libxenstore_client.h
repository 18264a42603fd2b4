// LibXenStoreClient: the XenStore seam on Xen's libxenstore (the daemon's socket, or /dev/xen/xenbus).
//
// Watch events are drained from libxenstore into a bounded WatchEventQueue on every ReadWatchEvents call;
// fd() is an epoll fd that is readable while libxenstore holds events or our queue does. The daemon must
// therefore call ReadWatchEvents whenever fd() is readable, which also keeps libxenstore's own (unbounded)
// list short.
//
// Threading: one thread at a time uses the object; libxenstore runs its own reader thread once a watch
// exists.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"
#include "base/unique_fd.h"
#include "xenstore/watch_queue.h"
#include "xenstore/xenstore.h"

struct xs_handle;

namespace blk {

class LibXenStoreClient final : public XenStore {
 public:
  struct Options {
    // Empty: libxenstore's default (XENSTORED_PATH, then the standard socket, then /dev/xen/xenbus).
    // Otherwise the daemon socket to use; set through XENSTORED_PATH around xs_open, so meant for tests and
    // tools, not for processes where other threads call getenv/setenv concurrently.
    std::string socket_path;
    size_t watch_queue_capacity = WatchEventQueue::kDefaultCapacity;
  };

  static Result<std::unique_ptr<LibXenStoreClient>> Open(const Options& options);
  static Result<std::unique_ptr<LibXenStoreClient>> Open() { return Open(Options{}); }
  ~LibXenStoreClient() override;

  Status Watch(std::string_view path, std::string_view token) override;
  Status Unwatch(std::string_view path, std::string_view token) override;
  int fd() const override { return epoll_.get(); }
  Result<size_t> ReadWatchEvents(std::vector<WatchEvent>* out, size_t max) override;

  // Sends an XS_CONTROL command (what xenstore-control does) with one argument; returns the daemon's answer.
  Result<std::string> Control(std::string_view command, std::string_view argument);
  const WatchEventQueue::Stats& watch_stats() const { return queue_.stats(); }
  size_t pending_watch_events() const { return queue_.size(); }

 protected:
  Result<std::string> DoRead(TransactionId t, std::string_view path) override;
  Status DoWrite(TransactionId t, std::string_view path, std::string_view value) override;
  Status DoMkdir(TransactionId t, std::string_view path) override;
  Status DoRemove(TransactionId t, std::string_view path) override;
  Result<std::vector<std::string>> DoDirectory(TransactionId t, std::string_view path) override;
  Result<std::vector<XsPermission>> DoGetPermissions(TransactionId t, std::string_view path) override;
  Status DoSetPermissions(TransactionId t, std::string_view path,
                          std::span<const XsPermission> permissions) override;
  Result<TransactionId> DoTransactionStart() override;
  Status DoTransactionEnd(TransactionId t, bool commit) override;

 private:
  struct HandleCloser {
    void operator()(xs_handle* handle) const;
  };

  LibXenStoreClient(std::unique_ptr<xs_handle, HandleCloser> handle, UniqueFd epoll, UniqueFd queue_ready,
                    size_t capacity);
  Status DrainLibraryEvents();
  Status UpdateQueueReady();

  std::unique_ptr<xs_handle, HandleCloser> handle_;
  UniqueFd epoll_;        // watches libxenstore's watch pipe and queue_ready_
  UniqueFd queue_ready_;  // an eventfd, readable while queue_ is not empty
  bool queue_ready_set_ = false;
  WatchEventQueue queue_;
};

}  // namespace blk
