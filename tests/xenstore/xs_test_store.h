// XsTestStore: the data model of the test xenstore server: a tree of nodes with permissions, transactions
// with conflict detection, and watches. No sockets here; XsTestServer feeds it decoded requests.
//
// Semantics follow xenstored where tests depend on them: writes create missing parents (inheriting the
// nearest existing ancestor's permissions, owned by the writer when it is not dom0); rm of a missing node
// succeeds if its parent exists; a transaction works on a snapshot and fails with EAGAIN at commit if any
// node it read or wrote (or whose children it listed) changed since it began; a watch fires once at
// registration, then for the node and everything below it; rm fires the removed node's watchers and those of
// every removed descendant. Relative paths are relative to /local/domain/<caller domid>/.
//
// Not thread-safe: owned by the server thread. Operations return 0 or a positive errno.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "xenstore/xenstore.h"

namespace blk {

struct XsCaller {
  uint64_t connection = 0;
  uint32_t domid = 0;
};

// A watch event to deliver on `connection`.
struct XsOutgoingEvent {
  uint64_t connection;
  std::string path;
  std::string token;
};
using XsEvents = std::vector<XsOutgoingEvent>;

class XsTestStore {
 public:
  static constexpr size_t kMaxTransactionsPerConnection = 64;
  static constexpr size_t kMaxWatchesPerConnection = 4096;

  XsTestStore();

  int Read(const XsCaller& caller, uint32_t tx, std::string_view path, std::string* value);
  int Write(const XsCaller& caller, uint32_t tx, std::string_view path, std::string_view value,
            XsEvents* events);
  int Mkdir(const XsCaller& caller, uint32_t tx, std::string_view path, XsEvents* events);
  int Remove(const XsCaller& caller, uint32_t tx, std::string_view path, XsEvents* events);
  // `generation` changes whenever the node's children change (XS_DIRECTORY_PART needs one).
  int Directory(const XsCaller& caller, uint32_t tx, std::string_view path,
                std::vector<std::string>* children, uint64_t* generation);
  int GetPermissions(const XsCaller& caller, uint32_t tx, std::string_view path,
                     std::vector<XsPermission>* permissions);
  int SetPermissions(const XsCaller& caller, uint32_t tx, std::string_view path,
                     const std::vector<XsPermission>& permissions, XsEvents* events);
  int StartTransaction(const XsCaller& caller, uint32_t* tx);
  int EndTransaction(const XsCaller& caller, uint32_t tx, bool commit, XsEvents* events);
  int AddWatch(const XsCaller& caller, std::string_view path, std::string_view token, XsEvents* events);
  int RemoveWatch(const XsCaller& caller, std::string_view path, std::string_view token);
  // Forgets the connection's watches and transactions.
  void DropConnection(uint64_t connection);

  size_t node_count() const { return tree_.size(); }

 private:
  struct Node {
    std::string value;
    std::vector<XsPermission> permissions;
    uint64_t generation = 0;
  };
  using Tree = std::map<std::string, Node, std::less<>>;
  struct Change {
    std::string path;
    std::vector<XsPermission> permissions;
    bool exact_only;  // fires watches on exactly this path (a removed descendant), not on its ancestors
  };
  enum class OpKind { kWrite, kMkdir, kRemove, kSetPermissions };
  struct Op {
    OpKind kind;
    uint32_t domid;
    std::string path;
    std::string value;
    std::vector<XsPermission> permissions;
  };
  struct Transaction {
    uint64_t connection;
    Tree tree;
    std::map<std::string, uint64_t> start_generations;  // 0: the node did not exist
    std::vector<Op> log;
  };
  struct WatchRegistration {
    uint64_t connection;
    uint32_t domid;
    std::string given_path;
    std::string path;  // absolute
    std::string token;
  };
  // Where an operation applies: the live tree, or a transaction's snapshot.
  struct Target {
    Tree* tree;
    Transaction* tx;
    std::vector<Change>* changes;
  };

  int Resolve(const XsCaller& caller, uint32_t tx, Target* target, std::vector<Change>* changes);
  // The node at `path` if `caller` may read it (as Read and GetPermissions need), else the errno.
  int FindReadable(const XsCaller& caller, uint32_t tx, std::string_view path, const Node** found);
  void Touch(Target& target, const std::string& path);
  uint64_t NextGeneration() { return ++generation_; }
  int ApplyWrite(Target& target, uint32_t domid, const std::string& path, std::string_view value, bool mkdir);
  int ApplyRemove(Target& target, uint32_t domid, const std::string& path);
  int ApplySetPermissions(Target& target, uint32_t domid, const std::string& path,
                          const std::vector<XsPermission>& permissions);
  int ApplyOp(Target& target, const Op& op);
  void Fire(const std::vector<Change>& changes, XsEvents* events) const;
  int RunMutation(const XsCaller& caller, uint32_t tx, std::string_view path, Op op, XsEvents* events);

  Tree tree_;
  uint64_t generation_ = 0;
  uint32_t next_transaction_ = 1;
  std::map<uint32_t, Transaction> transactions_;
  std::vector<WatchRegistration> watches_;
};

// Canonical absolute form of a client's path, or empty if invalid (EINVAL). `allow_special` admits "@..."
// names.
std::string CanonicalXsPath(std::string_view path, uint32_t domid, bool allow_special);

}  // namespace blk
