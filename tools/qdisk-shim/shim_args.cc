// Parsing of the QEMU-style command line libxl gives its device model; see shim_args.h.
#include "tools/qdisk-shim/shim_args.h"

#include <charconv>
#include <map>
#include <set>
#include <string_view>

namespace blk {
namespace {

// QEMU options that take no value, among those libxl passes (and a few neighbours).
const std::set<std::string_view> kFlags = {
    "-S",           "-xen-attach",    "-nographic", "-nodefaults", "-no-user-config", "-no-shutdown",
    "-no-reboot",   "-daemonize",     "-snapshot",  "-enable-kvm", "-no-hpet",        "-no-acpi",
    "-xen-domid-restrict", "-usb",    "-full-screen"};

// "a=1,b=2,flag" -> {a:1, b:2, flag:""}; the first element may be a bare type ("socket").
std::map<std::string, std::string> SplitKeyValues(std::string_view text, std::string* type) {
  std::map<std::string, std::string> out;
  bool first = true;
  while (!text.empty()) {
    size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      if (first && type != nullptr) {
        *type = std::string(item);
      } else {
        out[std::string(item)] = "";
      }
    } else {
      out[std::string(item.substr(0, eq))] = std::string(item.substr(eq + 1));
    }
    first = false;
  }
  return out;
}

Result<int> ParseNonNegative(std::string_view text, const char* what, long max) {
  long value = -1;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0 || value > max) {
    return Status::InvalidArgument(std::string("bad ") + what + " \"" + std::string(text) + "\"");
  }
  return static_cast<int>(value);
}

}  // namespace

Result<ShimOptions> ParseShimArgs(const std::vector<std::string>& args) {
  ShimOptions options;
  bool have_domid = false;
  struct Socket {
    std::string path;
    int fd = -1;
  };
  std::map<std::string, Socket> sockets;   // chardev id -> socket
  std::vector<std::string> control_mons;   // chardev ids of control monitors, in order
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& option = args[i];
    if (option.empty() || option[0] != '-') {
      options.ignored.push_back(option);
      continue;
    }
    if (option == "-S") {
      options.start_paused = true;
      continue;
    }
    if (kFlags.count(option)) {
      options.ignored.push_back(option);
      continue;
    }
    if (i + 1 >= args.size()) return Status::InvalidArgument("option " + option + " needs a value");
    const std::string& value = args[++i];
    if (option == "-xen-domid") {
      Result<int> domid = ParseNonNegative(value, "-xen-domid", 0x7FEF);  // DOMID_FIRST_RESERVED - 1
      if (!domid.ok()) return domid.status();
      options.domid = static_cast<uint32_t>(*domid);
      have_domid = true;
    } else if (option == "-name") {
      options.name = value;
    } else if (option == "-chardev") {
      std::string type;
      std::map<std::string, std::string> kv = SplitKeyValues(value, &type);
      if (type != "socket" || !kv.count("id")) {
        options.ignored.push_back(option + " " + value);
        continue;
      }
      Socket socket;
      if (kv.count("path")) socket.path = kv["path"];
      if (kv.count("fd")) {
        Result<int> fd = ParseNonNegative(kv["fd"], "chardev fd", 1 << 20);
        if (!fd.ok()) return fd.status();
        socket.fd = *fd;
      }
      if (socket.path.empty() == (socket.fd < 0)) {
        return Status::InvalidArgument("-chardev " + value + ": a QMP socket needs exactly one of path= and fd=");
      }
      sockets[kv["id"]] = socket;
    } else if (option == "-mon") {
      std::map<std::string, std::string> kv = SplitKeyValues(value, nullptr);
      if (!kv.count("chardev")) return Status::InvalidArgument("-mon " + value + " names no chardev");
      if (kv.count("mode") && kv["mode"] != "control") {
        options.ignored.push_back(option + " " + value);  // a human monitor: the shim speaks QMP only
        continue;
      }
      control_mons.push_back(kv["chardev"]);
    } else {
      options.ignored.push_back(option + " " + value);
    }
  }
  if (!have_domid) return Status::InvalidArgument("no -xen-domid: which guest is this device model for?");
  for (const std::string& id : control_mons) {
    auto it = sockets.find(id);
    if (it == sockets.end()) return Status::InvalidArgument("-mon names chardev \"" + id + "\", which is no socket");
    options.monitors.push_back(QmpMonitor{id, it->second.path, it->second.fd});
  }
  return options;
}

}  // namespace blk
