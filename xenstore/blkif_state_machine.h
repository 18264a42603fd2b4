// The backend side of the blkif XenbusState handshake as a pure transition table: (state, input) -> (next
// state, action). No I/O here: BlkifBackendDevice (xenstore/blkif_backend.h) turns what it reads in xenstore
// into inputs and carries out the actions, so every transition can be tested on its own.
//
// The states follow what the backend writes to its `state` node (<xen/io/xenbus.h>), plus kRemoved for a
// device whose nodes were taken down (online = 0). Threading: pure functions, thread-safe.
#pragma once

#include <xen/io/xenbus.h>

#include <cstdint>

namespace blk {

enum class BlkifState : uint8_t {
  kInitialising,  // known, waiting for usable toolstack keys (and hotplug-status where configured)
  kInitWait,      // image open, features advertised; waiting for the frontend's transport
  kConnected,     // rings mapped and served
  kClosing,       // the frontend is closing or the device failed; waiting for the frontend to be Closed
  kClosed,        // rings gone; a frontend that starts over (Initialising) gets a fresh connection
  kRemoved,       // online = 0: the backend's nodes are gone; terminal
};

enum class BlkifInput : uint8_t {
  kConfigReady,           // the toolstack's keys are valid (and hotplug-status says connected, if required)
  kFrontendInitialising,  // frontend state Initialising or InitWait
  kFrontendInitialised,   // frontend state Initialised or Connected: its transport keys are there
  kFrontendClosing,
  kFrontendClosed,    // frontend state Closed, Unknown or absent
  kFrontendGone,      // the frontend's domain disappeared from xenstore
  kOffline,           // the toolstack wrote online = 0
  kToolstackClosing,  // the toolstack wrote Closing into our state node: it wants the device down
  kConfigChanged,     // params or mode rewritten while the image is open
  kFailure,           // an action failed or the frontend broke a ring
  kDaemonStopping,    // the daemon is shutting down (SIGTERM): stop serving, tell the frontend Closing
};

enum class BlkifAction : uint8_t {
  kNone,
  kOpen,          // open the image (unless open), advertise the features, write InitWait
  kConnect,       // read the transport, map, bind, publish the disk, write Connected
  kReset,         // unmap and unbind, then as kOpen: the frontend started over without closing
  kWriteClosing,  // write Closing, keep serving until the frontend is Closed
  kDisconnect,    // unmap, unbind, write Closed
  kFail,          // unmap, unbind, write the error nodes, write Closing
  kRemove,        // unmap, unbind, write Closed, remove the backend's nodes
  kRefuseChange,  // log that the toolstack's change is refused; nothing else
  kStop,          // answer what is in flight, unmap, unbind, write Closing (no error nodes: not a failure)
};

struct BlkifTransition {
  BlkifState next;
  BlkifAction action;
  bool operator==(const BlkifTransition&) const = default;
};

// The table. Inputs that mean nothing in a state leave it as it is with kNone.
BlkifTransition NextBlkifState(BlkifState state, BlkifInput input);

// The frontend's XenbusState as an input (nullopt-free: every state maps to one input).
BlkifInput InputForFrontendState(XenbusState state);
// What the backend writes to its `state` node while in `state` (kRemoved writes nothing: Closed).
XenbusState PublishedState(BlkifState state);

const char* BlkifStateName(BlkifState state);
const char* BlkifInputName(BlkifInput input);
const char* BlkifActionName(BlkifAction action);

}  // namespace blk
