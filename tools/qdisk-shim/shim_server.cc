// The qdisk shim's epoll loop; see shim_server.h.
#include "tools/qdisk-shim/shim_server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/log.h"

namespace blk {
namespace {

constexpr const char* kSubject = "qdisk-shim";
constexpr size_t kReadChunk = 4096;

Result<UniqueFd> ListenOnPath(const std::string& path) {
  sockaddr_un address{};
  if (path.size() >= sizeof(address.sun_path)) return Status::InvalidArgument("QMP socket path too long: " + path);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Status::InvalidArgument(path + " exists and is not a socket");
    if (unlink(path.c_str()) != 0) return Status::FromErrno(errno, "unlink stale socket " + path);
  }
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status::FromErrno(errno, "socket for " + path);
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    return Status::FromErrno(errno, "bind " + path);
  }
  if (listen(fd.get(), 8) != 0) return Status::FromErrno(errno, "listen on " + path);
  return fd;
}

Status AdoptListener(int fd) {
  int type = 0;
  socklen_t length = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) != 0) {
    return Status::FromErrno(errno, "QMP fd " + std::to_string(fd));
  }
  if (type != SOCK_STREAM) return Status::InvalidArgument("QMP fd " + std::to_string(fd) + " is no stream socket");
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    return Status::FromErrno(errno, "fcntl on QMP fd " + std::to_string(fd));
  }
  // libxl hands over a bound socket; listening again is harmless if it already listens.
  if (listen(fd, 8) != 0) return Status::FromErrno(errno, "listen on QMP fd " + std::to_string(fd));
  return Status::Ok();
}

}  // namespace

ShimServer::ShimServer(const ShimOptions& options, XenStore* store, const Limits& limits)
    : options_(options),
      store_(store),
      limits_(limits),
      state_path_("/local/domain/0/device-model/" + std::to_string(options.domid) + "/state") {
  vm_.running = !options.start_paused;
  vm_.ever_ran = !options.start_paused;
}

Result<std::unique_ptr<ShimServer>> ShimServer::Create(const ShimOptions& options, XenStore* store,
                                                       const Limits& limits) {
  std::unique_ptr<ShimServer> server(new ShimServer(options, store, limits));
  server->epoll_.Reset(epoll_create1(EPOLL_CLOEXEC));
  if (!server->epoll_.valid()) return Status::FromErrno(errno, "epoll_create1");
  for (const QmpMonitor& monitor : options.monitors) {
    Listener listener;
    if (monitor.fd >= 0) {
      listener.fd.Reset(monitor.fd);
      BLK_RETURN_IF_ERROR(AdoptListener(monitor.fd));
    } else {
      Result<UniqueFd> fd = ListenOnPath(monitor.path);
      if (!fd.ok()) return fd.status();
      listener.fd = std::move(*fd);
      listener.created_path = monitor.path;
    }
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = listener.fd.get();
    if (epoll_ctl(server->epoll_.get(), EPOLL_CTL_ADD, listener.fd.get(), &event) != 0) {
      return Status::FromErrno(errno, "epoll_ctl for QMP monitor " + monitor.chardev_id);
    }
    server->listeners_.push_back(std::move(listener));
  }
  return server;
}

ShimServer::~ShimServer() {
  for (Listener& listener : listeners_) {
    if (!listener.created_path.empty()) unlink(listener.created_path.c_str());
  }
}

Status ShimServer::Announce() {
  if (announced_ || !vm_.running) return Status::Ok();
  BLK_RETURN_IF_ERROR(store_->Write(state_path_, "running"));
  announced_ = true;
  Log(LogLevel::kInfo, kSubject, "domain %u: wrote running to %s", options_.domid, state_path_.c_str());
  return Status::Ok();
}

Status ShimServer::Run(int stop_fd) {
  epoll_event stop_event{};
  stop_event.events = EPOLLIN;
  stop_event.data.fd = stop_fd;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, stop_fd, &stop_event) != 0) {
    return Status::FromErrno(errno, "epoll_ctl for the stop fd");
  }
  Status status = Announce();
  while (status.ok()) {
    epoll_event events[16];
    int n = epoll_wait(epoll_.get(), events, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      status = Status::FromErrno(errno, "epoll_wait");
      break;
    }
    bool stop = false;
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == stop_fd) {
        stop = true;
        continue;
      }
      bool is_listener = false;
      for (const Listener& listener : listeners_) is_listener = is_listener || listener.fd.get() == fd;
      if (is_listener) {
        Accept(fd);
        continue;
      }
      if (!connections_.count(fd)) continue;  // closed earlier in this batch
      if ((events[i].events & EPOLLOUT) && !Flush(fd)) continue;
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) Readable(fd);
    }
    if (!status.ok()) break;
    status = Announce();
    if (stop || vm_.quit_requested) break;
  }
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, stop_fd, nullptr);
  while (!connections_.empty()) Close(connections_.begin()->first);
  return status;
}

void ShimServer::Accept(int listener_fd) {
  UniqueFd fd(accept4(listener_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!fd.valid()) return;  // the client went away already, or EAGAIN
  if (connections_.size() >= limits_.max_connections) {
    Log(LogLevel::kWarning, kSubject, "domain %u: refusing a QMP client: %zu already connected", options_.domid,
        connections_.size());
    return;
  }
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.fd = fd.get();
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd.get(), &event) != 0) return;
  int raw = fd.get();
  auto connection = std::make_unique<Connection>(&vm_);
  connection->fd = std::move(fd);
  connection->output = QmpSession::Greeting();
  connections_[raw] = std::move(connection);
  Flush(raw);
}

bool ShimServer::Readable(int fd) {
  Connection& connection = *connections_[fd];
  char buffer[kReadChunk];
  ssize_t got = read(fd, buffer, sizeof buffer);
  if (got < 0 && (errno == EAGAIN || errno == EINTR)) return true;
  if (got <= 0) {
    Close(fd);
    return false;
  }
  if (connection.closing) return true;  // input after a protocol error or quit is dropped
  SessionVerdict verdict = connection.session.Feed(std::string_view(buffer, static_cast<size_t>(got)), &connection.output);
  if (verdict == SessionVerdict::kClose || vm_.quit_requested) connection.closing = true;
  return Flush(fd);
}

bool ShimServer::Flush(int fd) {
  Connection& connection = *connections_[fd];
  while (!connection.output.empty()) {
    ssize_t sent = send(fd, connection.output.data(), connection.output.size(), MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && errno == EAGAIN) break;
    if (sent <= 0) {
      Close(fd);
      return false;
    }
    connection.output.erase(0, static_cast<size_t>(sent));
  }
  if (connection.output.size() > limits_.max_pending_output) {
    Log(LogLevel::kWarning, kSubject, "domain %u: dropping a QMP client that does not read its replies",
        options_.domid);
    Close(fd);
    return false;
  }
  if (connection.output.empty() && connection.closing) {
    Close(fd);
    return false;
  }
  epoll_event event{};
  event.events = connection.output.empty() ? EPOLLIN : (EPOLLIN | EPOLLOUT);
  event.data.fd = fd;
  epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &event);
  return true;
}

void ShimServer::Close(int fd) {
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  connections_.erase(fd);
}

}  // namespace blk
