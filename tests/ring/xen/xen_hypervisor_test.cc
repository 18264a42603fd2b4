// Tests of ring/xen/xen_hypervisor.cc: Open() on this machine, and on a fake library.
#include "ring/xen/xen_hypervisor.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cerrno>

#include "tests/ring/xen/fake_xen_library.h"

namespace blk {
namespace {

TEST(XenHypervisorTest, OpenWithoutXenFailsWithAClearMessage) {
  struct stat info;
  if (::stat("/dev/xen/gntdev", &info) == 0) GTEST_SKIP() << "this machine runs on Xen";
  auto hypervisor = XenHypervisor::Open();
  ASSERT_FALSE(hypervisor.ok());
  EXPECT_TRUE(Contains(hypervisor.status().message(), "cannot open /dev/xen/gntdev: "));
  EXPECT_TRUE(
      Contains(hypervisor.status().message(), "is this a Xen domain with the gntdev/evtchn drivers loaded?"));
  EXPECT_NE(hypervisor.status().error_number(), 0);
}

TEST(XenHypervisorTest, OpenFailsCleanlyWhenOnlyEventChannelsAreMissing) {
  FakeXenLibrary xen;
  xen.FailCall(XenCall::kEvtchnOpen, ENOENT);
  auto hypervisor = XenHypervisor::Open(xen);
  ASSERT_FALSE(hypervisor.ok());
  EXPECT_TRUE(
      Contains(hypervisor.status().message(), "cannot open /dev/xen/evtchn: No such file or directory"));
  EXPECT_EQ(xen.open_gnttab_handles(), 0);  // the grant table opened first is closed again
}

TEST(XenHypervisorTest, TheBundleSharesOneSetOfCounters) {
  FakeXenLibrary xen;
  auto opened = XenHypervisor::Open(xen);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(xen.open_evtchn_handles(), 0);  // the probe handle is closed again
  Hypervisor hypervisor = (*opened)->hypervisor();

  xen.GuestPage(7, 8);
  const GrantRef refs[] = {8};
  auto mapping = hypervisor.grants.Map(7, refs, true);
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  auto channel = hypervisor.events.BindInterdomain(7, 1);
  ASSERT_TRUE(channel.ok()) << channel.status().ToString();
  ASSERT_TRUE((*channel)->Notify().ok());
  EXPECT_EQ(hypervisor.counters.map_calls.load(), 1u);
  EXPECT_EQ(hypervisor.counters.backend_notifications.load(), 1u);
  EXPECT_EQ(&hypervisor.counters, &(*opened)->counters());
}

}  // namespace
}  // namespace blk
