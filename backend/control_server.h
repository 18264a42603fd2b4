// The control socket: a Unix stream socket speaking the line protocol of backend/control_protocol.h, served
// from its owner's event loop (the daemon's control thread, or blkbench's), with no thread of its own and
// none per client.
//
// Who may command: the peer's credentials (SO_PEERCRED) must say uid 0 or the server's own effective uid
// (so that tests and blkbench run as an ordinary user can use their own socket). Anyone else is told so in
// one error line and disconnected. The socket is created mode 0600 in a directory created 0700, so the file
// system already keeps others out; the credential check also holds where a directory was made more open.
//
// Commands run on the owner's thread through a ControlTarget. A pause is answered when the target reports it
// done (from any thread: the report is passed back through an eventfd) or when its timeout expires, so the
// loop never blocks for a drain. A snapshot is a pause whose completion makes the child, swaps and resumes
// (a pause that times out is resumed instead). A client that disconnects mid-command leaves the command
// running; its answer is dropped (a snapshot still completes: no snapshot leaves a device paused).
// Optionally, the server writes each device's statistics to a file once a second.
//
// Threading: Create, fd, HandleEvents and the destructor on the owner's thread. The target's Pause callback
// may run on any thread, even after the server is gone.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "backend/control_protocol.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace blk {

// What the control server asks of its owner. Every method runs on the owner's thread.
class ControlTarget {
 public:
  virtual ~ControlTarget() = default;
  virtual std::vector<ControlDeviceInfo> List() = 0;
  // Every device when `device` is empty; kNotFound for an unknown one.
  virtual Result<std::vector<ControlDeviceStats>> Stats(const std::string& device) = 0;
  // Starts pausing `device`, or says why not. Once started, `done` runs exactly once, on any thread.
  virtual Status Pause(const std::string& device, std::function<void(Status)> done) = 0;
  // What a pause still waiting is waiting for: one line per request.
  virtual std::vector<std::string> DescribePause(const std::string& device) = 0;
  virtual Status Resume(const std::string& device) = 0;
  // resume --image: `device` is paused; serve `image` from now on (Device::SwapImage). Resume follows.
  virtual Status SwapImage(const std::string& device, const std::string& image) = 0;
  // snapshot: whether it may start (checked before pausing), then, once paused, the child made and served
  // (Device::CheckSnapshot, Device::Snapshot). Resume follows either way.
  virtual Status CheckSnapshot(const std::string& device, const std::string& child) = 0;
  virtual Status Snapshot(const std::string& device, const std::string& child) = 0;
  // Grows `device` to `bytes` and tells the frontend; returns the line to report.
  virtual Result<std::string> Resize(const std::string& device, uint64_t bytes) = 0;
};

struct ControlServerOptions {
  std::string socket_path = "/run/blkbackd/control";
  // Where each device's statistics file is refreshed ("" for none).
  std::string stats_dir;
  int stats_interval_ms = 1000;
  size_t max_clients = 32;
};

class ControlServer {
 public:
  // Creates the socket's directory (0700) if missing, replaces a stale socket, refuses one a live server
  // still answers on.
  static Result<std::unique_ptr<ControlServer>> Create(const ControlServerOptions& options,
                                                       ControlTarget& target);
  // Disconnects every client and removes the socket (and the statistics files).
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Readable (level-triggered) whenever HandleEvents has something to do; add it to the owner's epoll.
  int fd() const { return epoll_.get(); }
  // Handles whatever is ready, without blocking.
  void HandleEvents();

  const std::string& socket_path() const { return options_.socket_path; }
  size_t clients() const { return clients_.size(); }
  size_t pending_pauses() const { return pauses_.size(); }

 private:
  struct Client;
  struct PendingPause;
  class Mailbox;

  ControlServer(const ControlServerOptions& options, ControlTarget& target);
  Status Init();
  Status Watch(int fd, uint32_t events, uint64_t key);
  void Accept();
  void OnClientEvent(uint64_t id, uint32_t events);
  void ProcessLines(Client& client);
  void Execute(Client& client, const ControlRequest& request);
  void Send(Client& client, const std::string& text);
  void Flush(Client& client);
  // Closes a client that is done, else watches for what it still needs (input, output).
  void UpdateInterest(Client& client);
  void Close(uint64_t id);
  void OnPauseDone(uint64_t token, Status status);
  // Takes the snapshot a finished pause was for, resumes, and returns the reply.
  std::string FinishSnapshot(const PendingPause& pause, Status paused, double pause_ms);
  void OnPauseTimeout(uint64_t token);
  void FinishPause(uint64_t token, const std::string& reply);
  void WriteStatsFiles();

  ControlServerOptions options_;
  ControlTarget& target_;
  UniqueFd epoll_;
  UniqueFd listen_;
  UniqueFd stats_timer_;
  std::shared_ptr<Mailbox> mailbox_;
  ino_t socket_inode_ = 0;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Client>> clients_;
  std::map<uint64_t, std::unique_ptr<PendingPause>> pauses_;
  std::set<std::string> stats_files_;
};

// Runs a server's loop on a thread of its own, for owners without an event loop (blkbench, tests). The target
// is then used from that thread.
class ControlServerThread {
 public:
  static Result<std::unique_ptr<ControlServerThread>> Start(const ControlServerOptions& options,
                                                            ControlTarget& target);
  // Stops and joins the thread, then removes the server.
  ~ControlServerThread();
  ControlServerThread(const ControlServerThread&) = delete;
  ControlServerThread& operator=(const ControlServerThread&) = delete;

  ControlServer& server() { return *server_; }

 private:
  ControlServerThread(std::unique_ptr<ControlServer> server, UniqueFd epoll, UniqueFd stop)
      : server_(std::move(server)), epoll_(std::move(epoll)), stop_(std::move(stop)) {}
  void Run();

  std::unique_ptr<ControlServer> server_;
  UniqueFd epoll_;
  UniqueFd stop_;
  std::thread thread_;
};

}  // namespace blk
