// Tests of the qdisk shim's server: real Unix sockets, a real libxenstore client against the test xenstore
// server, and clients that behave as libxl does, or worse.
#include "tools/qdisk-shim/shim_server.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "tests/test_util.h"
#include "tests/xenstore/xs_test_util.h"

namespace blk {
namespace {

constexpr uint32_t kDomid = 7;

// A QMP client on a blocking socket with a 5 s receive timeout: a missing reply fails the test, not hangs it.
class Client {
 public:
  explicit Client(const std::string& path) {
    fd_.Reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    connected_ = connect(fd_.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    timeval timeout{5, 0};
    setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  }
  bool connected() const { return connected_; }
  int fd() const { return fd_.get(); }
  void Send(const std::string& text) { ASSERT_EQ(write(fd_.get(), text.data(), text.size()), ssize_t(text.size())); }
  // The next "\r\n"-terminated line, or "<eof>" / "<timeout>".
  std::string Line() {
    for (;;) {
      size_t end = pending_.find("\r\n");
      if (end != std::string::npos) {
        std::string line = pending_.substr(0, end);
        pending_.erase(0, end + 2);
        return line;
      }
      char buffer[4096];
      ssize_t got = read(fd_.get(), buffer, sizeof buffer);
      if (got == 0) return "<eof>";
      if (got < 0) return "<timeout>";
      pending_.append(buffer, static_cast<size_t>(got));
    }
  }
  std::string Ask(const std::string& command) {
    Send(command + "\r\n");
    return Line();
  }

 private:
  UniqueFd fd_;
  bool connected_ = false;
  std::string pending_;
};

class ShimServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<XsTestServer>> server = XsTestServer::StartOnTempSocket();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    xs_server_ = std::move(server).value();
    store_ = OpenClient(*xs_server_);
    ASSERT_NE(store_, nullptr);
    stop_.Reset(eventfd(0, EFD_CLOEXEC));
    options_.domid = kDomid;
    options_.monitors.push_back(QmpMonitor{"libxl-cmd", dir_.File("qmp-libxl-7"), -1});
    options_.monitors.push_back(QmpMonitor{"libxenstat-cmd", dir_.File("qmp-libxenstat-7"), -1});
  }
  void TearDown() override { EXPECT_TRUE(StopServer().ok()); }

  void StartServer(ShimServer::Limits limits = {}) {
    Result<std::unique_ptr<ShimServer>> server = ShimServer::Create(options_, store_.get(), limits);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    runner_ = std::thread([this] { run_status_ = server_->Run(stop_.get()); });
  }
  // Returns Run's status once it has returned.
  Status StopServer() {
    if (runner_.joinable()) {
      uint64_t one = 1;
      EXPECT_EQ(write(stop_.get(), &one, sizeof one), 8);
      runner_.join();
    }
    return run_status_;
  }
  std::string State() {
    Result<std::string> state = store_->Read("/local/domain/0/device-model/7/state");
    return state.ok() ? *state : "<absent>";
  }
  // Polls the store (the server runs on its own thread) for up to 5 s.
  bool StateBecomes(const std::string& wanted) {
    for (int i = 0; i < 500; ++i) {
      if (State() == wanted) return true;
      poll(nullptr, 0, 10);
    }
    return false;
  }

  testing::TempDir dir_;
  std::unique_ptr<XsTestServer> xs_server_;
  std::unique_ptr<LibXenStoreClient> store_;
  UniqueFd stop_;
  ShimOptions options_;
  std::unique_ptr<ShimServer> server_;
  std::thread runner_;
  Status run_status_;
};

TEST_F(ShimServerTest, AnnouncesRunningAndAnswersLibxlOnBothMonitors) {
  StartServer();
  EXPECT_TRUE(StateBecomes("running"));
  Client libxl(dir_.File("qmp-libxl-7"));
  ASSERT_TRUE(libxl.connected());
  EXPECT_EQ(libxl.Line(), QmpSession::Greeting().substr(0, QmpSession::Greeting().size() - 2));
  EXPECT_EQ(libxl.Ask("{\"execute\":\"qmp_capabilities\",\"id\":1}"), "{\"return\": {}, \"id\": 1}");
  EXPECT_EQ(libxl.Ask("{\"execute\":\"query-chardev\",\"id\":2}"), "{\"return\": [], \"id\": 2}");
  EXPECT_EQ(libxl.Ask("{\"execute\":\"query-vnc\",\"id\":3}"), "{\"return\": {\"enabled\": false}, \"id\": 3}");

  Client xenstat(dir_.File("qmp-libxenstat-7"));
  ASSERT_TRUE(xenstat.connected());
  EXPECT_NE(xenstat.Line().find("\"QMP\""), std::string::npos);
  EXPECT_EQ(xenstat.Ask("{\"execute\":\"qmp_capabilities\"}"), "{\"return\": {}}");
  EXPECT_EQ(xenstat.Ask("{\"execute\":\"query-blockstats\"}"), "{\"return\": []}");

  EXPECT_TRUE(StopServer().ok());
  EXPECT_EQ(libxl.Line(), "<eof>");  // Run closed every connection on its way out
  server_.reset();
  struct stat st;
  EXPECT_NE(stat(dir_.File("qmp-libxl-7").c_str(), &st), 0) << "socket file left behind";
}

TEST_F(ShimServerTest, StartedPausedAnnouncesRunningOnlyAfterCont) {
  options_.start_paused = true;
  StartServer();
  Client libxl(dir_.File("qmp-libxl-7"));
  libxl.Line();
  EXPECT_EQ(libxl.Ask("{\"execute\":\"qmp_capabilities\",\"id\":1}"), "{\"return\": {}, \"id\": 1}");
  EXPECT_NE(libxl.Ask("{\"execute\":\"query-status\",\"id\":2}").find("\"prelaunch\""), std::string::npos);
  EXPECT_EQ(State(), "<absent>");
  EXPECT_EQ(libxl.Ask("{\"execute\":\"cont\",\"id\":3}"), "{\"return\": {}, \"id\": 3}");
  EXPECT_TRUE(StateBecomes("running"));
}

TEST_F(ShimServerTest, QuitEndsRunAfterTheReply) {
  StartServer();
  Client client(dir_.File("qmp-libxl-7"));
  client.Line();
  client.Ask("{\"execute\":\"qmp_capabilities\"}");
  EXPECT_EQ(client.Ask("{\"execute\":\"quit\",\"id\":5}"), "{\"return\": {}, \"id\": 5}");
  EXPECT_EQ(client.Line(), "<eof>");
  runner_.join();  // returns without the stop fd
  EXPECT_TRUE(run_status_.ok()) << run_status_.ToString();
  EXPECT_TRUE(server_->vm().quit_requested);
}

TEST_F(ShimServerTest, AMisbehavingClientIsDroppedAndOthersCarryOn) {
  StartServer();
  Client good(dir_.File("qmp-libxl-7"));
  good.Line();
  Client bad(dir_.File("qmp-libxl-7"));
  bad.Line();
  bad.Send(std::string("\x00\xff garbage", 10));
  EXPECT_NE(bad.Line().find("GenericError"), std::string::npos);
  EXPECT_EQ(bad.Line(), "<eof>");
  {
    Client abrupt(dir_.File("qmp-libxl-7"));
    abrupt.Send("{\"execute\": \"qmp_capa");  // and hangs up mid-message
  }
  EXPECT_EQ(good.Ask("{\"execute\":\"qmp_capabilities\"}"), "{\"return\": {}}");
  EXPECT_EQ(good.Ask("{\"execute\":\"query-vnc\"}"), "{\"return\": {\"enabled\": false}}");
}

TEST_F(ShimServerTest, ClientsBeyondTheLimitAreRefused) {
  ShimServer::Limits limits;
  limits.max_connections = 2;
  StartServer(limits);
  Client first(dir_.File("qmp-libxl-7"));
  Client second(dir_.File("qmp-libxl-7"));
  EXPECT_NE(first.Line().find("QMP"), std::string::npos);
  EXPECT_NE(second.Line().find("QMP"), std::string::npos);
  Client third(dir_.File("qmp-libxl-7"));
  EXPECT_EQ(third.Line(), "<eof>");
  EXPECT_EQ(first.Ask("{\"execute\":\"qmp_capabilities\"}"), "{\"return\": {}}");
}

TEST_F(ShimServerTest, AClientThatNeverReadsIsDropped) {
  ShimServer::Limits limits;
  limits.max_pending_output = 4096;
  StartServer(limits);
  Client hog(dir_.File("qmp-libxl-7"));
  int small = 4096;
  setsockopt(hog.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  hog.Send("{\"execute\":\"qmp_capabilities\"}");
  // Each request is answered with the command list; the replies pile up until the server gives up.
  std::string request = "{\"execute\":\"query-commands\"}";
  std::string batch;
  for (int i = 0; i < 64; ++i) batch += request;
  bool dropped = false;
  for (int i = 0; i < 2000 && !dropped; ++i) {
    dropped = send(hog.fd(), batch.data(), batch.size(), MSG_NOSIGNAL) < 0;
  }
  EXPECT_TRUE(dropped) << "the server kept buffering for a client that never reads";
  Client other(dir_.File("qmp-libxl-7"));
  EXPECT_NE(other.Line().find("QMP"), std::string::npos);
}

TEST_F(ShimServerTest, ReplacesAStaleSocketButNoOtherFile) {
  {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, dir_.File("qmp-libxl-7").c_str(), sizeof(address.sun_path) - 1);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    close(fd);  // a stale socket file, nobody listening
  }
  Result<std::unique_ptr<ShimServer>> again = ShimServer::Create(options_, store_.get());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  again->reset();
  std::ofstream(dir_.File("qmp-libxl-7")) << "not a socket";
  Result<std::unique_ptr<ShimServer>> refused = ShimServer::Create(options_, store_.get());
  EXPECT_FALSE(refused.ok());
  std::ifstream kept(dir_.File("qmp-libxl-7"));
  std::string content;
  std::getline(kept, content);
  EXPECT_EQ(content, "not a socket");
}

TEST_F(ShimServerTest, AdoptsAListeningSocketPassedByFd) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, dir_.File("preopened").c_str(), sizeof(address.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  options_.monitors = {QmpMonitor{"libxl-cmd", "", fd}};
  StartServer();
  Client libxl(dir_.File("preopened"));
  EXPECT_NE(libxl.Line().find("QMP"), std::string::npos);
  EXPECT_EQ(libxl.Ask("{\"execute\":\"qmp_capabilities\"}"), "{\"return\": {}}");
}

TEST_F(ShimServerTest, AnAdoptedFdThatIsNoSocketIsRefused) {
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  close(pipe_fds[1]);
  options_.monitors = {QmpMonitor{"libxl-cmd", "", pipe_fds[0]}};
  Result<std::unique_ptr<ShimServer>> server = ShimServer::Create(options_, store_.get());
  EXPECT_FALSE(server.ok());
}

}  // namespace
}  // namespace blk
