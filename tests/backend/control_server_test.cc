// Tests of the control socket end to end: a real Unix socket in a temporary directory, ControlClient on one
// side, ControlServer with a DeviceControlTarget on the other, and a real Device served to the userspace
// blkfront over the simulated hypervisor. Pause and resume are checked from the guest's side: nothing is
// answered while paused, everything is after resume, and every byte is verified.
#include "backend/control_server.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "backend/control_client.h"
#include "backend/control_device.h"
#include "backend/device.h"
#include "backend/worker.h"
#include "frontend/blkfront.h"
#include "frontend/pattern.h"
#include "ring/sim/sim_hypervisor.h"
#include "tests/backend/one_ring_guest.h"

namespace blk {
namespace {

constexpr uint64_t kDiskBytes = 8ull << 20;
constexpr uint32_t kBlock = 4096;
constexpr unsigned kDepth = 32;
constexpr int kReplyMs = 10000;

struct AlignedBlocks {
  explicit AlignedBlocks(size_t count)
      : size(count * kBlock), data(static_cast<uint8_t*>(std::aligned_alloc(kPageSize, count * kBlock))) {}
  ~AlignedBlocks() { std::free(data); }
  uint8_t* block(size_t i) { return data + i * kBlock; }
  size_t size;
  uint8_t* data;
};

bool Contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

class ControlServerTest : public ::testing::Test {
 protected:
  // `threaded`: the worker runs on its own thread; otherwise the test steps it with RunOnce.
  void Start(bool threaded) {
    char dir[] = "/tmp/blk-control-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    image_ = dir_ + "/disk.img";
    int fd = ::open(image_.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, kDiskBytes), 0);
    ::close(fd);
    DeviceConfig config;
    config.name = "1/51712";
    config.path = image_;
    config.direct = false;
    OneRingGuest guest;
    ConnectOneRingGuest(sim_, config, 4 * kDepth, threaded, &guest);
    device_ = std::move(guest.device);
    front_ = std::move(guest.front);
    worker_ = std::move(guest.worker);
    ASSERT_FALSE(HasFatalFailure());
    target_.Add("1/51712", *device_);
    ControlServerOptions options;
    options.socket_path = dir_ + "/run/control";
    options.stats_dir = dir_ + "/stats";
    options.stats_interval_ms = 20;
    auto server = ControlServerThread::Start(options, target_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
  }

  void TearDown() override {
    server_.reset();
    if (device_) device_->Disconnect();
    if (worker_) worker_->Stop();
    device_.reset();
    front_.reset();
    worker_.reset();
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  std::string socket_path() const { return dir_ + "/run/control"; }

  std::unique_ptr<ControlClient> Connect() {
    auto client = ControlClient::Connect(socket_path());
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(*client) : nullptr;
  }

  // Sends `line` on a fresh connection; returns the first body line on "ok", "error: <message>" otherwise.
  std::string Ask(const std::string& line) {
    std::unique_ptr<ControlClient> client = Connect();
    if (!client) return "no connection";
    Result<ControlReply> reply = client->CallLine(line, kReplyMs);
    if (!reply.ok()) return "broken: " + reply.status().ToString();
    if (!reply->ok) return "error: " + reply->error;
    std::string body;
    for (const std::string& l : reply->lines) body += l + "\n";
    return body;
  }

  void QueueWrite(AlignedBlocks& blocks, size_t index, uint64_t block, uint64_t seed) {
    FillPattern(std::span(blocks.block(index), kBlock), block * (kBlock >> kSectorShift), seed);
    Io io;
    io.op = IoOp::kWrite;
    io.sector = block * (kBlock >> kSectorShift);
    io.length = kBlock;
    io.buffer = blocks.block(index);
    io.tag = index;
    ASSERT_TRUE(front_->Queue(io).ok());
  }

  // Reaps what has completed, waiting at most `wait` for the first; every completion must be OKAY.
  size_t Reap(std::chrono::milliseconds wait) {
    IoCompletion done[128];
    Result<size_t> got = front_->Wait(done, wait);
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    if (!got.ok()) return 0;
    for (size_t i = 0; i < *got; ++i) EXPECT_EQ(done[i].status, BLKIF_RSP_OKAY);
    return *got;
  }

  size_t ReapAll(size_t expected) {
    size_t total = 0;
    for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
         total < expected && std::chrono::steady_clock::now() < deadline;) {
      total += Reap(std::chrono::milliseconds(100));
    }
    return total;
  }

  void VerifyBlocks(uint64_t first, size_t count, uint64_t seed) {
    AlignedBlocks in(count);
    for (size_t i = 0; i < count; ++i) {
      Io io;
      io.op = IoOp::kRead;
      io.sector = (first + i) * (kBlock >> kSectorShift);
      io.length = kBlock;
      io.buffer = in.block(i);
      io.tag = i;
      ASSERT_TRUE(front_->Queue(io).ok());
    }
    ASSERT_TRUE(front_->Push().ok());
    ASSERT_EQ(ReapAll(count), count);
    for (size_t i = 0; i < count; ++i) {
      auto mismatch = CheckPattern(std::span<const uint8_t>(in.block(i), kBlock),
                                   (first + i) * (kBlock >> kSectorShift), seed);
      ASSERT_FALSE(mismatch.has_value()) << "block " << first + i << ": " << mismatch->reason;
    }
  }

  std::string dir_;
  std::string image_;
  SimHypervisor sim_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<Blkfront> front_;
  std::unique_ptr<Worker> worker_;
  DeviceControlTarget target_;
  std::unique_ptr<ControlServerThread> server_;
};

TEST_F(ControlServerTest, GreetsListsAndCounts) {
  Start(true);
  std::string list = Ask("list");
  EXPECT_TRUE(Contains(list, "1/51712 state=connected io=running size=8388608 queues=1")) << list;
  EXPECT_TRUE(Contains(list, "ring-pages=1,protocol=x86_64-abi")) << list;
  EXPECT_TRUE(Contains(list, "images=" + image_)) << list;

  AlignedBlocks out(kDepth);
  for (size_t i = 0; i < kDepth; ++i) QueueWrite(out, i, i, 7);
  ASSERT_TRUE(front_->Push().ok());
  ASSERT_EQ(ReapAll(kDepth), kDepth);
  VerifyBlocks(0, kDepth, 7);

  std::string stats = Ask("stats 1/51712");
  EXPECT_TRUE(Contains(stats,
                       "1/51712 io=running in_flight=0 oo_req=0 rd_req=32 wr_req=32 f_req=0 ds_req=0 "
                       "rd_sect=256 wr_sect=256 bad_req=0 io_errors=0"))
      << stats;
  std::string json = Ask("stats --json");
  EXPECT_TRUE(Contains(json, "{\"version\":1,\"devices\":[{\"device\":\"1/51712\",\"io\":\"running\""));
  EXPECT_TRUE(Contains(json, "\"wr_req\":32,")) << json;
  EXPECT_TRUE(Contains(json, "\"latency_us\":{\"count\":64,")) << json;

  // The statistics file follows within a few refreshes.
  std::string file = dir_ + "/stats/1-51712";
  std::string text;
  for (int i = 0; i < 200 && !Contains(text, "wr_req 32\n"); ++i) {
    ::usleep(10000);
    std::ifstream in(file);
    std::stringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  }
  EXPECT_TRUE(Contains(text, "rd_req 32\nwr_req 32\n")) << text;
}

TEST_F(ControlServerTest, SocketAndDirectoryAreOwnerOnly) {
  Start(true);
  struct stat st;
  ASSERT_EQ(::stat(socket_path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((dir_ + "/run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  // A second server on the same path is refused while the first answers.
  DeviceControlTarget other;
  ControlServerOptions options;
  options.socket_path = socket_path();
  auto second = ControlServer::Create(options, other);
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(Contains(second.status().message(), "is in use")) << second.status().ToString();
}

TEST_F(ControlServerTest, PausedDeviceAnswersNothingAndResumeServesEverythingVerified) {
  Start(true);
  AlignedBlocks out(3 * kDepth);
  // 32 writes in flight as the pause comes in.
  for (size_t i = 0; i < kDepth; ++i) QueueWrite(out, i, i, 11);
  ASSERT_TRUE(front_->Push().ok());
  std::string paused = Ask("pause 1/51712 --timeout 5000");
  ASSERT_TRUE(Contains(paused, "1/51712 paused in ")) << paused;
  EXPECT_EQ(device_->pause_state(), PauseState::kPaused);
  // What was taken before the pause is answered; whatever was not yet taken waits.
  size_t answered = 0;
  for (size_t got; (got = Reap(std::chrono::milliseconds(50))) > 0;) answered += got;
  EXPECT_TRUE(Contains(Ask("stats 1/51712"), "io=paused in_flight=0 "));

  // The frontend keeps queueing; nothing is answered.
  for (size_t i = kDepth; i < 3 * kDepth; ++i) QueueWrite(out, i, i, 11);
  ASSERT_TRUE(front_->Push().ok());
  EXPECT_EQ(Reap(std::chrono::milliseconds(200)), 0u);
  EXPECT_TRUE(Contains(Ask("list"), "io=paused"));

  std::string resumed = Ask("resume 1/51712");
  EXPECT_EQ(resumed, "1/51712 resumed\n");
  EXPECT_EQ(ReapAll(3 * kDepth - answered), 3 * kDepth - answered);
  VerifyBlocks(0, 3 * kDepth, 11);
  EXPECT_EQ(device_->pause_state(), PauseState::kRunning);
}

TEST_F(ControlServerTest, EveryControlErrorIsOneClearLine) {
  Start(true);
  EXPECT_EQ(Ask("pause 9/9"), "error: no device 9/9 (see list)");
  EXPECT_EQ(Ask("stats 2/51712"), "error: no device 2/51712 (see list)");
  EXPECT_EQ(Ask("resume 1/51712"), "error: 1/51712 is not paused");
  EXPECT_TRUE(Contains(Ask("pause 1/51712"), "paused in"));
  EXPECT_EQ(Ask("pause 1/51712"), "error: 1/51712 is already paused");
  EXPECT_EQ(Ask("resume 1/51712"), "1/51712 resumed\n");
  EXPECT_EQ(
      Ask("resize 1/51712 4M"),
      "error: 1/51712: refusing to shrink from 8388608 to 4194304 bytes: the guest may have data there");
  EXPECT_EQ(Ask("resize 1/51712 1000"),
            "error: 1/51712: 1000 bytes is not a multiple of the 512-byte sector");
  EXPECT_EQ(Ask("frobnicate"),
            "error: unknown command 'frobnicate' (list, stats, pause, resume, resize, snapshot)");
  EXPECT_TRUE(Contains(Ask("pause 1-51712"), "error: bad device '1-51712'"));

  // One connection survives bad requests and goes on answering.
  std::unique_ptr<ControlClient> client = Connect();
  ASSERT_NE(client, nullptr);
  Result<ControlReply> bad = client->CallLine("list everything", kReplyMs);
  ASSERT_TRUE(bad.ok());
  EXPECT_FALSE(bad->ok);
  EXPECT_EQ(bad->error, "unexpected 'everything' after list");
  Result<ControlReply> good = client->CallLine("list", kReplyMs);
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE(good->ok);
  EXPECT_EQ(good->lines.size(), 1u);

  // A line over the limit is refused and the connection closed.
  Result<ControlReply> huge = client->CallLine(std::string(kMaxControlLine + 10, 'x'), kReplyMs);
  ASSERT_TRUE(huge.ok()) << huge.status().ToString();
  EXPECT_EQ(huge->error, "request longer than 1024 bytes");
  Result<ControlReply> after = client->CallLine("list", 1000);
  EXPECT_FALSE(after.ok());
}

TEST_F(ControlServerTest, ResizeGrowsTheFileAndTheRingAcceptsTheNewSectors) {
  Start(true);
  AlignedBlocks out(1);
  uint64_t beyond = kDiskBytes / kBlock;  // the first block past the old end
  QueueWrite(out, 0, beyond, 3);
  ASSERT_TRUE(front_->Push().ok());
  IoCompletion done[1];
  Result<size_t> got = front_->Wait(done, std::chrono::seconds(10));
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(*got, 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_ERROR);  // past the end, before the resize

  std::string grown = Ask("resize 1/51712 16M");
  EXPECT_EQ(grown, "1/51712: 8388608 -> 16777216 bytes (no xenstore here: no frontend is told)\n");
  struct stat st;
  ASSERT_EQ(::stat(image_.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 16 << 20);
  EXPECT_TRUE(Contains(Ask("list"), "size=16777216"));
  QueueWrite(out, 0, beyond, 3);
  ASSERT_TRUE(front_->Push().ok());
  ASSERT_EQ(ReapAll(1), 1u);
  VerifyBlocks(beyond, 1, 3);
  EXPECT_EQ(Ask("resize 1/51712 16M"),
            "1/51712: 16777216 -> 16777216 bytes (no xenstore here: no frontend is told)\n");
}

// With the worker stepped by hand, the I/O in flight cannot finish until the test lets it: the timeout
// fires, names the outstanding requests, and the device stays pausing, then becomes paused.
TEST_F(ControlServerTest, PauseTimeoutNamesOutstandingRequestsAndTheDeviceStaysConsistent) {
  Start(false);
  AlignedBlocks out(4);
  for (size_t i = 0; i < 4; ++i) QueueWrite(out, i, i, 5);
  ASSERT_TRUE(front_->Push().ok());
  worker_->RunOnce(0);  // takes the requests and submits their I/O; completions wait for the next step
  std::string timed_out = Ask("pause 1/51712 --timeout 50");
  EXPECT_TRUE(Contains(timed_out, "error: pause 1/51712: not drained after 50 ms; it stays pausing"))
      << timed_out;
  EXPECT_TRUE(Contains(timed_out, "q0: write id ")) << timed_out;
  EXPECT_TRUE(Contains(timed_out, ", in I/O")) << timed_out;
  EXPECT_EQ(device_->pause_state(), PauseState::kPausing);
  EXPECT_EQ(Ask("pause 1/51712"), "error: 1/51712 is already pausing");
  for (int i = 0; i < 100 && device_->pause_state() != PauseState::kPaused; ++i) worker_->RunOnce(10);
  EXPECT_EQ(device_->pause_state(), PauseState::kPaused);
  EXPECT_EQ(Reap(std::chrono::milliseconds(0)), 4u);
  EXPECT_EQ(Ask("resume 1/51712"), "1/51712 resumed\n");
  worker_->Start();
  VerifyBlocks(0, 4, 5);
}

TEST_F(ControlServerTest, ClientDisconnectingMidPauseDisturbsNothing) {
  Start(false);
  AlignedBlocks out(4);
  for (size_t i = 0; i < 4; ++i) QueueWrite(out, i, i, 9);
  ASSERT_TRUE(front_->Push().ok());
  worker_->RunOnce(0);
  {
    std::unique_ptr<ControlClient> client = Connect();
    ASSERT_NE(client, nullptr);
    std::string line = "pause 1/51712\n";
    ASSERT_EQ(::send(client->fd(), line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
    for (int i = 0; i < 500 && device_->pause_state() != PauseState::kPausing; ++i) ::usleep(1000);
    ASSERT_EQ(device_->pause_state(), PauseState::kPausing);
    // Served after the pause has started (one loop serves both): from here the test alone steps the worker.
    EXPECT_TRUE(Contains(Ask("list"), "io=pausing"));
  }  // gone before the answer
  for (int i = 0; i < 100 && device_->pause_state() != PauseState::kPaused; ++i) worker_->RunOnce(10);
  EXPECT_EQ(device_->pause_state(), PauseState::kPaused);
  EXPECT_TRUE(Contains(Ask("list"), "io=paused"));
  // A request line cut off by a disconnect is dropped too.
  {
    std::unique_ptr<ControlClient> client = Connect();
    ASSERT_NE(client, nullptr);
    ASSERT_EQ(::send(client->fd(), "resu", 4, MSG_NOSIGNAL), 4);
  }
  EXPECT_EQ(device_->pause_state(), PauseState::kPaused);
  EXPECT_EQ(Reap(std::chrono::milliseconds(0)), 4u);
  EXPECT_EQ(Ask("resume 1/51712"), "1/51712 resumed\n");
  worker_->Start();
  VerifyBlocks(0, 4, 9);
}

// "echo 'pause 1/51712' | nc -U": the client shuts down its side after the request and still gets the
// reply, then end of file.
TEST_F(ControlServerTest, HalfClosedClientStillGetsItsReplies) {
  Start(true);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strcpy(address.sun_path, socket_path().c_str());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  std::string requests = "list\npause 1/51712\nstats 1/51712\n";
  ASSERT_EQ(::send(fd, requests.data(), requests.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(requests.size()));
  ASSERT_EQ(::shutdown(fd, SHUT_WR), 0);
  std::string received;
  char buffer[4096];
  for (ssize_t got; (got = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;) received.append(buffer, got);
  ::close(fd);
  EXPECT_EQ(received.find("blkbackd-control 1\nok 1\n1/51712 state=connected io=running"), 0u) << received;
  EXPECT_TRUE(Contains(received, "\nok 1\n1/51712 paused in ")) << received;
  EXPECT_TRUE(Contains(received, "\nok 1\n1/51712 io=paused in_flight=0 ")) << received;
  EXPECT_EQ(received.back(), '\n');
  EXPECT_EQ(Ask("resume 1/51712"), "1/51712 resumed\n");
}

// The guest goes away while its device is pausing: the retired ring still drains, and the pause completes.
// (Driven from the test thread: with the worker stepped by hand, its tasks run on the caller's thread.)
TEST_F(ControlServerTest, DisconnectWhilePausingStillSettlesThePause) {
  Start(false);
  AlignedBlocks out(4);
  for (size_t i = 0; i < 4; ++i) QueueWrite(out, i, i, 4);
  ASSERT_TRUE(front_->Push().ok());
  worker_->RunOnce(0);
  std::atomic<int> settled{0};
  Status outcome = Status::Busy("not settled");
  ASSERT_TRUE(device_
                  ->Pause([&](Status status) {
                    outcome = std::move(status);
                    settled.fetch_add(1);
                  })
                  .ok());
  EXPECT_EQ(device_->pause_state(), PauseState::kPausing);
  device_->Disconnect();
  EXPECT_EQ(worker_->retiring(), 1u);
  for (int i = 0; i < 100 && worker_->retiring() > 0; ++i) worker_->RunOnce(10);
  EXPECT_EQ(worker_->retiring(), 0u);
  EXPECT_EQ(settled.load(), 1);
  EXPECT_TRUE(outcome.ok()) << outcome.ToString();
  EXPECT_EQ(device_->pause_state(), PauseState::kPaused);
  EXPECT_TRUE(Contains(Ask("list"), "1/51712 state=open io=paused size=8388608 queues=0")) << Ask("list");
  EXPECT_EQ(Ask("resume 1/51712"), "1/51712 resumed\n");
}

// A peer whose uid is neither root nor ours gets one error line. Run as root: the child drops to nobody.
TEST_F(ControlServerTest, OtherUsersAreRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  Start(true);
  // The socket's own permissions keep nobody out...
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
    auto client = ControlClient::Connect(socket_path());
    ::_exit(!client.ok() && client.status().code() == Status::Code::kPermissionDenied ? 0 : 11);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // ...and where they are opened up, the credential check still refuses.
  ASSERT_EQ(::chmod(dir_.c_str(), 0711), 0);
  ASSERT_EQ(::chmod((dir_ + "/run").c_str(), 0777), 0);
  ASSERT_EQ(::chmod(socket_path().c_str(), 0777), 0);
  child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
    auto client = ControlClient::Connect(socket_path());
    if (client.ok()) ::_exit(12);
    bool refused = client.status().code() == Status::Code::kPermissionDenied &&
                   client.status().message().find("permission denied: uid 65534 may not command blkbackd") !=
                       std::string::npos;
    ::_exit(refused ? 0 : 13);
  }
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << WEXITSTATUS(status);
  EXPECT_TRUE(Contains(Ask("list"), "io=running"));  // and root still commands
}

TEST_F(ControlServerTest, NoDaemonIsNamedWithItsSocket) {
  auto client = ControlClient::Connect("/tmp/blk-control-nonexistent/control");
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), Status::Code::kNotFound);
  EXPECT_EQ(client.status().message(),
            "blkbackd is not running (nothing listens on /tmp/blk-control-nonexistent/control)");
}

}  // namespace
}  // namespace blk
