// blkctl's commands: one request per invocation (or one per interval with stats --watch).
#include "tools/blkctl/commands.h"

#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "backend/control_client.h"
#include "base/format.h"

namespace blk::blkctl {

const char kUsage[] =
    "usage: blkctl [--socket PATH] COMMAND [ARGUMENTS]\n"
    "Commands blkbackd (or blkbench --control) through its control socket.\n"
    "\n"
    "  list                                every device: handshake state, I/O state (running, pausing, "
    "paused),\n"
    "                                      size, queues, negotiated features, image path(s)\n"
    "  stats [DOMID/DEVID] [--json]        blkback's counters (oo_req rd_req wr_req f_req ds_req rd_sect\n"
    "        [--watch [--count N]]         wr_sect), requests in flight, latency percentiles; --watch "
    "repeats\n"
    "                                      every second (--count N times)\n"
    "  pause DOMID/DEVID [--timeout MS]    stop taking requests, let in-flight I/O finish, sync the image;\n"
    "                                      returns once paused (default timeout 5000 ms)\n"
    "  resume DOMID/DEVID                  serve everything the guest queued while paused\n"
    "       [--image IMAGE]                first reopen the paused disk on IMAGE (vhd:PATH, raw:PATH or\n"
    "                                      PATH): same size, sector size and read-only state, or refused\n"
    "                                      (the disk then stays paused on its old image)\n"
    "  snapshot DOMID/DEVID CHILD.vhd      pause, make CHILD.vhd a differencing VHD of the current (VHD)\n"
    "           [--timeout MS]             leaf, serve it, resume; the old leaf becomes its read-only\n"
    "                                      parent. Any failure resumes on the old leaf\n"
    "  resize DOMID/DEVID SIZE             grow the image to SIZE (bytes, or with K, M, G, T) and tell the\n"
    "                                      guest; shrinking is refused\n"
    "\n"
    "  --socket PATH                       the control socket (default /run/blkbackd/control)\n"
    "\n"
    "A device is named DOMID/DEVID as list prints it (blkbench's is 1/51712).\n"
    "A relative CHILD.vhd or IMAGE path is made absolute here (the daemon has its own working directory).\n"
    "\n"
    "Exit status: 0 done, 1 blkbackd refused or failed the command, 2 bad usage, 3 blkbackd unreachable.\n"
    "\n"
    "example: blkctl pause 1/51712 --timeout 2000 && cp --sparse=always disk.img backup.img && "
    "blkctl resume 1/51712\n"
    "         blkctl snapshot 1/51712 /images/disk-2.vhd   (then back up the now read-only parent)\n";

namespace {

// The daemon does not share our working directory: a relative CHILD of snapshot or IMAGE of resume --image
// is made absolute here, before the line is parsed.
std::string AbsoluteImagePaths(const std::string& line) {
  std::vector<std::string> words;
  for (size_t start = 0; start < line.size();) {
    size_t end = line.find(' ', start);
    if (end == std::string::npos) end = line.size();
    words.push_back(line.substr(start, end - start));
    start = end + 1;
  }
  auto absolute = [](const std::string& spec) {
    std::string_view path = ImagePathOf(spec);
    if (path.empty() || path.starts_with("/")) return spec;
    std::string prefix = spec.substr(0, spec.size() - path.size());
    std::error_code error;
    std::filesystem::path made = std::filesystem::absolute(std::filesystem::path(path), error);
    return error ? spec : prefix + made.lexically_normal().string();
  };
  if (words.size() >= 3 && words[0] == "snapshot" && !words[2].starts_with("-"))
    words[2] = absolute(words[2]);
  if (words.size() >= 2 && words[0] == "resume") {
    for (size_t i = 2; i < words.size(); ++i) {
      if (words[i - 1] == "--image") words[i] = absolute(words[i]);
      if (words[i].starts_with("--image=")) words[i] = "--image=" + absolute(words[i].substr(8));
    }
  }
  std::string out;
  for (const std::string& word : words) out += (out.empty() ? "" : " ") + word;
  return out;
}

}  // namespace

Result<Invocation> ParseArgs(const std::vector<std::string>& args) {
  Invocation invocation;
  size_t i = 0;
  for (; i < args.size() && args[i].starts_with("-"); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      invocation.help = true;
      return invocation;
    }
    if (arg == "--socket") {
      if (i + 1 >= args.size()) return Status::InvalidArgument("--socket needs a path");
      invocation.socket = args[++i];
    } else if (arg.starts_with("--socket=")) {
      invocation.socket = arg.substr(9);
    } else {
      return Status::InvalidArgument("unknown option " + arg);
    }
    if (invocation.socket.empty()) return Status::InvalidArgument("--socket needs a path");
  }
  if (i >= args.size())
    return Status::InvalidArgument("no command (list, stats, pause, resume, resize, snapshot)");
  std::string line;
  for (; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      invocation.help = true;
      return invocation;
    }
    if (arg == "--watch") {
      invocation.watch = true;
      continue;
    }
    if (arg == "--count" || arg.starts_with("--count=")) {
      std::string value = arg.size() > 7 ? arg.substr(8) : (i + 1 < args.size() ? args[++i] : "");
      char* end = nullptr;
      unsigned long count = std::strtoul(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || count == 0 || count > 1000000) {
        return Status::InvalidArgument("--count needs a number from 1 to 1000000");
      }
      invocation.count = static_cast<unsigned>(count);
      continue;
    }
    if (arg.find(' ') != std::string::npos || arg.empty()) {
      return Status::InvalidArgument("argument '" + arg + "' is empty or holds a space");
    }
    line += (line.empty() ? "" : " ") + arg;
  }
  Result<ControlRequest> request = ParseControlRequest(AbsoluteImagePaths(line));
  if (!request.ok()) return request.status();
  invocation.request = *request;
  if ((invocation.watch || invocation.count != 0) && request->command != ControlCommand::kStats) {
    return Status::InvalidArgument("--watch and --count go with stats only");
  }
  if (invocation.count != 0 && !invocation.watch) return Status::InvalidArgument("--count goes with --watch");
  return invocation;
}

namespace {

std::string Clock() {
  time_t now = ::time(nullptr);
  tm local;
  ::localtime_r(&now, &local);
  char text[32];
  std::strftime(text, sizeof(text), "%H:%M:%S", &local);
  return text;
}

}  // namespace

int Run(const Invocation& invocation, FILE* out, FILE* err) {
  Result<std::unique_ptr<ControlClient>> client = ControlClient::Connect(invocation.socket);
  if (!client.ok()) {
    std::fprintf(err, "blkctl: %s\n", client.status().message().c_str());
    return kExitUnreachable;
  }
  const ControlRequest& request = invocation.request;
  int timeout_ms = request.command == ControlCommand::kPause || request.command == ControlCommand::kSnapshot
                       ? static_cast<int>(request.timeout_ms) + 10000
                       : 30000;
  for (unsigned round = 0;; ++round) {
    Result<ControlReply> reply = (*client)->Call(request, timeout_ms);
    if (!reply.ok()) {
      std::fprintf(err, "blkctl: %s\n", reply.status().message().c_str());
      return kExitUnreachable;
    }
    if (!reply->ok) {
      std::fprintf(err, "blkctl: %s\n", reply->error.c_str());
      return kExitRefused;
    }
    if (invocation.watch && !request.json) std::fprintf(out, "--- %s\n", Clock().c_str());
    for (const std::string& line : reply->lines) std::fprintf(out, "%s\n", line.c_str());
    std::fflush(out);
    if (!invocation.watch || (invocation.count != 0 && round + 1 >= invocation.count)) return kExitOk;
    ::usleep(invocation.interval_ms * 1000);
  }
}

}  // namespace blk::blkctl
