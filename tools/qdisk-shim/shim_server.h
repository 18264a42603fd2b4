// ShimServer: the qdisk shim's event loop. It listens on the QMP monitors libxl asked for, answers each
// connection with a QmpSession, and tells libxl the "device model" is up by writing "running" to
// /local/domain/0/device-model/<domid>/state (at once, or on "cont" when started with -S), which is all
// libxl waits for before it talks QMP. The disks themselves are blkbackd's (serving the qdisk kind); the shim
// touches no device.
//
// Bounded: at most Limits::max_connections clients at once (more are closed on accept), and a client that
// does not read its replies is dropped once Limits::max_pending_output bytes wait for it.
//
// Threading: Run on one thread; the object must not be used from another while Run runs. Stop it by making
// `stop_fd` readable (the program passes a signalfd for SIGHUP, which libxl sends on destroy, SIGTERM and
// SIGINT).
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "base/unique_fd.h"
#include "tools/qdisk-shim/qmp_session.h"
#include "tools/qdisk-shim/shim_args.h"
#include "xenstore/xenstore.h"

namespace blk {

class ShimServer {
 public:
  struct Limits {
    size_t max_connections = 16;
    size_t max_pending_output = 256 * 1024;
  };

  // Opens (or, for fd= monitors, adopts) every listening socket. A stale socket file at a monitor's path is
  // replaced; any other file there is an error.
  static Result<std::unique_ptr<ShimServer>> Create(const ShimOptions& options, XenStore* store,
                                                    const Limits& limits);
  static Result<std::unique_ptr<ShimServer>> Create(const ShimOptions& options, XenStore* store) {
    return Create(options, store, Limits{});
  }
  ~ShimServer();  // closes every socket and removes the socket files it created
  ShimServer(const ShimServer&) = delete;
  ShimServer& operator=(const ShimServer&) = delete;

  // Serves until `stop_fd` becomes readable (OK) or a client's "quit" has been answered (OK); fails only if
  // the state node cannot be written or epoll breaks.
  Status Run(int stop_fd);

  const VmState& vm() const { return vm_; }
  const std::string& state_path() const { return state_path_; }
  size_t open_connections() const { return connections_.size(); }

 private:
  struct Listener {
    UniqueFd fd;
    std::string created_path;  // removed on destruction; empty for adopted fds
  };
  struct Connection {
    explicit Connection(VmState* vm) : session(vm) {}
    UniqueFd fd;
    QmpSession session;
    std::string output;
    bool closing = false;  // no more input is read; closed once `output` is out
  };

  ShimServer(const ShimOptions& options, XenStore* store, const Limits& limits);
  Status Announce();
  void Accept(int listener_fd);
  // Each returns false when the connection was closed (and erased).
  bool Readable(int fd);
  bool Flush(int fd);
  void Close(int fd);

  ShimOptions options_;
  XenStore* store_;
  Limits limits_;
  std::string state_path_;
  VmState vm_;
  bool announced_ = false;
  UniqueFd epoll_;
  std::vector<Listener> listeners_;
  std::map<int, std::unique_ptr<Connection>> connections_;
};

}  // namespace blk
