// ControlServer: accept, check credentials, read lines, run commands, write replies; pauses finish later.
#include "backend/control_server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>

#include "base/format.h"
#include "base/log.h"

namespace blk {
namespace {

constexpr const char* kSubject = "control";
// epoll keys: the kind in the top byte, an id below.
constexpr uint64_t kKindShift = 56;
constexpr uint64_t kListenKey = 1ull << kKindShift;
constexpr uint64_t kMailboxKey = 2ull << kKindShift;
constexpr uint64_t kStatsTimerKey = 3ull << kKindShift;
constexpr uint64_t kClientKind = 4;
constexpr uint64_t kPauseTimerKind = 5;
constexpr uint64_t kIdMask = (1ull << kKindShift) - 1;
// A client may have this much unread input (pipelined requests behind a pause) and unsent output.
constexpr size_t kMaxInput = 4 * kMaxControlLine;
constexpr size_t kMaxOutput = 4u << 20;
constexpr size_t kMaxOutstandingReported = 16;

using Clock = std::chrono::steady_clock;

// Arms `timer` to fire once after `ms`, or every `ms` if `repeat`.
Status ArmTimer(int timer, int ms, bool repeat) {
  itimerspec spec{};
  spec.it_value.tv_sec = ms / 1000;
  spec.it_value.tv_nsec = static_cast<long>(ms % 1000) * 1000000;
  if (repeat) spec.it_interval = spec.it_value;
  if (::timerfd_settime(timer, 0, &spec, nullptr) != 0) return Status::FromErrno(errno, "timerfd_settime");
  return Status::Ok();
}

void Drain(int fd) {
  uint64_t ignored;
  while (::read(fd, &ignored, sizeof(ignored)) == sizeof(ignored)) {
  }
}

// A socket file a live server still answers on is in use; one that refuses connections is stale.
Status RemoveStaleSocket(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "stat " + path);
  }
  if (!S_ISSOCK(st.st_mode)) return Status::InvalidArgument(path + " exists and is not a socket");
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return Status::FromErrno(errno, "socket");
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size());
  if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    return Status::Busy(path + " is in use: another blkbackd (or blkbench --control) is serving it");
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Status::FromErrno(errno, "remove stale " + path);
  return Status::Ok();
}

}  // namespace

struct ControlServer::Client {
  uint64_t id;
  UniqueFd fd;
  std::string in;
  std::string out;
  bool busy = false;     // a pause is running for it; later lines wait
  bool closing = false;  // close once `out` is sent
  bool eof = false;      // the peer shut down its side: answer what it sent, then close
  uint32_t interest = EPOLLIN | EPOLLRDHUP;
  bool dead = false;  // closed; freed at the end of HandleEvents, as callers may still hold it
};

struct ControlServer::PendingPause {
  uint64_t client;  // 0 once it left (a snapshot carries on without it)
  std::string device;
  std::string snapshot_child;  // a snapshot's; empty for a plain pause
  UniqueFd timer;
  Clock::time_point started;
  uint32_t timeout_ms;
};

// Carries pause outcomes from whatever thread reports them to the owner's loop. Shared with the callbacks,
// so a report arriving after the server is gone lands here harmlessly.
class ControlServer::Mailbox {
 public:
  explicit Mailbox(UniqueFd event) : event_(std::move(event)) {}
  int fd() const { return event_.get(); }
  void Post(uint64_t token, Status status) {
    {
      std::lock_guard lock(mutex_);
      items_.emplace_back(token, std::move(status));
    }
    uint64_t one = 1;
    (void)!::write(event_.get(), &one, sizeof(one));
  }
  std::vector<std::pair<uint64_t, Status>> Take() {
    Drain(event_.get());
    std::lock_guard lock(mutex_);
    return std::move(items_);
  }

 private:
  UniqueFd event_;
  std::mutex mutex_;
  std::vector<std::pair<uint64_t, Status>> items_;
};

Result<std::unique_ptr<ControlServer>> ControlServer::Create(const ControlServerOptions& options,
                                                             ControlTarget& target) {
  std::unique_ptr<ControlServer> server(new ControlServer(options, target));
  BLK_RETURN_IF_ERROR(server->Init());
  Log(LogLevel::kNotice, kSubject, "listening on %s", options.socket_path.c_str());
  return server;
}

ControlServer::ControlServer(const ControlServerOptions& options, ControlTarget& target)
    : options_(options), target_(target) {}

ControlServer::~ControlServer() {
  clients_.clear();
  pauses_.clear();
  struct stat st;
  if (listen_.valid() && ::lstat(options_.socket_path.c_str(), &st) == 0 && st.st_ino == socket_inode_) {
    ::unlink(options_.socket_path.c_str());
  }
  for (const std::string& file : stats_files_) ::unlink(file.c_str());
}

Status ControlServer::Init() {
  const std::string& path = options_.socket_path;
  if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Status::InvalidArgument("control socket path '" + path + "' is empty or longer than " +
                                   std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
  }
  if (size_t slash = path.rfind('/'); slash != std::string::npos && slash > 0) {
    std::string dir = path.substr(0, slash);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return Status::FromErrno(errno, "create " + dir);
  }
  BLK_RETURN_IF_ERROR(RemoveStaleSocket(path));

  epoll_.Reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_.valid()) return Status::FromErrno(errno, "epoll_create1");
  listen_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listen_.valid()) return Status::FromErrno(errno, "socket");
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size());
  if (::bind(listen_.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return Status::FromErrno(errno, "bind " + path);
  }
  struct stat st;
  if (::chmod(path.c_str(), 0600) != 0 || ::lstat(path.c_str(), &st) != 0) {
    Status failed = Status::FromErrno(errno, "chmod 0600 " + path);
    ::unlink(path.c_str());
    return failed;
  }
  socket_inode_ = st.st_ino;
  if (::listen(listen_.get(), 16) != 0) return Status::FromErrno(errno, "listen " + path);
  BLK_RETURN_IF_ERROR(Watch(listen_.get(), EPOLLIN, kListenKey));

  UniqueFd event(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!event.valid()) return Status::FromErrno(errno, "eventfd");
  mailbox_ = std::make_shared<Mailbox>(std::move(event));
  BLK_RETURN_IF_ERROR(Watch(mailbox_->fd(), EPOLLIN, kMailboxKey));

  if (!options_.stats_dir.empty()) {
    if (::mkdir(options_.stats_dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "create " + options_.stats_dir);
    }
    stats_timer_.Reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!stats_timer_.valid()) return Status::FromErrno(errno, "timerfd_create");
    BLK_RETURN_IF_ERROR(ArmTimer(stats_timer_.get(), std::max(options_.stats_interval_ms, 1), true));
    BLK_RETURN_IF_ERROR(Watch(stats_timer_.get(), EPOLLIN, kStatsTimerKey));
  }
  return Status::Ok();
}

Status ControlServer::Watch(int fd, uint32_t events, uint64_t key) {
  epoll_event event{};
  event.events = events;
  event.data.u64 = key;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) return Status::FromErrno(errno, "epoll_ctl");
  return Status::Ok();
}

void ControlServer::HandleEvents() {
  epoll_event events[32];
  int ready = ::epoll_wait(epoll_.get(), events, 32, 0);
  for (int i = 0; i < ready; ++i) {
    uint64_t key = events[i].data.u64;
    uint64_t kind = key >> kKindShift;
    uint64_t id = key & kIdMask;
    if (key == kListenKey) {
      Accept();
    } else if (key == kMailboxKey) {
      for (auto& [token, status] : mailbox_->Take()) OnPauseDone(token, std::move(status));
    } else if (key == kStatsTimerKey) {
      Drain(stats_timer_.get());
      WriteStatsFiles();
    } else if (kind == kClientKind) {
      OnClientEvent(id, events[i].events);
    } else if (kind == kPauseTimerKind) {
      OnPauseTimeout(id);
    }
  }
  std::erase_if(clients_, [](const auto& entry) { return entry.second->dead; });
}

void ControlServer::Accept() {
  for (;;) {
    UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        Log(LogLevel::kWarning, kSubject, "accept: %s", std::strerror(errno));
      }
      return;
    }
    auto client = std::make_unique<Client>();
    client->id = next_id_++;
    client->fd = std::move(fd);
    ucred credentials{};
    socklen_t length = sizeof(credentials);
    bool known = ::getsockopt(client->fd.get(), SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0;
    uid_t own = ::geteuid();
    if (!known || (credentials.uid != 0 && credentials.uid != own)) {
      std::string who = known ? "uid " + std::to_string(credentials.uid) : "a peer of unknown uid";
      Log(LogLevel::kWarning, kSubject, "refused %s (pid %d): only root or uid %u may command", who.c_str(),
          known ? credentials.pid : -1, own);
      std::string reply =
          FormatErrorReply("permission denied: " + who + " may not command blkbackd (root or uid " +
                           std::to_string(own) + " only)");
      (void)!::send(client->fd.get(), reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      continue;
    }
    std::erase_if(clients_, [](const auto& entry) { return entry.second->dead; });  // nothing holds them here
    if (clients_.size() >= options_.max_clients) {
      std::string reply =
          FormatErrorReply(StrFormat("too many control clients (%zu); try again later", clients_.size()));
      (void)!::send(client->fd.get(), reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      continue;
    }
    if (!Watch(client->fd.get(), EPOLLIN | EPOLLRDHUP, (kClientKind << kKindShift) | client->id).ok())
      continue;
    Client& added = *client;
    clients_.emplace(added.id, std::move(client));
    Send(added, ControlGreeting());
  }
}

void ControlServer::OnClientEvent(uint64_t id, uint32_t events) {
  auto it = clients_.find(id);
  if (it == clients_.end() || it->second->dead) return;
  Client& client = *it->second;
  if (events & EPOLLOUT) {
    Flush(client);
    if (client.dead) return;
  }
  if (events & (EPOLLHUP | EPOLLERR)) {
    // The peer closed altogether: whatever it was waiting for carries on without it.
    Close(id);
    return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP)) {
    char buffer[4096];
    for (;;) {
      ssize_t got = ::recv(client.fd.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
      if (got > 0) {
        if (client.closing) continue;  // an error was sent; the rest is not read
        client.in.append(buffer, static_cast<size_t>(got));
        if (client.in.size() > kMaxInput) {
          Send(client, FormatErrorReply("too much input without a reply in between"));
          client.closing = true;
          client.in.clear();
        }
        continue;
      }
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) {
        Close(id);
        return;
      }
      client.eof = true;  // a half-close ("echo list | nc -U"): the replies still go out
      break;
    }
  }
  ProcessLines(client);
}

void ControlServer::ProcessLines(Client& client) {
  while (!client.busy && !client.closing && !client.dead) {
    size_t newline = client.in.find('\n');
    if (newline == std::string::npos) {
      if (client.in.size() > kMaxControlLine + 1) {
        Send(client, FormatErrorReply(StrFormat("request longer than %zu bytes", kMaxControlLine)));
        client.closing = true;
      }
      break;
    }
    std::string line = client.in.substr(0, newline);
    client.in.erase(0, newline + 1);
    Result<ControlRequest> request = ParseControlRequest(line);
    if (!request.ok()) {
      Send(client, FormatErrorReply(request.status().message()));
      if (line.size() > kMaxControlLine) client.closing = true;
      continue;
    }
    Execute(client, *request);
  }
  UpdateInterest(client);
}

void ControlServer::Execute(Client& client, const ControlRequest& request) {
  const std::string& device = request.device;
  switch (request.command) {
    case ControlCommand::kList:
      Send(client, FormatOkReply(FormatDeviceList(target_.List())));
      return;
    case ControlCommand::kStats: {
      Result<std::vector<ControlDeviceStats>> stats = target_.Stats(device);
      Send(client, stats.ok() ? FormatOkReply(FormatDeviceStats(*stats, request.json))
                              : FormatErrorReply(stats.status().message()));
      return;
    }
    case ControlCommand::kPause:
    case ControlCommand::kSnapshot: {
      bool snapshot = request.command == ControlCommand::kSnapshot;
      const char* verb = snapshot ? "snapshot" : "pause";
      if (snapshot) {
        Status possible = target_.CheckSnapshot(device, request.image);
        if (!possible.ok()) {
          Send(client, FormatErrorReply(possible.message()));
          return;
        }
      }
      uint64_t token = next_id_++;
      auto pending = std::make_unique<PendingPause>();
      pending->client = client.id;
      pending->device = device;
      if (snapshot) pending->snapshot_child = request.image;
      pending->started = Clock::now();
      pending->timeout_ms = request.timeout_ms;
      pending->timer.Reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
      Status armed = pending->timer.valid()
                         ? ArmTimer(pending->timer.get(), static_cast<int>(request.timeout_ms), false)
                         : Status::FromErrno(errno, "timerfd_create");
      if (armed.ok()) armed = Watch(pending->timer.get(), EPOLLIN, (kPauseTimerKind << kKindShift) | token);
      if (!armed.ok()) {
        Send(client, FormatErrorReply(std::string(verb) + " " + device + ": " + armed.message()));
        return;
      }
      std::shared_ptr<Mailbox> mailbox = mailbox_;
      Status started =
          target_.Pause(device, [mailbox, token](Status status) { mailbox->Post(token, std::move(status)); });
      if (!started.ok()) {
        Send(client, FormatErrorReply(started.message()));
        return;
      }
      Log(LogLevel::kNotice, kSubject, "%s %s requested (pause timeout %u ms)", verb, device.c_str(),
          request.timeout_ms);
      client.busy = true;
      pauses_.emplace(token, std::move(pending));
      return;
    }
    case ControlCommand::kResume: {
      if (!request.image.empty()) {
        // A refusal leaves the device paused on its old image: the operator decides what next.
        Status swapped = target_.SwapImage(device, request.image);
        if (!swapped.ok()) {
          Send(client, FormatErrorReply(swapped.message()));
          return;
        }
      }
      Status resumed = target_.Resume(device);
      Send(client, resumed.ok() ? FormatOkReply({device + " resumed"}) : FormatErrorReply(resumed.message()));
      return;
    }
    case ControlCommand::kResize: {
      Result<std::string> resized = target_.Resize(device, request.size_bytes);
      Send(client, resized.ok() ? FormatOkReply({*resized}) : FormatErrorReply(resized.status().message()));
      return;
    }
  }
}

void ControlServer::OnPauseDone(uint64_t token, Status status) {
  auto it = pauses_.find(token);
  if (it == pauses_.end()) return;  // answered already (timed out) or its client left
  PendingPause& pause = *it->second;
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - pause.started).count();
  std::string reply;
  if (!pause.snapshot_child.empty()) {
    reply = FinishSnapshot(pause, std::move(status), ms);
  } else if (status.ok()) {
    Log(LogLevel::kNotice, kSubject, "%s paused in %.1f ms", pause.device.c_str(), ms);
    reply = FormatOkReply({StrFormat("%s paused in %.1f ms (drained and synced)", pause.device.c_str(), ms)});
  } else {
    reply = FormatErrorReply("pause " + pause.device + ": " + status.message());
  }
  FinishPause(token, reply);
}

std::string ControlServer::FinishSnapshot(const PendingPause& pause, Status paused, double pause_ms) {
  const std::string& device = pause.device;
  if (!paused.ok()) {
    // Whatever stopped the pause (a resume meanwhile, a failed sync), the device must not stay paused; a
    // resume refused because it already runs is no news.
    (void)target_.Resume(device);
    std::string message = device + ": the pause failed: " + paused.message() + " (no snapshot)";
    Log(LogLevel::kWarning, kSubject, "%s", message.c_str());
    return FormatErrorReply(message);
  }
  Status taken = target_.Snapshot(device, pause.snapshot_child);
  // Whatever happened, the guest gets its disk back: on the new leaf, or on the old one.
  Status resumed = target_.Resume(device);
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - pause.started).count();
  std::string message;
  if (!taken.ok()) {
    message =
        taken.message() + (resumed.ok() ? " (no snapshot; resumed on the old image)"
                                        : " (no snapshot; resuming failed too: " + resumed.message() + ")");
  } else if (!resumed.ok()) {
    message =
        device + ": " + pause.snapshot_child + " is the new leaf, but resuming failed: " + resumed.message();
  } else {
    Log(LogLevel::kNotice, kSubject, "%s: snapshot %s in %.1f ms (paused %.1f ms)", device.c_str(),
        pause.snapshot_child.c_str(), ms, pause_ms);
    return FormatOkReply({StrFormat("%s: %s is the new leaf; paused in %.1f ms, resumed after %.1f ms",
                                    device.c_str(), pause.snapshot_child.c_str(), pause_ms, ms)});
  }
  Log(LogLevel::kWarning, kSubject, "%s", message.c_str());
  return FormatErrorReply(message);
}

void ControlServer::OnPauseTimeout(uint64_t token) {
  auto it = pauses_.find(token);
  if (it == pauses_.end()) return;
  PendingPause& pause = *it->second;
  std::vector<std::string> outstanding = target_.DescribePause(pause.device);
  std::string list;
  for (size_t i = 0; i < outstanding.size() && i < kMaxOutstandingReported; ++i) {
    list += (i == 0 ? "" : "; ") + outstanding[i];
  }
  if (outstanding.size() > kMaxOutstandingReported) list += "; ...";
  if (!pause.snapshot_child.empty()) {
    // A snapshot does not leave the guest stalled: the pause is abandoned and nothing is made.
    Status resumed = target_.Resume(pause.device);
    std::string message =
        StrFormat("%s: not drained after %u ms, still outstanding: %s", pause.device.c_str(),
                  pause.timeout_ms, outstanding.empty() ? "the final sync" : list.c_str()) +
        (resumed.ok() ? " (no snapshot; resumed on the old image)"
                      : " (no snapshot; resuming failed too: " + resumed.message() + ")");
    Log(LogLevel::kWarning, kSubject, "%s", message.c_str());
    FinishPause(token, FormatErrorReply(message));
    return;
  }
  std::string message = StrFormat(
      "pause %s: not drained after %u ms; it stays pausing and becomes paused when "
      "its I/O completes (resume cancels). Still outstanding: %s",
      pause.device.c_str(), pause.timeout_ms, outstanding.empty() ? "the final sync" : list.c_str());
  Log(LogLevel::kWarning, kSubject, "%s", message.c_str());
  FinishPause(token, FormatErrorReply(message));
}

void ControlServer::FinishPause(uint64_t token, const std::string& reply) {
  auto it = pauses_.find(token);
  uint64_t client_id = it->second->client;
  pauses_.erase(it);  // closes the timer, which leaves the epoll set with it
  auto client = clients_.find(client_id);
  if (client == clients_.end() || client->second->dead) return;
  client->second->busy = false;
  Send(*client->second, reply);
  ProcessLines(*client->second);
}

void ControlServer::Send(Client& client, const std::string& text) {
  if (client.dead) return;
  if (client.out.size() + text.size() > kMaxOutput) {
    Log(LogLevel::kWarning, kSubject, "dropping a control client that does not read its replies");
    Close(client.id);
    return;
  }
  client.out += text;
  Flush(client);
}

void ControlServer::Flush(Client& client) {
  if (client.dead) return;
  while (!client.out.empty()) {
    ssize_t sent = ::send(client.fd.get(), client.out.data(), client.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent > 0) {
      client.out.erase(0, static_cast<size_t>(sent));
      continue;
    }
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    Close(client.id);  // the peer is gone
    return;
  }
  UpdateInterest(client);
}

void ControlServer::UpdateInterest(Client& client) {
  if (client.dead) return;
  // After end of input: done once every complete line is answered (a partial last line is dropped).
  bool done = client.out.empty() &&
              (client.closing || (client.eof && !client.busy && client.in.find('\n') == std::string::npos));
  if (done) {
    Close(client.id);
    return;
  }
  // After end of input, a level-triggered EPOLLIN would fire forever: only output (and hang-ups) matter then.
  uint32_t interest = (client.eof ? 0u : EPOLLIN | EPOLLRDHUP) | (client.out.empty() ? 0u : EPOLLOUT);
  if (interest == client.interest) return;
  epoll_event event{};
  event.events = interest;
  event.data.u64 = (kClientKind << kKindShift) | client.id;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, client.fd.get(), &event);
  client.interest = interest;
}

void ControlServer::Close(uint64_t id) {
  auto it = clients_.find(id);
  if (it == clients_.end() || it->second->dead) return;
  // Its pauses carry on; only their answers have nowhere to go. A snapshot still has work to do when its
  // pause completes (or times out): it stays, without a client.
  std::erase_if(pauses_, [id](const auto& entry) {
    return entry.second->client == id && entry.second->snapshot_child.empty();
  });
  for (auto& [token, pause] : pauses_) {
    if (pause->client == id) pause->client = 0;
  }
  it->second->dead = true;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->fd.get(), nullptr);
  it->second->fd.Reset();
}

void ControlServer::WriteStatsFiles() {
  Result<std::vector<ControlDeviceStats>> stats = target_.Stats("");
  if (!stats.ok()) return;
  std::set<std::string> written;
  for (const ControlDeviceStats& device : *stats) {
    std::string name = device.name;
    for (char& c : name) {
      if (c == '/') c = '-';
    }
    std::string path = options_.stats_dir + "/" + name;
    std::string temporary = path + ".tmp";
    std::string text = FormatStatsFile(device);
    UniqueFd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd.valid() || ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
        ::rename(temporary.c_str(), path.c_str()) != 0) {
      Log(LogLevel::kWarning, kSubject, "cannot write %s: %s", path.c_str(), std::strerror(errno));
      continue;
    }
    written.insert(path);
  }
  for (const std::string& old : stats_files_) {
    if (!written.contains(old)) ::unlink(old.c_str());
  }
  stats_files_ = std::move(written);
}

Result<std::unique_ptr<ControlServerThread>> ControlServerThread::Start(const ControlServerOptions& options,
                                                                        ControlTarget& target) {
  Result<std::unique_ptr<ControlServer>> server = ControlServer::Create(options, target);
  if (!server.ok()) return server.status();
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return Status::FromErrno(errno, "epoll_create1");
  UniqueFd stop(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!stop.valid()) return Status::FromErrno(errno, "eventfd");
  for (int fd : {(*server)->fd(), stop.get()}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &event) != 0)
      return Status::FromErrno(errno, "epoll_ctl");
  }
  std::unique_ptr<ControlServerThread> loop(
      new ControlServerThread(std::move(*server), std::move(epoll), std::move(stop)));
  loop->thread_ = std::thread([raw = loop.get()] { raw->Run(); });
  return loop;
}

ControlServerThread::~ControlServerThread() {
  uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void ControlServerThread::Run() {
  for (;;) {
    epoll_event ready[2];
    int count = ::epoll_wait(epoll_.get(), ready, 2, -1);
    if (count < 0 && errno != EINTR) return;
    for (int i = 0; i < count; ++i) {
      if (ready[i].data.fd == stop_.get()) return;
    }
    server_->HandleEvents();
  }
}

}  // namespace blk
