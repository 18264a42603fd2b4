// The fixture the handshake tests share: the xs_wire test server, a BlkbackDaemon on the real libxenstore
// client running its loop on a thread, the simulated hypervisor, raw images in a temporary directory, a
// "toolstack" that creates devices as libxl does, and guests that connect through XenbusBlkfront.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend/blkback_daemon.h"
#include "base/log.h"
#include "frontend/pattern.h"
#include "frontend/xenbus_blkfront.h"
#include "ring/sim/sim_hypervisor.h"
#include "tests/xenstore/xs_test_util.h"

namespace blk {

inline constexpr auto kTimeout = std::chrono::seconds(10);

// Collects log lines so that a test can check what an operator reads.
class LogLines {
 public:
  LogLines() { SetLogSink(&LogLines::Sink, this); }
  ~LogLines() { SetLogSink(nullptr, nullptr); }
  bool Contains(const std::string& a, const std::string& b = "") {
    std::lock_guard lock(mutex_);
    for (const std::string& line : lines_) {
      if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) return true;
    }
    return false;
  }
  std::string All() {
    std::lock_guard lock(mutex_);
    std::string all;
    for (const std::string& line : lines_) all += line;
    return all;
  }
  size_t Count(const std::string& a) {
    std::lock_guard lock(mutex_);
    size_t n = 0;
    for (const std::string& line : lines_) n += line.find(a) != std::string::npos;
    return n;
  }

 private:
  static void Sink(LogLevel, const char* line, void* self) {
    auto* lines = static_cast<LogLines*>(self);
    std::lock_guard lock(lines->mutex_);
    lines->lines_.emplace_back(line);
  }
  std::mutex mutex_;
  std::vector<std::string> lines_;
};

// A page-aligned buffer, as a guest's I/O buffers are.
struct AlignedBuffer {
  explicit AlignedBuffer(size_t bytes)
      : size(bytes), data(static_cast<uint8_t*>(std::aligned_alloc(4096, bytes))) {}
  ~AlignedBuffer() { std::free(data); }
  std::span<uint8_t> span() { return {data, size}; }
  size_t size;
  uint8_t* data;
};

// Submits one I/O and waits for its completion; returns its BLKIF_RSP_* status.
inline Result<int16_t> DoIo(Blkfront& front, IoOp op, uint64_t sector, void* buffer, size_t length) {
  Io io;
  io.op = op;
  io.sector = sector;
  io.buffer = buffer;
  io.length = length;
  io.tag = 7;
  BLK_RETURN_IF_ERROR(front.Submit(io));
  auto deadline = std::chrono::steady_clock::now() + kTimeout;
  while (std::chrono::steady_clock::now() < deadline) {
    IoCompletion done[1];
    Result<size_t> got = front.Wait(done, std::chrono::seconds(1));
    if (!got.ok()) return got.status();
    if (*got == 1) return done[0].status;
  }
  return Status::Busy("no completion");
}

// Writes a pattern and reads it back on `front`; fails the test on a mismatch.
inline void CheckIo(Blkfront& front, uint64_t sector, uint64_t seed, size_t bytes = 16384) {
  AlignedBuffer out(bytes), in(bytes);
  FillPattern(out.span(), sector, seed);
  Result<int16_t> wrote = DoIo(front, IoOp::kWrite, sector, out.data, bytes);
  ASSERT_TRUE(wrote.ok()) << wrote.status().ToString();
  ASSERT_EQ(*wrote, BLKIF_RSP_OKAY);
  std::memset(in.data, 0, bytes);
  Result<int16_t> read = DoIo(front, IoOp::kRead, sector, in.data, bytes);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  ASSERT_EQ(*read, BLKIF_RSP_OKAY);
  std::optional<PatternMismatch> mismatch = CheckPattern(in.span(), sector, seed);
  ASSERT_FALSE(mismatch.has_value()) << "sector " << mismatch->sector << ": " << mismatch->reason;
}

inline std::string FrontendPath(uint32_t domid, uint32_t devid) {
  return "/local/domain/" + std::to_string(domid) + "/device/vbd/" + std::to_string(devid);
}

class HandshakeFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<XsTestServer>> server = XsTestServer::StartOnTempSocket();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    toolstack_ = OpenClient(*server_);
    ASSERT_NE(toolstack_, nullptr);
    ASSERT_TRUE(toolstack_->Write("/local/domain/0/domid", "0").ok());
    sim_ = std::make_unique<SimHypervisor>(0);
    char dir[] = "/tmp/blk-handshake-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    image_dir_ = dir;
  }

  void TearDown() override {
    StopDaemon();
    std::error_code ignored;
    std::filesystem::remove_all(image_dir_, ignored);
  }

  void StartDaemon(BlkbackDaemonOptions options = {}) {
    options.direct_io = false;  // the images live on /tmp, often tmpfs
    std::unique_ptr<LibXenStoreClient> client = OpenClient(*server_);
    ASSERT_NE(client, nullptr);
    if (backend_domid_ != 0) BecomeDomain(*client, backend_domid_);
    daemon_client_ = client.get();
    Result<std::unique_ptr<BlkbackDaemon>> daemon =
        BlkbackDaemon::Create(std::move(client), sim_->hypervisor(), options);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    loop_ = std::thread([this] { loop_status_ = daemon_->Run(); });
  }

  // Stops the loop; the daemon (and its devices) stay until destroyed.
  void StopDaemon() {
    if (!daemon_) return;
    daemon_->Stop();
    if (loop_.joinable()) loop_.join();
    EXPECT_TRUE(loop_status_.ok()) << loop_status_.ToString();
  }

  std::string MakeImage(const std::string& name, uint64_t bytes = 4 << 20) {
    std::string path = image_dir_ + "/" + name;
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
    ::close(fd);
    return path;
  }

  // Runs the backend in driver domain `domid` instead of dom0 (before StartDaemon).
  void UseDriverDomain(uint32_t domid) {
    backend_domid_ = domid;
    sim_ = std::make_unique<SimHypervisor>(static_cast<DomId>(domid));
    std::string home = "/local/domain/" + std::to_string(domid);
    ASSERT_TRUE(toolstack_->Mkdir(home).ok());
    XsPermission perms[] = {{domid, kXsNone}};
    ASSERT_TRUE(toolstack_->SetPermissions(home, perms).ok());
    ASSERT_TRUE(toolstack_->Write(home + "/domid", std::to_string(domid)).ok());
  }

  std::string BackendPath(uint32_t domid, uint32_t devid, const std::string& kind = "vbd") const {
    return "/local/domain/" + std::to_string(backend_domid_) + "/backend/" + kind + "/" +
           std::to_string(domid) + "/" + std::to_string(devid);
  }

  // Creates the guest's domain directory as the toolstack does when it builds a domain.
  void CreateDomain(uint32_t domid) {
    std::string home = "/local/domain/" + std::to_string(domid);
    Status status = RunTransaction(*toolstack_, [&](Transaction& t) -> Status {
      BLK_RETURN_IF_ERROR(t.Mkdir(home));
      XsPermission perms[] = {{0, kXsNone}, {domid, kXsRead}};
      BLK_RETURN_IF_ERROR(t.SetPermissions(home, perms));
      BLK_RETURN_IF_ERROR(t.Write(home + "/domid", std::to_string(domid)));
      BLK_RETURN_IF_ERROR(t.Mkdir(home + "/device"));
      XsPermission device_perms[] = {{domid, kXsNone}, {backend_domid_, kXsRead}};
      return t.SetPermissions(home + "/device", device_perms);
    });
    ASSERT_TRUE(status.ok()) << status.ToString();
  }

  // Creates a disk's backend and frontend directories in one transaction, as libxl does; `extra` overrides
  // or adds backend keys ("" as a value leaves the key out).
  void AddDisk(uint32_t domid, uint32_t devid, const std::string& params,
               const std::map<std::string, std::string>& extra = {}, const std::string& kind = "vbd") {
    std::string backend = BackendPath(domid, devid, kind);
    std::string frontend = FrontendPath(domid, devid);
    std::map<std::string, std::string> keys = {
        {"frontend", frontend},  {"frontend-id", std::to_string(domid)},
        {"params", params},      {"mode", "w"},
        {"device-type", "disk"}, {"online", "1"},
        {"state", "1"},          {"dev", "xvda"},
        {"removable", "0"}};
    for (const auto& [key, value] : extra) keys[key] = value;
    Status status = RunTransaction(*toolstack_, [&](Transaction& t) -> Status {
      BLK_RETURN_IF_ERROR(t.Mkdir(backend));
      XsPermission backend_perms[] = {{backend_domid_, kXsNone}, {domid, kXsRead}};
      BLK_RETURN_IF_ERROR(t.SetPermissions(backend, backend_perms));
      for (const auto& [key, value] : keys) {
        if (!value.empty()) BLK_RETURN_IF_ERROR(t.Write(backend + "/" + key, value));
      }
      BLK_RETURN_IF_ERROR(t.Mkdir(frontend));
      XsPermission frontend_perms[] = {{domid, kXsNone}, {backend_domid_, kXsRead}};
      BLK_RETURN_IF_ERROR(t.SetPermissions(frontend, frontend_perms));
      BLK_RETURN_IF_ERROR(t.Write(frontend + "/backend", backend));
      BLK_RETURN_IF_ERROR(t.Write(frontend + "/backend-id", std::to_string(backend_domid_)));
      BLK_RETURN_IF_ERROR(t.Write(frontend + "/virtual-device", std::to_string(devid)));
      BLK_RETURN_IF_ERROR(t.Write(frontend + "/device-type", "disk"));
      return t.Write(frontend + "/state", "1");
    });
    ASSERT_TRUE(status.ok()) << status.ToString();
  }

  std::unique_ptr<LibXenStoreClient> GuestClient(uint32_t domid) {
    std::unique_ptr<LibXenStoreClient> client = OpenClient(*server_);
    if (client) BecomeDomain(*client, domid);
    return client;
  }

  std::unique_ptr<XenbusBlkfront> Frontend(XenStore& guest, uint32_t domid, uint32_t devid,
                                           XenbusBlkfrontConfig config = {}) {
    config.domid = static_cast<DomId>(domid);
    config.frontend_path = FrontendPath(domid, devid);
    return std::make_unique<XenbusBlkfront>(guest, *sim_, config);
  }

  // Waits (on a watch, with a deadline) until `path` reads `value`, or is absent when `value` is nullopt.
  bool WaitForValue(const std::string& path, std::optional<std::string> value,
                    std::chrono::milliseconds timeout = kTimeout) {
    std::unique_ptr<LibXenStoreClient> watcher = OpenClient(*server_);
    if (!watcher || !watcher->Watch(path, "wait").ok()) return false;
    std::vector<WatchEvent> events;
    return WaitForEvents(
        *watcher, &events,
        [&](const std::vector<WatchEvent>&) {
          Result<std::string> now = watcher->Read(path);
          return value.has_value() ? (now.ok() && *now == *value) : !now.ok();
        },
        timeout);
  }

  // For what has no fd to wait on (the daemon's counters, log lines): checks `condition` every few
  // milliseconds until it holds or the deadline passes.
  static bool Eventually(const std::function<bool()>& condition,
                         std::chrono::milliseconds timeout = kTimeout) {
    for (auto deadline = std::chrono::steady_clock::now() + timeout;;) {
      if (condition()) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      ::poll(nullptr, 0, 2);
    }
  }

  std::optional<std::string> ReadKey(const std::string& path) {
    Result<std::string> value = toolstack_->Read(path);
    return value.ok() ? std::optional<std::string>(*value) : std::nullopt;
  }

  std::unique_ptr<XsTestServer> server_;
  std::unique_ptr<LibXenStoreClient> toolstack_;
  std::unique_ptr<SimHypervisor> sim_;
  std::string image_dir_;
  uint32_t backend_domid_ = 0;
  LibXenStoreClient* daemon_client_ = nullptr;  // owned by the daemon; read only while its loop is stopped
  std::unique_ptr<BlkbackDaemon> daemon_;
  std::thread loop_;
  Status loop_status_;
};

}  // namespace blk
