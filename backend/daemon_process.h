// What makes blkbackd a well-behaved system service, apart from serving disks: one instance at a time (a pid
// file held with flock, so a crashed daemon never leaves a stale lock) and systemd's readiness protocol.
//
// Threading: InstanceLock is used by main only; NotifySystemd may be called from any thread.
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"
#include "base/unique_fd.h"

namespace blk {

class InstanceLock {
 public:
  // Creates the lock file (and its directory, mode 0755) if needed, takes an exclusive flock and writes our
  // pid into it. If another process holds it: kBusy, naming that process's pid.
  static Result<InstanceLock> Acquire(const std::string& path);
  InstanceLock(InstanceLock&&) = default;
  InstanceLock& operator=(InstanceLock&&) = default;
  // Removes the file while still holding the lock, so the next instance never sees our pid.
  ~InstanceLock();

  const std::string& path() const { return path_; }

 private:
  InstanceLock(std::string path, UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}
  std::string path_;
  UniqueFd fd_;
};

// Sends `state` (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET, as sd_notify(3) does; does nothing when
// not started by systemd with Type=notify. A few lines instead of linking libsystemd for one datagram.
Status NotifySystemd(std::string_view state);

}  // namespace blk
