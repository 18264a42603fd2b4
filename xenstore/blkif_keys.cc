// blkif handshake keys: strict number parsing, params/mode decoding, and the frontend's ring transport.
#include "xenstore/blkif_keys.h"

#include <cstdint>
#include <unordered_set>
#include <utility>

// Xen's public headers need the fixed-width integer types declared before them.
#include <xen/io/protocols.h>

#include "xenstore/xenstore.h"

namespace blk {
namespace {

constexpr uint32_t kFirstReservedDomid = 0x7FF0;      // DOMID_FIRST_RESERVED
constexpr uint32_t kMaxEventChannelPorts = 1u << 17;  // the FIFO ABI's limit, the larger of the two
constexpr size_t kMaxQuotedValue = 40;

// A hostile value, shortened and made printable for a log line.
std::string Quote(std::string_view value) {
  std::string quoted = "\"";
  for (size_t i = 0; i < value.size() && i < kMaxQuotedValue; ++i) {
    unsigned char c = static_cast<unsigned char>(value[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      quoted.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      quoted += "\\x";
      quoted.push_back(kHex[c >> 4]);
      quoted.push_back(kHex[c & 15]);
    }
  }
  if (value.size() > kMaxQuotedValue) quoted += "...";
  quoted += '"';
  return quoted;
}

Status Invalid(std::string_view path, std::string_view why) {
  std::string message(path);
  message += ": ";
  message += why;
  return Status::InvalidArgument(std::move(message));
}

bool ValidXsPath(std::string_view path) {
  if (path.size() < 2 || path[0] != '/' || path.back() == '/' || path.find("//") != std::string_view::npos) {
    return false;
  }
  for (char c : path) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '/' || c == '_' || c == '@';
    if (!ok) return false;
  }
  return true;
}

Result<uint64_t> ReadNumber(const KeyReader& reader, std::string_view key, uint64_t max) {
  Result<std::string> text = reader.ReadRequired(key);
  if (!text.ok()) return text.status();
  return ParseXsDecimal(*text, max, reader.PathOf(key));
}

Result<bool> ReadOptionalBool(const KeyReader& reader, std::string_view key, bool absent) {
  Result<std::optional<std::string>> text = reader.ReadOptional(key);
  if (!text.ok()) return text.status();
  if (!text->has_value()) return absent;
  return ParseXsBool(**text, reader.PathOf(key));
}

}  // namespace

KeyReader KeyReader::ForStore(XenStore& store, std::string base) {
  return KeyReader(std::move(base), [&store](const std::string& path) { return store.Read(path); });
}

KeyReader KeyReader::ForTransaction(Transaction& transaction, std::string base) {
  return KeyReader(std::move(base),
                   [&transaction](const std::string& path) { return transaction.Read(path); });
}

std::string KeyReader::PathOf(std::string_view key) const {
  std::string path = base_;
  path += '/';
  path += key;
  return path;
}

Result<std::optional<std::string>> KeyReader::ReadOptional(std::string_view key) const {
  Result<std::string> value = read_(PathOf(key));
  if (value.ok()) return std::optional<std::string>(std::move(value).value());
  if (value.status().code() == Status::Code::kNotFound) return std::optional<std::string>();
  return value.status();
}

Result<std::string> KeyReader::ReadRequired(std::string_view key) const {
  Result<std::optional<std::string>> value = ReadOptional(key);
  if (!value.ok()) return value.status();
  if (!value->has_value()) return Status::NotFound("missing key " + PathOf(key));
  return std::move(**value);
}

Result<uint64_t> ParseXsDecimal(std::string_view text, uint64_t max, std::string_view path) {
  if (text.empty()) return Invalid(path, "empty where a number was expected");
  if (text.size() > 1 && text[0] == '0') return Invalid(path, Quote(text) + " has a leading zero");
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return Invalid(path, Quote(text) + " is not a decimal number");
    uint64_t digit = static_cast<uint64_t>(c - '0');
    if (digit > max || value > (max - digit) / 10)
      return Invalid(path, Quote(text) + " exceeds " + std::to_string(max));
    value = value * 10 + digit;
  }
  return value;
}

Result<bool> ParseXsBool(std::string_view text, std::string_view path) {
  if (text == "0") return false;
  if (text == "1") return true;
  return Invalid(path, Quote(text) + " is not 0 or 1");
}

Result<XenbusState> ParseXenbusState(std::string_view text, std::string_view path) {
  Result<uint64_t> value = ParseXsDecimal(text, XenbusStateReconfigured, path);
  if (!value.ok()) return value.status();
  return static_cast<XenbusState>(*value);
}

Result<DiskParams> ParseDiskParams(std::string_view params) {
  DiskParams disk;
  std::string_view path = params;
  disk.probe = params.starts_with('/');
  if (!params.starts_with('/')) {
    size_t colon = params.find(':');
    if (colon == std::string_view::npos)
      return Status::InvalidArgument("params " + Quote(params) + ": not a path");
    std::string_view prefix = params.substr(0, colon);
    path = params.substr(colon + 1);
    if (prefix == "aio" || prefix == "raw") {
      disk.format = DiskFormat::kRaw;
    } else if (prefix == "vhd") {
      disk.format = DiskFormat::kVhd;
    } else {
      return Status::NotSupported("params " + Quote(params) + ": unsupported disk format " + Quote(prefix));
    }
  }
  if (!path.starts_with('/'))
    return Status::InvalidArgument("params " + Quote(params) + ": path is not absolute");
  if (path.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument("params " + Quote(params) + ": path contains NUL");
  }
  disk.path = path;
  return disk;
}

Result<BackendConfig> ReadBackendConfig(const KeyReader& backend) {
  BackendConfig config;
  Result<std::string> params = backend.ReadRequired("params");
  if (!params.ok()) return params.status();
  Result<DiskParams> disk = ParseDiskParams(*params);
  if (!disk.ok()) return disk.status().Annotate(backend.PathOf("params") + ": ");
  config.disk = std::move(disk).value();

  Result<std::string> mode = backend.ReadRequired("mode");
  if (!mode.ok()) return mode.status();
  if (*mode == "r") {
    config.writable = false;
  } else if (*mode == "w" || *mode == "w!") {
    config.writable = true;
    config.shared_writable = *mode == "w!";
  } else {
    return Invalid(backend.PathOf("mode"), Quote(*mode) + " is not r, w or w!");
  }

  Result<std::optional<std::string>> type = backend.ReadOptional("device-type");
  if (!type.ok()) return type.status();
  if (!type->has_value() || **type == "disk") {
    config.device_type = DeviceType::kDisk;
  } else if (**type == "cdrom") {
    config.device_type = DeviceType::kCdrom;
  } else {
    return Invalid(backend.PathOf("device-type"), Quote(**type) + " is not disk or cdrom");
  }

  Result<uint64_t> frontend_id = ReadNumber(backend, "frontend-id", kFirstReservedDomid - 1);
  if (!frontend_id.ok()) return frontend_id.status();
  config.frontend_id = static_cast<uint32_t>(*frontend_id);

  Result<std::string> frontend = backend.ReadRequired("frontend");
  if (!frontend.ok()) return frontend.status();
  std::string home = "/local/domain/" + std::to_string(config.frontend_id) + "/";
  if (!ValidXsPath(*frontend) || !frontend->starts_with(home) || frontend->size() == home.size()) {
    return Invalid(backend.PathOf("frontend"), Quote(*frontend) + " is not a path under " + home);
  }
  config.frontend_path = std::move(frontend).value();

  Result<bool> online = ReadOptionalBool(backend, "online", true);
  if (!online.ok()) return online.status();
  config.online = *online;
  Result<bool> discard = ReadOptionalBool(backend, "discard-enable", true);
  if (!discard.ok()) return discard.status();
  config.discard_enable = *discard;
  return config;
}

std::optional<std::string> CanonicalProtocol(std::optional<std::string_view> protocol) {
  if (!protocol.has_value()) return std::string(XEN_IO_PROTO_ABI_NATIVE);
  if (*protocol == XEN_IO_PROTO_ABI_X86_32 || *protocol == XEN_IO_PROTO_ABI_X86_64)
    return std::string(*protocol);
  return std::nullopt;
}

namespace {

// One queue's ring references and event channel, from `dir` ("" for the frontend directory itself).
Status ReadQueue(const KeyReader& frontend, const std::string& dir, uint32_t order, bool order_given,
                 QueueTransport* queue) {
  uint32_t pages = 1u << order;
  if (!order_given) {
    Result<uint64_t> ref = ReadNumber(frontend, dir + "ring-ref", UINT32_MAX);
    if (!ref.ok()) return ref.status();
    queue->ring_refs.push_back(static_cast<uint32_t>(*ref));
  } else {
    for (uint32_t i = 0; i < pages; ++i) {
      Result<uint64_t> ref = ReadNumber(frontend, dir + "ring-ref" + std::to_string(i), UINT32_MAX);
      if (!ref.ok()) return ref.status();
      queue->ring_refs.push_back(static_cast<uint32_t>(*ref));
    }
    std::string extra = dir + "ring-ref" + std::to_string(pages);
    Result<std::optional<std::string>> beyond = frontend.ReadOptional(extra);
    if (!beyond.ok()) return beyond.status();
    if (beyond->has_value()) {
      return Invalid(frontend.PathOf(extra), "present but ring-page-order " + std::to_string(order) +
                                                 " means " + std::to_string(pages) + " ring pages");
    }
  }
  Result<uint64_t> port = ReadNumber(frontend, dir + "event-channel", kMaxEventChannelPorts - 1);
  if (!port.ok()) return port.status();
  if (*port == 0)
    return Invalid(frontend.PathOf(dir + "event-channel"), "port 0 is never a valid event channel");
  queue->event_channel = static_cast<uint32_t>(*port);
  return Status::Ok();
}

}  // namespace

Result<FrontendTransport> ReadFrontendTransport(const KeyReader& frontend, const TransportLimits& limits) {
  FrontendTransport transport;

  Result<std::optional<std::string>> order_text = frontend.ReadOptional("ring-page-order");
  if (!order_text.ok()) return order_text.status();
  bool order_given = order_text->has_value();
  if (order_given) {
    std::string path = frontend.PathOf("ring-page-order");
    Result<uint64_t> order = ParseXsDecimal(**order_text, UINT32_MAX, path);
    if (!order.ok()) return order.status();
    if (*order > limits.max_ring_page_order) {
      return Invalid(path, std::to_string(*order) + " exceeds the advertised max-ring-page-order " +
                               std::to_string(limits.max_ring_page_order));
    }
    transport.ring_page_order = static_cast<uint32_t>(*order);
  }

  uint32_t queues = 1;
  Result<std::optional<std::string>> queues_text = frontend.ReadOptional("multi-queue-num-queues");
  if (!queues_text.ok()) return queues_text.status();
  if (queues_text->has_value()) {
    std::string path = frontend.PathOf("multi-queue-num-queues");
    Result<uint64_t> count = ParseXsDecimal(**queues_text, UINT32_MAX, path);
    if (!count.ok()) return count.status();
    if (*count == 0) return Invalid(path, "0 queues");
    if (*count > limits.max_queues) {
      return Invalid(path, std::to_string(*count) + " exceeds the advertised multi-queue-max-queues " +
                               std::to_string(limits.max_queues));
    }
    queues = static_cast<uint32_t>(*count);
  }

  transport.queues.resize(queues);
  std::unordered_set<uint32_t> refs_seen;
  std::unordered_set<uint32_t> ports_seen;
  for (uint32_t q = 0; q < queues; ++q) {
    std::string dir = queues == 1 ? std::string() : "queue-" + std::to_string(q) + "/";
    QueueTransport& queue = transport.queues[q];
    BLK_RETURN_IF_ERROR(ReadQueue(frontend, dir, transport.ring_page_order, order_given, &queue));
    // Two rings over one page, or two queues on one port, would let the frontend alias our queues.
    for (size_t i = 0; i < queue.ring_refs.size(); ++i) {
      if (!refs_seen.insert(queue.ring_refs[i]).second) {
        std::string key = dir + (order_given ? "ring-ref" + std::to_string(i) : std::string("ring-ref"));
        return Invalid(frontend.PathOf(key), "grant reference " + std::to_string(queue.ring_refs[i]) +
                                                 " is used for another ring page");
      }
    }
    if (!ports_seen.insert(queue.event_channel).second) {
      return Invalid(frontend.PathOf(dir + "event-channel"),
                     "port " + std::to_string(queue.event_channel) + " is used by another queue");
    }
  }
  if (queues > 1) {
    std::string extra = "queue-" + std::to_string(queues);
    Result<std::optional<std::string>> beyond = frontend.ReadOptional(extra);
    if (!beyond.ok()) return beyond.status();
    if (beyond->has_value()) {
      return Invalid(frontend.PathOf(extra),
                     "present but multi-queue-num-queues is " + std::to_string(queues));
    }
  }

  Result<std::optional<std::string>> protocol = frontend.ReadOptional("protocol");
  if (!protocol.ok()) return protocol.status();
  std::optional<std::string> canonical =
      CanonicalProtocol(protocol->has_value() ? std::optional<std::string_view>(**protocol) : std::nullopt);
  if (!canonical) {
    return Status::NotSupported(frontend.PathOf("protocol") + ": unknown protocol " + Quote(**protocol));
  }
  transport.protocol = std::move(*canonical);

  Result<bool> persistent = ReadOptionalBool(frontend, "feature-persistent", false);
  if (!persistent.ok()) return persistent.status();
  transport.persistent = *persistent;
  Result<bool> large_sectors = ReadOptionalBool(frontend, "feature-large-sector-size", false);
  if (!large_sectors.ok()) return large_sectors.status();
  transport.large_sector_size = *large_sectors;
  return transport;
}

}  // namespace blk
