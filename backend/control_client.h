// The client side of the control socket (blkctl's library): connect, check the greeting, send one request
// line at a time and read its whole reply.
//
// Threading: one ControlClient per thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/control_protocol.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace blk {

struct ControlReply {
  bool ok = false;
  std::vector<std::string> lines;  // the body of an "ok"
  std::string error;               // the message of an "error"
};

class ControlClient {
 public:
  // Fails with kNotFound (naming the path) when no daemon listens there, kPermissionDenied when the socket
  // or the daemon refuses us.
  static Result<std::unique_ptr<ControlClient>> Connect(const std::string& socket_path);

  // Sends `request` and waits up to `timeout_ms` for its reply. A Status failure means the conversation
  // broke (daemon gone, garbled reply); an error the daemon answered comes back in ControlReply.
  Result<ControlReply> Call(const ControlRequest& request, int timeout_ms);
  // The same with a raw request line (no "\n"), for tests of the server's parsing.
  Result<ControlReply> CallLine(const std::string& line, int timeout_ms);

  // Reads the next reply only (for a request sent on fd() by hand, or several sent at once).
  Result<ControlReply> ReadReply(int timeout_ms);

  int fd() const { return fd_.get(); }

 private:
  ControlClient(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  Result<std::string> ReadLine(int timeout_ms);

  UniqueFd fd_;
  std::string path_;
  std::string buffer_;
};

}  // namespace blk
