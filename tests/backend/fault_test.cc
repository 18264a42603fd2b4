// Failing storage under the request pipeline (raw images): each injected fault kind, what the guest sees,
// bounded retries, stalls that hold up only their own I/O, and flushes that never lie.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "tests/backend/fault_fixture.h"

namespace blk {
namespace {

using Clock = std::chrono::steady_clock;

Bytes ReadFile(const std::string& path, uint64_t offset, size_t bytes) {
  Bytes data(bytes);
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::pread(fd, data.data(), bytes, static_cast<off_t>(offset)), static_cast<ssize_t>(bytes));
  ::close(fd);
  return data;
}

TEST(AioFaultsTest, NthMatchTimesAndRangeSelectWhichIoFails) {
  AioFaults faults;
  FaultRule rule;
  rule.op = FaultRule::Op::kWrite;
  rule.begin = 4096;
  rule.end = 8192;
  rule.nth = 2;
  faults.Add(rule);
  iocb cb{};
  char buffer[512];
  io_prep_pwrite(&cb, 7, buffer, sizeof(buffer), 4096);
  iocb outside{};
  io_prep_pwrite(&outside, 7, buffer, sizeof(buffer), 8192);
  iocb read{};
  io_prep_pread(&read, 7, buffer, sizeof(buffer), 4096);
  EXPECT_EQ(faults.Match(outside, FaultRule::When::kComplete, 0), nullptr);
  EXPECT_EQ(faults.Match(read, FaultRule::When::kComplete, 0), nullptr);
  EXPECT_EQ(faults.Match(cb, FaultRule::When::kComplete, 0), nullptr);  // the first match
  EXPECT_EQ(faults.Match(cb, FaultRule::When::kSubmit, 0), nullptr);    // another stage
  EXPECT_NE(faults.Match(cb, FaultRule::When::kComplete, 0), nullptr);  // the second
  EXPECT_EQ(faults.Match(cb, FaultRule::When::kComplete, 0), nullptr);  // and only it
  EXPECT_EQ(faults.fired(), 1u);

  AioFaults later;
  FaultRule timed;
  timed.op = FaultRule::Op::kAny;
  timed.after_ns = 1000;
  timed.times = 1;
  later.Add(timed);
  EXPECT_EQ(later.Match(read, FaultRule::When::kComplete, 999), nullptr);
  EXPECT_NE(later.Match(read, FaultRule::When::kComplete, 1000), nullptr);
  EXPECT_EQ(later.Match(read, FaultRule::When::kComplete, 2000), nullptr);
}

// EIO and ENOSPC are permanent: exactly the affected write fails at once, its data never lands, and a healthy
// disk on the same worker keeps every byte.
class PermanentErrorTest : public FaultTest, public ::testing::WithParamInterface<int> {};

TEST_P(PermanentErrorTest, FailsOnlyTheAffectedWriteAtOnceAndTheNeighbourKeepsItsData) {
  LogCapture log;
  Guest& failing = AddRaw("fault_failing", 0x11);
  Guest& healthy = AddRaw("fault_healthy", 0x22);
  std::vector<int> fds = FdsOf(paths_[0]);
  ASSERT_EQ(fds.size(), 1u);
  faults_.Add(WriteRule(fds[0], 1 << 20, (1 << 20) + 4096, GetParam()));

  Bytes hit = Pattern(8192, 1), miss = Pattern(8192, 2), other = Pattern(8192, 3);
  auto start = Clock::now();
  EXPECT_EQ(Do(*failing.front, IoOp::kWrite, (1 << 20) >> kSectorShift, hit), BLKIF_RSP_ERROR);
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(200)) << "a permanent error is not retried";
  EXPECT_EQ(Do(*failing.front, IoOp::kWrite, (2 << 20) >> kSectorShift, miss), BLKIF_RSP_OKAY);
  EXPECT_EQ(Do(*healthy.front, IoOp::kWrite, (1 << 20) >> kSectorShift, other), BLKIF_RSP_OKAY);

  Bytes back(8192);
  EXPECT_EQ(Do(*failing.front, IoOp::kRead, (2 << 20) >> kSectorShift, back), BLKIF_RSP_OKAY);
  EXPECT_EQ(back, miss);
  EXPECT_EQ(Do(*healthy.front, IoOp::kRead, (1 << 20) >> kSectorShift, back), BLKIF_RSP_OKAY);
  EXPECT_EQ(back, other);
  // The failed write did not reach the file: what was there stays.
  EXPECT_EQ(ReadFile(paths_[0], 1 << 20, 8192), Bytes(8192, 0x11));
  EXPECT_EQ(failing.device->stats().io_errors.load(), 1u);
  EXPECT_EQ(healthy.device->stats().io_errors.load(), 0u);
  EXPECT_FALSE(log.Contains("retrying"));
}

INSTANTIATE_TEST_SUITE_P(Errors, PermanentErrorTest, ::testing::Values(EIO, ENOSPC, EROFS),
                         [](const auto& info) { return std::to_string(info.param); });

class TransientErrorTest : public FaultTest, public ::testing::WithParamInterface<int> {};

TEST_P(TransientErrorTest, IsRetriedUntilItClearsAndTheWriteLands) {
  LogCapture log;
  Guest& guest = AddRaw("fault_transient", 0);
  FaultRule rule = WriteRule(-1, 0, UINT64_MAX, GetParam());
  rule.times = 4;
  faults_.Add(rule);
  Bytes data = Pattern(16384, 4);
  EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 64, data), BLKIF_RSP_OKAY);
  EXPECT_EQ(faults_.fired(), 4u);
  EXPECT_EQ(ReadFile(paths_[0], 64 << kSectorShift, data.size()), data);
  EXPECT_EQ(guest.device->stats().io_errors.load(), 0u);
  EXPECT_TRUE(log.Contains("retrying"));
}

TEST_P(TransientErrorTest, ThatNeverClearsFailsTheRequestOnceIoRetrySecondsPass) {
  Guest& guest = AddRaw("fault_transient_forever", 0);
  faults_.Add(WriteRule(-1, 0, UINT64_MAX, GetParam()));
  Bytes data = Pattern(4096, 5);
  auto start = Clock::now();
  EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 8, data), BLKIF_RSP_ERROR);
  auto took = Clock::now() - start;
  EXPECT_GE(took, std::chrono::nanoseconds(kRetryNs));
  EXPECT_LT(took, std::chrono::nanoseconds(kRetryNs) + std::chrono::milliseconds(700));
  // Exponential: a handful of attempts, not one per millisecond.
  EXPECT_GE(faults_.fired(), 4u);
  EXPECT_LE(faults_.fired(), 12u);
  EXPECT_EQ(guest.device->stats().io_errors.load(), 1u);
  // The device goes on serving.
  faults_.Clear();
  EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 8, data), BLKIF_RSP_OKAY);
}

INSTANTIATE_TEST_SUITE_P(Errors, TransientErrorTest, ::testing::Values(EAGAIN, EINTR, ENOMEM, EBUSY),
                         [](const auto& info) { return std::to_string(info.param); });

TEST_F(FaultTest, ShortTransfersContinueWithTheRemainder) {
  Guest& guest = AddRaw("fault_short", 0);
  FaultRule rule;
  rule.op = FaultRule::Op::kAny;
  rule.effect = FaultRule::Effect::kShort;
  rule.times = 6;
  faults_.Add(rule);
  Bytes data = Pattern(45056, 6), back(45056);
  EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 2048, data), BLKIF_RSP_OKAY);
  EXPECT_EQ(Do(*guest.front, IoOp::kRead, 2048, back), BLKIF_RSP_OKAY);
  EXPECT_EQ(back, data);
  EXPECT_EQ(faults_.fired(), 6u);
  EXPECT_EQ(guest.device->stats().io_errors.load(), 0u);
}

// With persistent grants the I/O goes straight to the guest's mapped pages (iovecs, no bounce buffer): a
// short transfer runs the whole I/O again, and the data is still right.
TEST_F(FaultTest, ShortTransfersOfZeroCopyIoRunAgainWhole) {
  paths_.push_back(MakeDiskFile("/var/tmp", "fault_short_zero_copy", kDiskBytes, 0));
  BlkfrontConfig front;
  front.persistent = true;
  Guest& guest = AddGuest(paths_.back(), ImageFormatHint::kRaw, front);
  FaultRule rule;
  rule.op = FaultRule::Op::kAny;
  rule.effect = FaultRule::Effect::kShort;
  rule.times = 4;
  faults_.Add(rule);
  Bytes data = Pattern(45056, 8), back(45056);
  uint64_t copies = sim_.counters().copy_segments.load();
  EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 4096, data), BLKIF_RSP_OKAY);
  EXPECT_EQ(Do(*guest.front, IoOp::kRead, 4096, back), BLKIF_RSP_OKAY);
  EXPECT_EQ(back, data);
  EXPECT_EQ(faults_.fired(), 4u);
  EXPECT_EQ(guest.device->stats().io_errors.load(), 0u);
  EXPECT_EQ(sim_.counters().copy_segments.load(), copies) << "the data went by grant copy, not zero-copy";
}

TEST_F(FaultTest, SubmissionRefusedForNowIsRetriedAndRefusedForGoodFailsThatRequestOnly) {
  Guest& guest = AddRaw("fault_submit", 0);
  FaultRule busy = WriteRule(-1, 0, 4096, EAGAIN);
  busy.when = FaultRule::When::kSubmit;
  busy.times = 3;
  faults_.Add(busy);
  FaultRule bad = WriteRule(-1, 65536, 65536 + 4096, EBADF);
  bad.when = FaultRule::When::kSubmit;
  faults_.Add(bad);
  Bytes first = Pattern(4096, 7), second = Pattern(4096, 8);
  ASSERT_TRUE(guest.front->Queue({IoOp::kWrite, 0, 4096, first.data(), 1}).ok());
  ASSERT_TRUE(guest.front->Queue({IoOp::kWrite, 128, 4096, second.data(), 2}).ok());
  ASSERT_TRUE(guest.front->Push().ok());
  auto done = Step(*guest.front, 2);
  ASSERT_EQ(done.size(), 2u);
  for (const auto& completion : done)
    EXPECT_EQ(completion.status, completion.tag == 1 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR) << completion.tag;
  EXPECT_EQ(ReadFile(paths_[0], 0, 4096), first);
  EXPECT_EQ(ReadFile(paths_[0], 65536, 4096), Bytes(4096, 0));
}

TEST_F(FaultTest, AStalledIoHoldsUpOnlyItselfNotTheOtherRingsOfItsWorker) {
  // The stall is long against the other ring's 40 I/Os, so that a loaded machine cannot blur the two: had
  // the other ring waited for it, they could not all be done before it ends.
  constexpr auto kStall = std::chrono::milliseconds(1500);
  Guest& stalled = AddRaw("fault_stalled", 0);
  Guest& other = AddRaw("fault_other", 0);
  std::vector<int> fds = FdsOf(paths_[0]);
  ASSERT_EQ(fds.size(), 1u);
  FaultRule stall = WriteRule(fds[0], 0, UINT64_MAX, 0);
  stall.effect = FaultRule::Effect::kStall;
  stall.stall_ms = static_cast<uint32_t>(kStall.count());
  stall.times = 1;
  faults_.Add(stall);
  Bytes slow = Pattern(4096, 9);
  ASSERT_TRUE(stalled.front->Submit({IoOp::kWrite, 0, 4096, slow.data(), 1}).ok());
  auto start = Clock::now();
  worker_->RunOnce(5);  // takes and submits the stalled write
  for (unsigned i = 0; i < 20; ++i) {
    Bytes data = Pattern(4096, 10 + i), back(4096);
    EXPECT_EQ(Do(*other.front, IoOp::kWrite, i * 8, data), BLKIF_RSP_OKAY);
    EXPECT_EQ(Do(*other.front, IoOp::kRead, i * 8, back), BLKIF_RSP_OKAY);
    EXPECT_EQ(back, data);
  }
  EXPECT_LT(Clock::now() - start, kStall) << "the other ring waited for the stall";
  IoCompletion none[4];
  EXPECT_EQ(*stalled.front->Reap(none), 0u) << "the stalled write completed early";
  auto done = Step(*stalled.front, 1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_GE(Clock::now() - start, kStall);
}

// How iocbs reach the kernel follows the device's latency: a fast one gets a round's iocbs in one io_submit,
// a slow one (here every read held back 2 ms) gets each iocb in an io_submit of its own, and a device that
// becomes fast again gets batches again.
TEST_F(FaultTest, ASlowDeviceGetsEachIocbAtOnceAFastOneABatch) {
  paths_.push_back(MakeDiskFile("/dev/shm", "fault_pacing", kDiskBytes, 0x3C));  // fast: tmpfs
  Guest& guest = AddGuest(paths_.back(), ImageFormatHint::kRaw);
  constexpr unsigned kReads = 16;
  // Submit calls and iocbs of one round of kReads reads, every other 4 KiB block (nothing merges).
  auto round = [&]() -> std::pair<uint64_t, uint64_t> {
    const uint64_t calls = worker_->aio().submit_calls(), iocbs = guest.device->stats().iocbs.load();
    std::vector<Bytes> buffers(kReads, Bytes(4096));
    for (unsigned i = 0; i < kReads; ++i) {
      EXPECT_TRUE(guest.front->Queue({IoOp::kRead, i * 16, 4096, buffers[i].data(), i}).ok());
    }
    EXPECT_TRUE(guest.front->Push().ok());
    auto done = Step(*guest.front, kReads);
    EXPECT_EQ(done.size(), kReads);
    for (const IoCompletion& completion : done) EXPECT_EQ(completion.status, BLKIF_RSP_OKAY);
    for (const Bytes& buffer : buffers) EXPECT_EQ(buffer, Bytes(4096, 0x3C));
    return {worker_->aio().submit_calls() - calls, guest.device->stats().iocbs.load() - iocbs};
  };
  auto [fast_calls, fast_iocbs] = round();
  EXPECT_EQ(fast_iocbs, kReads);
  EXPECT_EQ(fast_calls, 1u) << "a fast device's round went in " << fast_calls << " io_submit calls";

  StallEvery(FaultRule::Op::kRead);
  round();  // the device is seen to be slow from its first completions on
  auto [slow_calls, slow_iocbs] = round();
  EXPECT_EQ(slow_iocbs, kReads);
  EXPECT_EQ(slow_calls, kReads) << "a slow device's iocbs were batched";

  faults_.Clear();  // the slow past is forgotten within a few dozen completions
  EXPECT_TRUE(EventuallyWhole(round, [&](std::pair<uint64_t, uint64_t> calls_iocbs) {
    return calls_iocbs == std::pair<uint64_t, uint64_t>{1, kReads};
  })) << "a device fast again never got its round in one io_submit";
}

// A slow device answers a queue of reads at once and then idles until the guest's next requests reach it. So
// the pipeline copies out and answers the first few reads of such a batch, takes what the guest sent back,
// and only then copies out the rest: two grant copies for 16 reads that completed together. A fast device's
// batch is copied out in one.
TEST_F(FaultTest, ASlowDeviceAnswersTheFirstReadsOfABatchBeforeCopyingOutTheRest) {
  paths_.push_back(MakeDiskFile("/dev/shm", "fault_first_answers", kDiskBytes, 0x5A));
  Guest& guest = AddGuest(paths_.back(), ImageFormatHint::kRaw);
  constexpr unsigned kReads = 16;
  // Grant copy calls made while answering one batch of kReads reads. On the slow device every read has
  // completed before the worker looks (each completion is held 2 ms; the worker looks after 3 ms).
  auto batch = [&](bool slow) -> uint64_t {
    std::vector<Bytes> buffers(kReads, Bytes(4096));
    for (unsigned i = 0; i < kReads; ++i) {
      EXPECT_TRUE(guest.front->Queue({IoOp::kRead, i * 16, 4096, buffers[i].data(), i}).ok());
    }
    EXPECT_TRUE(guest.front->Push().ok());
    if (slow) {
      worker_->RunOnce(0);  // takes and submits the batch
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
    const uint64_t copies = sim_.counters().copy_calls.load();
    auto done = Step(*guest.front, kReads);
    EXPECT_EQ(done.size(), kReads);
    for (const IoCompletion& completion : done) EXPECT_EQ(completion.status, BLKIF_RSP_OKAY);
    for (const Bytes& buffer : buffers) EXPECT_EQ(buffer, Bytes(4096, 0x5A));
    return sim_.counters().copy_calls.load() - copies;
  };
  // The split is decided once the batch's own latencies are counted: a loaded machine may need a few batches.
  EXPECT_TRUE(EventuallyWhole([&] { return batch(false); }, [](uint64_t copies) { return copies == 1; }))
      << "a fast device's batch was answered in pieces";

  StallEvery(FaultRule::Op::kRead);
  batch(true);  // the device is seen to be slow from its first completions on
  EXPECT_EQ(batch(true), 2u) << "a slow device's batch was not answered first in part";
}

// A round of writes is copied in and submitted whole on a fast device (one grant copy, merged into one
// pwritev), and a piece at a time on a slow one, so that the device starts on the first piece while the next
// is copied: 1 MiB (24 requests of 11 pages) then goes in pieces of at most 256 KiB, each its own grant copy
// and its own merged iocb.
TEST_F(FaultTest, ASlowDeviceGetsARoundOfWritesInPiecesAFastOneWhole) {
  paths_.push_back(MakeDiskFile("/dev/shm", "fault_pieces", kDiskBytes, 0));
  Guest& guest = AddGuest(paths_.back(), ImageFormatHint::kRaw);
  constexpr size_t kBytes = 1 << 20;
  unsigned generation = 0;
  // Copy calls and iocbs of one 1 MiB write, its data then read back.
  auto round = [&]() -> std::pair<uint64_t, uint64_t> {
    const uint64_t copies = sim_.counters().copy_calls.load(), iocbs = guest.device->stats().iocbs.load();
    Bytes data = Pattern(kBytes, ++generation);
    EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 2048, data), BLKIF_RSP_OKAY);
    const std::pair<uint64_t, uint64_t> counted{sim_.counters().copy_calls.load() - copies,
                                                guest.device->stats().iocbs.load() - iocbs};
    Bytes back(kBytes);
    EXPECT_EQ(Do(*guest.front, IoOp::kRead, 2048, back), BLKIF_RSP_OKAY);
    EXPECT_EQ(back, data) << "round " << generation;
    return counted;
  };
  auto [fast_copies, fast_iocbs] = round();
  EXPECT_EQ(fast_copies, 1u) << "a fast device's round was copied in " << fast_copies << " pieces";
  EXPECT_EQ(fast_iocbs, 1u) << "a fast device's MiB was not merged into one write";

  StallEvery(FaultRule::Op::kWrite);
  round();  // the device is seen to be slow from its first completions on
  auto [slow_copies, slow_iocbs] = round();
  EXPECT_GE(slow_copies, kBytes / (256 << 10)) << "a slow device's MiB was copied in whole";
  EXPECT_EQ(slow_iocbs, slow_copies) << "each piece should be one merged write";

  faults_.Clear();
  EXPECT_TRUE(EventuallyWhole(round, [](std::pair<uint64_t, uint64_t> copies_iocbs) {
    return copies_iocbs == std::pair<uint64_t, uint64_t>{1, 1};
  })) << "a device fast again never got its MiB whole";
}

// The rule: an fdatasync that failed may have dropped writes already acknowledged, and Linux reports that
// once (errseq); so from the first failed sync of an image every later flush of it fails too, until the
// image is opened again.
TEST_F(FaultTest, AFailedSyncFailsThatFlushAndEveryLaterOneButNotTheData) {
  Guest& guest = AddRaw("fault_flush", 0);
  Guest& healthy = AddRaw("fault_flush_healthy", 0);
  Bytes data = Pattern(4096, 11), back(4096);
  EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 0, data), BLKIF_RSP_OKAY);
  EXPECT_EQ(Flush(*guest.front), BLKIF_RSP_OKAY);
  FaultRule sync;
  sync.op = FaultRule::Op::kSync;
  sync.fd = FdsOf(paths_[0]).at(0);
  sync.times = 1;
  faults_.Add(sync);
  EXPECT_EQ(Do(*guest.front, IoOp::kWrite, 8, data), BLKIF_RSP_OKAY);
  EXPECT_EQ(Flush(*guest.front), BLKIF_RSP_ERROR);
  EXPECT_EQ(faults_.fired(), 1u);
  EXPECT_EQ(Flush(*guest.front), BLKIF_RSP_ERROR) << "a later sync succeeding proves nothing";
  Bytes barrier_data = Pattern(4096, 12);
  EXPECT_EQ(Do(*guest.front, IoOp::kWriteBarrier, 16, barrier_data), BLKIF_RSP_ERROR);
  EXPECT_EQ(guest.device->stats().sync_errors.load(), 1u);
  // Reads and writes still work; the neighbour's flushes are honest successes.
  EXPECT_EQ(Do(*guest.front, IoOp::kRead, 0, back), BLKIF_RSP_OKAY);
  EXPECT_EQ(back, data);
  EXPECT_EQ(Do(*healthy.front, IoOp::kWrite, 0, data), BLKIF_RSP_OKAY);
  EXPECT_EQ(Flush(*healthy.front), BLKIF_RSP_OKAY);
}

TEST_F(FaultTest, AFlushWhoseDataWriteFailsPermanentlyIsAnError) {
  Guest& guest = AddRaw("fault_flush_data", 0);
  faults_.Add(WriteRule(-1, 0, UINT64_MAX, EIO));
  Bytes data = Pattern(4096, 13);
  EXPECT_EQ(Do(*guest.front, IoOp::kFlushDiskCache, 0, data), BLKIF_RSP_ERROR);
  EXPECT_EQ(Do(*guest.front, IoOp::kWriteBarrier, 0, data), BLKIF_RSP_ERROR);
  faults_.Clear();
  EXPECT_EQ(Flush(*guest.front), BLKIF_RSP_OKAY);
}

TEST_F(FaultTest, AMergedIoWithOneFailingRequestIsSplitAndOnlyThatOneFails) {
  Guest& guest = AddRaw("fault_merged", 0);
  faults_.Add(WriteRule(-1, 3 * 4096, 4 * 4096, EIO));
  std::vector<Bytes> data;
  for (unsigned i = 0; i < 6; ++i) data.push_back(Pattern(4096, 20 + i));
  for (unsigned i = 0; i < 6; ++i)
    ASSERT_TRUE(guest.front->Queue({IoOp::kWrite, i * 8ull, 4096, data[i].data(), i}).ok());
  ASSERT_TRUE(guest.front->Push().ok());
  auto done = Step(*guest.front, 6);
  ASSERT_EQ(done.size(), 6u);
  for (const auto& completion : done)
    EXPECT_EQ(completion.status, completion.tag == 3 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY) << completion.tag;
  for (unsigned i = 0; i < 6; ++i) {
    if (i != 3) {
      EXPECT_EQ(ReadFile(paths_[0], i * 4096ull, 4096), data[i]) << i;
    }
  }
}

}  // namespace
}  // namespace blk
