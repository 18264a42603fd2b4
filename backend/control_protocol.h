// The control socket's line protocol (version 1), as pure functions over strings so that it can be tested
// and fuzzed without a socket.
//
// The server greets with "blkbackd-control 1". Then, any number of times: the client sends one request line
// (at most kMaxControlLine bytes, printable ASCII, words separated by spaces, ended by "\n"), and the server
// answers either "ok N" followed by exactly N body lines, or one line "error <message>". A client therefore
// always knows where a reply ends. Requests:
//
//   list                                  every device, one line each
//   stats [DOMID/DEVID] [--json]          counters, in-flight requests, latency percentiles
//   pause DOMID/DEVID [--timeout MS]      stop the rings, drain, sync; answered once paused (or timed out)
//   resume DOMID/DEVID [--image IMAGE]    serve everything queued meanwhile; with --image, first reopen the
//                                         paused device on IMAGE (vhd:PATH, raw:PATH or a probed PATH)
//   snapshot DOMID/DEVID CHILD [--timeout MS]
//                                         pause, make CHILD a differencing VHD of the current (VHD) leaf,
//                                         switch the device to it, resume
//   resize DOMID/DEVID SIZE               grow the image (bytes, or with a K/M/G/T suffix, powers of 1024)
//
// Threading: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace blk {

inline constexpr int kControlProtocolVersion = 1;
inline constexpr std::string_view kControlGreetingPrefix = "blkbackd-control ";
inline constexpr size_t kMaxControlLine = 1024;  // bytes of a request line, without its "\n"
inline constexpr size_t kMaxReplyLines = 1u << 16;
inline constexpr uint32_t kDefaultPauseTimeoutMs = 5000;
inline constexpr uint32_t kMaxPauseTimeoutMs = 3600 * 1000;

// "blkbackd-control 1\n".
std::string ControlGreeting();
// Checks a greeting line (without "\n"); an "error ..." line comes back as that error.
Status CheckControlGreeting(std::string_view line);

enum class ControlCommand : uint8_t { kList, kStats, kPause, kResume, kResize, kSnapshot };
const char* ControlCommandName(ControlCommand command);

struct ControlRequest {
  ControlCommand command = ControlCommand::kList;
  std::string device;  // "DOMID/DEVID"; empty for list and for stats of every device
  bool json = false;
  uint32_t timeout_ms = kDefaultPauseTimeoutMs;
  uint64_t size_bytes = 0;
  std::string image;  // resume --image: the new image ("vhd:PATH", "raw:PATH" or PATH); snapshot: the child
};

// The path inside an image spec: after a "vhd:", "raw:" or "aio:" prefix, or the whole spec.
std::string_view ImagePathOf(std::string_view spec);

// Parses one request line (without its "\n"; one trailing "\r" is tolerated). Every malformed line gives an
// InvalidArgument status whose message is one line fit to send back.
Result<ControlRequest> ParseControlRequest(std::string_view line);
// The line (without "\n") that ParseControlRequest parses back into `request`.
std::string FormatControlRequest(const ControlRequest& request);

struct DeviceName {
  uint32_t domid;
  uint32_t devid;
};
// "DOMID/DEVID", both decimal without leading zeros: a domid below 0x7ff0, a devid below 2^31.
Result<DeviceName> ParseDeviceName(std::string_view text);
// Bytes, or a number with a K, M, G or T suffix (powers of 1024); at most 2^62.
Result<uint64_t> ParseControlSize(std::string_view text);

// Replies. Body lines are made printable (control characters become '?') so that they cannot end early.
std::string FormatOkReply(const std::vector<std::string>& lines);
std::string FormatErrorReply(std::string_view message);
struct ControlReplyHead {
  bool ok = false;
  size_t lines = 0;     // body lines following an "ok"
  std::string message;  // of an "error"
};
Result<ControlReplyHead> ParseControlReplyHead(std::string_view line);

// What `list` says about a device.
struct ControlDeviceInfo {
  std::string name;   // "DOMID/DEVID"
  std::string state;  // the handshake's state ("connected", "init-wait", ...)
  std::string io;     // "running", "pausing" or "paused"
  std::vector<std::string> images;
  std::vector<std::string> features;  // negotiated: "flush-cache", "barrier", "ring-pages=4", ...
  size_t queues = 0;
  uint64_t size_bytes = 0;
};

// What `stats` says about a device: Linux blkback's counters and more.
struct ControlDeviceStats {
  std::string name;
  std::string io;  // "running", "pausing" or "paused"
  uint64_t oo_req = 0, rd_req = 0, wr_req = 0, f_req = 0, ds_req = 0, rd_sect = 0, wr_sect = 0;
  uint64_t bad_req = 0, io_errors = 0;
  uint32_t in_flight = 0;
  uint64_t latency_count = 0;
  uint64_t latency_p50_ns = 0, latency_p99_ns = 0, latency_p999_ns = 0, latency_max_ns = 0;
};

std::vector<std::string> FormatDeviceList(const std::vector<ControlDeviceInfo>& devices);
// One "key=value ..." line per device, or one JSON document on one line.
std::vector<std::string> FormatDeviceStats(const std::vector<ControlDeviceStats>& devices, bool json);
// The statistics file of one device: "name value" lines, as blkback's sysfs files hold one value each.
std::string FormatStatsFile(const ControlDeviceStats& stats);

}  // namespace blk
