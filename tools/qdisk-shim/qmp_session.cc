// QMP replies of the qdisk shim. The shapes follow QEMU's QMP reference (docs/interop/qmp-spec and the
// qapi schema) for the few commands a toolstack sends a xenpv device model.
#include "tools/qdisk-shim/qmp_session.h"

#include <array>
#include <optional>

#include "tools/qdisk-shim/qmp_json.h"

namespace blk {
namespace {

// The version QEMU reports decides which QMP features libxl expects; this is Debian 12's QEMU (7.2), whose
// qemu-system-xen is what the shim stands in for.
constexpr const char* kQemuVersionJson = "{\"micro\": 0, \"minor\": 2, \"major\": 7}";
constexpr const char* kPackage = "blkbackd qdisk-shim";

constexpr std::array<std::string_view, 9> kCommands = {
    "qmp_capabilities", "query-status", "query-chardev", "query-vnc",        "query-version",
    "query-commands",   "query-blockstats", "cont",       "stop"};

std::string ErrorJson(std::string_view error_class, std::string_view description) {
  return "{\"error\": {\"class\": " + JsonQuote(error_class) + ", \"desc\": " + JsonQuote(description) + "}}";
}

// Closes a reply object opened by ErrorJson or a return, adding the client's id verbatim when it sent one.
void Finish(std::string reply_without_brace_end, std::optional<std::string_view> id, std::string* out) {
  // reply_without_brace_end is a complete object; reopen it to append the id.
  if (id) {
    reply_without_brace_end.pop_back();
    reply_without_brace_end += ", \"id\": ";
    reply_without_brace_end += *id;
    reply_without_brace_end += "}";
  }
  *out += reply_without_brace_end;
  *out += "\r\n";
}

}  // namespace

std::string QmpSession::Greeting() {
  return std::string("{\"QMP\": {\"version\": {\"qemu\": ") + kQemuVersionJson + ", \"package\": \"" + kPackage +
         "\"}, \"capabilities\": []}}\r\n";
}

SessionVerdict QmpSession::Feed(std::string_view bytes, std::string* out) {
  buffer_.append(bytes);
  size_t pos = 0;
  SessionVerdict verdict = SessionVerdict::kContinue;
  while (verdict == SessionVerdict::kContinue) {
    while (pos < buffer_.size() && (buffer_[pos] == ' ' || buffer_[pos] == '\t' || buffer_[pos] == '\r' ||
                                    buffer_[pos] == '\n')) {
      ++pos;
    }
    if (pos >= buffer_.size()) break;
    if (vm_->quit_requested) {
      verdict = SessionVerdict::kClose;  // nothing is answered after quit
      break;
    }
    if (buffer_[pos] != '{') {
      Finish(ErrorJson("GenericError", "JSON parse error, expecting a QMP command object"), std::nullopt, out);
      verdict = SessionVerdict::kClose;
      break;
    }
    JsonObjectScan scan = ScanJsonObject(buffer_, pos);
    if (scan.outcome == JsonScanOutcome::kIncomplete) {
      if (buffer_.size() - pos > kMaxMessageBytes) {
        Finish(ErrorJson("GenericError", "QMP message too long"), std::nullopt, out);
        verdict = SessionVerdict::kClose;
      }
      break;
    }
    if (scan.outcome == JsonScanOutcome::kInvalid || scan.end - pos > kMaxMessageBytes) {
      Finish(ErrorJson("GenericError", "JSON parse error, " +
                                           (scan.error.empty() ? std::string("QMP message too long") : scan.error)),
             std::nullopt, out);
      verdict = SessionVerdict::kClose;
      break;
    }
    Answer(std::string_view(buffer_).substr(pos, scan.end - pos), out);
    pos = scan.end;
  }
  buffer_.erase(0, pos);
  if (verdict == SessionVerdict::kClose) buffer_.clear();
  return verdict;
}

void QmpSession::Answer(std::string_view message, std::string* out) {
  JsonObjectScan scan = ScanJsonObject(message, 0);  // complete: the caller has just scanned it
  std::optional<std::string_view> id;
  const JsonMember* execute = nullptr;
  const JsonMember* arguments = nullptr;
  std::string problem;
  for (const JsonMember& member : scan.members) {
    const JsonMember** slot = nullptr;
    if (member.key == "execute" || member.key == "exec-oob") {
      slot = &execute;
    } else if (member.key == "arguments") {
      slot = &arguments;
    } else if (member.key == "id") {
      if (id) problem = "QMP input member 'id' is duplicated";
      id = member.raw;
      continue;
    } else {
      if (problem.empty()) problem = "QMP input member '" + member.key + "' is unexpected";
      continue;
    }
    if (*slot != nullptr && problem.empty()) problem = "QMP input member '" + member.key + "' is duplicated";
    *slot = &member;
  }
  if (problem.empty() && execute == nullptr) problem = "QMP input lacks member 'execute'";
  if (problem.empty() && execute->type != JsonType::kString) problem = "QMP input member 'execute' must be a string";
  if (problem.empty() && arguments != nullptr && arguments->type != JsonType::kObject) {
    problem = "QMP input member 'arguments' must be an object";
  }
  if (!problem.empty()) {
    Finish(ErrorJson("GenericError", problem), id, out);
    return;
  }
  const std::string& command = *execute->string_value;
  ++vm_->commands_answered;
  if (!negotiated_) {
    if (command == "qmp_capabilities") {
      negotiated_ = true;
      Finish("{\"return\": {}}", id, out);
    } else {
      Finish(ErrorJson("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"), id, out);
    }
    return;
  }
  Finish(Execute(command, arguments != nullptr), id, out);
}

std::string QmpSession::Execute(std::string_view command, bool has_arguments) {
  // None of the commands answered here takes arguments.
  auto no_arguments = [&](std::string reply) {
    if (has_arguments) return ErrorJson("GenericError", "Parameter '" + std::string(command) + "' takes no arguments");
    return reply;
  };
  if (command == "qmp_capabilities") {
    return ErrorJson("CommandNotFound", "Capabilities negotiation is already complete, command ignored");
  }
  if (command == "query-status") {
    // "prelaunch" while started with -S and not yet continued: libxl checks for exactly that state.
    const char* status = vm_->running ? "running" : (vm_->ever_ran ? "paused" : "prelaunch");
    return no_arguments(std::string("{\"return\": {\"status\": \"") + status +
                        "\", \"singlestep\": false, \"running\": " + (vm_->running ? "true" : "false") + "}}");
  }
  if (command == "query-chardev") return no_arguments("{\"return\": []}");  // no serial ports, no ptys
  if (command == "query-vnc") return no_arguments("{\"return\": {\"enabled\": false}}");
  if (command == "query-blockstats") return no_arguments("{\"return\": []}");  // blkbackd keeps the statistics
  if (command == "query-version") {
    return no_arguments(std::string("{\"return\": {\"qemu\": ") + kQemuVersionJson + ", \"package\": \"" + kPackage +
                        "\"}}");
  }
  if (command == "query-commands") {
    std::string list = "{\"return\": [";
    for (size_t i = 0; i < kCommands.size(); ++i) {
      list += (i ? ", {\"name\": " : "{\"name\": ") + JsonQuote(kCommands[i]) + "}";
    }
    list += ", {\"name\": \"quit\"}]}";
    return no_arguments(list);
  }
  if (command == "cont" || command == "stop") {
    if (has_arguments) return no_arguments("");
    vm_->running = command == "cont";
    vm_->ever_ran = vm_->ever_ran || vm_->running;
    return "{\"return\": {}}";
  }
  if (command == "quit") {
    if (has_arguments) return no_arguments("");
    vm_->quit_requested = true;
    return "{\"return\": {}}";
  }
  return ErrorJson("CommandNotFound", "The command " + std::string(command) + " has not been found");
}

}  // namespace blk
