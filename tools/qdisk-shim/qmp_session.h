// QmpSession: one QMP (QEMU Machine Protocol) connection of the qdisk shim, as libxl's QMP client and
// libxenstat (xentop) see a QEMU device model: the greeting, capabilities negotiation, then one reply per
// command. The shim has no machine to run, so it answers only what libxl 4.17 asks a PV guest's device model
// (query-status, query-chardev, query-vnc, cont, stop, quit) plus query-version, query-commands and
// query-blockstats; anything else is CommandNotFound, as from a QEMU without that command.
//
// Input is bytes as they arrive: messages may be split or batched across Feed calls. Each message is bounded
// (kMaxMessageBytes); a message that is not a JSON object, or is too long, gets one error reply and the
// session ends (a byte stream cannot be resynchronised reliably), as does anything after "quit".
//
// Threading: one session is used by one thread; the VmState it is given is shared by every session of the
// shim and owned by the caller.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace blk {

// What the shim pretends about its machine; every session of one shim shares it.
struct VmState {
  bool running = true;          // false while "started paused" (-S) or after "stop", until "cont"
  bool ever_ran = true;          // false only while started paused and never continued ("prelaunch")
  bool quit_requested = false;  // a client sent "quit": the shim exits once the reply is out
  uint64_t commands_answered = 0;
};

enum class SessionVerdict {
  kContinue,
  kClose,  // the peer broke the protocol: send what was produced, then close this connection
};

class QmpSession {
 public:
  static constexpr size_t kMaxMessageBytes = 64 * 1024;

  explicit QmpSession(VmState* vm) : vm_(vm) {}

  // The greeting QEMU sends as soon as a client connects.
  static std::string Greeting();

  // Consumes `bytes` and appends any replies (each ending in "\r\n", as QEMU's do) to `out`.
  SessionVerdict Feed(std::string_view bytes, std::string* out);

  bool negotiated() const { return negotiated_; }
  size_t buffered_bytes() const { return buffer_.size(); }

 private:
  // Answers one complete message (the text of one JSON object).
  void Answer(std::string_view message, std::string* out);
  std::string Execute(std::string_view command, bool has_arguments);

  VmState* vm_;
  std::string buffer_;  // bytes of a message not yet complete
  bool negotiated_ = false;
};

}  // namespace blk
