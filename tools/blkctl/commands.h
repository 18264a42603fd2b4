// blkctl's command line and its commands: argument parsing (global options, then one protocol request and
// the client-side --watch/--count of stats), and running it against a control socket.
//
// Threading: single-threaded.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "backend/control_protocol.h"
#include "base/status.h"

namespace blk::blkctl {

inline constexpr const char* kDefaultSocket = "/run/blkbackd/control";

// Exit statuses.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRefused = 1;      // blkbackd answered with an error
inline constexpr int kExitUsage = 2;        // bad command line
inline constexpr int kExitUnreachable = 3;  // no daemon, no permission, a broken conversation

extern const char kUsage[];

struct Invocation {
  std::string socket = kDefaultSocket;
  bool help = false;
  ControlRequest request;
  bool watch = false;  // stats only: repeat every interval
  unsigned count = 0;  // with --watch: stop after this many reports (0: never)
  unsigned interval_ms = 1000;
};

// `args` without the program name.
Result<Invocation> ParseArgs(const std::vector<std::string>& args);
// Runs `invocation`, printing replies to `out` and one-line errors ("blkctl: ...") to `err`; returns the exit
// status.
int Run(const Invocation& invocation, FILE* out, FILE* err);

}  // namespace blk::blkctl
