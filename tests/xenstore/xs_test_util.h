// Helpers shared by the xenstore tests: a server plus real libxenstore clients, and waiting for watch events
// on the client's fd with a timeout (never sleeping as synchronisation).
#pragma once

#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tests/xenstore/xs_test_server.h"
#include "xenstore/libxenstore_client.h"

namespace blk {

inline std::unique_ptr<LibXenStoreClient> OpenClient(const XsTestServer& server,
                                                     size_t capacity = WatchEventQueue::kDefaultCapacity) {
  LibXenStoreClient::Options options;
  options.socket_path = server.socket_path();
  options.watch_queue_capacity = capacity;
  Result<std::unique_ptr<LibXenStoreClient>> client = LibXenStoreClient::Open(options);
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  return client.ok() ? std::move(client).value() : nullptr;
}

// Makes the connection act as `domid` (the test server's "set-domid" control command).
inline void BecomeDomain(LibXenStoreClient& client, uint32_t domid) {
  Result<std::string> answer = client.Control("set-domid", std::to_string(domid));
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
}

// Collects events until `done` says so or `timeout` passes; returns whether `done` was satisfied.
inline bool WaitForEvents(XenStore& store, std::vector<WatchEvent>* events,
                          const std::function<bool(const std::vector<WatchEvent>&)>& done,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    Result<size_t> read = store.ReadWatchEvents(events, 64);
    if (!read.ok()) {
      ADD_FAILURE() << read.status().ToString();
      return false;
    }
    if (done(*events)) return true;
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd fd{store.fd(), POLLIN, 0};
    poll(&fd, 1, static_cast<int>(left.count()));
  }
}

inline bool HasEvent(const std::vector<WatchEvent>& events, const std::string& path,
                     const std::string& token) {
  for (const WatchEvent& event : events) {
    if (event.path == path && event.token == token) return true;
  }
  return false;
}

}  // namespace blk
