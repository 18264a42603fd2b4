// Tests of backend/daemon_process.cc (the single-instance lock, systemd notification) and of the blkbackd
// program as an operator meets it: --help, --version, bad flags and files, a second instance, a host
// without Xen.
#include "backend/daemon_process.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "tests/test_util.h"

namespace blk {
namespace {

using testing::RunCommand;
using testing::TempDir;

const std::string kBlkbackd = BLKBACKD_BINARY;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(InstanceLockTest, HoldsOurPidAndRefusesASecondHolderByName) {
  TempDir dir;
  std::string path = dir.File("run/blkbackd/blkbackd.pid");  // the directory is created
  {
    Result<InstanceLock> first = InstanceLock::Acquire(path);
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    EXPECT_EQ(ReadFile(path), std::to_string(::getpid()) + "\n");
    Result<InstanceLock> second = InstanceLock::Acquire(path);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), Status::Code::kBusy);
    EXPECT_NE(second.status().message().find("another blkbackd (pid " + std::to_string(::getpid()) + ")"),
              std::string::npos)
        << second.status().message();
    // The refused attempt left the holder's pid in place.
    EXPECT_EQ(ReadFile(path), std::to_string(::getpid()) + "\n");
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  // A stale file (a daemon killed with -9 leaves one) does not stop the next start: the lock is the flock.
  std::ofstream(path) << "999999\n";
  Result<InstanceLock> again = InstanceLock::Acquire(path);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(ReadFile(path), std::to_string(::getpid()) + "\n");
}

TEST(InstanceLockTest, AnUnusablePathIsAnError) {
  Result<InstanceLock> lock = InstanceLock::Acquire("/proc/blkbackd-test/pid");
  ASSERT_FALSE(lock.ok());
  EXPECT_NE(lock.status().message().find("/proc/blkbackd-test"), std::string::npos)
      << lock.status().message();
}

class NotifySocket {
 public:
  explicit NotifySocket(const std::string& name) {
    fd_ = UniqueFd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, name.data(), name.size());
    if (name[0] == '@') address.sun_path[0] = '\0';
    EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&address),
                     static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size())),
              0);
    ::setenv("NOTIFY_SOCKET", name.c_str(), 1);
  }
  ~NotifySocket() { ::unsetenv("NOTIFY_SOCKET"); }
  std::string Receive() {
    char buffer[256];
    ssize_t got = ::recv(fd_.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
    return got > 0 ? std::string(buffer, static_cast<size_t>(got)) : std::string();
  }

 private:
  UniqueFd fd_;
};

TEST(NotifySystemdTest, SendsTheStateToAPathOrAnAbstractSocket) {
  TempDir dir;
  {
    NotifySocket systemd(dir.File("notify"));
    ASSERT_TRUE(NotifySystemd("READY=1\nSTATUS=serving").ok());
    EXPECT_EQ(systemd.Receive(), "READY=1\nSTATUS=serving");
  }
  {
    NotifySocket systemd("@blkbackd-test-" + std::to_string(::getpid()));
    ASSERT_TRUE(NotifySystemd("STOPPING=1").ok());
    EXPECT_EQ(systemd.Receive(), "STOPPING=1");
  }
}

TEST(NotifySystemdTest, WithoutSystemdItDoesNothingAndABadSocketIsNamed) {
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(NotifySystemd("READY=1").ok());
  ::setenv("NOTIFY_SOCKET", "relative/socket", 1);
  Status bad = NotifySystemd("READY=1");
  EXPECT_NE(bad.message().find("relative/socket"), std::string::npos) << bad.ToString();
  ::setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1);
  Status missing = NotifySystemd("READY=1");
  EXPECT_NE(missing.message().find("/nonexistent/notify"), std::string::npos) << missing.ToString();
  ::unsetenv("NOTIFY_SOCKET");
}

TEST(BlkbackdProgramTest, HelpShowsEveryOptionAndAnExample) {
  std::string output;
  ASSERT_EQ(RunCommand(kBlkbackd + " --help", &output), 0);
  for (const char* text : {"--kinds", "--workers", "--domid", "--config", "--log-level", "Example:"})
    EXPECT_NE(output.find(text), std::string::npos) << text;
  ASSERT_EQ(RunCommand(kBlkbackd + " --version", &output), 0);
  EXPECT_EQ(output.rfind("blkbackd ", 0), 0u) << output;
}

TEST(BlkbackdProgramTest, MistakesExitWithStatus2AndOneLine) {
  TempDir dir;
  std::ofstream(dir.File("bad.conf")) << "workers = 2\nkinds = tape\n";
  struct Case {
    std::string args;
    std::string message;
  } cases[] = {
      {"--bogus 1", "blkbackd: unknown option --bogus (see blkbackd --help)\n"},
      {"--config " + dir.File("bad.conf"),
       "blkbackd: " + dir.File("bad.conf") + ":2: kinds = \"tape\": unknown backend kind \"tape\""},
      {"--config " + dir.File("missing.conf"),
       "cannot read the configuration file " + dir.File("missing.conf")},
  };
  for (const Case& c : cases) {
    std::string output;
    EXPECT_EQ(RunCommand(kBlkbackd + " " + c.args, &output), 2) << c.args;
    EXPECT_NE(output.find(c.message), std::string::npos) << output;
    EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 1) << output;
  }
}

TEST(BlkbackdProgramTest, ASecondInstanceRefusesToStartNamingTheFirst) {
  TempDir dir;
  std::string lock_path = dir.File("blkbackd.pid");
  Result<InstanceLock> running = InstanceLock::Acquire(lock_path);  // we play the running daemon
  ASSERT_TRUE(running.ok());
  std::string output;
  EXPECT_EQ(RunCommand(kBlkbackd + " --config /dev/null --lock-file " + lock_path, &output), 1);
  EXPECT_NE(output.find("another blkbackd (pid " + std::to_string(::getpid()) + ") is running: it holds " +
                        lock_path),
            std::string::npos)
      << output;
}

TEST(BlkbackdProgramTest, WithoutXenItSaysWhatIsMissing) {
  if (std::filesystem::exists("/dev/xen/gntdev")) GTEST_SKIP() << "this machine is a Xen domain";
  TempDir dir;
  std::string output;
  EXPECT_EQ(RunCommand(kBlkbackd + " --config /dev/null --lock-file " + dir.File("pid"), &output), 1);
  EXPECT_NE(output.find("/dev/xen/gntdev"), std::string::npos) << output;
  // The lock was released on the way out.
  EXPECT_FALSE(std::filesystem::exists(dir.File("pid")));
}

}  // namespace
}  // namespace blk
