// Fuzz target: the xenstore keys a frontend (and, for completeness, a toolstack) writes, through
// xenstore/blkif_keys.h: ReadFrontendTransport (ring-ref / ring-page-order + ring-refN, event-channel,
// multi-queue-num-queues + queue-N/..., protocol, feature keys) and ReadBackendConfig over an in-memory
// directory, and the number, bool, state, params and protocol parsers on every value. Checks that what is
// accepted is what the keys say, within what the backend advertised, with no ring page or port shared.
//
// Input: one byte of advertised limits, then lines "key=value" (a value may hold any byte but a newline; the
// value "\x01" makes reading that key fail with a permission error, as a xenstore ACL would).
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "ring/blkif_abi.h"
#include "tests/fuzz/fuzz_input.h"
#include "xenstore/blkif_keys.h"

namespace blk {
namespace {

constexpr std::string_view kFrontend = "/local/domain/7/device/vbd/51712";
constexpr std::string_view kBackend = "/local/domain/0/backend/vbd/7/51712";

using Keys = std::map<std::string, std::string, std::less<>>;

Keys ParseLines(std::string_view text) {
  Keys keys;
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    size_t equals = line.find('=');
    if (equals == std::string_view::npos) continue;
    keys[std::string(line.substr(0, equals))] = std::string(line.substr(equals + 1));
  }
  return keys;
}

KeyReader ReaderOver(const Keys& keys, std::string_view base) {
  return KeyReader(std::string(base), [&keys, base](const std::string& path) -> Result<std::string> {
    FUZZ_CHECK(path.size() > base.size() + 1 && path.starts_with(base) && path[base.size()] == '/');
    auto found = keys.find(std::string_view(path).substr(base.size() + 1));
    if (found == keys.end()) return Status::NotFound(path);
    if (found->second == "\x01") return Status::Error(Status::Code::kPermissionDenied, "denied " + path);
    return found->second;
  });
}

// The value of `key` as a number, for comparing with what the parser returned.
uint64_t Number(const Keys& keys, const std::string& key) {
  auto found = keys.find(key);
  FUZZ_CHECK(found != keys.end());
  return std::stoull(found->second);
}

void CheckTransport(const Keys& keys, const TransportLimits& limits, const FrontendTransport& transport) {
  FUZZ_CHECK(transport.ring_page_order <= limits.max_ring_page_order);
  FUZZ_CHECK(!transport.queues.empty() && transport.queues.size() <= limits.max_queues);
  FUZZ_CHECK(ParseProtocol(transport.protocol).has_value());
  bool order_given = keys.contains("ring-page-order");
  std::set<uint32_t> refs, ports;
  for (size_t q = 0; q < transport.queues.size(); ++q) {
    const QueueTransport& queue = transport.queues[q];
    std::string dir = transport.queues.size() == 1 ? "" : "queue-" + std::to_string(q) + "/";
    FUZZ_CHECK(queue.ring_refs.size() == size_t{1} << transport.ring_page_order);
    for (size_t i = 0; i < queue.ring_refs.size(); ++i) {
      std::string key = dir + (order_given ? "ring-ref" + std::to_string(i) : std::string("ring-ref"));
      FUZZ_CHECK(Number(keys, key) == queue.ring_refs[i]);
      FUZZ_CHECK(refs.insert(queue.ring_refs[i]).second);
    }
    FUZZ_CHECK(queue.event_channel != 0 && queue.event_channel < (1u << 17));
    FUZZ_CHECK(Number(keys, dir + "event-channel") == queue.event_channel);
    FUZZ_CHECK(ports.insert(queue.event_channel).second);
  }
}

void CheckValueParsers(const std::string& value) {
  const std::string path = "/fuzz/value";
  for (uint64_t max : {uint64_t{0}, uint64_t{1}, uint64_t{4}, uint64_t{UINT32_MAX}, UINT64_MAX}) {
    Result<uint64_t> number = ParseXsDecimal(value, max, path);
    if (number.ok()) {
      FUZZ_CHECK(*number <= max);
      FUZZ_CHECK(std::to_string(*number) == value);  // only the canonical spelling is accepted
    } else {
      FUZZ_CHECK(number.status().message().starts_with(path));
    }
  }
  Result<bool> flag = ParseXsBool(value, path);
  if (flag.ok()) FUZZ_CHECK(value == (*flag ? "1" : "0"));
  Result<XenbusState> state = ParseXenbusState(value, path);
  if (state.ok()) FUZZ_CHECK(*state <= XenbusStateReconfigured);
  Result<DiskParams> params = ParseDiskParams(value);
  if (params.ok()) {
    FUZZ_CHECK(params->path.starts_with('/'));
    FUZZ_CHECK(params->path.find('\0') == std::string::npos);
    FUZZ_CHECK(value.ends_with(params->path));
  }
  std::optional<Abi> abi = ParseProtocol(value);
  std::optional<std::string> canonical = CanonicalProtocol(value);
  FUZZ_CHECK(!canonical || ParseProtocol(*canonical).has_value());
  if (canonical) FUZZ_CHECK(abi.has_value());
}

}  // namespace
}  // namespace blk

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blk;
  fuzz::FuzzInput input(data, size);
  uint8_t advertised = input.U8();
  TransportLimits limits;
  limits.max_ring_page_order = advertised % 5;
  limits.max_queues = 1 + (advertised >> 3) % 8;
  std::span<const uint8_t> rest = input.Rest();
  Keys keys = ParseLines(std::string_view(reinterpret_cast<const char*>(rest.data()), rest.size()));

  KeyReader frontend = ReaderOver(keys, kFrontend);
  Result<FrontendTransport> transport = ReadFrontendTransport(frontend, limits);
  if (transport.ok()) {
    CheckTransport(keys, limits, *transport);
  } else {
    FUZZ_CHECK(!transport.status().message().empty());
  }

  KeyReader backend = ReaderOver(keys, kBackend);
  Result<BackendConfig> config = ReadBackendConfig(backend);
  if (config.ok()) {
    FUZZ_CHECK(config->disk.path.starts_with('/'));
    FUZZ_CHECK(config->frontend_id < 0x7FF0);
    FUZZ_CHECK(
        config->frontend_path.starts_with("/local/domain/" + std::to_string(config->frontend_id) + "/"));
    FUZZ_CHECK(!config->shared_writable || config->writable);
  }

  for (const auto& [key, value] : keys) CheckValueParsers(value);
  return 0;
}
