// Tests of ring/sim/sim_event_channels.cc and the guest side of event channels in sim_domain.cc.
#include <gtest/gtest.h>
#include <sys/epoll.h>

#include "base/unique_fd.h"
#include "ring/sim/sim_hypervisor.h"

namespace blk {
namespace {

constexpr DomId kGuest = 1;

// True if `fd` becomes readable within `timeout_ms`, observed through epoll as the backend's loop would.
bool ReadableViaEpoll(int fd, int timeout_ms = 0) {
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.fd = fd;
  if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &event) != 0) return false;
  epoll_event ready{};
  return ::epoll_wait(epoll.get(), &ready, 1, timeout_ms) == 1 && ready.data.fd == fd;
}

class SimEventChannelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto domain = sim_.CreateDomain(kGuest, 4);
    ASSERT_TRUE(domain.ok());
    guest_ = *domain;
    auto port = guest_->AllocUnbound(sim_.backend_domid());
    ASSERT_TRUE(port.ok());
    port_ = *port;
  }

  SimHypervisor sim_;
  SimDomain* guest_ = nullptr;
  EvtchnPort port_ = 0;
};

TEST_F(SimEventChannelsTest, NotifyAndAcknowledgeBothWays) {
  auto channel = sim_.events().BindInterdomain(kGuest, port_);
  ASSERT_TRUE(channel.ok()) << channel.status().ToString();
  EventChannel& backend = **channel;
  EXPECT_TRUE(guest_->IsBound(port_));
  // Xen sets the new local port pending on bind: a notification sent before the bind must not be lost.
  EXPECT_TRUE(ReadableViaEpoll(backend.fd()));
  ASSERT_TRUE(backend.Acknowledge().ok());
  EXPECT_FALSE(ReadableViaEpoll(backend.fd()));

  ASSERT_TRUE(guest_->Notify(port_).ok());
  ASSERT_TRUE(guest_->Notify(port_).ok());
  EXPECT_TRUE(ReadableViaEpoll(backend.fd()));
  ASSERT_TRUE(backend.Acknowledge().ok());  // one acknowledge consumes all pending events
  EXPECT_FALSE(ReadableViaEpoll(backend.fd()));
  ASSERT_TRUE(backend.Acknowledge().ok());  // and acknowledging nothing is harmless

  const int guest_fd = guest_->EventFd(port_);
  EXPECT_FALSE(ReadableViaEpoll(guest_fd));
  ASSERT_TRUE(backend.Notify().ok());
  EXPECT_TRUE(ReadableViaEpoll(guest_fd));
  ASSERT_TRUE(guest_->Acknowledge(port_).ok());
  EXPECT_FALSE(ReadableViaEpoll(guest_fd));

  EXPECT_EQ(sim_.counters().frontend_notifications.load(), 2u);
  EXPECT_EQ(sim_.counters().backend_notifications.load(), 1u);
  EXPECT_NE(backend.local_port(), 0u);
}

TEST_F(SimEventChannelsTest, NotifyOnUnboundPortIsDropped) {
  ASSERT_TRUE(guest_->Notify(port_).ok());
  EXPECT_FALSE(guest_->Notify(port_ + 100).ok());
  EXPECT_FALSE(guest_->Acknowledge(0).ok());
  EXPECT_EQ(guest_->EventFd(0), -1);
}

TEST_F(SimEventChannelsTest, BindRefusesWrongPorts) {
  auto other = guest_->AllocUnbound(5);  // meant for domain 5, not for us
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(sim_.events().BindInterdomain(kGuest, *other).status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(sim_.events().BindInterdomain(kGuest, 0).status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(sim_.events().BindInterdomain(kGuest, 99).status().code(), Status::Code::kInvalidArgument);
  EXPECT_FALSE(sim_.events().BindInterdomain(42, port_).ok());  // no such domain

  auto first = sim_.events().BindInterdomain(kGuest, port_);
  ASSERT_TRUE(first.ok());
  auto second = sim_.events().BindInterdomain(kGuest, port_);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("already bound"), std::string::npos);
}

TEST_F(SimEventChannelsTest, DestroyingTheChannelUnbindsThePort) {
  auto channel = sim_.events().BindInterdomain(kGuest, port_);
  ASSERT_TRUE(channel.ok());
  channel->reset();
  EXPECT_FALSE(guest_->IsBound(port_));
  ASSERT_TRUE(guest_->Notify(port_).ok());  // dropped, nobody listens
  auto again = sim_.events().BindInterdomain(kGuest, port_);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  ASSERT_TRUE(guest_->Notify(port_).ok());
  EXPECT_TRUE(ReadableViaEpoll((*again)->fd()));
}

}  // namespace
}  // namespace blk
