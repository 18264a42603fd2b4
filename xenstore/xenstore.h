// XenStore: the seam between blkbackd and the xenstore daemon (libxenstore in production, anything in tests).
//
// Every operation returns a Status or Result naming the path it was about. Operations run either directly or
// inside a Transaction (an RAII object that aborts unless committed); RunTransaction retries a body when the
// daemon reports a conflict (EAGAIN). Watch events arrive on a pollable fd and are read without blocking
// through a bounded, coalescing queue (WatchEventQueue): a guest rewriting its nodes in a loop cannot grow
// our memory.
//
// Threading: one XenStore object is used by one thread at a time (the daemon's xenstore thread).
// Implementations may run internal threads but the interface makes no promise of concurrent use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "xenstore/watch_queue.h"

namespace blk {

using TransactionId = uint32_t;
inline constexpr TransactionId kNoTransaction = 0;

// Access bits of one permission entry, as in xs_permissions.
enum XsAccess : uint32_t { kXsNone = 0, kXsRead = 1, kXsWrite = 2, kXsReadWrite = 3 };

// One entry of a node's permission list. The first entry names the owner (who may always read and write) and,
// in `access`, what every domain not listed afterwards may do; later entries grant one domain `access`.
struct XsPermission {
  uint32_t domid = 0;
  uint32_t access = kXsNone;
  bool operator==(const XsPermission&) const = default;
};

class Transaction;

class XenStore {
 public:
  virtual ~XenStore() = default;

  Result<std::string> Read(std::string_view path) { return DoRead(kNoTransaction, path); }
  // Creates missing parents, as xenstore does.
  Status Write(std::string_view path, std::string_view value) { return DoWrite(kNoTransaction, path, value); }
  // Succeeds if the node already exists.
  Status Mkdir(std::string_view path) { return DoMkdir(kNoTransaction, path); }
  // Removes the node and everything under it.
  Status Remove(std::string_view path) { return DoRemove(kNoTransaction, path); }
  // The names (not paths) of the node's children.
  Result<std::vector<std::string>> Directory(std::string_view path) {
    return DoDirectory(kNoTransaction, path);
  }
  Result<std::vector<XsPermission>> GetPermissions(std::string_view path) {
    return DoGetPermissions(kNoTransaction, path);
  }
  Status SetPermissions(std::string_view path, std::span<const XsPermission> permissions) {
    return DoSetPermissions(kNoTransaction, path, permissions);
  }

  // Registers a watch on `path` and everything below it. The daemon fires once at registration (the initial
  // event) and then on every change; `token` comes back with each event so one fd can serve many watches.
  virtual Status Watch(std::string_view path, std::string_view token) = 0;
  // Events already queued for the watch may still be delivered afterwards; the caller ignores unknown tokens.
  virtual Status Unwatch(std::string_view path, std::string_view token) = 0;
  // Readable while watch events are pending. Level-triggered; valid for the lifetime of the object.
  virtual int fd() const = 0;
  // Appends up to `max` pending events to `out` without blocking and returns how many it appended. Duplicate
  // pending events are coalesced, so an event means "re-read this path (and below)", not "one write
  // happened".
  virtual Result<size_t> ReadWatchEvents(std::vector<WatchEvent>* out, size_t max) = 0;

 protected:
  friend class Transaction;
  virtual Result<std::string> DoRead(TransactionId t, std::string_view path) = 0;
  virtual Status DoWrite(TransactionId t, std::string_view path, std::string_view value) = 0;
  virtual Status DoMkdir(TransactionId t, std::string_view path) = 0;
  virtual Status DoRemove(TransactionId t, std::string_view path) = 0;
  virtual Result<std::vector<std::string>> DoDirectory(TransactionId t, std::string_view path) = 0;
  virtual Result<std::vector<XsPermission>> DoGetPermissions(TransactionId t, std::string_view path) = 0;
  virtual Status DoSetPermissions(TransactionId t, std::string_view path,
                                  std::span<const XsPermission> permissions) = 0;
  virtual Result<TransactionId> DoTransactionStart() = 0;
  // commit=false abandons. A conflict at commit is a retryable kBusy status with errno EAGAIN.
  virtual Status DoTransactionEnd(TransactionId t, bool commit) = 0;
};

// A xenstore transaction: reads see a consistent snapshot, writes become visible together at Commit. Aborts
// on destruction unless Commit or Abort ran. Movable, not copyable; must not outlive its XenStore.
class Transaction {
 public:
  static Result<Transaction> Begin(XenStore& store);
  Transaction(Transaction&& other) noexcept;
  Transaction& operator=(Transaction&& other) noexcept;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();

  Result<std::string> Read(std::string_view path) { return store_->DoRead(id_, path); }
  Status Write(std::string_view path, std::string_view value) { return store_->DoWrite(id_, path, value); }
  Status Mkdir(std::string_view path) { return store_->DoMkdir(id_, path); }
  Status Remove(std::string_view path) { return store_->DoRemove(id_, path); }
  Result<std::vector<std::string>> Directory(std::string_view path) { return store_->DoDirectory(id_, path); }
  Result<std::vector<XsPermission>> GetPermissions(std::string_view path) {
    return store_->DoGetPermissions(id_, path);
  }
  Status SetPermissions(std::string_view path, std::span<const XsPermission> permissions) {
    return store_->DoSetPermissions(id_, path, permissions);
  }

  // Ends the transaction either way; a conflict yields a retryable kBusy status with errno EAGAIN.
  Status Commit();
  Status Abort();
  TransactionId id() const { return id_; }
  bool active() const { return active_; }

 private:
  Transaction(XenStore* store, TransactionId id) : store_(store), id_(id), active_(true) {}

  XenStore* store_;
  TransactionId id_;
  bool active_;
};

// True for the status a conflicting transaction gets (at commit, or from an operation inside it).
bool IsTransactionConflict(const Status& status);

inline constexpr int kDefaultTransactionAttempts = 16;

// Runs `body` in a fresh transaction and commits it. On a conflict, starts over with a new transaction, at
// most `max_attempts` times in all; the last conflict is returned if every attempt conflicted. Any other
// failure of `body` aborts the transaction and is returned as is. `body` must therefore be safe to run more
// than once.
Status RunTransaction(XenStore& store, const std::function<Status(Transaction&)>& body,
                      int max_attempts = kDefaultTransactionAttempts);

}  // namespace blk
