// blkbackd's configuration keys: one table serves the file, the flags and --help.
#include "backend/daemon_config.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

#include "base/format.h"

namespace blk {

namespace {

using Setter = Status (*)(std::string_view value, BlkbackdConfig* config);

struct Key {
  const char* name;
  const char* argument;  // what the value looks like, for --help
  const char* help;
  Setter set;
};

Status Bad(std::string_view key, std::string_view value, std::string_view why) {
  return Status::InvalidArgument(StrFormat("%.*s = \"%.*s\": %.*s", static_cast<int>(key.size()), key.data(),
                                           static_cast<int>(value.size()), value.data(),
                                           static_cast<int>(why.size()), why.data()));
}

Result<uint64_t> ParseUnsigned(std::string_view key, std::string_view value, uint64_t low, uint64_t high) {
  uint64_t number = 0;
  auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), number);
  if (value.empty() || error != std::errc() || end != value.data() + value.size())
    return Bad(key, value, "not a whole number");
  if (number < low || number > high)
    return Bad(key, value,
               StrFormat("must be between %llu and %llu", static_cast<unsigned long long>(low),
                         static_cast<unsigned long long>(high)));
  return number;
}

Result<bool> ParseBool(std::string_view key, std::string_view value) {
  if (value == "yes" || value == "true" || value == "on" || value == "1") return true;
  if (value == "no" || value == "false" || value == "off" || value == "0") return false;
  return Bad(key, value, "expected yes or no");
}

template <typename Field>
Status SetUnsigned(std::string_view key, std::string_view value, uint64_t low, uint64_t high, Field* field) {
  Result<uint64_t> number = ParseUnsigned(key, value, low, high);
  if (!number.ok()) return number.status();
  *field = static_cast<Field>(*number);
  return Status::Ok();
}

Status SetBool(std::string_view key, std::string_view value, bool* field) {
  Result<bool> parsed = ParseBool(key, value);
  if (!parsed.ok()) return parsed.status();
  *field = *parsed;
  return Status::Ok();
}

Status SetKinds(std::string_view value, BlkbackdConfig* config) {
  static const std::set<std::string_view> kKnown = {"vbd", "qdisk", "vbd3"};
  std::vector<std::string> kinds;
  size_t start = 0;
  while (start <= value.size()) {
    size_t comma = value.find(',', start);
    if (comma == std::string_view::npos) comma = value.size();
    std::string_view kind = value.substr(start, comma - start);
    if (!kKnown.contains(kind))
      return Bad("kinds", value,
                 StrFormat("unknown backend kind \"%.*s\" (vbd, qdisk or vbd3, comma-separated)",
                           static_cast<int>(kind.size()), kind.data()));
    for (const std::string& seen : kinds) {
      if (seen == kind) return Bad("kinds", value, "a kind is named twice");
    }
    kinds.emplace_back(kind);
    start = comma + 1;
  }
  config->daemon.kinds = std::move(kinds);
  return Status::Ok();
}

Status SetPath(std::string_view key, std::string_view value, std::string* field) {
  if (value.empty() || value.front() != '/') return Bad(key, value, "must be an absolute path");
  *field = std::string(value);
  return Status::Ok();
}

const Key kKeys[] = {
    {"kinds", "LIST",
     "backend kinds to serve, comma-separated: vbd (blkback's), qdisk, vbd3 (tapdisk's) [vbd]", SetKinds},
    {"workers", "N", "I/O threads; queue i of a device runs on worker i % N [2]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("workers", v, 1, 64, &c->daemon.workers);
     }},
    {"domid", "auto|N", "our own domain id; auto reads xenstore's domid key (dom0 or a driver domain) [auto]",
     [](std::string_view v, BlkbackdConfig* c) -> Status {
       if (v == "auto") {
         c->daemon.own_domid.reset();
         return Status::Ok();
       }
       Result<uint64_t> n = ParseUnsigned("domid", v, 0, 0x7fef);
       if (!n.ok()) return n.status();
       c->daemon.own_domid = static_cast<uint32_t>(*n);
       return Status::Ok();
     }},
    {"aio-depth", "N", "I/Os in flight per worker [256]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("aio-depth", v, 16, 65536, &c->daemon.aio_depth);
     }},
    {"direct-io", "yes|no", "O_DIRECT on images where the file system allows it [yes]",
     [](std::string_view v, BlkbackdConfig* c) { return SetBool("direct-io", v, &c->daemon.direct_io); }},
    {"wait-for-hotplug-status", "yes|no",
     "advertise a disk only once a hotplug script wrote hotplug-status = connected [no]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetBool("wait-for-hotplug-status", v, &c->daemon.wait_for_hotplug_status);
     }},
    {"max-ring-page-order", "N", "largest ring a frontend may use: 2^N pages, 0..4 [4]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("max-ring-page-order", v, 0, 4, &c->daemon.max_ring_page_order);
     }},
    {"max-queues", "N", "queues a frontend may use; 0 = as many as workers [0]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("max-queues", v, 0, 64, &c->daemon.max_queues);
     }},
    {"max-indirect-segments", "N", "segments per indirect request offered to frontends; 0 = off [256]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("max-indirect-segments", v, 0, 4096, &c->daemon.max_indirect_segments);
     }},
    {"feature-persistent", "yes|no", "offer persistent grants to frontends [yes]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetBool("feature-persistent", v, &c->daemon.persistent_grants);
     }},
    {"max-persistent-grants", "N", "grants each ring keeps mapped with persistent grants [1056]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("max-persistent-grants", v, 1, 65536, &c->daemon.persistent_grants_per_ring);
     }},
    {"discard-secure", "yes|no",
     "offer discard-secure on raw images on block devices: you vouch that they erase securely "
     "(BLKSECDISCARD); files are never offered it [no]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetBool("discard-secure", v, &c->daemon.discard_secure);
     }},
    {"poll-us", "N", "after serving, a worker polls its rings this long before sleeping [0]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("poll-us", v, 0, 1000000, &c->daemon.poll_us);
     }},
    {"io-retry-seconds", "N",
     "how long I/O failing with a transient error (EAGAIN, ENOMEM...) is retried before it fails [120]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("io-retry-seconds", v, 0, 86400, &c->daemon.io_retry_seconds);
     }},
    {"log-level", "LEVEL", "error, warning, notice, info or debug [notice]",
     [](std::string_view v, BlkbackdConfig* c) -> Status {
       std::string text(v);
       if (!ParseLogLevel(text.c_str(), &c->log_level))
         return Bad("log-level", v, "expected error, warning, notice, info or debug");
       return Status::Ok();
     }},
    {"lock-file", "PATH", "holds our pid; a second blkbackd refuses to start [/run/blkbackd/blkbackd.pid]",
     [](std::string_view v, BlkbackdConfig* c) { return SetPath("lock-file", v, &c->lock_file); }},
    {"control-socket", "PATH", "the control socket for blkctl [/run/blkbackd/control]",
     [](std::string_view v, BlkbackdConfig* c) { return SetPath("control-socket", v, &c->control_socket); }},
    {"stats-dir", "PATH|none",
     "a statistics file per device, refreshed every second, for monitoring [/run/blkbackd-stats]",
     [](std::string_view v, BlkbackdConfig* c) -> Status {
       if (v == "none") {
         c->stats_dir.clear();
         return Status::Ok();
       }
       return SetPath("stats-dir", v, &c->stats_dir);
     }},
    {"xenstore-socket", "PATH", "talk to this xenstored socket instead of libxenstore's default",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetPath("xenstore-socket", v, &c->xenstore_socket);
     }},
    {"shutdown-timeout-ms", "MS",
     "on SIGTERM, how long to wait for requests already taken from the rings [10000]",
     [](std::string_view v, BlkbackdConfig* c) {
       return SetUnsigned("shutdown-timeout-ms", v, 0, 3600000, &c->shutdown_timeout_ms);
     }},
};

const Key* FindKey(std::string_view name) {
  for (const Key& key : kKeys) {
    if (name == key.name) return &key;
  }
  return nullptr;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r'))
    text.remove_suffix(1);
  return text;
}

Status ReadConfigFile(const std::string& path, bool must_exist, BlkbackdConfig* config) {
  std::ifstream file(path);
  if (!file) {
    if (!must_exist && errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "cannot read the configuration file " + path);
  }
  std::stringstream text;
  text << file.rdbuf();
  return ApplyConfigText(text.str(), path, config);
}

}  // namespace

Status ApplyConfigText(std::string_view text, std::string_view source, BlkbackdConfig* config) {
  size_t line_number = 0;
  while (!text.empty()) {
    ++line_number;
    size_t end = text.find('\n');
    std::string_view line = Trim(text.substr(0, end));
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    if (line.empty() || line.front() == '#') continue;
    std::string where = StrFormat("%.*s:%zu: ", static_cast<int>(source.size()), source.data(), line_number);
    size_t equals = line.find('=');
    if (equals == std::string_view::npos)
      return Status::InvalidArgument(where + "expected key = value, found \"" + std::string(line) + "\"");
    std::string_view name = Trim(line.substr(0, equals));
    const Key* key = FindKey(name);
    if (key == nullptr)
      return Status::InvalidArgument(where + "unknown key \"" + std::string(name) +
                                     "\" (see blkbackd --help)");
    Status set = key->set(Trim(line.substr(equals + 1)), config);
    if (!set.ok()) return Status::InvalidArgument(where + set.message());
  }
  return Status::Ok();
}

Result<CommandLine> ParseCommandLine(const std::vector<std::string>& args) {
  CommandLine result;
  std::string config_file = kDefaultConfigFile;
  bool config_named = false;
  // (name, value) pairs, applied after the file so that flags win.
  std::vector<std::pair<const Key*, std::string>> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (arg == "-h" || arg == "--help") {
      result.action = CommandLineAction::kHelp;
      return result;
    }
    if (arg == "--version") {
      result.action = CommandLineAction::kVersion;
      return result;
    }
    // blkbackd never forks; the flag is accepted for scripts and units written for daemons that do.
    if (arg == "--foreground" || arg == "-f") continue;
    if (!arg.starts_with("--")) return Status::InvalidArgument("unexpected argument \"" + args[i] + "\"");
    std::string_view name = arg.substr(2);
    std::string value;
    if (size_t equals = name.find('='); equals != std::string_view::npos) {
      value = std::string(name.substr(equals + 1));
      name = name.substr(0, equals);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return Status::InvalidArgument("--" + std::string(name) + " needs a value");
    }
    if (name == "config") {
      config_file = value;
      config_named = true;
      continue;
    }
    const Key* key = FindKey(name);
    if (key == nullptr)
      return Status::InvalidArgument("unknown option --" + std::string(name) + " (see blkbackd --help)");
    flags.emplace_back(key, std::move(value));
  }
  BLK_RETURN_IF_ERROR(ReadConfigFile(config_file, config_named, &result.config));
  for (const auto& [key, value] : flags) {
    Status set = key->set(value, &result.config);
    if (!set.ok()) return Status::InvalidArgument("--" + set.message());
  }
  return result;
}

std::string UsageText() {
  std::string text =
      "Usage: blkbackd [--config FILE] [--KEY VALUE ...]\n"
      "A userspace Xen block backend: serves the blkif disks of the backend kinds it is given from raw and\n"
      "VHD images. Runs in the foreground (for systemd, Type=notify); SIGTERM closes every device.\n"
      "\n"
      "Options (each is also a key of the configuration file, written KEY = VALUE):\n";
  for (const Key& key : kKeys) {
    std::string left = StrFormat("  --%s %s", key.name, key.argument);
    left.resize(std::max<size_t>(left.size() + 2, 36), ' ');
    text += left + key.help + "\n";
  }
  text += StrFormat(
      "  --config FILE                   the configuration file [%s, if it exists]\n"
      "  --foreground, -f                accepted and ignored: blkbackd never forks\n"
      "  --help, --version\n"
      "\n"
      "Example: serve the kernel blkback's disks (unload xen-blkback first) with 4 workers:\n"
      "  blkbackd --kinds vbd --workers 4 --log-level info\n",
      kDefaultConfigFile);
  return text;
}

}  // namespace blk
