// ControlClient: a blocking conversation with a deadline per reply.
#include "backend/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace blk {
namespace {

constexpr size_t kMaxReplyLine = 1u << 20;

}  // namespace

Result<std::unique_ptr<ControlClient>> ControlClient::Connect(const std::string& socket_path) {
  if (socket_path.empty() || socket_path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Status::InvalidArgument("control socket path '" + socket_path + "' is empty or too long");
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status::FromErrno(errno, "socket");
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    int err = errno;
    if (err == ENOENT || err == ECONNREFUSED || err == ENOTDIR) {
      return Status::Error(Status::Code::kNotFound,
                           "blkbackd is not running (nothing listens on " + socket_path + ")", err);
    }
    if (err == EACCES || err == EPERM) {
      return Status::Error(Status::Code::kPermissionDenied,
                           "permission denied on " + socket_path + " (the control socket is for root)", err);
    }
    return Status::FromErrno(err, "connect " + socket_path);
  }
  std::unique_ptr<ControlClient> client(new ControlClient(std::move(fd), socket_path));
  Result<std::string> greeting = client->ReadLine(5000);
  if (!greeting.ok()) return greeting.status();
  Status checked = CheckControlGreeting(*greeting);
  if (!checked.ok()) return checked.Annotate(socket_path + ": ");
  return client;
}

Result<std::string> ControlClient::ReadLine(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (size_t newline = buffer_.find('\n'); newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      return line;
    }
    if (buffer_.size() > kMaxReplyLine) return Status::ProtocolError(path_ + ": reply line too long");
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return Status::Busy(path_ + ": no reply from blkbackd within " + std::to_string(timeout_ms) + " ms");
    pollfd waiting{fd_.get(), POLLIN, 0};
    int ready = ::poll(&waiting, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno != EINTR) return Status::FromErrno(errno, "poll " + path_);
    if (ready <= 0) continue;
    char chunk[4096];
    ssize_t got = ::recv(fd_.get(), chunk, sizeof(chunk), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return Status::FromErrno(errno, "read " + path_);
    if (got == 0) return Status::IoError("blkbackd closed the control connection (" + path_ + ")");
    buffer_.append(chunk, static_cast<size_t>(got));
  }
}

Result<ControlReply> ControlClient::Call(const ControlRequest& request, int timeout_ms) {
  return CallLine(FormatControlRequest(request), timeout_ms);
}

Result<ControlReply> ControlClient::CallLine(const std::string& line, int timeout_ms) {
  std::string text = line + "\n";
  for (size_t sent = 0; sent < text.size();) {
    ssize_t wrote = ::send(fd_.get(), text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote < 0) return Status::FromErrno(errno, "write " + path_);
    sent += static_cast<size_t>(wrote);
  }
  return ReadReply(timeout_ms);
}

Result<ControlReply> ControlClient::ReadReply(int timeout_ms) {
  Result<std::string> head_line = ReadLine(timeout_ms);
  if (!head_line.ok()) return head_line.status();
  Result<ControlReplyHead> head = ParseControlReplyHead(*head_line);
  if (!head.ok()) return head.status().Annotate(path_ + ": ");
  ControlReply reply;
  reply.ok = head->ok;
  reply.error = head->message;
  for (size_t i = 0; i < head->lines; ++i) {
    Result<std::string> body = ReadLine(timeout_ms);
    if (!body.ok()) return body.status();
    reply.lines.push_back(std::move(*body));
  }
  return reply;
}

}  // namespace blk
