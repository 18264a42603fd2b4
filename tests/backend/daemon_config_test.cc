// Tests of backend/daemon_config.cc: the configuration file and the flags, good and bad, and what --help
// says.
#include "backend/daemon_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace blk {
namespace {

class TempConfig {
 public:
  explicit TempConfig(const std::string& text) {
    char name[] = "/tmp/blkbackd-conf-XXXXXX";
    int fd = ::mkstemp(name);
    EXPECT_GE(fd, 0);
    ::close(fd);
    path_ = name;
    std::ofstream(path_) << text;
  }
  ~TempConfig() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Result<CommandLine> Parse(std::vector<std::string> args) { return ParseCommandLine(args); }

TEST(DaemonConfigTest, FileSetsEveryKindOfValue) {
  BlkbackdConfig config;
  Status status = ApplyConfigText(
      "# blkbackd\n"
      "\n"
      "kinds = vbd,qdisk\n"
      "workers=4\n"
      "  domid = 7  \n"
      "direct-io = no\n"
      "wait-for-hotplug-status = yes\n"
      "max-ring-page-order = 2\n"
      "max-queues = 3\n"
      "max-indirect-segments = 0\n"
      "feature-persistent = no\n"
      "max-persistent-grants = 64\n"
      "discard-secure = 1\n"
      "poll-us = 50\n"
      "io-retry-seconds = 7\n"
      "log-level = debug\n"
      "lock-file = /run/x/pid\n"
      "control-socket = /run/x/control\n"
      "stats-dir = none\n"
      "shutdown-timeout-ms = 2500\n",
      "test.conf", &config);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(config.daemon.kinds, (std::vector<std::string>{"vbd", "qdisk"}));
  EXPECT_EQ(config.daemon.workers, 4u);
  EXPECT_EQ(config.daemon.own_domid, 7u);
  EXPECT_FALSE(config.daemon.direct_io);
  EXPECT_TRUE(config.daemon.wait_for_hotplug_status);
  EXPECT_EQ(config.daemon.max_ring_page_order, 2u);
  EXPECT_EQ(config.daemon.max_queues, 3u);
  EXPECT_EQ(config.daemon.max_indirect_segments, 0u);
  EXPECT_FALSE(config.daemon.persistent_grants);
  EXPECT_EQ(config.daemon.persistent_grants_per_ring, 64u);
  EXPECT_TRUE(config.daemon.discard_secure);
  EXPECT_EQ(config.daemon.poll_us, 50u);
  EXPECT_EQ(config.daemon.io_retry_seconds, 7u);
  EXPECT_EQ(config.log_level, LogLevel::kDebug);
  EXPECT_EQ(config.lock_file, "/run/x/pid");
  EXPECT_EQ(config.control_socket, "/run/x/control");
  EXPECT_EQ(config.stats_dir, "");
  EXPECT_EQ(config.shutdown_timeout_ms, 2500);
}

TEST(DaemonConfigTest, DefaultsAreWhatTheHelpSays) {
  BlkbackdConfig config;
  EXPECT_EQ(config.daemon.kinds, std::vector<std::string>{"vbd"});
  EXPECT_EQ(config.daemon.workers, 2u);
  EXPECT_FALSE(config.daemon.own_domid.has_value());
  EXPECT_EQ(config.daemon.max_ring_page_order, 4u);
  EXPECT_EQ(config.daemon.max_indirect_segments, 256u);
  EXPECT_TRUE(config.daemon.persistent_grants);
  EXPECT_EQ(config.daemon.persistent_grants_per_ring, 1056u);
  EXPECT_FALSE(config.daemon.discard_secure);
  std::string help = UsageText();
  EXPECT_NE(help.find("--discard-secure yes|no"), std::string::npos);
  EXPECT_NE(help.find("BLKSECDISCARD"), std::string::npos);
  EXPECT_NE(help.find("max-indirect-segments"), std::string::npos);
  EXPECT_NE(help.find("[1056]"), std::string::npos);
  EXPECT_NE(help.find("--workers N"), std::string::npos);
  EXPECT_NE(help.find("[2]"), std::string::npos);
  EXPECT_NE(help.find("Example:"), std::string::npos);
}

TEST(DaemonConfigTest, BadFileLinesNameTheFileTheLineAndTheProblem) {
  struct Case {
    const char* text;
    const char* message;
  } cases[] = {
      {"workers 4\n", "test.conf:1: expected key = value, found \"workers 4\""},
      {"\n# ok\nspeed = 3\n", "test.conf:3: unknown key \"speed\""},
      {"workers = 0\n", "test.conf:1: workers = \"0\": must be between 1 and 64"},
      {"workers = four\n", "test.conf:1: workers = \"four\": not a whole number"},
      {"workers = 4x\n", "not a whole number"},
      {"workers = -1\n", "not a whole number"},
      {"workers = 99999999999999999999999\n", "not a whole number"},
      {"kinds = vbd,tap\n", "unknown backend kind \"tap\""},
      {"kinds = vbd,,qdisk\n", "unknown backend kind \"\""},
      {"kinds = vbd,vbd\n", "a kind is named twice"},
      {"domid = 32752\n", "must be between 0 and 32751"},
      {"direct-io = maybe\n", "expected yes or no"},
      {"max-ring-page-order = 5\n", "must be between 0 and 4"},
      {"max-indirect-segments = 4097\n", "must be between 0 and 4096"},
      {"feature-persistent = 2\n", "expected yes or no"},
      {"max-persistent-grants = 0\n", "must be between 1 and 65536"},
      {"discard-secure = 2\n", "test.conf:1: discard-secure = \"2\": expected yes or no"},
      {"discard-secure =\n", "expected yes or no"},
      {"discard-secure = secure\n", "expected yes or no"},
      {"log-level = loud\n", "expected error, warning, notice, info or debug"},
      {"lock-file = run/pid\n", "must be an absolute path"},
      {"control-socket =\n", "must be an absolute path"},
  };
  for (const Case& c : cases) {
    BlkbackdConfig config;
    Status status = ApplyConfigText(c.text, "test.conf", &config);
    ASSERT_FALSE(status.ok()) << c.text;
    EXPECT_NE(status.message().find(c.message), std::string::npos) << status.message();
    EXPECT_EQ(status.message().find('\n'), std::string::npos) << "one line";
  }
}

TEST(DaemonConfigTest, FlagsOverrideTheFileInBothSpellings) {
  TempConfig file("workers = 4\nkinds = qdisk\nlog-level = info\n");
  Result<CommandLine> parsed =
      Parse({"--config", file.path(), "--workers", "8", "--foreground", "--log-level=warning"});
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->action, CommandLineAction::kRun);
  EXPECT_EQ(parsed->config.daemon.workers, 8u);
  EXPECT_EQ(parsed->config.daemon.kinds, std::vector<std::string>{"qdisk"});
  EXPECT_EQ(parsed->config.log_level, LogLevel::kWarning);
}

TEST(DaemonConfigTest, HelpAndVersionWinOverEverythingElse) {
  EXPECT_EQ(Parse({"--workers", "3", "--help"})->action, CommandLineAction::kHelp);
  EXPECT_EQ(Parse({"-h"})->action, CommandLineAction::kHelp);
  EXPECT_EQ(Parse({"--version"})->action, CommandLineAction::kVersion);
}

TEST(DaemonConfigTest, DiscardSecureIsOffOnlyUntilAFlagOrTheFileTurnsItOn) {
  TempConfig off("discard-secure = no\n");
  Result<CommandLine> from_file = Parse({"--config", off.path()});
  ASSERT_TRUE(from_file.ok()) << from_file.status().ToString();
  EXPECT_FALSE(from_file->config.daemon.discard_secure);
  Result<CommandLine> flagged = Parse({"--config", off.path(), "--discard-secure", "yes"});
  ASSERT_TRUE(flagged.ok()) << flagged.status().ToString();
  EXPECT_TRUE(flagged->config.daemon.discard_secure);
}

TEST(DaemonConfigTest, BadFlagsAreNamed) {
  TempConfig empty("");
  struct Case {
    std::vector<std::string> args;
    const char* message;
  } cases[] = {
      {{"--config", empty.path(), "--speed", "3"}, "unknown option --speed"},
      {{"--config", empty.path(), "--workers"}, "--workers needs a value"},
      {{"--config", empty.path(), "serve"}, "unexpected argument \"serve\""},
      {{"--config", empty.path(), "--workers", "0"}, "--workers = \"0\": must be between 1 and 64"},
      {{"--config", empty.path(), "--discard-secure=always"},
       "--discard-secure = \"always\": expected yes or no"},
      {{"--config", "/nonexistent/blkbackd.conf"},
       "cannot read the configuration file /nonexistent/blkbackd.conf"},
  };
  for (const Case& c : cases) {
    Result<CommandLine> parsed = Parse(c.args);
    ASSERT_FALSE(parsed.ok()) << c.message;
    EXPECT_NE(parsed.status().message().find(c.message), std::string::npos) << parsed.status().message();
  }
}

TEST(DaemonConfigTest, AnErrorInTheNamedFileIsReportedWithItsPath) {
  TempConfig file("workers = 2\nworkers = lots\n");
  Result<CommandLine> parsed = Parse({"--config", file.path()});
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find(file.path() + ":2: workers"), std::string::npos)
      << parsed.status().message();
}

}  // namespace
}  // namespace blk
