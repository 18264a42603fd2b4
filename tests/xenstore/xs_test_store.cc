// XsTestStore: node tree, permission checks, transaction snapshots and watch fan-out.
#include "tests/xenstore/xs_test_store.h"

#include <xen/io/xs_wire.h>

#include <algorithm>
#include <cerrno>
#include <utility>

namespace blk {
namespace {

bool ValidPathCharacter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '/' ||
         c == '_' || c == '@';
}

std::string ParentOf(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == 0 ? std::string("/") : path.substr(0, slash);
}

uint32_t AccessFor(const std::vector<XsPermission>& permissions, uint32_t domid) {
  if (domid == 0) return kXsReadWrite;  // dom0 may do anything, as in xenstored
  if (permissions.empty()) return kXsNone;
  if (permissions[0].domid == domid) return kXsReadWrite;
  for (size_t i = 1; i < permissions.size(); ++i) {
    if (permissions[i].domid == domid) return permissions[i].access;
  }
  return permissions[0].access;
}

std::string ChildPrefix(const std::string& path) { return path == "/" ? path : path + "/"; }

}  // namespace

std::string CanonicalXsPath(std::string_view path, uint32_t domid, bool allow_special) {
  if (path.empty()) return {};
  if (path[0] == '@') {
    if (!allow_special || (path != "@introduceDomain" && path != "@releaseDomain")) return {};
    return std::string(path);
  }
  std::string absolute;
  if (path[0] == '/') {
    absolute = path;
  } else {
    absolute = "/local/domain/" + std::to_string(domid) + "/";
    absolute += path;
  }
  if (absolute.size() > XENSTORE_ABS_PATH_MAX) return {};
  if (absolute.size() > 1 && absolute.back() == '/') return {};
  if (absolute.find("//") != std::string::npos) return {};
  if (!std::all_of(absolute.begin(), absolute.end(), ValidPathCharacter)) return {};
  return absolute;
}

XsTestStore::XsTestStore() { tree_["/"] = Node{"", {XsPermission{0, kXsNone}}, NextGeneration()}; }

int XsTestStore::Resolve(const XsCaller& caller, uint32_t tx, Target* target, std::vector<Change>* changes) {
  if (tx == 0) {
    *target = Target{&tree_, nullptr, changes};
    return 0;
  }
  auto it = transactions_.find(tx);
  if (it == transactions_.end() || it->second.connection != caller.connection) return ENOENT;
  *target = Target{&it->second.tree, &it->second, changes};
  return 0;
}

void XsTestStore::Touch(Target& target, const std::string& path) {
  if (target.tx == nullptr || target.tx->start_generations.contains(path)) return;
  auto it = target.tree->find(path);
  target.tx->start_generations[path] = it == target.tree->end() ? 0 : it->second.generation;
}

int XsTestStore::ApplyWrite(Target& target, uint32_t domid, const std::string& path, std::string_view value,
                            bool mkdir) {
  Tree& tree = *target.tree;
  Touch(target, path);
  auto existing = tree.find(path);
  if (existing != tree.end()) {
    if (mkdir) return 0;
    if (!(AccessFor(existing->second.permissions, domid) & kXsWrite)) return EACCES;
    existing->second.value = value;
    existing->second.generation = NextGeneration();
    target.changes->push_back(Change{path, existing->second.permissions, false});
    return 0;
  }
  std::vector<std::string> missing;
  std::string ancestor = path;
  while (!tree.contains(ancestor)) {
    missing.push_back(ancestor);
    ancestor = ParentOf(ancestor);
  }
  Touch(target, ancestor);
  Node& parent = tree.find(ancestor)->second;
  if (!(AccessFor(parent.permissions, domid) & kXsWrite)) return EACCES;
  std::vector<XsPermission> permissions = parent.permissions;
  if (domid != 0) permissions[0].domid = domid;  // a guest owns what it creates
  parent.generation = NextGeneration();
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    Touch(target, *it);
    tree[*it] = Node{"", permissions, NextGeneration()};
  }
  tree[path].value = value;
  target.changes->push_back(Change{path, permissions, false});
  return 0;
}

int XsTestStore::ApplyRemove(Target& target, uint32_t domid, const std::string& path) {
  if (path == "/") return EINVAL;
  Tree& tree = *target.tree;
  Touch(target, path);
  auto node = tree.find(path);
  std::string parent_path = ParentOf(path);
  Touch(target, parent_path);
  if (node == tree.end()) return tree.contains(parent_path) ? 0 : ENOENT;
  if (!(AccessFor(node->second.permissions, domid) & kXsWrite)) return EACCES;
  std::string prefix = ChildPrefix(path);
  auto first = tree.lower_bound(prefix);
  auto last = first;
  while (last != tree.end() && last->first.starts_with(prefix)) {
    Touch(target, last->first);
    target.changes->push_back(Change{last->first, last->second.permissions, true});
    ++last;
  }
  target.changes->push_back(Change{path, node->second.permissions, false});
  tree.erase(first, last);
  tree.erase(node);
  tree.find(parent_path)->second.generation = NextGeneration();
  return 0;
}

int XsTestStore::ApplySetPermissions(Target& target, uint32_t domid, const std::string& path,
                                     const std::vector<XsPermission>& permissions) {
  if (permissions.empty()) return EINVAL;
  Touch(target, path);
  auto node = target.tree->find(path);
  if (node == target.tree->end()) return ENOENT;
  if (domid != 0 && node->second.permissions[0].domid != domid) return EACCES;
  node->second.permissions = permissions;
  node->second.generation = NextGeneration();
  target.changes->push_back(Change{path, permissions, false});
  return 0;
}

int XsTestStore::ApplyOp(Target& target, const Op& op) {
  switch (op.kind) {
    case OpKind::kWrite:
      return ApplyWrite(target, op.domid, op.path, op.value, false);
    case OpKind::kMkdir:
      return ApplyWrite(target, op.domid, op.path, "", true);
    case OpKind::kRemove:
      return ApplyRemove(target, op.domid, op.path);
    case OpKind::kSetPermissions:
      return ApplySetPermissions(target, op.domid, op.path, op.permissions);
  }
  return EINVAL;
}

int XsTestStore::RunMutation(const XsCaller& caller, uint32_t tx, std::string_view path, Op op,
                             XsEvents* events) {
  op.path = CanonicalXsPath(path, caller.domid, false);
  if (op.path.empty()) return EINVAL;
  op.domid = caller.domid;
  std::vector<Change> changes;
  Target target{};
  if (int err = Resolve(caller, tx, &target, &changes); err != 0) return err;
  if (int err = ApplyOp(target, op); err != 0) return err;
  if (target.tx != nullptr) {
    target.tx->log.push_back(std::move(op));
  } else {
    Fire(changes, events);
  }
  return 0;
}

int XsTestStore::Write(const XsCaller& caller, uint32_t tx, std::string_view path, std::string_view value,
                       XsEvents* events) {
  return RunMutation(caller, tx, path, Op{OpKind::kWrite, 0, "", std::string(value), {}}, events);
}

int XsTestStore::Mkdir(const XsCaller& caller, uint32_t tx, std::string_view path, XsEvents* events) {
  return RunMutation(caller, tx, path, Op{OpKind::kMkdir, 0, "", "", {}}, events);
}

int XsTestStore::Remove(const XsCaller& caller, uint32_t tx, std::string_view path, XsEvents* events) {
  return RunMutation(caller, tx, path, Op{OpKind::kRemove, 0, "", "", {}}, events);
}

int XsTestStore::SetPermissions(const XsCaller& caller, uint32_t tx, std::string_view path,
                                const std::vector<XsPermission>& permissions, XsEvents* events) {
  return RunMutation(caller, tx, path, Op{OpKind::kSetPermissions, 0, "", "", permissions}, events);
}

int XsTestStore::FindReadable(const XsCaller& caller, uint32_t tx, std::string_view path,
                              const Node** found) {
  std::string absolute = CanonicalXsPath(path, caller.domid, false);
  if (absolute.empty()) return EINVAL;
  Target target{};
  if (int err = Resolve(caller, tx, &target, nullptr); err != 0) return err;
  Touch(target, absolute);
  auto node = target.tree->find(absolute);
  if (node == target.tree->end()) return ENOENT;
  if (!(AccessFor(node->second.permissions, caller.domid) & kXsRead)) return EACCES;
  *found = &node->second;
  return 0;
}

int XsTestStore::Read(const XsCaller& caller, uint32_t tx, std::string_view path, std::string* value) {
  const Node* node = nullptr;
  if (int err = FindReadable(caller, tx, path, &node); err != 0) return err;
  *value = node->value;
  return 0;
}

int XsTestStore::Directory(const XsCaller& caller, uint32_t tx, std::string_view path,
                           std::vector<std::string>* children, uint64_t* generation) {
  std::string absolute = CanonicalXsPath(path, caller.domid, false);
  if (absolute.empty()) return EINVAL;
  Target target{};
  if (int err = Resolve(caller, tx, &target, nullptr); err != 0) return err;
  Touch(target, absolute);
  auto node = target.tree->find(absolute);
  if (node == target.tree->end()) return ENOENT;
  if (!(AccessFor(node->second.permissions, caller.domid) & kXsRead)) return EACCES;
  *generation = node->second.generation;
  children->clear();
  std::string prefix = ChildPrefix(absolute);
  for (auto it = target.tree->lower_bound(prefix); it != target.tree->end() && it->first.starts_with(prefix);
       ++it) {
    std::string_view rest = std::string_view(it->first).substr(prefix.size());
    if (!rest.empty() && rest.find('/') == std::string_view::npos) children->emplace_back(rest);
  }
  return 0;
}

int XsTestStore::GetPermissions(const XsCaller& caller, uint32_t tx, std::string_view path,
                                std::vector<XsPermission>* permissions) {
  const Node* node = nullptr;
  if (int err = FindReadable(caller, tx, path, &node); err != 0) return err;
  *permissions = node->permissions;
  return 0;
}

int XsTestStore::StartTransaction(const XsCaller& caller, uint32_t* tx) {
  size_t open = std::count_if(transactions_.begin(), transactions_.end(), [&](const auto& entry) {
    return entry.second.connection == caller.connection;
  });
  if (open >= kMaxTransactionsPerConnection) return ENOSPC;
  while (next_transaction_ == 0 || transactions_.contains(next_transaction_)) ++next_transaction_;
  *tx = next_transaction_++;
  transactions_.emplace(*tx, Transaction{caller.connection, tree_, {}, {}});
  return 0;
}

int XsTestStore::EndTransaction(const XsCaller& caller, uint32_t tx, bool commit, XsEvents* events) {
  auto it = transactions_.find(tx);
  if (it == transactions_.end() || it->second.connection != caller.connection) return ENOENT;
  Transaction transaction = std::move(it->second);
  transactions_.erase(it);
  if (!commit) return 0;
  for (const auto& [path, generation] : transaction.start_generations) {
    auto node = tree_.find(path);
    uint64_t now = node == tree_.end() ? 0 : node->second.generation;
    if (now != generation) return EAGAIN;
  }
  std::vector<Change> changes;
  Target live{&tree_, nullptr, &changes};
  // Nothing the transaction touched has changed, so replaying its operations reproduces its snapshot.
  for (const Op& op : transaction.log) (void)ApplyOp(live, op);
  Fire(changes, events);
  return 0;
}

int XsTestStore::AddWatch(const XsCaller& caller, std::string_view path, std::string_view token,
                          XsEvents* events) {
  std::string absolute = CanonicalXsPath(path, caller.domid, true);
  if (absolute.empty() || token.empty()) return EINVAL;
  size_t mine = 0;
  for (const WatchRegistration& watch : watches_) {
    if (watch.connection != caller.connection) continue;
    if (watch.given_path == path && watch.token == token) return EEXIST;
    ++mine;
  }
  if (mine >= kMaxWatchesPerConnection) return E2BIG;
  watches_.push_back(
      WatchRegistration{caller.connection, caller.domid, std::string(path), absolute, std::string(token)});
  events->push_back(XsOutgoingEvent{caller.connection, std::string(path), std::string(token)});
  return 0;
}

int XsTestStore::RemoveWatch(const XsCaller& caller, std::string_view path, std::string_view token) {
  auto it = std::find_if(watches_.begin(), watches_.end(), [&](const WatchRegistration& watch) {
    return watch.connection == caller.connection && watch.given_path == path && watch.token == token;
  });
  if (it == watches_.end()) return ENOENT;
  watches_.erase(it);
  return 0;
}

void XsTestStore::DropConnection(uint64_t connection) {
  std::erase_if(watches_, [&](const WatchRegistration& watch) { return watch.connection == connection; });
  std::erase_if(transactions_, [&](const auto& entry) { return entry.second.connection == connection; });
}

void XsTestStore::Fire(const std::vector<Change>& changes, XsEvents* events) const {
  for (const Change& change : changes) {
    for (const WatchRegistration& watch : watches_) {
      bool matches = change.exact_only ? watch.path == change.path : PathCovers(watch.path, change.path);
      if (!matches) continue;
      if (!(AccessFor(change.permissions, watch.domid) & kXsRead)) continue;
      std::string delivered = change.path;
      if (watch.given_path[0] != '/') {
        // A relative watch hears relative paths, as from xenstored.
        std::string home = "/local/domain/" + std::to_string(watch.domid) + "/";
        if (delivered.starts_with(home)) delivered.erase(0, home.size());
      }
      events->push_back(XsOutgoingEvent{watch.connection, std::move(delivered), watch.token});
    }
  }
}

}  // namespace blk
