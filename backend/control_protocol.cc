// The control protocol's parsing and formatting: strict, bounded, and never trusting the peer's bytes.
#include "backend/control_protocol.h"

#include <charconv>
#include <limits>

#include "base/format.h"

namespace blk {
namespace {

constexpr size_t kMaxWords = 8;
constexpr size_t kMaxEcho = 48;  // bytes of a bad word quoted back in an error
constexpr uint32_t kFirstReservedDomid = 0x7ff0;

// A word of the peer's, quoted in an error: short, and only printable bytes (ParseControlRequest already
// refused others; the reply side may quote anything).
std::string Echo(std::string_view word) {
  std::string echo;
  for (char c : word.substr(0, kMaxEcho)) echo += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (word.size() > kMaxEcho) echo += "...";
  return "'" + echo + "'";
}

Status Bad(std::string message) { return Status::InvalidArgument(std::move(message)); }

// A decimal without sign, leading zeros or junk, at most `max`.
bool ParseDecimal(std::string_view text, uint64_t max, uint64_t* value) {
  if (text.empty() || text.size() > 20 || (text.size() > 1 && text[0] == '0')) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return error == std::errc() && end == text.data() + text.size() && *value <= max;
}

std::string Printable(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return out;
}

// A list field without spaces or commas, so that a line splits back into fields (and a field at its first
// '='): those bytes, '\' and anything unprintable become \xHH.
std::string EscapeField(std::string_view text) {
  std::string out;
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte >= 0x7f || c == ',' || c == '\\') {
      out += StrFormat("\\x%02x", byte);
    } else {
      out += c;
    }
  }
  return out;
}

std::string Join(const std::vector<std::string>& parts, bool escape) {
  std::string out;
  for (const std::string& part : parts) {
    if (!out.empty()) out += ',';
    out += escape ? EscapeField(part) : part;
  }
  return out.empty() ? "-" : out;
}

uint64_t Micros(uint64_t ns) { return (ns + 999) / 1000; }

}  // namespace

std::string ControlGreeting() {
  return std::string(kControlGreetingPrefix) + std::to_string(kControlProtocolVersion) + "\n";
}

Status CheckControlGreeting(std::string_view line) {
  if (line.starts_with("error "))
    return Status::Error(Status::Code::kPermissionDenied, Printable(line.substr(6)));
  if (!line.starts_with(kControlGreetingPrefix)) {
    return Status::ProtocolError("not a blkbackd control socket (it said " + Echo(line) + ")");
  }
  uint64_t version = 0;
  if (!ParseDecimal(line.substr(kControlGreetingPrefix.size()), 1u << 30, &version)) {
    return Status::ProtocolError("bad greeting " + Echo(line));
  }
  if (version != static_cast<uint64_t>(kControlProtocolVersion)) {
    return Status::NotSupported(StrFormat("the daemon speaks control protocol %llu, this client %d",
                                          static_cast<unsigned long long>(version), kControlProtocolVersion));
  }
  return Status::Ok();
}

const char* ControlCommandName(ControlCommand command) {
  switch (command) {
    case ControlCommand::kList:
      return "list";
    case ControlCommand::kStats:
      return "stats";
    case ControlCommand::kPause:
      return "pause";
    case ControlCommand::kResume:
      return "resume";
    case ControlCommand::kResize:
      return "resize";
    case ControlCommand::kSnapshot:
      return "snapshot";
  }
  return "?";
}

Result<DeviceName> ParseDeviceName(std::string_view text) {
  size_t slash = text.find('/');
  uint64_t domid = 0, devid = 0;
  if (slash == std::string_view::npos ||
      !ParseDecimal(text.substr(0, slash), kFirstReservedDomid - 1, &domid) ||
      !ParseDecimal(text.substr(slash + 1), std::numeric_limits<int32_t>::max(), &devid)) {
    return Bad("bad device " + Echo(text) + ": expected DOMID/DEVID as list prints it, e.g. 1/51712");
  }
  return DeviceName{static_cast<uint32_t>(domid), static_cast<uint32_t>(devid)};
}

Result<uint64_t> ParseControlSize(std::string_view text) {
  unsigned shift = 0;
  std::string_view digits = text;
  if (!text.empty()) {
    switch (text.back()) {
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      default:
        break;
    }
    if (shift != 0) digits.remove_suffix(1);
  }
  constexpr uint64_t kMax = 1ull << 62;
  uint64_t value = 0;
  if (!ParseDecimal(digits, kMax, &value) || value > (kMax >> shift)) {
    return Bad("bad size " + Echo(text) + ": expected bytes, or a number with K, M, G or T, up to 4 EiB");
  }
  return value << shift;
}

std::string_view ImagePathOf(std::string_view spec) {
  for (std::string_view prefix : {"vhd:", "raw:", "aio:"}) {
    if (spec.starts_with(prefix)) return spec.substr(prefix.size());
  }
  return spec;
}

Result<ControlRequest> ParseControlRequest(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.size() > kMaxControlLine) {
    return Bad(StrFormat("request longer than %zu bytes", kMaxControlLine));
  }
  for (char c : line) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      return Bad(StrFormat("request holds a byte 0x%02x that is not printable ASCII",
                           static_cast<unsigned char>(c)));
    }
  }
  std::vector<std::string_view> words;
  for (size_t start = 0; start < line.size();) {
    size_t end = line.find(' ', start);
    if (end == std::string_view::npos) end = line.size();
    if (end > start) {
      if (words.size() == kMaxWords) return Bad("too many words in the request");
      words.push_back(line.substr(start, end - start));
    }
    start = end + 1;
  }
  if (words.empty()) return Bad("empty request (list, stats, pause, resume, resize, snapshot)");

  ControlRequest request;
  std::string_view verb = words[0];
  std::vector<std::string_view> args(words.begin() + 1, words.end());
  auto device_at = [&](size_t index) -> Status {
    if (index >= args.size()) return Bad(std::string(verb) + " needs a device (DOMID/DEVID)");
    Result<DeviceName> name = ParseDeviceName(args[index]);
    if (!name.ok()) return name.status();
    request.device = std::string(args[index]);
    return Status::Ok();
  };
  auto no_more = [&](size_t count) -> Status {
    if (args.size() > count) return Bad("unexpected " + Echo(args[count]) + " after " + std::string(verb));
    return Status::Ok();
  };

  if (verb == "list") {
    request.command = ControlCommand::kList;
    BLK_RETURN_IF_ERROR(no_more(0));
  } else if (verb == "stats") {
    request.command = ControlCommand::kStats;
    for (std::string_view arg : args) {
      if (arg == "--json") {
        if (request.json) return Bad("--json given twice");
        request.json = true;
      } else if (arg.starts_with("-")) {
        return Bad("unknown option " + Echo(arg) + " of stats (--json)");
      } else {
        if (!request.device.empty()) return Bad("stats takes at most one device");
        Result<DeviceName> name = ParseDeviceName(arg);
        if (!name.ok()) return name.status();
        request.device = std::string(arg);
      }
    }
  } else if (verb == "pause" || verb == "snapshot") {
    bool snapshot = verb == "snapshot";
    request.command = snapshot ? ControlCommand::kSnapshot : ControlCommand::kPause;
    BLK_RETURN_IF_ERROR(device_at(0));
    size_t next = 1;
    if (snapshot) {
      if (args.size() < 2 || args[1].starts_with("-")) return Bad("snapshot needs a child path (CHILD.vhd)");
      if (!args[1].starts_with("/")) {
        return Bad("snapshot: " + Echo(args[1]) + " is relative; the daemon needs an absolute path");
      }
      request.image = std::string(args[1]);
      next = 2;
    }
    if (next < args.size()) {
      std::string_view value;
      if (args[next] == "--timeout") {
        if (next + 1 >= args.size()) return Bad("--timeout needs a number of milliseconds");
        value = args[next + 1];
        next += 2;
      } else if (args[next].starts_with("--timeout=")) {
        value = args[next].substr(10);
        next += 1;
      } else {
        return Bad("unexpected " + Echo(args[next]) + " after " + std::string(verb) + " (--timeout MS)");
      }
      uint64_t ms = 0;
      if (!ParseDecimal(value, kMaxPauseTimeoutMs, &ms) || ms == 0) {
        return Bad(StrFormat("bad --timeout %s: milliseconds from 1 to %u", Echo(value).c_str(),
                             kMaxPauseTimeoutMs));
      }
      request.timeout_ms = static_cast<uint32_t>(ms);
    }
    BLK_RETURN_IF_ERROR(no_more(next));
  } else if (verb == "resume") {
    request.command = ControlCommand::kResume;
    BLK_RETURN_IF_ERROR(device_at(0));
    size_t next = 1;
    if (next < args.size()) {
      if (args[next] == "--image") {
        if (next + 1 >= args.size()) return Bad("--image needs an image (vhd:PATH, raw:PATH or PATH)");
        request.image = std::string(args[next + 1]);
        next += 2;
      } else if (args[next].starts_with("--image=")) {
        request.image = std::string(args[next].substr(8));
        next += 1;
      } else {
        return Bad("unexpected " + Echo(args[next]) + " after resume DEVICE (--image IMAGE)");
      }
      if (request.image.empty()) return Bad("--image needs an image (vhd:PATH, raw:PATH or PATH)");
      if (!ImagePathOf(request.image).starts_with("/")) {
        return Bad("--image " + Echo(request.image) + " is relative; the daemon needs an absolute path");
      }
    }
    BLK_RETURN_IF_ERROR(no_more(next));
  } else if (verb == "resize") {
    request.command = ControlCommand::kResize;
    BLK_RETURN_IF_ERROR(device_at(0));
    if (args.size() < 2) return Bad("resize needs a size (bytes, or with K, M, G, T)");
    Result<uint64_t> size = ParseControlSize(args[1]);
    if (!size.ok()) return size.status();
    request.size_bytes = *size;
    BLK_RETURN_IF_ERROR(no_more(2));
  } else {
    return Bad("unknown command " + Echo(verb) + " (list, stats, pause, resume, resize, snapshot)");
  }
  return request;
}

std::string FormatControlRequest(const ControlRequest& request) {
  std::string line = ControlCommandName(request.command);
  if (!request.device.empty()) {
    line += ' ';
    line += request.device;
  }
  switch (request.command) {
    case ControlCommand::kStats:
      if (request.json) line += " --json";
      break;
    case ControlCommand::kPause:
      line += StrFormat(" --timeout %u", request.timeout_ms);
      break;
    case ControlCommand::kSnapshot:
      line += " " + request.image + StrFormat(" --timeout %u", request.timeout_ms);
      break;
    case ControlCommand::kResize:
      line += StrFormat(" %llu", static_cast<unsigned long long>(request.size_bytes));
      break;
    case ControlCommand::kResume:
      if (!request.image.empty()) line += " --image " + request.image;
      break;
    case ControlCommand::kList:
      break;
  }
  return line;
}

std::string FormatOkReply(const std::vector<std::string>& lines) {
  std::string reply = "ok " + std::to_string(lines.size()) + "\n";
  for (const std::string& line : lines) reply += Printable(line) + "\n";
  return reply;
}

std::string FormatErrorReply(std::string_view message) {
  return "error " + Printable(message.empty() ? std::string_view("unknown failure") : message) + "\n";
}

Result<ControlReplyHead> ParseControlReplyHead(std::string_view line) {
  ControlReplyHead head;
  if (line.starts_with("ok ")) {
    uint64_t lines = 0;
    if (!ParseDecimal(line.substr(3), kMaxReplyLines, &lines)) {
      return Status::ProtocolError("bad reply " + Echo(line));
    }
    head.ok = true;
    head.lines = static_cast<size_t>(lines);
    return head;
  }
  if (line.starts_with("error ") && line.size() > 6) {
    head.message = Printable(line.substr(6));
    return head;
  }
  return Status::ProtocolError("bad reply " + Echo(line));
}

std::vector<std::string> FormatDeviceList(const std::vector<ControlDeviceInfo>& devices) {
  std::vector<std::string> lines;
  for (const ControlDeviceInfo& d : devices) {
    lines.push_back(StrFormat("%s state=%s io=%s size=%llu queues=%zu features=%s images=%s",
                              EscapeField(d.name).c_str(), EscapeField(d.state).c_str(),
                              EscapeField(d.io).c_str(), static_cast<unsigned long long>(d.size_bytes),
                              d.queues, Join(d.features, true).c_str(), Join(d.images, true).c_str()));
  }
  return lines;
}

std::vector<std::string> FormatDeviceStats(const std::vector<ControlDeviceStats>& devices, bool json) {
  std::vector<std::string> lines;
  if (json) {
    std::string doc = "{\"version\":" + std::to_string(kControlProtocolVersion) + ",\"devices\":[";
    for (size_t i = 0; i < devices.size(); ++i) {
      const ControlDeviceStats& s = devices[i];
      doc += StrFormat(
          "%s{\"device\":\"%s\",\"io\":\"%s\",\"oo_req\":%llu,\"rd_req\":%llu,\"wr_req\":%llu,\"f_req\":%llu,"
          "\"ds_req\":%llu,\"rd_sect\":%llu,\"wr_sect\":%llu,\"bad_req\":%llu,\"io_errors\":%llu,"
          "\"in_flight\":%u,\"latency_us\":{\"count\":%llu,\"p50\":%llu,\"p99\":%llu,\"p99.9\":%llu,"
          "\"max\":%llu}}",
          i == 0 ? "" : ",", EscapeField(s.name).c_str(), EscapeField(s.io).c_str(),
          static_cast<unsigned long long>(s.oo_req), static_cast<unsigned long long>(s.rd_req),
          static_cast<unsigned long long>(s.wr_req), static_cast<unsigned long long>(s.f_req),
          static_cast<unsigned long long>(s.ds_req), static_cast<unsigned long long>(s.rd_sect),
          static_cast<unsigned long long>(s.wr_sect), static_cast<unsigned long long>(s.bad_req),
          static_cast<unsigned long long>(s.io_errors), s.in_flight,
          static_cast<unsigned long long>(s.latency_count),
          static_cast<unsigned long long>(Micros(s.latency_p50_ns)),
          static_cast<unsigned long long>(Micros(s.latency_p99_ns)),
          static_cast<unsigned long long>(Micros(s.latency_p999_ns)),
          static_cast<unsigned long long>(Micros(s.latency_max_ns)));
    }
    lines.push_back(doc + "]}");
    return lines;
  }
  for (const ControlDeviceStats& s : devices) {
    lines.push_back(StrFormat(
        "%s io=%s in_flight=%u oo_req=%llu rd_req=%llu wr_req=%llu f_req=%llu ds_req=%llu rd_sect=%llu "
        "wr_sect=%llu bad_req=%llu io_errors=%llu lat_p50_us=%llu lat_p99_us=%llu lat_p999_us=%llu "
        "lat_max_us=%llu",
        EscapeField(s.name).c_str(), EscapeField(s.io).c_str(), s.in_flight,
        static_cast<unsigned long long>(s.oo_req), static_cast<unsigned long long>(s.rd_req),
        static_cast<unsigned long long>(s.wr_req), static_cast<unsigned long long>(s.f_req),
        static_cast<unsigned long long>(s.ds_req), static_cast<unsigned long long>(s.rd_sect),
        static_cast<unsigned long long>(s.wr_sect), static_cast<unsigned long long>(s.bad_req),
        static_cast<unsigned long long>(s.io_errors),
        static_cast<unsigned long long>(Micros(s.latency_p50_ns)),
        static_cast<unsigned long long>(Micros(s.latency_p99_ns)),
        static_cast<unsigned long long>(Micros(s.latency_p999_ns)),
        static_cast<unsigned long long>(Micros(s.latency_max_ns))));
  }
  return lines;
}

std::string FormatStatsFile(const ControlDeviceStats& s) {
  return StrFormat(
      "oo_req %llu\nrd_req %llu\nwr_req %llu\nf_req %llu\nds_req %llu\nrd_sect %llu\nwr_sect %llu\n"
      "bad_req %llu\nio_errors %llu\nin_flight %u\nio %s\nlat_p50_us %llu\nlat_p99_us %llu\n"
      "lat_p999_us %llu\nlat_max_us %llu\n",
      static_cast<unsigned long long>(s.oo_req), static_cast<unsigned long long>(s.rd_req),
      static_cast<unsigned long long>(s.wr_req), static_cast<unsigned long long>(s.f_req),
      static_cast<unsigned long long>(s.ds_req), static_cast<unsigned long long>(s.rd_sect),
      static_cast<unsigned long long>(s.wr_sect), static_cast<unsigned long long>(s.bad_req),
      static_cast<unsigned long long>(s.io_errors), s.in_flight, EscapeField(s.io).c_str(),
      static_cast<unsigned long long>(Micros(s.latency_p50_ns)),
      static_cast<unsigned long long>(Micros(s.latency_p99_ns)),
      static_cast<unsigned long long>(Micros(s.latency_p999_ns)),
      static_cast<unsigned long long>(Micros(s.latency_max_ns)));
}

}  // namespace blk
