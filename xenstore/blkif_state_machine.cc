// The blkif backend transition table.
#include "xenstore/blkif_state_machine.h"

namespace blk {

namespace {

using S = BlkifState;
using I = BlkifInput;
using A = BlkifAction;

// What ends the device from any live state: the toolstack and the frontend's domain outrank the frontend.
bool TeardownInput(I input, BlkifTransition* out) {
  switch (input) {
    case I::kOffline:
      *out = {S::kRemoved, A::kRemove};
      return true;
    case I::kToolstackClosing:
    case I::kFrontendGone:
      *out = {S::kClosed, A::kDisconnect};
      return true;
    default:
      return false;
  }
}

}  // namespace

BlkifTransition NextBlkifState(BlkifState state, BlkifInput input) {
  const BlkifTransition stay{state, A::kNone};
  if (state == S::kRemoved) return stay;
  if (input == I::kDaemonStopping) {
    // Whatever the frontend may still hold mapped or be waiting for: it must see the backend go away.
    if (state == S::kInitWait || state == S::kConnected || state == S::kClosing) return {S::kClosing, A::kStop};
    return stay;
  }
  BlkifTransition teardown;
  if (TeardownInput(input, &teardown)) {
    // Already closed: nothing left to unmap, but online = 0 still removes the nodes.
    if (state == S::kClosed && input != I::kOffline) return stay;
    return teardown;
  }
  switch (state) {
    case S::kInitialising:
      switch (input) {
        case I::kConfigReady:
          return {S::kInitWait, A::kOpen};
        case I::kFailure:
          return {S::kClosing, A::kFail};
        default:
          return stay;
      }
    case S::kInitWait:
      switch (input) {
        case I::kFrontendInitialised:
          return {S::kConnected, A::kConnect};
        case I::kFrontendClosing:
          return {S::kClosing, A::kWriteClosing};
        case I::kFrontendClosed:
          return {S::kClosed, A::kDisconnect};
        case I::kConfigChanged:
          return {S::kInitWait, A::kRefuseChange};
        case I::kFailure:
          return {S::kClosing, A::kFail};
        default:
          return stay;
      }
    case S::kConnected:
      switch (input) {
        case I::kFrontendInitialising:
          return {S::kInitWait, A::kReset};
        case I::kFrontendClosing:
          return {S::kClosing, A::kWriteClosing};
        case I::kFrontendClosed:
          return {S::kClosed, A::kDisconnect};
        case I::kConfigChanged:
          return {S::kConnected, A::kRefuseChange};
        case I::kFailure:
          return {S::kClosing, A::kFail};
        default:
          return stay;
      }
    case S::kClosing:
      switch (input) {
        case I::kFrontendClosed:
          return {S::kClosed, A::kDisconnect};
        default:
          return stay;
      }
    case S::kClosed:
      switch (input) {
        case I::kFrontendInitialising:
          return {S::kInitWait, A::kOpen};
        default:
          return stay;
      }
    case S::kRemoved:
      return stay;
  }
  return stay;
}

BlkifInput InputForFrontendState(XenbusState state) {
  switch (state) {
    case XenbusStateInitialising:
    case XenbusStateInitWait:
      return I::kFrontendInitialising;
    case XenbusStateInitialised:
    case XenbusStateConnected:
    case XenbusStateReconfiguring:
    case XenbusStateReconfigured:
      return I::kFrontendInitialised;
    case XenbusStateClosing:
      return I::kFrontendClosing;
    case XenbusStateUnknown:
    case XenbusStateClosed:
    default:
      return I::kFrontendClosed;
  }
}

XenbusState PublishedState(BlkifState state) {
  switch (state) {
    case S::kInitialising:
      return XenbusStateInitialising;
    case S::kInitWait:
      return XenbusStateInitWait;
    case S::kConnected:
      return XenbusStateConnected;
    case S::kClosing:
      return XenbusStateClosing;
    case S::kClosed:
    case S::kRemoved:
      return XenbusStateClosed;
  }
  return XenbusStateClosed;
}

const char* BlkifStateName(BlkifState state) {
  switch (state) {
    case S::kInitialising:
      return "Initialising";
    case S::kInitWait:
      return "InitWait";
    case S::kConnected:
      return "Connected";
    case S::kClosing:
      return "Closing";
    case S::kClosed:
      return "Closed";
    case S::kRemoved:
      return "Removed";
  }
  return "?";
}

const char* BlkifInputName(BlkifInput input) {
  switch (input) {
    case I::kConfigReady:
      return "toolstack keys ready";
    case I::kFrontendInitialising:
      return "frontend Initialising";
    case I::kFrontendInitialised:
      return "frontend Initialised";
    case I::kFrontendClosing:
      return "frontend Closing";
    case I::kFrontendClosed:
      return "frontend Closed";
    case I::kFrontendGone:
      return "frontend domain gone";
    case I::kOffline:
      return "online = 0";
    case I::kToolstackClosing:
      return "toolstack set Closing";
    case I::kConfigChanged:
      return "toolstack changed params/mode";
    case I::kFailure:
      return "failure";
    case I::kDaemonStopping:
      return "daemon stopping";
  }
  return "?";
}

const char* BlkifActionName(BlkifAction action) {
  switch (action) {
    case A::kNone:
      return "none";
    case A::kOpen:
      return "open";
    case A::kConnect:
      return "connect";
    case A::kReset:
      return "reset";
    case A::kWriteClosing:
      return "write Closing";
    case A::kDisconnect:
      return "disconnect";
    case A::kFail:
      return "fail";
    case A::kRemove:
      return "remove";
    case A::kRefuseChange:
      return "refuse change";
    case A::kStop:
      return "stop";
  }
  return "?";
}

}  // namespace blk
