// Parsing and validation of the blkif handshake keys: what the toolstack writes in the backend directory
// (params, mode, device-type, frontend, frontend-id, online) and what the frontend writes in its own
// directory (ring-ref / ring-page-order + ring-refN, multi-queue-num-queues + queue-N/..., event-channel,
// protocol, feature-persistent, feature-large-sector-size), after <xen/io/blkif.h> and as Linux blkfront and
// libxl write them.
//
// Frontend keys are hostile. Numbers are decimal digits only (no sign, space, leading zero, or overflow),
// every count is bounded by what the backend advertised, and every failure is a Status naming the full key
// path and why, never a crash. Pure functions over a KeyReader, so tests drive them from a map and the daemon
// from a XenStore or a Transaction. Thread-compatible.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

// Xen's public headers need the fixed-width integer types declared before them.
#include <xen/io/xenbus.h>

namespace blk {

class XenStore;
class Transaction;

// Reads keys of one xenstore directory.
class KeyReader {
 public:
  // `read` gets a full path and returns its value, or a kNotFound status if the node does not exist.
  using ReadFunction = std::function<Result<std::string>(const std::string& path)>;

  KeyReader(std::string base, ReadFunction read) : base_(std::move(base)), read_(std::move(read)) {}
  static KeyReader ForStore(XenStore& store, std::string base);
  static KeyReader ForTransaction(Transaction& transaction, std::string base);

  const std::string& base() const { return base_; }
  std::string PathOf(std::string_view key) const;
  // nullopt if absent; other failures (permission, connection) stay errors.
  Result<std::optional<std::string>> ReadOptional(std::string_view key) const;
  // Absent is a kNotFound error naming the path.
  Result<std::string> ReadRequired(std::string_view key) const;

 private:
  std::string base_;
  ReadFunction read_;
};

// A decimal number as blkfront and libxl write it ("%u"): digits only, no leading zero unless the number is
// 0, at most `max`. `path` names the key in the error.
Result<uint64_t> ParseXsDecimal(std::string_view text, uint64_t max, std::string_view path);
// "0" or "1".
Result<bool> ParseXsBool(std::string_view text, std::string_view path);

// A peer's `state` key: a decimal XenbusState (<xen/io/xenbus.h>), Unknown (0) to Reconfigured (8).
Result<XenbusState> ParseXenbusState(std::string_view text, std::string_view path);

// ---- Toolstack keys (backend directory) ----

enum class DiskFormat { kRaw, kVhd };
enum class DeviceType { kDisk, kCdrom };

struct DiskParams {
  DiskFormat format = DiskFormat::kRaw;
  std::string path;    // absolute
  bool probe = false;  // a bare path: no prefix named the format, the file's own footer decides
  bool operator==(const DiskParams&) const = default;
};

// `params`: "/path" (raw), "aio:/path" or "raw:/path" (raw), "vhd:/path". Other prefixes ("qcow2:",
// "tapdisk:aio:/x", "file:") are errors: a format we cannot serve must fail the device, not be guessed.
Result<DiskParams> ParseDiskParams(std::string_view params);

struct BackendConfig {
  DiskParams disk;
  bool writable = false;         // mode "w" or "w!"
  bool shared_writable = false;  // mode "w!": the toolstack allows other writers of the same image
  DeviceType device_type = DeviceType::kDisk;
  std::string frontend_path;
  uint32_t frontend_id = 0;
  bool online = true;
  bool discard_enable = true;  // discard-enable: the toolstack may forbid discard (libxl's "no-discard")
};

// Reads and validates the toolstack's keys. `frontend` must lie under /local/domain/<frontend-id>/.
Result<BackendConfig> ReadBackendConfig(const KeyReader& backend);

// ---- Frontend keys (frontend directory) ----

// What the backend advertised (max-ring-page-order, multi-queue-max-queues); the frontend may not exceed it.
struct TransportLimits {
  uint32_t max_ring_page_order = 0;
  uint32_t max_queues = 1;
};

struct QueueTransport {
  std::vector<uint32_t> ring_refs;  // 1 << ring_page_order grant references
  uint32_t event_channel = 0;
  bool operator==(const QueueTransport&) const = default;
};

struct FrontendTransport {
  uint32_t ring_page_order = 0;
  std::vector<QueueTransport> queues;  // at least one
  std::string protocol;  // XEN_IO_PROTO_ABI_X86_32 or XEN_IO_PROTO_ABI_X86_64; absent means the native one
  bool persistent = false;
  bool large_sector_size = false;
};

// The canonical name for a frontend's `protocol` value (absent means native), or nullopt if this backend does
// not speak it (anything but the x86_32 and x86_64 ABIs).
std::optional<std::string> CanonicalProtocol(std::optional<std::string_view> protocol);

// Reads and validates the frontend's transport keys (the backend reads them when the frontend is
// Initialised). Follows blkback's reading: ring-page-order absent means one page in "ring-ref"; present means
// ring-ref0..N-1; multi-queue-num-queues absent or 1 means the keys sit in the frontend directory itself, N >
// 1 in queue-0..N-1.
Result<FrontendTransport> ReadFrontendTransport(const KeyReader& frontend, const TransportLimits& limits);

}  // namespace blk
