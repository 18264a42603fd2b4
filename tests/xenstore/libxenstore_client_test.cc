// Tests of xenstore/libxenstore_client.cc and xenstore/xenstore.cc: the real libxenstore client against the
// xs_wire test server (see xs_test_server.h for why not Debian's xenstored).
#include "xenstore/libxenstore_client.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "tests/xenstore/xs_test_server.h"
#include "tests/xenstore/xs_test_util.h"

namespace blk {
namespace {

class LibXenStoreClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<XsTestServer>> server = XsTestServer::StartOnTempSocket();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    client_ = OpenClient(*server_);
    ASSERT_NE(client_, nullptr);
  }

  std::unique_ptr<XsTestServer> server_;
  std::unique_ptr<LibXenStoreClient> client_;
};

TEST(LibXenStoreClientOpenTest, MissingDaemonIsAnErrorNamingTheSocket) {
  LibXenStoreClient::Options options;
  options.socket_path = "/nonexistent/xenstored-socket";
  Result<std::unique_ptr<LibXenStoreClient>> client = LibXenStoreClient::Open(options);
  ASSERT_FALSE(client.ok());
  EXPECT_NE(client.status().message().find("/nonexistent/xenstored-socket"), std::string::npos);
}

TEST_F(LibXenStoreClientTest, WriteThenReadRoundTripsAnyBytes) {
  ASSERT_TRUE(client_->Write("/local/domain/0/name", "Domain-0").ok());
  EXPECT_EQ(client_->Read("/local/domain/0/name").value(), "Domain-0");
  std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(client_->Write("/bin", binary).ok());
  EXPECT_EQ(client_->Read("/bin").value(), binary);
  ASSERT_TRUE(client_->Write("/empty", "").ok());
  EXPECT_EQ(client_->Read("/empty").value(), "");
}

TEST_F(LibXenStoreClientTest, ReadOfMissingNodeIsNotFoundNamingThePath) {
  Result<std::string> value = client_->Read("/local/domain/3/device/vbd/768/ring-ref");
  ASSERT_FALSE(value.ok());
  EXPECT_EQ(value.status().code(), Status::Code::kNotFound);
  EXPECT_NE(value.status().message().find("/local/domain/3/device/vbd/768/ring-ref"), std::string::npos);
}

TEST_F(LibXenStoreClientTest, InvalidPathsAreRejected) {
  EXPECT_EQ(client_->Write("/bad//path", "x").code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(client_->Write("/bad path", "x").code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(client_->Write(std::string_view("/a\0b", 4), "x").code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(client_->Read("").status().code(), Status::Code::kInvalidArgument);
}

TEST_F(LibXenStoreClientTest, WriteCreatesParentsAndDirectoryListsChildren) {
  ASSERT_TRUE(client_->Write("/backend/vbd/5/768/state", "1").ok());
  ASSERT_TRUE(client_->Write("/backend/vbd/5/832/state", "1").ok());
  ASSERT_TRUE(client_->Mkdir("/backend/vbd/7").ok());
  ASSERT_TRUE(client_->Mkdir("/backend/vbd/7").ok());  // idempotent
  Result<std::vector<std::string>> domains = client_->Directory("/backend/vbd");
  ASSERT_TRUE(domains.ok()) << domains.status().ToString();
  std::sort(domains->begin(), domains->end());
  EXPECT_EQ(*domains, (std::vector<std::string>{"5", "7"}));
  EXPECT_EQ(client_->Directory("/backend/vbd/7").value(), std::vector<std::string>{});
  EXPECT_EQ(client_->Read("/backend/vbd/5").value(), "");
  Result<std::vector<std::string>> missing = client_->Directory("/backend/vif");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/backend/vif"), std::string::npos);
}

TEST_F(LibXenStoreClientTest, LargeDirectoryComesBackWhole) {
  // More than one xs_wire payload of names: libxenstore falls back to XS_DIRECTORY_PART.
  for (int i = 0; i < 600; ++i) ASSERT_TRUE(client_->Mkdir("/big/child-" + std::to_string(100000 + i)).ok());
  Result<std::vector<std::string>> children = client_->Directory("/big");
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  ASSERT_EQ(children->size(), 600u);
  std::sort(children->begin(), children->end());
  EXPECT_EQ(children->front(), "child-100000");
  EXPECT_EQ(children->back(), "child-100599");
}

TEST_F(LibXenStoreClientTest, RemoveTakesTheSubtree) {
  ASSERT_TRUE(client_->Write("/dev/a/b/c", "1").ok());
  ASSERT_TRUE(client_->Write("/dev/a-sibling", "2").ok());
  ASSERT_TRUE(client_->Remove("/dev/a").ok());
  EXPECT_EQ(client_->Read("/dev/a/b/c").status().code(), Status::Code::kNotFound);
  EXPECT_EQ(client_->Read("/dev/a").status().code(), Status::Code::kNotFound);
  EXPECT_EQ(client_->Read("/dev/a-sibling").value(), "2");
  EXPECT_TRUE(client_->Remove("/dev/a").ok());  // already gone, parent exists
  EXPECT_EQ(client_->Remove("/nowhere/x").code(), Status::Code::kNotFound);
}

TEST_F(LibXenStoreClientTest, PermissionsRoundTripAndDenyOtherDomains) {
  ASSERT_TRUE(client_->Write("/local/domain/0/backend/vbd/5/768/params", "aio:/img").ok());
  std::vector<XsPermission> private_to_dom0 = {{0, kXsNone}};
  ASSERT_TRUE(client_->SetPermissions("/local/domain/0/backend/vbd/5/768/params", private_to_dom0).ok());
  EXPECT_EQ(client_->GetPermissions("/local/domain/0/backend/vbd/5/768/params").value(), private_to_dom0);

  std::unique_ptr<LibXenStoreClient> guest = OpenClient(*server_);
  BecomeDomain(*guest, 5);
  Result<std::string> denied = guest->Read("/local/domain/0/backend/vbd/5/768/params");
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), Status::Code::kPermissionDenied);
  EXPECT_NE(denied.status().message().find("/local/domain/0/backend/vbd/5/768/params"), std::string::npos);

  std::vector<XsPermission> guest_may_read = {{0, kXsNone}, {5, kXsRead}};
  ASSERT_TRUE(client_->SetPermissions("/local/domain/0/backend/vbd/5/768/params", guest_may_read).ok());
  EXPECT_EQ(guest->Read("/local/domain/0/backend/vbd/5/768/params").value(), "aio:/img");
  EXPECT_EQ(guest->Write("/local/domain/0/backend/vbd/5/768/params", "aio:/etc/shadow").code(),
            Status::Code::kPermissionDenied);
  EXPECT_EQ(guest
                ->SetPermissions("/local/domain/0/backend/vbd/5/768/params",
                                 std::vector<XsPermission>{{5, kXsReadWrite}})
                .code(),
            Status::Code::kPermissionDenied);
  std::unique_ptr<LibXenStoreClient> other_guest = OpenClient(*server_);
  BecomeDomain(*other_guest, 6);
  EXPECT_EQ(other_guest->Read("/local/domain/0/backend/vbd/5/768/params").status().code(),
            Status::Code::kPermissionDenied);
}

TEST_F(LibXenStoreClientTest, GuestOwnsWhatItCreatesInItsArea) {
  ASSERT_TRUE(client_->Mkdir("/local/domain/5/device").ok());
  ASSERT_TRUE(
      client_->SetPermissions("/local/domain/5/device", std::vector<XsPermission>{{5, kXsNone}}).ok());
  std::unique_ptr<LibXenStoreClient> guest = OpenClient(*server_);
  BecomeDomain(*guest, 5);
  ASSERT_TRUE(guest->Write("/local/domain/5/device/vbd/768/ring-ref", "8").ok());
  EXPECT_EQ(guest->GetPermissions("/local/domain/5/device/vbd/768/ring-ref").value()[0].domid, 5u);
  EXPECT_EQ(guest->Write("/local/domain/0/anything", "x").code(), Status::Code::kPermissionDenied);
  EXPECT_EQ(client_->Read("/local/domain/5/device/vbd/768/ring-ref").value(), "8");  // dom0 reads anything
}

TEST_F(LibXenStoreClientTest, WatchFiresInitiallyThenForTheNodeAndItsChildren) {
  ASSERT_TRUE(client_->Watch("/local/domain/0/backend/vbd", "backend").ok());
  std::vector<WatchEvent> events;
  ASSERT_TRUE(WaitForEvents(*client_, &events, [](const auto& e) { return !e.empty(); }));
  EXPECT_EQ(events[0], (WatchEvent{"/local/domain/0/backend/vbd", "backend", false}));

  std::unique_ptr<LibXenStoreClient> toolstack = OpenClient(*server_);
  ASSERT_TRUE(toolstack->Write("/local/domain/0/backend/vbd/5/768/state", "1").ok());
  ASSERT_TRUE(toolstack->Write("/local/domain/0/backend/vbdx", "not below the watch").ok());
  ASSERT_TRUE(toolstack->Write("/local/domain/0/backend/vbd/5/832/state", "1").ok());
  events.clear();
  ASSERT_TRUE(WaitForEvents(*client_, &events, [](const auto& e) {
    return HasEvent(e, "/local/domain/0/backend/vbd/5/832/state", "backend");
  }));
  EXPECT_TRUE(HasEvent(events, "/local/domain/0/backend/vbd/5/768/state", "backend"));
  EXPECT_FALSE(HasEvent(events, "/local/domain/0/backend/vbdx", "backend"));
}

TEST_F(LibXenStoreClientTest, RemoveFiresWatchesOnRemovedChildren) {
  ASSERT_TRUE(client_->Write("/local/domain/5/device/vbd/768/state", "4").ok());
  ASSERT_TRUE(client_->Watch("/local/domain/5/device/vbd/768/state", "state").ok());
  ASSERT_TRUE(client_->Watch("/local/domain/5/device", "device").ok());
  std::vector<WatchEvent> events;
  ASSERT_TRUE(WaitForEvents(*client_, &events, [](const auto& e) { return e.size() >= 2; }));
  events.clear();
  std::unique_ptr<LibXenStoreClient> toolstack = OpenClient(*server_);
  ASSERT_TRUE(toolstack->Remove("/local/domain/5/device/vbd").ok());
  ASSERT_TRUE(WaitForEvents(*client_, &events, [](const auto& e) {
    return HasEvent(e, "/local/domain/5/device/vbd/768/state", "state") &&
           HasEvent(e, "/local/domain/5/device/vbd", "device");
  }));
}

TEST_F(LibXenStoreClientTest, UnwatchStopsEventsAndUnknownWatchIsAnError) {
  ASSERT_TRUE(client_->Watch("/a", "a").ok());
  ASSERT_TRUE(client_->Watch("/barrier", "barrier").ok());
  std::vector<WatchEvent> events;
  ASSERT_TRUE(WaitForEvents(*client_, &events, [](const auto& e) { return e.size() >= 2; }));
  ASSERT_TRUE(client_->Unwatch("/a", "a").ok());
  EXPECT_EQ(client_->Unwatch("/a", "a").code(), Status::Code::kNotFound);
  EXPECT_EQ(client_->Watch("/barrier", "barrier").code(), Status::Code::kIoError);  // EEXIST
  events.clear();
  ASSERT_TRUE(client_->Write("/a/x", "1").ok());
  ASSERT_TRUE(client_->Write("/barrier", "1").ok());
  ASSERT_TRUE(
      WaitForEvents(*client_, &events, [](const auto& e) { return HasEvent(e, "/barrier", "barrier"); }));
  EXPECT_FALSE(HasEvent(events, "/a/x", "a"));
}

TEST_F(LibXenStoreClientTest, FailedDuplicateWatchKeepsTheOriginalForOverflowRescans) {
  std::unique_ptr<LibXenStoreClient> watcher = OpenClient(*server_, /*capacity=*/1);
  ASSERT_TRUE(watcher->Watch("/a", "a").ok());
  EXPECT_FALSE(watcher->Watch("/a", "a").ok());
  std::vector<WatchEvent> events;
  ASSERT_TRUE(WaitForEvents(*watcher, &events, [](const auto& e) { return !e.empty(); }));
  events.clear();
  ASSERT_TRUE(client_->Write("/a/1", "x").ok());
  ASSERT_TRUE(client_->Write("/a/2", "x").ok());  // more distinct events than the capacity of one
  // A round trip on the watcher's connection: the server sent both events before this reply, so libxenstore
  // holds both and one ReadWatchEvents drains them together.
  ASSERT_TRUE(watcher->Read("/a/2").ok());
  ASSERT_TRUE(watcher->ReadWatchEvents(&events, 10).ok());
  EXPECT_EQ(events, (std::vector<WatchEvent>{{"/a", "a", true}}));
}

TEST_F(LibXenStoreClientTest, FdIsReadableExactlyWhileEventsArePending) {
  ASSERT_TRUE(client_->Watch("/w", "w").ok());
  std::vector<WatchEvent> events;
  ASSERT_TRUE(WaitForEvents(*client_, &events, [](const auto& e) { return !e.empty(); }));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client_->Write("/w/" + std::to_string(i), "x").ok());
  ASSERT_TRUE(client_->Write("/barrier", "x").ok());
  pollfd fd{client_->fd(), POLLIN, 0};
  ASSERT_EQ(poll(&fd, 1, 10000), 1);
  // Take one event at a time: the rest stays queued and keeps the fd readable.
  events.clear();
  size_t taken = 0;
  while (taken < 3) {
    ASSERT_EQ(poll(&fd, 1, 10000), 1) << "fd not readable with " << taken << " of 3 events taken";
    Result<size_t> read = client_->ReadWatchEvents(&events, 1);
    ASSERT_TRUE(read.ok());
    taken += *read;
  }
  EXPECT_EQ(events.size(), 3u);
  EXPECT_EQ(poll(&fd, 1, 0), 0);
}

TEST_F(LibXenStoreClientTest, TransactionCommitsAtomicallyAndAbortsOnDestruction) {
  {
    Result<Transaction> transaction = Transaction::Begin(*client_);
    ASSERT_TRUE(transaction.ok()) << transaction.status().ToString();
    ASSERT_TRUE(transaction->Write("/t/a", "1").ok());
    ASSERT_TRUE(transaction->Write("/t/b", "2").ok());
    EXPECT_EQ(transaction->Read("/t/a").value(), "1");
    EXPECT_EQ(client_->Read("/t/a").status().code(), Status::Code::kNotFound);  // not visible yet
    ASSERT_TRUE(transaction->Commit().ok());
    EXPECT_FALSE(transaction->active());
  }
  EXPECT_EQ(client_->Read("/t/b").value(), "2");
  {
    Result<Transaction> transaction = Transaction::Begin(*client_);
    ASSERT_TRUE(transaction.ok());
    ASSERT_TRUE(transaction->Write("/t/a", "changed").ok());
    ASSERT_TRUE(transaction->Remove("/t/b").ok());
  }  // aborted
  EXPECT_EQ(client_->Read("/t/a").value(), "1");
  EXPECT_EQ(client_->Read("/t/b").value(), "2");
}

TEST_F(LibXenStoreClientTest, TransactionThatReadAChangedNodeConflicts) {
  ASSERT_TRUE(client_->Write("/local/domain/5/device/vbd/768/state", "3").ok());
  std::unique_ptr<LibXenStoreClient> other = OpenClient(*server_);
  Result<Transaction> transaction = Transaction::Begin(*client_);
  ASSERT_TRUE(transaction.ok());
  EXPECT_EQ(transaction->Read("/local/domain/5/device/vbd/768/state").value(), "3");
  ASSERT_TRUE(other->Write("/local/domain/5/device/vbd/768/state", "5").ok());
  ASSERT_TRUE(transaction->Write("/local/domain/0/backend/vbd/5/768/state", "4").ok());
  Status commit = transaction->Commit();
  EXPECT_TRUE(IsTransactionConflict(commit)) << commit.ToString();
  EXPECT_TRUE(commit.retryable());
  EXPECT_EQ(client_->Read("/local/domain/0/backend/vbd/5/768/state").status().code(),
            Status::Code::kNotFound);
}

TEST_F(LibXenStoreClientTest, RunTransactionRetriesAConflictAndSeesTheNewValue) {
  ASSERT_TRUE(client_->Write("/counter", "10").ok());
  std::unique_ptr<LibXenStoreClient> other = OpenClient(*server_);
  int attempts = 0;
  Status status = RunTransaction(*client_, [&](Transaction& transaction) -> Status {
    ++attempts;
    Result<std::string> value = transaction.Read("/counter");
    if (!value.ok()) return value.status();
    if (attempts == 1) BLK_RETURN_IF_ERROR(other->Write("/counter", "20"));  // a racing writer
    return transaction.Write("/counter", std::to_string(std::stoi(*value) + 1));
  });
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(attempts, 2);
  EXPECT_EQ(client_->Read("/counter").value(), "21");
}

TEST_F(LibXenStoreClientTest, RunTransactionGivesUpAfterBoundedAttempts) {
  std::unique_ptr<LibXenStoreClient> other = OpenClient(*server_);
  int attempts = 0;
  Status status = RunTransaction(
      *client_,
      [&](Transaction& transaction) -> Status {
        ++attempts;
        (void)transaction.Read("/hot");
        BLK_RETURN_IF_ERROR(other->Write("/hot", std::to_string(attempts)));
        return transaction.Write("/mine", "x");
      },
      3);
  EXPECT_TRUE(IsTransactionConflict(status)) << status.ToString();
  EXPECT_EQ(attempts, 3);
  EXPECT_EQ(client_->Read("/mine").status().code(), Status::Code::kNotFound);
}

TEST_F(LibXenStoreClientTest, RunTransactionReturnsBodyFailureWithoutRetry) {
  int attempts = 0;
  Status status = RunTransaction(*client_, [&](Transaction& transaction) -> Status {
    ++attempts;
    BLK_RETURN_IF_ERROR(transaction.Write("/partial", "x"));
    return transaction.Read("/missing").status();
  });
  EXPECT_EQ(status.code(), Status::Code::kNotFound);
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(client_->Read("/partial").status().code(), Status::Code::kNotFound);
}

TEST_F(LibXenStoreClientTest, ConcurrentClientsIncrementWithoutLosingUpdates) {
  ASSERT_TRUE(client_->Write("/shared/counter", "0").ok());
  constexpr int kThreads = 4;
  constexpr int kIncrements = 40;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::unique_ptr<LibXenStoreClient> mine = OpenClient(*server_);
      if (!mine) {
        ++failures;
        return;
      }
      for (int i = 0; i < kIncrements; ++i) {
        Status status = RunTransaction(
            *mine,
            [&](Transaction& transaction) -> Status {
              Result<std::string> value = transaction.Read("/shared/counter");
              if (!value.ok()) return value.status();
              BLK_RETURN_IF_ERROR(transaction.Write("/shared/by/" + std::to_string(t), std::to_string(i)));
              return transaction.Write("/shared/counter", std::to_string(std::stoi(*value) + 1));
            },
            1000);
        if (!status.ok()) ++failures;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(client_->Read("/shared/counter").value(), std::to_string(kThreads * kIncrements));
  EXPECT_EQ(client_->Directory("/shared/by").value().size(), static_cast<size_t>(kThreads));
}

TEST_F(LibXenStoreClientTest, WriteFloodKeepsTheQueueBoundedAndTheLatestValueSeen) {
  constexpr size_t kCapacity = 32;
  constexpr int kPaths = 200;
  constexpr int kWrites = 4000;
  std::unique_ptr<LibXenStoreClient> watcher = OpenClient(*server_, kCapacity);
  ASSERT_TRUE(watcher->Watch("/local/domain/7/device", "guest").ok());
  ASSERT_TRUE(watcher->Watch("/barrier", "barrier").ok());
  std::vector<WatchEvent> events;
  ASSERT_TRUE(WaitForEvents(*watcher, &events, [](const auto& e) { return e.size() >= 2; }));

  std::unique_ptr<LibXenStoreClient> guest = OpenClient(*server_);
  std::map<std::string, int> last_write_step;
  std::vector<std::pair<int, WatchEvent>> delivered;  // (writes completed when popped, event)
  size_t max_pending = 0;
  for (int step = 1; step <= kWrites; ++step) {
    std::string path = "/local/domain/7/device/node" + std::to_string((step * 7919) % kPaths);
    ASSERT_TRUE(guest->Write(path, std::to_string(step)).ok());
    last_write_step[path] = step;
    if (step % 50 == 0) {  // a consumer slower than the guest: a few events per round
      std::vector<WatchEvent> some;
      ASSERT_TRUE(watcher->ReadWatchEvents(&some, 4).ok());
      for (WatchEvent& event : some) delivered.emplace_back(step, std::move(event));
      max_pending = std::max(max_pending, watcher->pending_watch_events());
    }
  }
  ASSERT_TRUE(guest->Write("/barrier", "done").ok());
  events.clear();
  ASSERT_TRUE(
      WaitForEvents(*watcher, &events, [](const auto& e) { return HasEvent(e, "/barrier", "barrier"); }));
  ASSERT_TRUE(watcher->ReadWatchEvents(&events, SIZE_MAX).ok());
  for (WatchEvent& event : events) delivered.emplace_back(kWrites, std::move(event));

  EXPECT_LE(max_pending, kCapacity);
  EXPECT_LE(watcher->watch_stats().high_water, kCapacity + 2);  // + one rescan per registered watch at most
  EXPECT_GE(watcher->watch_stats().overflows, 1u);
  EXPECT_LT(delivered.size(), static_cast<size_t>(kWrites) / 4);
  // Every node's last write is covered by an event delivered after it, so re-reading finds the last value.
  for (const auto& [path, step] : last_write_step) {
    bool covered = std::any_of(delivered.begin(), delivered.end(), [&](const auto& entry) {
      return entry.first >= step && entry.second.token == "guest" && PathCovers(entry.second.path, path);
    });
    EXPECT_TRUE(covered) << path << " last written at step " << step;
    EXPECT_EQ(watcher->Read(path).value(), std::to_string(step));
  }
}

TEST_F(LibXenStoreClientTest, RelativePathsAreUnderTheCallersDomain) {
  std::unique_ptr<LibXenStoreClient> guest = OpenClient(*server_);
  BecomeDomain(*guest, 9);
  ASSERT_TRUE(client_->Mkdir("/local/domain/9").ok());
  ASSERT_TRUE(client_->SetPermissions("/local/domain/9", std::vector<XsPermission>{{9, kXsNone}}).ok());
  ASSERT_TRUE(guest->Write("device/vbd/51712/state", "1").ok());
  EXPECT_EQ(client_->Read("/local/domain/9/device/vbd/51712/state").value(), "1");
}

}  // namespace
}  // namespace blk
