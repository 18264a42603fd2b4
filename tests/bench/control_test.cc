// blkbench --control: while a verified run goes on, the control socket lists, pauses and resumes the
// simulated device; the run still verifies every byte and counts no error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "backend/control_client.h"
#include "bench/options.h"
#include "bench/workload.h"

namespace blk {
namespace {

std::string AskOk(ControlClient& client, const std::string& line) {
  Result<ControlReply> reply = client.CallLine(line, 10000);
  EXPECT_TRUE(reply.ok()) << reply.status().ToString();
  if (!reply.ok()) return "";
  EXPECT_TRUE(reply->ok) << line << ": " << reply->error;
  std::string body;
  for (const std::string& l : reply->lines) body += l + "\n";
  return body;
}

TEST(BenchControlTest, PauseAndResumeDuringAVerifiedRun) {
  char dir[] = "/tmp/blkbench-control-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string socket = std::string(dir) + "/control";
  auto options = ParseBenchOptions(
      {"--size=16m", "--runtime=1", "--iodepth=32", "--verify", "--direct=0", "--control=" + socket});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_EQ(options->control, socket);
  Result<BenchResult> result = Status::Busy("not run");
  std::thread bench([&] { result = RunBench(*options, std::string(dir) + "/disk.img"); });

  std::unique_ptr<ControlClient> client;
  for (int i = 0; i < 500 && client == nullptr; ++i) {
    auto connected = ControlClient::Connect(socket);
    if (connected.ok()) {
      client = std::move(*connected);
    } else {
      ::usleep(10000);
    }
  }
  ASSERT_NE(client, nullptr);
  EXPECT_NE(AskOk(*client, "list").find("1/51712 state=connected io=running"), std::string::npos);
  std::string paused = AskOk(*client, "pause 1/51712 --timeout 2000");
  EXPECT_EQ(paused.find("1/51712 paused in "), 0u) << paused;
  std::string stats = AskOk(*client, "stats 1/51712");
  EXPECT_EQ(stats.find("1/51712 io=paused in_flight=0 "), 0u) << stats;
  ::usleep(100000);
  EXPECT_EQ(AskOk(*client, "stats 1/51712"), stats);  // nothing moves while paused
  EXPECT_EQ(AskOk(*client, "resume 1/51712"), "1/51712 resumed\n");
  client.reset();
  bench.join();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->io_errors, 0u) << result->first_problem;
  EXPECT_EQ(result->verify_errors, 0u) << result->first_problem;
  EXPECT_GT(result->verified_sectors, 0u);
  EXPECT_FALSE(std::filesystem::exists(socket));  // removed with the run
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

// blkctl snapshot against blkbench --format=vhd: the verified run goes on across the new leaves, and every
// byte it reads back (from the leaf or a parent) is the one it wrote.
TEST(BenchControlTest, SnapshotsDuringAVerifiedVhdRun) {
  char dir[] = "/dev/shm/blkbench-snapshot-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string socket = std::string(dir) + "/control";
  auto options = ParseBenchOptions({"--size=8m", "--runtime=1", "--iodepth=32", "--verify", "--direct=0",
                                    "--rw=randrw", "--format=vhd", "--control=" + socket});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  Result<BenchResult> result = Status::Busy("not run");
  std::thread bench([&] { result = RunBench(*options, std::string(dir) + "/disk.vhd"); });
  std::unique_ptr<ControlClient> client;
  for (int i = 0; i < 500 && client == nullptr; ++i) {
    auto connected = ControlClient::Connect(socket);
    if (connected.ok()) {
      client = std::move(*connected);
    } else {
      ::usleep(10000);
    }
  }
  ASSERT_NE(client, nullptr);
  for (int k = 1; k <= 5; ++k) {
    std::string child = std::string(dir) + "/snap" + std::to_string(k) + ".vhd";
    std::string reply = AskOk(*client, "snapshot 1/51712 " + child);
    EXPECT_NE(reply.find(child + " is the new leaf"), std::string::npos) << reply;
    ::usleep(50000);
  }
  EXPECT_NE(AskOk(*client, "list").find("images=" + std::string(dir) + "/snap5.vhd"), std::string::npos);
  client.reset();
  bench.join();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->io_errors, 0u) << result->first_problem;
  EXPECT_EQ(result->verify_errors, 0u) << result->first_problem;
  EXPECT_GT(result->verified_sectors, 0u);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

TEST(BenchControlTest, ControlNeedsAPath) {
  EXPECT_EQ(ParseBenchOptions({"--control="}).status().message(), "--control: empty path");
  EXPECT_EQ(ParseBenchOptions({"--control"}).status().message(), "--control needs a value");
}

}  // namespace
}  // namespace blk
