// Tests of backend/aio_engine.cc with real files and the real kernel AIO.
#include "backend/aio_engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

namespace blk {
namespace {

class AioEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = "/var/tmp/aio_engine_test." + std::to_string(::getpid());
    fd_ = ::open(path_.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    ASSERT_GE(fd_, 0);
    ASSERT_EQ(::ftruncate(fd_, 1 << 20), 0);
    auto engine = AioEngine::Create(64);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(*engine);
  }
  void TearDown() override {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  // Waits for the eventfd and reaps until `count` completions arrived.
  std::vector<io_event> WaitFor(size_t count) {
    std::vector<io_event> all;
    std::vector<io_event> batch(16);
    while (all.size() < count) {
      pollfd p{engine_->event_fd(), POLLIN, 0};
      EXPECT_EQ(::poll(&p, 1, 5000), 1) << "no completion signalled";
      size_t got = engine_->Reap(batch);
      all.insert(all.end(), batch.begin(), batch.begin() + static_cast<long>(got));
    }
    return all;
  }
  std::string path_;
  int fd_ = -1;
  std::unique_ptr<AioEngine> engine_;
};

TEST_F(AioEngineTest, BatchOfWritesThenReadsRoundTrips) {
  constexpr int kCount = 8;
  std::vector<std::vector<char>> out(kCount, std::vector<char>(4096)), in(kCount, std::vector<char>(4096));
  std::vector<iocb> cbs(kCount);
  std::vector<iocb*> batch;
  for (int i = 0; i < kCount; ++i) {
    std::memset(out[i].data(), 'a' + i, 4096);
    engine_->PrepareWrite(&cbs[i], fd_, out[i].data(), 4096, i * 8192, &out[i]);
    batch.push_back(&cbs[i]);
  }
  Status error;
  EXPECT_EQ(engine_->Submit(batch, &error), static_cast<size_t>(kCount));
  EXPECT_TRUE(error.ok());
  for (const io_event& event : WaitFor(kCount)) EXPECT_EQ(event.res, 4096u);
  for (int i = 0; i < kCount; ++i) engine_->PrepareRead(&cbs[i], fd_, in[i].data(), 4096, i * 8192, &in[i]);
  EXPECT_EQ(engine_->Submit(batch, &error), static_cast<size_t>(kCount));
  for (const io_event& event : WaitFor(kCount)) {
    auto* buffer = static_cast<std::vector<char>*>(event.data);
    int index = static_cast<int>(buffer - in.data());
    EXPECT_EQ(event.res, 4096u);
    EXPECT_EQ((*buffer)[0], 'a' + index);
    EXPECT_EQ((*buffer)[4095], 'a' + index);
  }
}

TEST_F(AioEngineTest, FdsyncCompletes) {
  iocb cb;
  iocb* batch[] = {&cb};
  engine_->PrepareFdsync(&cb, fd_, &cb);
  Status error;
  ASSERT_EQ(engine_->Submit(batch, &error), 1u) << error.ToString();
  auto events = WaitFor(1);
  EXPECT_EQ(static_cast<long>(events[0].res), 0);
  EXPECT_EQ(events[0].data, &cb);
}

TEST_F(AioEngineTest, RefusedIocbReportsItsReasonAndStopsTheBatchThere) {
  char buffer[512];
  iocb good, bad;
  engine_->PrepareRead(&good, fd_, buffer, 512, 0, nullptr);
  engine_->PrepareRead(&bad, 9999, buffer, 512, 0, nullptr);  // not an open fd
  iocb* batch[] = {&good, &bad};
  Status error;
  EXPECT_EQ(engine_->Submit(batch, &error), 1u);
  EXPECT_EQ(error.error_number(), EBADF);
  EXPECT_FALSE(error.retryable());
  WaitFor(1);
}

TEST_F(AioEngineTest, ReadPastTheEndIsShortNotAnError) {
  std::vector<char> buffer(8192);
  iocb cb;
  iocb* batch[] = {&cb};
  engine_->PrepareRead(&cb, fd_, buffer.data(), 8192, (1 << 20) - 4096, nullptr);
  Status error;
  ASSERT_EQ(engine_->Submit(batch, &error), 1u);
  EXPECT_EQ(WaitFor(1)[0].res, 4096u);
}

// Completions are read from the kernel's ring in user space: many rounds of a full batch, reaped a few at a
// time, go round that ring many times, and every completion must come out exactly once per round.
TEST_F(AioEngineTest, ManyRoundsReapedInSmallBitesReportEveryCompletionOnce) {
  constexpr int kBatch = 64, kRounds = 40;
  std::vector<char> buffer(512);
  std::vector<iocb> cbs(kBatch);
  std::vector<iocb*> batch;
  for (int i = 0; i < kBatch; ++i) batch.push_back(&cbs[i]);
  std::vector<io_event> bite(7);
  for (int round = 0; round < kRounds; ++round) {
    for (int i = 0; i < kBatch; ++i) {
      engine_->PrepareRead(&cbs[i], fd_, buffer.data(), 512, static_cast<uint64_t>(i) * 512,
                           reinterpret_cast<void*>(static_cast<uintptr_t>(round * kBatch + i + 1)));
    }
    Status error;
    ASSERT_EQ(engine_->Submit(batch, &error), static_cast<size_t>(kBatch)) << error.ToString();
    std::vector<int> seen(kBatch, 0);
    int reaped = 0;
    while (reaped < kBatch) {
      pollfd p{engine_->event_fd(), POLLIN, 0};
      ASSERT_EQ(::poll(&p, 1, 5000), 1) << "no completion signalled in round " << round;
      size_t got;
      while ((got = engine_->Reap(bite)) > 0) {
        for (size_t j = 0; j < got; ++j) {
          auto tag = static_cast<int>(reinterpret_cast<uintptr_t>(bite[j].data)) - 1 - round * kBatch;
          ASSERT_TRUE(tag >= 0 && tag < kBatch) << "a completion from another round: " << tag;
          EXPECT_EQ(bite[j].res, 512u);
          ++seen[tag];
        }
        reaped += static_cast<int>(got);
      }
    }
    for (int i = 0; i < kBatch; ++i) EXPECT_EQ(seen[i], 1) << "iocb " << i << " in round " << round;
  }
  EXPECT_FALSE(engine_->HasCompletions());
}

// A polling worker reaps without acknowledging, and clears the eventfd only before it sleeps.
TEST_F(AioEngineTest, HasCompletionsSeesACompletionWithoutTheEventfd) {
  EXPECT_FALSE(engine_->HasCompletions());
  std::vector<char> buffer(4096);
  iocb cb;
  iocb* batch[] = {&cb};
  engine_->PrepareRead(&cb, fd_, buffer.data(), 4096, 0, &cb);
  Status error;
  ASSERT_EQ(engine_->Submit(batch, &error), 1u) << error.ToString();
  pollfd p{engine_->event_fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  EXPECT_TRUE(engine_->HasCompletions());
  io_event events[4];
  ASSERT_EQ(engine_->Reap(events, /*acknowledge=*/false), 1u);
  EXPECT_EQ(events[0].data, &cb);
  EXPECT_FALSE(engine_->HasCompletions());
  EXPECT_EQ(::poll(&p, 1, 0), 1) << "reaping without acknowledging cleared the eventfd";
  engine_->Acknowledge();
  EXPECT_EQ(::poll(&p, 1, 0), 0) << "Acknowledge left the eventfd readable";
  EXPECT_EQ(engine_->Reap(events), 0u);
}

}  // namespace
}  // namespace blk
