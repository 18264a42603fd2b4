// The single-instance lock and systemd notification.
#include "backend/daemon_process.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace blk {

Result<InstanceLock> InstanceLock::Acquire(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code error;
    std::filesystem::create_directories(parent, error);
    if (error)
      return Status::FromErrno(error.value(), "cannot create the directory of the lock file " + path);
  }
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd.valid()) return Status::FromErrno(errno, "cannot open the lock file " + path);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    int error = errno;
    if (error != EWOULDBLOCK) return Status::FromErrno(error, "cannot lock " + path);
    char text[32] = {};
    ssize_t got = ::pread(fd.get(), text, sizeof(text) - 1, 0);
    std::string holder = got > 0 ? std::string(text, strnlen(text, static_cast<size_t>(got))) : std::string();
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    return Status::Busy("another blkbackd" + (holder.empty() ? std::string() : " (pid " + holder + ")") +
                        " is running: it holds " + path);
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), pid.data(), pid.size(), 0) != ssize_t(pid.size()))
    return Status::FromErrno(errno, "cannot write our pid into " + path);
  return InstanceLock(path, std::move(fd));
}

InstanceLock::~InstanceLock() {
  if (fd_.valid()) ::unlink(path_.c_str());
}

Status NotifySystemd(std::string_view state) {
  const char* socket_path = std::getenv("NOTIFY_SOCKET");
  if (socket_path == nullptr || socket_path[0] == '\0') return Status::Ok();
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  size_t length = strlen(socket_path);
  if ((socket_path[0] != '/' && socket_path[0] != '@') || length >= sizeof(address.sun_path))
    return Status::InvalidArgument(std::string("NOTIFY_SOCKET is not a usable socket path: ") + socket_path);
  memcpy(address.sun_path, socket_path, length);
  if (socket_path[0] == '@') address.sun_path[0] = '\0';  // an abstract socket
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status::FromErrno(errno, "socket for NOTIFY_SOCKET");
  socklen_t size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length);
  if (::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&address),
               size) < 0)
    return Status::FromErrno(errno, std::string("cannot notify systemd at ") + socket_path);
  return Status::Ok();
}

}  // namespace blk
