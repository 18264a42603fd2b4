// Tests of xenstore/blkif_state_machine.cc: every (state, input) pair against the transitions blkback's
// lifecycle calls for; every pair not listed must leave the state alone and do nothing.
#include "xenstore/blkif_state_machine.h"

#include <gtest/gtest.h>

#include <map>
#include <utility>

namespace blk {
namespace {

using S = BlkifState;
using I = BlkifInput;
using A = BlkifAction;

constexpr S kStates[] = {S::kInitialising, S::kInitWait, S::kConnected, S::kClosing, S::kClosed, S::kRemoved};
constexpr I kInputs[] = {I::kConfigReady,     I::kFrontendInitialising, I::kFrontendInitialised,
                         I::kFrontendClosing, I::kFrontendClosed,       I::kFrontendGone,
                         I::kOffline,         I::kToolstackClosing,     I::kConfigChanged,
                         I::kFailure,         I::kDaemonStopping};

const std::map<std::pair<S, I>, BlkifTransition>& Expected() {
  static const std::map<std::pair<S, I>, BlkifTransition> table = {
      {{S::kInitialising, I::kConfigReady}, {S::kInitWait, A::kOpen}},
      {{S::kInitialising, I::kFailure}, {S::kClosing, A::kFail}},
      {{S::kInitialising, I::kOffline}, {S::kRemoved, A::kRemove}},
      {{S::kInitialising, I::kToolstackClosing}, {S::kClosed, A::kDisconnect}},
      {{S::kInitialising, I::kFrontendGone}, {S::kClosed, A::kDisconnect}},

      {{S::kInitWait, I::kFrontendInitialised}, {S::kConnected, A::kConnect}},
      {{S::kInitWait, I::kFrontendClosing}, {S::kClosing, A::kWriteClosing}},
      {{S::kInitWait, I::kFrontendClosed}, {S::kClosed, A::kDisconnect}},
      {{S::kInitWait, I::kConfigChanged}, {S::kInitWait, A::kRefuseChange}},
      {{S::kInitWait, I::kFailure}, {S::kClosing, A::kFail}},
      {{S::kInitWait, I::kOffline}, {S::kRemoved, A::kRemove}},
      {{S::kInitWait, I::kToolstackClosing}, {S::kClosed, A::kDisconnect}},
      {{S::kInitWait, I::kFrontendGone}, {S::kClosed, A::kDisconnect}},
      {{S::kInitWait, I::kDaemonStopping}, {S::kClosing, A::kStop}},

      {{S::kConnected, I::kFrontendInitialising}, {S::kInitWait, A::kReset}},
      {{S::kConnected, I::kFrontendClosing}, {S::kClosing, A::kWriteClosing}},
      {{S::kConnected, I::kFrontendClosed}, {S::kClosed, A::kDisconnect}},
      {{S::kConnected, I::kConfigChanged}, {S::kConnected, A::kRefuseChange}},
      {{S::kConnected, I::kFailure}, {S::kClosing, A::kFail}},
      {{S::kConnected, I::kOffline}, {S::kRemoved, A::kRemove}},
      {{S::kConnected, I::kToolstackClosing}, {S::kClosed, A::kDisconnect}},
      {{S::kConnected, I::kFrontendGone}, {S::kClosed, A::kDisconnect}},
      {{S::kConnected, I::kDaemonStopping}, {S::kClosing, A::kStop}},

      {{S::kClosing, I::kFrontendClosed}, {S::kClosed, A::kDisconnect}},
      {{S::kClosing, I::kOffline}, {S::kRemoved, A::kRemove}},
      {{S::kClosing, I::kToolstackClosing}, {S::kClosed, A::kDisconnect}},
      {{S::kClosing, I::kFrontendGone}, {S::kClosed, A::kDisconnect}},
      {{S::kClosing, I::kDaemonStopping}, {S::kClosing, A::kStop}},

      {{S::kClosed, I::kFrontendInitialising}, {S::kInitWait, A::kOpen}},
      {{S::kClosed, I::kOffline}, {S::kRemoved, A::kRemove}},
  };
  return table;
}

TEST(BlkifStateMachineTest, EveryPairFollowsTheTable) {
  for (S state : kStates) {
    for (I input : kInputs) {
      auto it = Expected().find({state, input});
      BlkifTransition expected = it != Expected().end() ? it->second : BlkifTransition{state, A::kNone};
      EXPECT_EQ(NextBlkifState(state, input), expected)
          << BlkifStateName(state) << " + " << BlkifInputName(input) << " gave "
          << BlkifStateName(NextBlkifState(state, input).next) << "/"
          << BlkifActionName(NextBlkifState(state, input).action);
    }
  }
}

TEST(BlkifStateMachineTest, RemovedIsTerminal) {
  for (I input : kInputs)
    EXPECT_EQ(NextBlkifState(S::kRemoved, input), (BlkifTransition{S::kRemoved, A::kNone}));
}

// A frontend that reboots goes Closing, Closed, Initialising, Initialised: the backend follows it back to
// Connected through InitWait, opening afresh.
TEST(BlkifStateMachineTest, GuestRebootCycleReturnsToConnected) {
  S state = S::kInitialising;
  const std::pair<I, A> steps[] = {
      {I::kConfigReady, A::kOpen},
      {I::kFrontendInitialised, A::kConnect},
      {I::kFrontendClosing, A::kWriteClosing},
      {I::kFrontendClosed, A::kDisconnect},
      {I::kFrontendInitialising, A::kOpen},
      {I::kFrontendInitialised, A::kConnect},
  };
  for (const auto& [input, action] : steps) {
    BlkifTransition t = NextBlkifState(state, input);
    EXPECT_EQ(t.action, action) << BlkifInputName(input);
    state = t.next;
  }
  EXPECT_EQ(state, S::kConnected);
}

TEST(BlkifStateMachineTest, FrontendStatesMapToInputs) {
  EXPECT_EQ(InputForFrontendState(XenbusStateUnknown), I::kFrontendClosed);
  EXPECT_EQ(InputForFrontendState(XenbusStateInitialising), I::kFrontendInitialising);
  EXPECT_EQ(InputForFrontendState(XenbusStateInitWait), I::kFrontendInitialising);
  EXPECT_EQ(InputForFrontendState(XenbusStateInitialised), I::kFrontendInitialised);
  EXPECT_EQ(InputForFrontendState(XenbusStateConnected), I::kFrontendInitialised);
  EXPECT_EQ(InputForFrontendState(XenbusStateClosing), I::kFrontendClosing);
  EXPECT_EQ(InputForFrontendState(XenbusStateClosed), I::kFrontendClosed);
}

TEST(BlkifStateMachineTest, PublishedStatesAreXenbusStates) {
  EXPECT_EQ(PublishedState(S::kInitWait), XenbusStateInitWait);
  EXPECT_EQ(PublishedState(S::kConnected), XenbusStateConnected);
  EXPECT_EQ(PublishedState(S::kClosing), XenbusStateClosing);
  EXPECT_EQ(PublishedState(S::kClosed), XenbusStateClosed);
  EXPECT_EQ(PublishedState(S::kRemoved), XenbusStateClosed);
}

}  // namespace
}  // namespace blk
