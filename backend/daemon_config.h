// blkbackd's configuration: a key = value file (/etc/blkbackd/blkbackd.conf by default) and command-line
// flags of the same names, the flags winning. Every mistake is one line naming the file and line, or the
// flag, and what was wrong. Pure parsing, so that every rule is tested without starting a daemon.
//
// Threading: plain functions and data.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "backend/blkback_daemon.h"
#include "base/log.h"
#include "base/status.h"

namespace blk {

inline constexpr const char* kDefaultConfigFile = "/etc/blkbackd/blkbackd.conf";

struct BlkbackdConfig {
  BlkbackDaemonOptions daemon;
  LogLevel log_level = LogLevel::kNotice;
  // Holds our pid and an exclusive flock while we run: a second instance refuses to start.
  std::string lock_file = "/run/blkbackd/blkbackd.pid";
  std::string control_socket = "/run/blkbackd/control";
  // Where each device's statistics file is refreshed once a second (blkback's counters); "" for none.
  std::string stats_dir = "/run/blkbackd-stats";
  // Empty: libxenstore's own choice (XENSTORED_PATH, the xenstored socket, /dev/xen/xenbus).
  std::string xenstore_socket;
  // How long SIGTERM waits for requests already taken from the rings before the daemon exits anyway.
  int shutdown_timeout_ms = 10000;
};

enum class CommandLineAction { kRun, kHelp, kVersion };

struct CommandLine {
  CommandLineAction action = CommandLineAction::kRun;
  BlkbackdConfig config;
};

// Applies `text` (the contents of a configuration file called `source` in messages) to `config`.
// Blank lines and lines starting with '#' are ignored; every other line is `key = value`.
Status ApplyConfigText(std::string_view text, std::string_view source, BlkbackdConfig* config);

// Reads the configuration file (--config, or kDefaultConfigFile if it exists), then applies the flags.
// `args` excludes the program name.
Result<CommandLine> ParseCommandLine(const std::vector<std::string>& args);

// What --help prints: every option, the file, an example.
std::string UsageText();

}  // namespace blk
