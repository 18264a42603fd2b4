// XsTestServer: a xenstore daemon for tests, speaking the <xen/io/xs_wire.h> protocol on a Unix socket so
// that the real libxenstore client (XENSTORED_PATH) can talk to it without a hypervisor. Debian's xenstored
// cannot serve here: the C daemon crashes on its first request without Xen, oxenstored stops on setrlimit.
//
// Every connection starts as dom0. The XS_CONTROL command "set-domid" with a decimal argument (a test-server
// extension; xs_control_command(h, "set-domid", "5", 2)) makes the connection act as that domain from then
// on, so tests can exercise permissions as a guest would see them. A client that breaks the framing (a length
// above XENSTORE_PAYLOAD_MAX, a missing NUL terminator) has its connection closed; the server goes on serving
// others.
//
// Threading: Start runs the server on its own thread; the destructor stops and joins it and removes the
// socket. The counters may be read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "base/status.h"
#include "base/unique_fd.h"

namespace blk {

class XsTestServer {
 public:
  // Serves `socket_path` (which must not exist yet).
  static Result<std::unique_ptr<XsTestServer>> Start(const std::string& socket_path);
  // Serves a socket in a fresh temporary directory, removed again on destruction.
  static Result<std::unique_ptr<XsTestServer>> StartOnTempSocket();
  ~XsTestServer();
  XsTestServer(const XsTestServer&) = delete;
  XsTestServer& operator=(const XsTestServer&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  uint64_t connections_accepted() const { return accepted_.load(); }
  uint64_t connections_closed_for_protocol_errors() const { return protocol_errors_.load(); }
  uint64_t open_connections() const { return open_connections_.load(); }
  uint64_t requests_served() const { return requests_.load(); }

 private:
  class Loop;
  XsTestServer(std::string socket_path, std::string temp_dir, UniqueFd listener, UniqueFd stop);

  std::string socket_path_;
  std::string temp_dir_;
  UniqueFd stop_;  // an eventfd; the loop exits when it becomes readable
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> protocol_errors_{0};
  std::atomic<uint64_t> open_connections_{0};
  std::atomic<uint64_t> requests_{0};
};

}  // namespace blk
