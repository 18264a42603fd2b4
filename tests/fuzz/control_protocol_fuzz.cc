// Fuzz target: lines a control client sends (backend/control_protocol.h ParseControlRequest, ParseDeviceName,
// ParseControlSize) and reply heads it reads back (ParseControlReplyHead). Checks that an accepted request
// formats back to a line that parses to the same request, and that whatever a peer sent, a reply quoting it
// stays one line per line: a client can never make the server's reply end early or grow extra lines.
//
// Input: lines separated by "\n", each tried as a request, a reply head, a device name and a size.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "backend/control_protocol.h"
#include "tests/fuzz/fuzz_input.h"

namespace blk {
namespace {

size_t Newlines(std::string_view text) {
  size_t count = 0;
  for (char c : text) count += c == '\n';
  return count;
}

void CheckLine(std::string_view line) {
  Result<ControlRequest> request = ParseControlRequest(line);
  if (request.ok()) {
    std::string formatted = FormatControlRequest(*request);
    FUZZ_CHECK(formatted.find('\n') == std::string::npos);
    Result<ControlRequest> again = ParseControlRequest(formatted);
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(again->command == request->command && again->device == request->device &&
               again->json == request->json && again->timeout_ms == request->timeout_ms &&
               again->size_bytes == request->size_bytes);
  } else {
    // The refusal is sent back as is: one line, whatever the peer wrote.
    std::string reply = FormatErrorReply(request.status().message());
    FUZZ_CHECK(Newlines(reply) == 1 && reply.back() == '\n');
  }
  std::string quoted = FormatOkReply({std::string(line), "second"});
  FUZZ_CHECK(Newlines(quoted) == 3);
  FUZZ_CHECK(Newlines(FormatErrorReply(line)) == 1);

  Result<ControlReplyHead> head = ParseControlReplyHead(line);
  if (head.ok() && !head->ok) FUZZ_CHECK(head->message.find('\n') == std::string::npos);
  Result<DeviceName> name = ParseDeviceName(line);
  if (name.ok()) FUZZ_CHECK(name->domid < 0x7ff0 && name->devid < (1u << 31));
  Result<uint64_t> size = ParseControlSize(line);
  if (size.ok()) FUZZ_CHECK(*size <= (uint64_t{1} << 62));
}

}  // namespace
}  // namespace blk

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  while (!text.empty()) {
    size_t end = text.find('\n');
    blk::CheckLine(text.substr(0, end));
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
  }
  return 0;
}
