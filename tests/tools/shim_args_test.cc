// Tests of the qdisk shim's command-line parsing, on the command lines libxl 4.17 builds for a PV guest.
#include "tools/qdisk-shim/shim_args.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace blk {
namespace {

// The shape of libxl_dm.c's command line for a PV guest (without dm_restrict).
std::vector<std::string> LibxlPvArgs() {
  return {"-xen-domid", "7", "-no-shutdown", "-chardev",
          "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-7,server=on,wait=off", "-mon",
          "chardev=libxl-cmd,mode=control", "-chardev",
          "socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-7,server=on,wait=off", "-mon",
          "chardev=libxenstat-cmd,mode=control", "-nodefaults", "-no-user-config", "-xen-attach", "-name",
          "e2e-guest", "-vnc", "none", "-display", "none", "-nographic", "-machine", "xenpv", "-m", "513"};
}

TEST(ShimArgsTest, ParsesLibxlsPvCommandLine) {
  Result<ShimOptions> options = ParseShimArgs(LibxlPvArgs());
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_EQ(options->domid, 7u);
  EXPECT_EQ(options->name, "e2e-guest");
  EXPECT_FALSE(options->start_paused);
  ASSERT_EQ(options->monitors.size(), 2u);
  EXPECT_EQ(options->monitors[0].chardev_id, "libxl-cmd");
  EXPECT_EQ(options->monitors[0].path, "/var/run/xen/qmp-libxl-7");
  EXPECT_EQ(options->monitors[0].fd, -1);
  EXPECT_EQ(options->monitors[1].path, "/var/run/xen/qmp-libxenstat-7");
  // -machine, -vnc, -m ... took their values with them: nothing was mistaken for an option.
  for (const std::string& ignored : options->ignored) EXPECT_EQ(ignored[0], '-') << ignored;
}

TEST(ShimArgsTest, ParsesAPreopenedMonitorAndStartPaused) {
  Result<ShimOptions> options = ParseShimArgs({"-xen-domid", "12", "-chardev",
                                               "socket,id=libxl-cmd,fd=19,server=on,wait=off", "-S", "-mon",
                                               "chardev=libxl-cmd,mode=control", "-xen-domid-restrict"});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_TRUE(options->start_paused);
  ASSERT_EQ(options->monitors.size(), 1u);
  EXPECT_EQ(options->monitors[0].fd, 19);
  EXPECT_TRUE(options->monitors[0].path.empty());
}

TEST(ShimArgsTest, IgnoresHumanMonitorsAndOtherChardevs) {
  Result<ShimOptions> options = ParseShimArgs({"-xen-domid", "3", "-chardev", "pty,id=serial0", "-chardev",
                                               "socket,id=hmp,path=/tmp/h", "-mon", "chardev=hmp,mode=readline",
                                               "-serial", "/dev/null", "-monitor", "/dev/null"});
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_TRUE(options->monitors.empty());
}

TEST(ShimArgsTest, RejectsBrokenCommandLines) {
  const std::vector<std::vector<std::string>> bad = {
      {},                                                   // no domid
      {"-name", "x"},                                       // still no domid
      {"-xen-domid"},                                       // missing value
      {"-xen-domid", "abc"},                                // not a number
      {"-xen-domid", "-1"},                                 // negative
      {"-xen-domid", "7x"},                                 // trailing junk
      {"-xen-domid", "32752"},                              // a reserved domid
      {"-xen-domid", "99999999999999999999"},               // overflow
      {"-xen-domid", "1", "-mon", "chardev=nope,mode=control"},  // monitor without its chardev
      {"-xen-domid", "1", "-mon", "mode=control"},                // monitor naming nothing
      {"-xen-domid", "1", "-chardev", "socket,id=a,server=on"},   // socket with neither path nor fd
      {"-xen-domid", "1", "-chardev", "socket,id=a,path=/x,fd=3"},  // both
      {"-xen-domid", "1", "-chardev", "socket,id=a,fd=-3"},       // bad fd
      {"-xen-domid", "1", "-vnc"},                                 // option without its value
  };
  for (const auto& args : bad) {
    Result<ShimOptions> options = ParseShimArgs(args);
    std::string joined;
    for (const std::string& a : args) joined += a + " ";
    EXPECT_FALSE(options.ok()) << joined;
    if (!options.ok()) {
      EXPECT_FALSE(options.status().message().empty());
    }
  }
}

}  // namespace
}  // namespace blk
