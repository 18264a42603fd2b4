// The qdisk shim's command line: the QEMU command line libxl builds for a PV guest's device model
// (libxl_dm.c), of which the shim needs only the guest's domid, the QMP monitors (-chardev socket,... with
// -mon chardev=...,mode=control) and -S (start paused). Every other QEMU option is accepted and ignored, so a
// libxl that adds options does not break the shim; options known to take no value are listed, all others
// take the next argument as their value.
//
// Threading: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace blk {

// One QMP monitor: a listening Unix socket the shim creates at `path`, or one libxl already created and
// passed as `fd` (with dm_restrict).
struct QmpMonitor {
  std::string chardev_id;
  std::string path;  // empty when fd >= 0
  int fd = -1;
};

struct ShimOptions {
  uint32_t domid = 0;
  std::string name;                   // -name, for the log
  bool start_paused = false;          // -S: "prelaunch" until "cont", and no "running" in xenstore until then
  std::vector<QmpMonitor> monitors;   // in command-line order
  std::vector<std::string> ignored;   // options accepted without effect, for the log
};

// `args` excludes argv[0]. Fails on a missing or malformed -xen-domid, a -mon naming no socket chardev, a
// control monitor without a path or fd, or an option missing its value.
Result<ShimOptions> ParseShimArgs(const std::vector<std::string>& args);

}  // namespace blk
