// Tests of init/: the example configuration is what the daemon reads by default, the systemd unit passes
// systemd's own checker, and the hotplug script libxl runs behaves as libxl needs — run for real, with
// xenstore-utils' xenstore-read/-write talking to the test xenstore server.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "backend/daemon_config.h"
#include "tests/test_util.h"
#include "tests/xenstore/xs_test_util.h"

namespace blk {
namespace {

using testing::RunCommand;
using testing::TempDir;

const std::string kInit = std::string(SOURCE_DIR) + "/init";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(InitTest, TheExampleConfigurationIsValidAndStatesTheDefaults) {
  BlkbackdConfig read, defaults;
  Status status = ApplyConfigText(ReadFile(kInit + "/blkbackd.conf"), "blkbackd.conf", &read);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(read.daemon.kinds, defaults.daemon.kinds);
  EXPECT_EQ(read.daemon.workers, defaults.daemon.workers);
  EXPECT_EQ(read.daemon.own_domid, defaults.daemon.own_domid);
  EXPECT_EQ(read.daemon.aio_depth, defaults.daemon.aio_depth);
  EXPECT_EQ(read.daemon.direct_io, defaults.daemon.direct_io);
  EXPECT_EQ(read.daemon.wait_for_hotplug_status, defaults.daemon.wait_for_hotplug_status);
  EXPECT_EQ(read.daemon.max_ring_page_order, defaults.daemon.max_ring_page_order);
  EXPECT_EQ(read.daemon.max_queues, defaults.daemon.max_queues);
  EXPECT_EQ(read.daemon.poll_us, defaults.daemon.poll_us);
  EXPECT_EQ(read.daemon.discard_secure, defaults.daemon.discard_secure);
  EXPECT_EQ(read.log_level, defaults.log_level);
  EXPECT_EQ(read.lock_file, defaults.lock_file);
  EXPECT_EQ(read.control_socket, defaults.control_socket);
  EXPECT_EQ(read.stats_dir, defaults.stats_dir);
  EXPECT_EQ(read.shutdown_timeout_ms, defaults.shutdown_timeout_ms);
  EXPECT_EQ(read.daemon.io_retry_seconds, defaults.daemon.io_retry_seconds);
}

// The file says it has every key: each option --help shows with a [default] is there, set to that default.
TEST(InitTest, TheExampleConfigurationHasEveryKeyTheHelpShowsWithItsDefault) {
  std::string conf = ReadFile(kInit + "/blkbackd.conf");
  std::istringstream usage(UsageText());
  std::string line;
  int keys = 0;
  while (std::getline(usage, line)) {
    if (line.rfind("  --", 0) != 0 || line.back() != ']') continue;
    std::string key = line.substr(4, line.find(' ', 4) - 4);
    std::string value = line.substr(line.rfind('[') + 1);
    value.pop_back();
    if (key == "config") continue;  // where the file itself is
    ++keys;
    EXPECT_NE(conf.find("\n" + key + " = " + value + "\n"), std::string::npos)
        << "blkbackd.conf lacks the line: " << key << " = " << value;
  }
  EXPECT_GE(keys, 15);
}

TEST(InitTest, TheUnitPassesSystemdsChecker) {
  if (RunCommand("command -v systemd-analyze") != 0) GTEST_SKIP() << "systemd-analyze is not installed";
  TempDir dir;
  // systemd-analyze checks that ExecStart exists: point it at the binary just built.
  std::string unit = ReadFile(kInit + "/blkbackd.service");
  const std::string installed = "/usr/local/sbin/blkbackd";
  size_t at = unit.find(installed);
  ASSERT_NE(at, std::string::npos) << "the unit runs " << installed;
  unit.replace(at, installed.size(), BLKBACKD_BINARY);
  std::ofstream(dir.File("blkbackd.service")) << unit;
  std::string output;
  EXPECT_EQ(RunCommand("systemd-analyze verify " + dir.File("blkbackd.service"), &output), 0) << output;
  EXPECT_EQ(output, "") << "systemd-analyze warned";
  EXPECT_NE(unit.find("Type=notify"), std::string::npos);
}

class HotplugScriptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (RunCommand("command -v xenstore-write") != 0) GTEST_SKIP() << "xenstore-utils is not installed";
    Result<std::unique_ptr<XsTestServer>> server = XsTestServer::StartOnTempSocket();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    store_ = OpenClient(*server_);
    ASSERT_NE(store_, nullptr);
  }

  // Runs the script as libxl does: XENBUS_PATH relative to dom0's home, for a disk whose params is `params`.
  int Run(const std::string& action, const std::string& params, std::string* output) {
    EXPECT_TRUE(store_->Write(kBackend + "/params", params).ok());
    return RunCommand("XENSTORED_PATH=" + server_->socket_path() + " XENBUS_PATH=backend/vbd/1/51712 " +
                          kInit + "/block-blkbackd " + action,
                      output);
  }

  std::optional<std::string> Key(const std::string& name) {
    Result<std::string> value = store_->Read(kBackend + "/" + name);
    return value.ok() ? std::optional<std::string>(*value) : std::nullopt;
  }

  const std::string kBackend = "/local/domain/0/backend/vbd/1/51712";
  std::unique_ptr<XsTestServer> server_;
  std::unique_ptr<LibXenStoreClient> store_;
  TempDir dir_;
};

TEST_F(HotplugScriptTest, AnExistingImageIsReportedConnectedWithOrWithoutAPrefix) {
  std::ofstream(dir_.File("disk.raw")) << "data";
  for (const std::string& params : {dir_.File("disk.raw"), "vhd:" + dir_.File("disk.raw"),
                                    "raw:" + dir_.File("disk.raw"), "aio:" + dir_.File("disk.raw")}) {
    ASSERT_TRUE(store_->Write(kBackend + "/hotplug-status", "").ok());
    std::string output;
    EXPECT_EQ(Run("add", params, &output), 0) << params << ": " << output;
    EXPECT_EQ(Key("hotplug-status"), "connected") << params;
    EXPECT_EQ(Key("hotplug-error"), std::nullopt);
  }
  std::string output;
  EXPECT_EQ(Run("remove", dir_.File("disk.raw"), &output), 0) << output;
}

TEST_F(HotplugScriptTest, AMissingOrUnusableImageIsAnErrorLibxlCanPrint) {
  std::filesystem::create_directory(dir_.File("a-directory"));
  struct Case {
    std::string params;
    std::string error;
  } cases[] = {
      {dir_.File("missing.raw"), "image " + dir_.File("missing.raw") + " does not exist"},
      {"vhd:" + dir_.File("missing.vhd"), "image " + dir_.File("missing.vhd") + " does not exist"},
      {"vhd:", "the disk names no image (params is empty)"},
      {dir_.File("a-directory"),
       "image " + dir_.File("a-directory") + " is neither a regular file nor a block device"},
  };
  for (const Case& c : cases) {
    std::string output;
    EXPECT_EQ(Run("add", c.params, &output), 1) << c.params;
    EXPECT_EQ(Key("hotplug-status"), "error") << c.params;
    EXPECT_EQ(Key("hotplug-error"), c.error);
    EXPECT_EQ(output, "block-blkbackd: " + c.error + "\n");
  }
}

TEST_F(HotplugScriptTest, UnknownActionsAndAMissingEnvironmentAreRefused) {
  std::string output;
  EXPECT_EQ(Run("online", "/x", &output), 1);
  EXPECT_EQ(output, "block-blkbackd: unknown action 'online' (add or remove)\n");
  EXPECT_EQ(RunCommand(kInit + "/block-blkbackd add", &output), 1);
  EXPECT_EQ(output, "block-blkbackd: XENBUS_PATH is not set (run by libxl only)\n");
}

}  // namespace
}  // namespace blk
