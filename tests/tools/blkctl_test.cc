// Tests of tools/blkctl: its command line, and the built binary against a control server in this process
// (a DeviceControlTarget over a real, unconnected device), with exit statuses and one-line errors.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "backend/control_device.h"
#include "backend/control_server.h"
#include "backend/device.h"
#include "formats/vhd/chain.h"
#include "formats/vhd/create.h"
#include "tools/blkctl/commands.h"

namespace blk::blkctl {
namespace {

const std::string kTool = BLKCTL;

struct Ran {
  int exit_status;
  std::string output;  // stdout and stderr
};

Ran Tool(const std::string& args) {
  Ran ran{-1, ""};
  FILE* pipe = ::popen((kTool + " " + args + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return ran;
  char buffer[4096];
  for (size_t got; (got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) ran.output.append(buffer, got);
  int status = ::pclose(pipe);
  ran.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return ran;
}

TEST(BlkctlArgsTest, ParsesGlobalOptionsAndOneRequest) {
  Result<Invocation> parsed =
      ParseArgs({"--socket", "/tmp/x", "stats", "1/51712", "--json", "--watch", "--count", "3"});
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->socket, "/tmp/x");
  EXPECT_EQ(parsed->request.command, ControlCommand::kStats);
  EXPECT_EQ(parsed->request.device, "1/51712");
  EXPECT_TRUE(parsed->request.json);
  EXPECT_TRUE(parsed->watch);
  EXPECT_EQ(parsed->count, 3u);
  parsed = ParseArgs({"--socket=/s", "pause", "2/768", "--timeout", "100"});
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->socket, "/s");
  EXPECT_EQ(parsed->request.timeout_ms, 100u);
  EXPECT_EQ(ParseArgs({"list"})->socket, kDefaultSocket);
  EXPECT_TRUE(ParseArgs({"--help"})->help);
  EXPECT_TRUE(ParseArgs({"pause", "-h"})->help);
}

TEST(BlkctlArgsTest, ImagePathsGoToTheDaemonAbsolute) {
  std::string cwd = std::filesystem::current_path().string();
  auto snapshot = ParseArgs({"snapshot", "1/51712", "snaps/../c.vhd", "--timeout", "9"});
  ASSERT_TRUE(snapshot.ok()) << snapshot.status().ToString();
  EXPECT_EQ(snapshot->request.image, cwd + "/c.vhd");
  EXPECT_EQ(snapshot->request.timeout_ms, 9u);
  auto swap = ParseArgs({"resume", "1/51712", "--image", "vhd:n.vhd"});
  ASSERT_TRUE(swap.ok()) << swap.status().ToString();
  EXPECT_EQ(swap->request.image, "vhd:" + cwd + "/n.vhd");
  auto swap_eq = ParseArgs({"resume", "1/51712", "--image=raw.img"});
  ASSERT_TRUE(swap_eq.ok()) << swap_eq.status().ToString();
  EXPECT_EQ(swap_eq->request.image, cwd + "/raw.img");
  auto absolute = ParseArgs({"snapshot", "1/51712", "/images/c.vhd"});
  ASSERT_TRUE(absolute.ok());
  EXPECT_EQ(absolute->request.image, "/images/c.vhd");
}

TEST(BlkctlArgsTest, RefusesBadCommandLines) {
  EXPECT_EQ(ParseArgs({}).status().message(), "no command (list, stats, pause, resume, resize, snapshot)");
  EXPECT_EQ(ParseArgs({"--socket"}).status().message(), "--socket needs a path");
  EXPECT_EQ(ParseArgs({"--verbose", "list"}).status().message(), "unknown option --verbose");
  EXPECT_EQ(ParseArgs({"pause"}).status().message(), "pause needs a device (DOMID/DEVID)");
  EXPECT_EQ(ParseArgs({"list", "--watch"}).status().message(), "--watch and --count go with stats only");
  EXPECT_EQ(ParseArgs({"stats", "--count", "2"}).status().message(), "--count goes with --watch");
  EXPECT_EQ(ParseArgs({"stats", "--watch", "--count", "0"}).status().message(),
            "--count needs a number from 1 to 1000000");
  EXPECT_EQ(ParseArgs({"resize", "1/2", "1 G"}).status().message(),
            "argument '1 G' is empty or holds a space");
}

class BlkctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/blkctl-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    DeviceConfig config;
    if (vhd_) {
      image_ = dir_ + "/disk.vhd";
      ASSERT_TRUE(vhd::CreateImage(image_, vhd::CreateOptions::Dynamic(1 << 20)).ok());
      config.format = ImageFormatHint::kVhd;
    } else {
      image_ = dir_ + "/disk.img";
      int fd = ::open(image_.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
      ::close(fd);
    }
    config.name = "1/51712";
    config.path = image_;
    config.direct = false;
    auto device = Device::Open(config);
    ASSERT_TRUE(device.ok()) << device.status().ToString();
    device_ = std::move(*device);
    target_.Add("1/51712", *device_);
    ControlServerOptions options;
    options.socket_path = dir_ + "/control";
    auto server = ControlServerThread::Start(options, target_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
  }
  void TearDown() override {
    server_.reset();
    device_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  std::string Socket() const { return "--socket " + dir_ + "/control "; }

  bool vhd_ = false;  // the device's image: a dynamic VHD, or raw
  std::string dir_, image_;
  std::unique_ptr<Device> device_;
  DeviceControlTarget target_;
  std::unique_ptr<ControlServerThread> server_;
};

TEST_F(BlkctlTest, ListsPausesResumesAndResizes) {
  Ran list = Tool(Socket() + "list");
  EXPECT_EQ(list.exit_status, kExitOk);
  EXPECT_EQ(list.output,
            "1/51712 state=open io=running size=1048576 queues=0 features=flush-cache,barrier images=" +
                image_ + "\n");
  Ran paused = Tool(Socket() + "pause 1/51712");
  EXPECT_EQ(paused.exit_status, kExitOk);
  EXPECT_EQ(paused.output.find("1/51712 paused in "), 0u) << paused.output;
  Ran again = Tool(Socket() + "pause 1/51712");
  EXPECT_EQ(again.exit_status, kExitRefused);
  EXPECT_EQ(again.output, "blkctl: 1/51712 is already paused\n");
  EXPECT_EQ(Tool(Socket() + "stats 1/51712").output.find("1/51712 io=paused in_flight=0 oo_req=0 rd_req=0"),
            0u);
  Ran resumed = Tool(Socket() + "resume 1/51712");
  EXPECT_EQ(resumed.exit_status, kExitOk);
  EXPECT_EQ(resumed.output, "1/51712 resumed\n");
  EXPECT_EQ(Tool(Socket() + "resume 1/51712").output, "blkctl: 1/51712 is not paused\n");
  Ran grown = Tool(Socket() + "resize 1/51712 2M");
  EXPECT_EQ(grown.exit_status, kExitOk);
  EXPECT_EQ(std::filesystem::file_size(image_), 2u << 20);
  Ran shrink = Tool(Socket() + "resize 1/51712 1M");
  EXPECT_EQ(shrink.exit_status, kExitRefused);
  EXPECT_EQ(
      shrink.output,
      "blkctl: 1/51712: refusing to shrink from 2097152 to 1048576 bytes: the guest may have data there\n");
  Ran unknown = Tool(Socket() + "pause 3/51712");
  EXPECT_EQ(unknown.exit_status, kExitRefused);
  EXPECT_EQ(unknown.output, "blkctl: no device 3/51712 (see list)\n");
}

TEST_F(BlkctlTest, StatsAsJsonAndWatched) {
  Ran json = Tool(Socket() + "stats --json");
  EXPECT_EQ(json.exit_status, kExitOk);
  EXPECT_EQ(json.output.find("{\"version\":1,\"devices\":[{\"device\":\"1/51712\",\"io\":\"running\","), 0u)
      << json.output;
  Ran watched = Tool(Socket() + "stats --watch --count 2");
  EXPECT_EQ(watched.exit_status, kExitOk);
  size_t reports = 0;
  for (size_t at = 0; (at = watched.output.find("1/51712 io=running", at)) != std::string::npos; ++at)
    ++reports;
  EXPECT_EQ(reports, 2u) << watched.output;
  EXPECT_EQ(watched.output.find("--- "), 0u);
}

TEST_F(BlkctlTest, UsageErrorsAndAMissingDaemonAreOneLineWithTheirExitStatus) {
  Ran help = Tool("--help");
  EXPECT_EQ(help.exit_status, kExitOk);
  EXPECT_NE(help.output.find("example: blkctl pause 1/51712"), std::string::npos);
  Ran usage = Tool(Socket() + "frobnicate");
  EXPECT_EQ(usage.exit_status, kExitUsage);
  EXPECT_EQ(usage.output,
            "blkctl: unknown command 'frobnicate' (list, stats, pause, resume, resize, snapshot) (see blkctl "
            "--help)\n");
  Ran missing = Tool("--socket " + dir_ + "/nothing list");
  EXPECT_EQ(missing.exit_status, kExitUnreachable);
  EXPECT_EQ(missing.output, "blkctl: blkbackd is not running (nothing listens on " + dir_ + "/nothing)\n");
}

TEST_F(BlkctlTest, SnapshotOfARawDiskIsRefused) {
  Ran refused = Tool(Socket() + "snapshot 1/51712 " + dir_ + "/child.vhd");
  EXPECT_EQ(refused.exit_status, kExitRefused);
  EXPECT_EQ(refused.output, "blkctl: 1/51712: " + image_ +
                                " is a raw image: a snapshot needs a VHD leaf (VHD has no differencing child "
                                "of a raw parent)\n");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/child.vhd"));
  EXPECT_EQ(Tool(Socket() + "snapshot 1/51712").exit_status, kExitUsage);
}

class BlkctlVhdTest : public BlkctlTest {
 protected:
  BlkctlVhdTest() { vhd_ = true; }
};

TEST_F(BlkctlVhdTest, SnapshotsAndSwapsImages) {
  std::string child = dir_ + "/child.vhd";
  Ran snapshot = Tool(Socket() + "snapshot 1/51712 " + child + " --timeout 1000");
  EXPECT_EQ(snapshot.exit_status, kExitOk) << snapshot.output;
  EXPECT_EQ(snapshot.output.find("1/51712: " + child + " is the new leaf; paused in "), 0u)
      << snapshot.output;
  EXPECT_NE(Tool(Socket() + "list")
                .output.find("io=running size=1048576 queues=0 features=flush-cache,barrier "
                             "images=" +
                             child + "," + image_ + "\n"),
            std::string::npos);
  auto chain = vhd::VhdChain::Open(child, false);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_EQ((*chain)->paths(), (std::vector<std::string>{child, image_}));
  Ran again = Tool(Socket() + "snapshot 1/51712 " + child);
  EXPECT_EQ(again.exit_status, kExitRefused);
  EXPECT_EQ(again.output, "blkctl: 1/51712: " + child + " exists; refusing to replace it\n");

  // resume --image: back to the parent, which is a whole disk of its own.
  EXPECT_EQ(Tool(Socket() + "pause 1/51712").exit_status, kExitOk);
  std::string small = dir_ + "/small.vhd";
  ASSERT_TRUE(vhd::CreateImage(small, vhd::CreateOptions::Dynamic(512 << 10)).ok());
  Ran refused = Tool(Socket() + "resume 1/51712 --image vhd:" + small);
  EXPECT_EQ(refused.exit_status, kExitRefused);
  EXPECT_EQ(refused.output, "blkctl: 1/51712: " + small +
                                " holds 524288 bytes, the disk 1048576: the guest's disk cannot change size "
                                "under it (still paused on the old image)\n");
  Ran swapped = Tool(Socket() + "resume 1/51712 --image vhd:" + image_);
  EXPECT_EQ(swapped.exit_status, kExitOk) << swapped.output;
  EXPECT_EQ(swapped.output, "1/51712 resumed\n");
  EXPECT_NE(Tool(Socket() + "list")
                .output.find("io=running size=1048576 queues=0 features=flush-cache,barrier "
                             "images=" +
                             image_ + "\n"),
            std::string::npos);
}

}  // namespace
}  // namespace blk::blkctl
