// XsTestServer: the socket loop, xs_wire framing and request decoding; XsTestStore holds the state.
#include "tests/xenstore/xs_test_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string_view>
#include <utility>
#include <vector>

// <cerrno> first: xs_wire.h defines its errno-name table only when EINVAL is known.
#include <xen/io/xs_wire.h>

#include "base/log.h"
#include "tests/xenstore/xs_test_store.h"

namespace blk {
namespace {

constexpr size_t kMaxPendingOutput = 16u << 20;   // a client that stops reading is cut off
constexpr uint32_t kFirstReservedDomid = 0x7FF0;  // DOMID_FIRST_RESERVED

const char* ErrnoName(int err) {
  for (const struct xsd_errors& entry : xsd_errors) {
    if (entry.errnum == err) return entry.errstring;
  }
  return "EIO";
}

// Splits a payload of NUL-terminated strings. False if the last one lacks its NUL (a framing error).
bool SplitStrings(std::string_view payload, std::vector<std::string_view>* strings) {
  strings->clear();
  if (payload.empty()) return true;
  if (payload.back() != '\0') return false;
  size_t start = 0;
  while (start < payload.size()) {
    size_t end = payload.find('\0', start);
    strings->push_back(payload.substr(start, end - start));
    start = end + 1;
  }
  return true;
}

bool ParseDecimal(std::string_view text, uint64_t max, uint64_t* value) {
  if (text.empty() || text.size() > 19) return false;
  uint64_t result = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    result = result * 10 + static_cast<uint64_t>(c - '0');
  }
  if (result > max) return false;
  *value = result;
  return true;
}

bool ParsePermission(std::string_view text, XsPermission* permission) {
  if (text.size() < 2) return false;
  uint32_t access = 0;
  switch (text[0]) {
    case 'n':
      access = kXsNone;
      break;
    case 'r':
      access = kXsRead;
      break;
    case 'w':
      access = kXsWrite;
      break;
    case 'b':
      access = kXsReadWrite;
      break;
    default:
      return false;
  }
  uint64_t domid = 0;
  if (!ParseDecimal(text.substr(1), UINT32_MAX, &domid)) return false;
  *permission = XsPermission{static_cast<uint32_t>(domid), access};
  return true;
}

std::string FormatPermission(const XsPermission& permission) {
  static constexpr char kLetters[] = {'n', 'r', 'w', 'b'};
  return kLetters[permission.access & kXsReadWrite] + std::to_string(permission.domid);
}

}  // namespace

class XsTestServer::Loop {
 public:
  Loop(XsTestServer* server, UniqueFd listener) : server_(server), listener_(std::move(listener)) {}

  void Run() {
    std::vector<pollfd> fds;
    std::vector<uint64_t> ids;
    for (;;) {
      fds.clear();
      ids.clear();
      fds.push_back(pollfd{server_->stop_.get(), POLLIN, 0});
      fds.push_back(pollfd{listener_.get(), POLLIN, 0});
      for (auto& [id, connection] : connections_) {
        short events = POLLIN;
        if (!connection.output.empty()) events |= POLLOUT;
        fds.push_back(pollfd{connection.fd.get(), events, 0});
        ids.push_back(id);
      }
      if (poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        Log(LogLevel::kError, "xs-test-server", "poll: %s", std::strerror(errno));
        return;
      }
      if (fds[0].revents != 0) return;
      if (fds[1].revents & POLLIN) Accept();
      for (size_t i = 0; i < ids.size(); ++i) {
        short revents = fds[i + 2].revents;
        if (revents == 0) continue;
        auto it = connections_.find(ids[i]);
        if (it == connections_.end()) continue;  // closed while serving another connection's request
        if ((revents & POLLOUT) && !Flush(it->second)) {
          Close(ids[i], false);
          continue;
        }
        if (revents & (POLLIN | POLLHUP | POLLERR)) Receive(ids[i]);
      }
    }
  }

 private:
  struct Connection {
    UniqueFd fd;
    uint32_t domid = 0;
    std::string input;
    std::string output;
  };

  void Accept() {
    int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    uint64_t id = next_connection_++;
    connections_[id].fd.Reset(fd);
    server_->accepted_.fetch_add(1);
    server_->open_connections_.fetch_add(1);
  }

  void Close(uint64_t id, bool protocol_error) {
    if (!connections_.contains(id)) return;
    store_.DropConnection(id);
    // Counted before the socket closes, so that a test seeing EOF also sees the count.
    server_->open_connections_.fetch_sub(1);
    if (protocol_error) server_->protocol_errors_.fetch_add(1);
    connections_.erase(id);
  }

  // False if the peer is gone.
  bool Flush(Connection& connection) {
    while (!connection.output.empty()) {
      ssize_t sent =
          send(connection.fd.get(), connection.output.data(), connection.output.size(), MSG_NOSIGNAL);
      if (sent < 0) return errno == EAGAIN || errno == EINTR;
      connection.output.erase(0, static_cast<size_t>(sent));
    }
    return true;
  }

  void Receive(uint64_t id) {
    Connection& connection = connections_.at(id);
    char buffer[65536];
    ssize_t got = read(connection.fd.get(), buffer, sizeof(buffer));
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (got <= 0) {
      Close(id, false);
      return;
    }
    connection.input.append(buffer, static_cast<size_t>(got));
    size_t consumed = 0;
    while (connection.input.size() - consumed >= sizeof(xsd_sockmsg)) {
      xsd_sockmsg header;
      std::memcpy(&header, connection.input.data() + consumed, sizeof(header));
      if (header.len > XENSTORE_PAYLOAD_MAX) {
        Close(id, true);
        return;
      }
      if (connection.input.size() - consumed < sizeof(header) + header.len) break;
      std::string payload = connection.input.substr(consumed + sizeof(header), header.len);
      consumed += sizeof(header) + header.len;
      server_->requests_.fetch_add(1);
      if (!Handle(id, header, payload)) {
        Close(id, true);
        return;
      }
    }
    connection.input.erase(0, consumed);
    if (!Flush(connection)) Close(id, false);
  }

  void Send(uint64_t id, uint32_t type, uint32_t req_id, uint32_t tx_id, std::string_view payload) {
    auto it = connections_.find(id);
    if (it == connections_.end()) return;
    xsd_sockmsg header{type, req_id, tx_id, static_cast<uint32_t>(payload.size())};
    it->second.output.append(reinterpret_cast<const char*>(&header), sizeof(header));
    it->second.output.append(payload);
  }

  void DeliverEvents(const XsEvents& events, uint64_t requester) {
    for (const XsOutgoingEvent& event : events) {
      std::string payload = event.path;
      payload.push_back('\0');
      payload += event.token;
      payload.push_back('\0');
      Send(event.connection, XS_WATCH_EVENT, 0, 0, payload);
    }
    // Other connections are flushed by the poll loop; cut off one that stopped reading long ago.
    std::vector<uint64_t> overflowing;
    for (auto& [id, connection] : connections_) {
      if (id != requester && connection.output.size() > kMaxPendingOutput) overflowing.push_back(id);
    }
    for (uint64_t id : overflowing) Close(id, false);
  }

  // Answers one request; false on a framing error that must close the connection.
  bool Handle(uint64_t id, const xsd_sockmsg& header, const std::string& payload) {
    Connection& connection = connections_.at(id);
    XsCaller caller{id, connection.domid};
    std::vector<std::string_view> args;
    XsEvents events;
    std::string reply = std::string("OK") + '\0';
    int err = 0;
    auto one_arg = [&]() {
      if (args.size() != 1) err = EINVAL;
      return err == 0;
    };
    if (header.type != XS_WRITE && !SplitStrings(payload, &args)) return false;
    switch (header.type) {
      case XS_READ:
        if (one_arg()) err = store_.Read(caller, header.tx_id, args[0], &reply);
        break;
      case XS_WRITE: {
        size_t nul = payload.find('\0');
        if (nul == std::string::npos) return false;
        err = store_.Write(caller, header.tx_id, std::string_view(payload).substr(0, nul),
                           std::string_view(payload).substr(nul + 1), &events);
        break;
      }
      case XS_MKDIR:
        if (one_arg()) err = store_.Mkdir(caller, header.tx_id, args[0], &events);
        break;
      case XS_RM:
        if (one_arg()) err = store_.Remove(caller, header.tx_id, args[0], &events);
        break;
      case XS_DIRECTORY:
      case XS_DIRECTORY_PART:
        err = HandleDirectory(caller, header, args, &reply);
        break;
      case XS_GET_PERMS: {
        std::vector<XsPermission> permissions;
        if (one_arg()) err = store_.GetPermissions(caller, header.tx_id, args[0], &permissions);
        reply.clear();
        for (const XsPermission& permission : permissions) {
          reply += FormatPermission(permission);
          reply.push_back('\0');
        }
        break;
      }
      case XS_SET_PERMS: {
        std::vector<XsPermission> permissions(args.empty() ? 0 : args.size() - 1);
        if (permissions.empty()) err = EINVAL;
        for (size_t i = 0; err == 0 && i < permissions.size(); ++i) {
          if (!ParsePermission(args[i + 1], &permissions[i])) err = EINVAL;
        }
        if (err == 0) err = store_.SetPermissions(caller, header.tx_id, args[0], permissions, &events);
        break;
      }
      case XS_WATCH:
      case XS_UNWATCH:
        if (args.size() != 2) {
          err = EINVAL;
        } else if (header.type == XS_WATCH) {
          err = store_.AddWatch(caller, args[0], args[1], &events);
        } else {
          err = store_.RemoveWatch(caller, args[0], args[1]);
        }
        break;
      case XS_TRANSACTION_START: {
        uint32_t tx = 0;
        err = header.tx_id != 0 ? EBUSY : store_.StartTransaction(caller, &tx);
        reply = std::to_string(tx) + '\0';
        break;
      }
      case XS_TRANSACTION_END:
        if (!one_arg() || (args[0] != "T" && args[0] != "F")) {
          err = EINVAL;
        } else {
          err = store_.EndTransaction(caller, header.tx_id, args[0] == "T", &events);
        }
        break;
      case XS_GET_DOMAIN_PATH: {
        uint64_t domid = 0;
        if (!one_arg() || !ParseDecimal(args[0], kFirstReservedDomid - 1, &domid)) err = EINVAL;
        reply = "/local/domain/" + std::to_string(domid) + '\0';
        break;
      }
      case XS_CONTROL: {
        uint64_t domid = 0;
        if (args.size() == 2 && args[0] == "set-domid" &&
            ParseDecimal(args[1], kFirstReservedDomid - 1, &domid)) {
          connection.domid = static_cast<uint32_t>(domid);
        } else {
          err = EINVAL;
        }
        break;
      }
      default:
        err = EINVAL;
        break;
    }
    if (err != 0) {
      std::string name = ErrnoName(err);
      name.push_back('\0');
      Send(id, XS_ERROR, header.req_id, header.tx_id, name);
    } else {
      Send(id, header.type, header.req_id, header.tx_id, reply);
    }
    DeliverEvents(events, id);
    return true;
  }

  int HandleDirectory(const XsCaller& caller, const xsd_sockmsg& header,
                      const std::vector<std::string_view>& args, std::string* reply) {
    bool part = header.type == XS_DIRECTORY_PART;
    if (args.size() != (part ? 2u : 1u)) return EINVAL;
    std::vector<std::string> children;
    uint64_t generation = 0;
    if (int err = store_.Directory(caller, header.tx_id, args[0], &children, &generation); err != 0)
      return err;
    std::string names;
    for (const std::string& child : children) {
      names += child;
      names.push_back('\0');
    }
    if (!part) {
      if (names.size() > XENSTORE_PAYLOAD_MAX) return E2BIG;
      *reply = std::move(names);
      return 0;
    }
    uint64_t offset = 0;
    if (!ParseDecimal(args[1], names.size(), &offset)) return EINVAL;
    *reply = std::to_string(generation) + '\0';
    size_t room = XENSTORE_PAYLOAD_MAX - reply->size() - 1;
    size_t end = offset;
    // Whole names only, so that the client's concatenation stays a list of names.
    while (end < names.size()) {
      size_t next = names.find('\0', end) + 1;
      if (next - offset > room) break;
      end = next;
    }
    reply->append(names, offset, end - offset);
    if (end == names.size()) reply->push_back('\0');  // the last chunk ends with an empty name
    return 0;
  }

  XsTestServer* server_;
  UniqueFd listener_;
  XsTestStore store_;
  std::map<uint64_t, Connection> connections_;
  uint64_t next_connection_ = 1;
};

Result<std::unique_ptr<XsTestServer>> XsTestServer::Start(const std::string& socket_path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(address.sun_path)) {
    return Status::InvalidArgument("xs test server: socket path too long or empty: " + socket_path);
  }
  std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return Status::FromErrno(errno, "socket for " + socket_path);
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return Status::FromErrno(errno, "bind " + socket_path);
  }
  if (listen(listener.get(), 64) != 0) return Status::FromErrno(errno, "listen " + socket_path);
  UniqueFd stop(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop.valid()) return Status::FromErrno(errno, "eventfd");
  return std::unique_ptr<XsTestServer>(
      new XsTestServer(socket_path, "", std::move(listener), std::move(stop)));
}

Result<std::unique_ptr<XsTestServer>> XsTestServer::StartOnTempSocket() {
  char pattern[] = "/tmp/xs-test-XXXXXX";
  if (mkdtemp(pattern) == nullptr) return Status::FromErrno(errno, "mkdtemp /tmp/xs-test-XXXXXX");
  Result<std::unique_ptr<XsTestServer>> server = Start(std::string(pattern) + "/socket");
  if (!server.ok()) {
    rmdir(pattern);
    return server.status();
  }
  (*server)->temp_dir_ = pattern;
  return server;
}

XsTestServer::XsTestServer(std::string socket_path, std::string temp_dir, UniqueFd listener, UniqueFd stop)
    : socket_path_(std::move(socket_path)), temp_dir_(std::move(temp_dir)), stop_(std::move(stop)) {
  loop_ = std::make_unique<Loop>(this, std::move(listener));
  thread_ = std::thread([this] { loop_->Run(); });
}

XsTestServer::~XsTestServer() {
  uint64_t one = 1;
  if (write(stop_.get(), &one, sizeof(one)) != sizeof(one)) {
    Log(LogLevel::kError, "xs-test-server", "cannot signal stop: %s", std::strerror(errno));
  }
  if (thread_.joinable()) thread_.join();
  loop_.reset();
  unlink(socket_path_.c_str());
  if (!temp_dir_.empty()) rmdir(temp_dir_.c_str());
}

}  // namespace blk
