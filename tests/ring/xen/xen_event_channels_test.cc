// Tests of ring/xen/xen_event_channels.cc through FakeXenLibrary: binding, notifying and acknowledging,
// the release of handle and binding on every path, and a failure of each library call.
#include "ring/xen/xen_event_channels.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>

#include <cerrno>
#include <string>

#include "base/log.h"
#include "tests/ring/xen/fake_xen_library.h"

namespace blk {
namespace {

constexpr DomId kGuest = 3;
constexpr EvtchnPort kRemotePort = 12;
constexpr EvtchnPort kLocalPort = FakeXenLibrary::kFirstLocalPort;

bool Readable(int fd) {
  pollfd poll_fd{fd, POLLIN, 0};
  return ::poll(&poll_fd, 1, 0) == 1 && (poll_fd.revents & POLLIN) != 0;
}

void CaptureLog(LogLevel /*level*/, const char* line, void* context) {
  static_cast<std::string*>(context)->append(line);
}

class XenEventChannelsTest : public ::testing::Test {
 protected:
  std::unique_ptr<EventChannel> Bind() {
    auto channel = events_.BindInterdomain(kGuest, kRemotePort);
    EXPECT_TRUE(channel.ok()) << channel.status().ToString();
    return channel.ok() ? std::move(*channel) : nullptr;
  }

  FakeXenLibrary xen_;
  HypervisorCounters counters_;
  XenEventChannels events_{xen_, counters_};
};

TEST_F(XenEventChannelsTest, BindGivesEachChannelItsOwnNonBlockingFd) {
  auto first = Bind();
  auto second = events_.BindInterdomain(kGuest + 1, kRemotePort + 1);
  ASSERT_TRUE(first && second.ok());
  EXPECT_EQ(first->local_port(), kLocalPort);
  EXPECT_EQ((*second)->local_port(), kLocalPort + 1);
  EXPECT_NE(first->fd(), (*second)->fd());
  EXPECT_NE(::fcntl(first->fd(), F_GETFL) & O_NONBLOCK, 0);
  auto bound = xen_.bound_ports();
  ASSERT_EQ(bound.count(kLocalPort), 1u);
  EXPECT_EQ(bound[kLocalPort].remote_domid, kGuest);
  EXPECT_EQ(bound[kLocalPort].remote_port, kRemotePort);
  EXPECT_EQ(xen_.open_evtchn_handles(), 2);
}

TEST_F(XenEventChannelsTest, DestructionUnbindsAndClosesExactlyOnce) {
  auto channel = Bind();
  ASSERT_TRUE(channel);
  channel.reset();
  EXPECT_EQ(xen_.unbound(), std::vector<EvtchnPort>{kLocalPort});
  EXPECT_EQ(xen_.calls(XenCall::kEvtchnClose), 1);
  EXPECT_EQ(xen_.open_evtchn_handles(), 0);
}

TEST_F(XenEventChannelsTest, FailedUnbindIsLoggedAndTheHandleStillClosed) {
  auto channel = Bind();
  ASSERT_TRUE(channel);
  std::string log;
  SetLogSink(CaptureLog, &log);
  xen_.FailCall(XenCall::kUnbind, EINVAL);
  channel.reset();
  SetLogSink(nullptr, nullptr);
  EXPECT_TRUE(Contains(log, "xenevtchn_unbind port 100 (d3 port 12): errno 22"));
  EXPECT_EQ(xen_.open_evtchn_handles(), 0);
}

TEST_F(XenEventChannelsTest, FailedOpenNamesTheDeviceAndTheChannel) {
  xen_.FailCall(XenCall::kEvtchnOpen, ENOENT);
  auto channel = events_.BindInterdomain(kGuest, kRemotePort);
  ASSERT_FALSE(channel.ok());
  EXPECT_EQ(channel.status().error_number(), ENOENT);
  EXPECT_TRUE(Contains(channel.status().message(),
                       "bind d3 port 12: cannot open /dev/xen/evtchn: No such file or directory"));
  EXPECT_TRUE(Contains(channel.status().message(), "gntdev/evtchn drivers loaded?"));
}

TEST_F(XenEventChannelsTest, FailedBindClosesTheHandleAndUnbindsNothing) {
  xen_.FailCall(XenCall::kBind, EINVAL);
  auto channel = events_.BindInterdomain(kGuest, kRemotePort);
  ASSERT_FALSE(channel.ok());
  EXPECT_EQ(channel.status().message(), "xenevtchn_bind_interdomain d3 port 12: Invalid argument");
  EXPECT_EQ(channel.status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(xen_.open_evtchn_handles(), 0);
  EXPECT_EQ(xen_.calls(XenCall::kUnbind), 0);
}

TEST_F(XenEventChannelsTest, FailedFdLookupUnbindsAndClosesWhatWasBound) {
  xen_.FailCall(XenCall::kEvtchnFd, EBADF);
  auto channel = events_.BindInterdomain(kGuest, kRemotePort);
  ASSERT_FALSE(channel.ok());
  EXPECT_EQ(channel.status().message(), "xenevtchn_fd port 100 (d3 port 12): Bad file descriptor");
  EXPECT_EQ(xen_.unbound(), std::vector<EvtchnPort>{kLocalPort});
  EXPECT_EQ(xen_.open_evtchn_handles(), 0);
}

TEST_F(XenEventChannelsTest, NotifySignalsOurPortAndCountsIt) {
  auto channel = Bind();
  ASSERT_TRUE(channel);
  ASSERT_TRUE(channel->Notify().ok());
  ASSERT_TRUE(channel->Notify().ok());
  EXPECT_EQ(xen_.notified(), (std::vector<EvtchnPort>{kLocalPort, kLocalPort}));
  EXPECT_EQ(counters_.backend_notifications.load(), 2u);

  xen_.FailCall(XenCall::kNotify, EIO);
  Status status = channel->Notify();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "xenevtchn_notify port 100 (d3 port 12): Input/output error");
}

TEST_F(XenEventChannelsTest, AcknowledgeConsumesThePendingEventAndUnmasks) {
  auto channel = Bind();
  ASSERT_TRUE(channel);
  EXPECT_FALSE(Readable(channel->fd()));
  xen_.Kick(kLocalPort);
  EXPECT_TRUE(Readable(channel->fd()));
  ASSERT_TRUE(channel->Acknowledge().ok());
  EXPECT_FALSE(Readable(channel->fd()));
  EXPECT_EQ(xen_.unmasked(), std::vector<EvtchnPort>{kLocalPort});
  EXPECT_EQ(counters_.frontend_notifications.load(), 1u);

  // With nothing pending there is nothing to consume, and the port was never masked.
  ASSERT_TRUE(channel->Acknowledge().ok());
  EXPECT_EQ(xen_.unmasked().size(), 1u);
  EXPECT_EQ(counters_.frontend_notifications.load(), 1u);
}

TEST_F(XenEventChannelsTest, PendingPortThatIsNotOursIsAnErrorAndIsNotUnmasked) {
  auto channel = Bind();
  ASSERT_TRUE(channel);
  xen_.QueuePending(kLocalPort, 999);
  Status status = channel->Acknowledge();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(),
            "xenevtchn_pending port 100 (d3 port 12): returned port 999, which this handle did not bind");
  EXPECT_TRUE(xen_.unmasked().empty());

  // Our own event before a stranger's is still consumed and our port unmasked, so no kick is lost.
  xen_.Kick(kLocalPort);
  xen_.QueuePending(kLocalPort, 998);
  EXPECT_FALSE(channel->Acknowledge().ok());
  EXPECT_EQ(xen_.unmasked(), std::vector<EvtchnPort>{kLocalPort});
}

TEST_F(XenEventChannelsTest, FailedPendingReadIsReported) {
  auto channel = Bind();
  ASSERT_TRUE(channel);
  xen_.Kick(kLocalPort);
  xen_.FailCall(XenCall::kPending, EIO);
  Status status = channel->Acknowledge();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "xenevtchn_pending port 100 (d3 port 12): Input/output error");
  EXPECT_TRUE(xen_.unmasked().empty());
}

TEST_F(XenEventChannelsTest, FailedUnmaskIsReported) {
  auto channel = Bind();
  ASSERT_TRUE(channel);
  xen_.Kick(kLocalPort);
  xen_.FailCall(XenCall::kUnmask, EIO);
  Status status = channel->Acknowledge();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "xenevtchn_unmask port 100 (d3 port 12): Input/output error");
}

}  // namespace
}  // namespace blk
