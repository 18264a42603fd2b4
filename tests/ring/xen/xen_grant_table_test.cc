// Tests of ring/xen/xen_grant_table.cc through FakeXenLibrary: what the port hands libxengnttab, what it
// makes of the answers, and a failure of each library call.
#include "ring/xen/xen_grant_table.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "base/log.h"
#include "tests/ring/xen/fake_xen_library.h"

namespace blk {
namespace {

constexpr DomId kGuest = 5;

void CaptureLog(LogLevel /*level*/, const char* line, void* context) {
  static_cast<std::string*>(context)->append(line);
}

class XenGrantTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto table = XenGrantTable::Open(xen_, counters_);
    ASSERT_TRUE(table.ok()) << table.status().ToString();
    table_ = std::move(*table);
  }

  // A guest page for `ref` filled with `fill`.
  void Grant(GrantRef ref, uint8_t fill, DomId domid = kGuest) {
    std::memset(xen_.GuestPage(domid, ref), fill, kPageSize);
  }

  FakeXenLibrary xen_;
  HypervisorCounters counters_;
  std::unique_ptr<XenGrantTable> table_;
};

TEST(XenGrantTableOpenTest, OpenFailureNamesTheDeviceAndTheLikelyCause) {
  FakeXenLibrary xen;
  HypervisorCounters counters;
  xen.FailCall(XenCall::kGnttabOpen, ENOENT);
  auto table = XenGrantTable::Open(xen, counters);
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.status().error_number(), ENOENT);
  EXPECT_TRUE(Contains(table.status().message(), "cannot open /dev/xen/gntdev: No such file or directory"));
  EXPECT_TRUE(
      Contains(table.status().message(), "is this a Xen domain with the gntdev/evtchn drivers loaded?"));
}

TEST_F(XenGrantTableTest, DestroyingTheTableClosesItsHandle) {
  EXPECT_EQ(xen_.open_gnttab_handles(), 1);
  table_.reset();
  EXPECT_EQ(xen_.open_gnttab_handles(), 0);
  EXPECT_EQ(xen_.calls(XenCall::kGnttabClose), 1);
}

TEST_F(XenGrantTableTest, MapHandsTheRefsInOrderAndMapsThemContiguously) {
  Grant(8, 0xa8);
  Grant(20, 0xb4);
  Grant(9, 0xa9);
  const GrantRef refs[] = {8, 20, 9};
  auto mapping = table_->Map(kGuest, refs, /*writable=*/true);
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  ASSERT_EQ(mapping->pages(), 3u);

  auto live = xen_.live_mappings();
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].addr, mapping->addr());
  EXPECT_EQ(live[0].domid, kGuest);
  EXPECT_EQ(live[0].refs, (std::vector<uint32_t>{8, 20, 9}));
  EXPECT_EQ(live[0].prot, PROT_READ | PROT_WRITE);
  const auto* bytes = static_cast<const uint8_t*>(mapping->addr());
  EXPECT_EQ(bytes[0], 0xa8);
  EXPECT_EQ(bytes[kPageSize], 0xb4);
  EXPECT_EQ(bytes[2 * kPageSize + kPageSize - 1], 0xa9);
  EXPECT_EQ(counters_.map_calls.load(), 1u);
  EXPECT_EQ(counters_.pages_mapped.load(), 3u);

  mapping->Reset();
  EXPECT_TRUE(xen_.live_mappings().empty());
  EXPECT_EQ(xen_.calls(XenCall::kUnmap), 1);
  EXPECT_EQ(xen_.bad_unmaps(), 0);
  EXPECT_EQ(counters_.unmap_calls.load(), 1u);
}

TEST_F(XenGrantTableTest, ReadOnlyMapAsksForReadAccessOnly) {
  Grant(8, 1);
  const GrantRef refs[] = {8};
  auto mapping = table_->Map(kGuest, refs, /*writable=*/false);
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  auto live = xen_.live_mappings();
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].prot, PROT_READ);
}

TEST_F(XenGrantTableTest, FailedMapNamesCallDomainAndRefAndLeavesNothingMapped) {
  Grant(8, 1);
  Grant(9, 2);
  const GrantRef refs[] = {8, 9};
  xen_.FailCall(XenCall::kMap, ENOMEM);
  auto mapping = table_->Map(kGuest, refs, true);
  ASSERT_FALSE(mapping.ok());
  EXPECT_EQ(mapping.status().message(),
            "xengnttab_map_domain_grant_refs d5 ref 8 (2 refs, writable): Cannot allocate memory");
  EXPECT_TRUE(mapping.status().retryable());

  // A ref the guest never granted fails the whole range, as gntdev does.
  const GrantRef partly_bad[] = {8, 77, 9};
  mapping = table_->Map(kGuest, partly_bad, false);
  ASSERT_FALSE(mapping.ok());
  EXPECT_EQ(mapping.status().error_number(), EINVAL);
  EXPECT_TRUE(Contains(mapping.status().message(), "d5 ref 8 (3 refs, read-only)"));

  EXPECT_TRUE(xen_.live_mappings().empty());
  EXPECT_EQ(xen_.calls(XenCall::kUnmap), 0);
  EXPECT_EQ(counters_.map_calls.load(), 2u);
  EXPECT_EQ(counters_.pages_mapped.load(), 0u);
}

TEST_F(XenGrantTableTest, MapOfNoRefsIsRefusedBeforeTheLibrary) {
  auto mapping = table_->Map(kGuest, {}, true);
  ASSERT_FALSE(mapping.ok());
  EXPECT_EQ(mapping.status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(xen_.calls(XenCall::kMap), 0);
}

TEST_F(XenGrantTableTest, EachMappingIsUnmappedWholeAndExactlyOnceThroughMovesAndDestruction) {
  Grant(8, 1);
  Grant(9, 2);
  Grant(10, 3);
  const GrantRef pair[] = {8, 9};
  const GrantRef single[] = {10};
  {
    auto first = table_->Map(kGuest, pair, true);
    auto second = table_->Map(kGuest, single, true);
    ASSERT_TRUE(first.ok() && second.ok());
    GrantMapping moved(std::move(*first));  // a move hands the mapping on, it does not unmap
    EXPECT_EQ(xen_.calls(XenCall::kUnmap), 0);
    EXPECT_FALSE(first->valid());
    GrantMapping target(std::move(*second));
    target = std::move(moved);  // the single page it held is unmapped now, once
    EXPECT_EQ(xen_.calls(XenCall::kUnmap), 1);
    ASSERT_EQ(xen_.live_mappings().size(), 1u);
    EXPECT_EQ(xen_.live_mappings()[0].pages, 2u);
  }  // `target` unmaps the pair; the moved-from objects unmap nothing
  EXPECT_EQ(xen_.calls(XenCall::kUnmap), 2);
  EXPECT_EQ(xen_.bad_unmaps(), 0);
  EXPECT_TRUE(xen_.live_mappings().empty());
  EXPECT_EQ(counters_.unmap_calls.load(), 2u);
}

TEST_F(XenGrantTableTest, FailedUnmapIsLoggedNotFatal) {
  Grant(8, 1);
  const GrantRef refs[] = {8};
  auto mapping = table_->Map(kGuest, refs, true);
  ASSERT_TRUE(mapping.ok());
  std::string log;
  SetLogSink(CaptureLog, &log);
  xen_.FailCall(XenCall::kUnmap, EINVAL);
  mapping->Reset();
  SetLogSink(nullptr, nullptr);
  EXPECT_TRUE(Contains(log, "xengnttab_unmap of 1 pages"));
  EXPECT_TRUE(Contains(log, "errno 22"));
  EXPECT_FALSE(mapping->valid());
  EXPECT_EQ(counters_.unmap_calls.load(), 1u);
}

TEST_F(XenGrantTableTest, CopyFillsTheLibrarySegmentsForBothDirections) {
  Grant(8, 0);
  Grant(9, 0, /*domid=*/6);
  for (size_t i = 0; i < kPageSize; ++i) xen_.GuestPage(kGuest, 8)[i] = static_cast<uint8_t>(i);
  std::vector<uint8_t> read_buffer(50), write_buffer(kPageSize, 0x5a);
  GrantCopySegment segments[] = {
      {GrantCopySegment::Direction::kFromGuest, kGuest, 8, 100, 50, read_buffer.data(), -1},
      {GrantCopySegment::Direction::kToGuest, 6, 9, 0, static_cast<uint16_t>(kPageSize), write_buffer.data(),
       -1},
  };
  ASSERT_TRUE(table_->Copy(segments).ok());

  auto issued = xen_.last_copy();
  ASSERT_EQ(issued.size(), 2u);
  EXPECT_EQ(issued[0].flags, GNTCOPY_source_gref);
  EXPECT_EQ(issued[0].source.foreign.ref, 8u);
  EXPECT_EQ(issued[0].source.foreign.offset, 100u);
  EXPECT_EQ(issued[0].source.foreign.domid, kGuest);
  EXPECT_EQ(issued[0].dest.virt, read_buffer.data());
  EXPECT_EQ(issued[0].len, 50u);
  EXPECT_EQ(issued[1].flags, GNTCOPY_dest_gref);
  EXPECT_EQ(issued[1].dest.foreign.ref, 9u);
  EXPECT_EQ(issued[1].dest.foreign.offset, 0u);
  EXPECT_EQ(issued[1].dest.foreign.domid, 6u);
  EXPECT_EQ(issued[1].source.virt, write_buffer.data());
  EXPECT_EQ(issued[1].len, kPageSize);

  EXPECT_EQ(segments[0].status, GNTST_okay);
  EXPECT_EQ(segments[1].status, GNTST_okay);
  EXPECT_EQ(read_buffer[0], 100);
  EXPECT_EQ(read_buffer[49], 149);
  EXPECT_EQ(xen_.GuestPage(6, 9)[kPageSize - 1], 0x5a);
  EXPECT_EQ(counters_.copy_calls.load(), 1u);
  EXPECT_EQ(counters_.copy_segments.load(), 2u);
}

TEST_F(XenGrantTableTest, EachSegmentGetsItsOwnStatusBack) {
  Grant(8, 0x11);
  xen_.SetCopyStatus(kGuest, 9, GNTST_permission_denied);
  Grant(10, 0x33);
  uint8_t buffers[4][16] = {};
  GrantCopySegment segments[] = {
      {GrantCopySegment::Direction::kFromGuest, kGuest, 8, 0, 16, buffers[0], -1},
      {GrantCopySegment::Direction::kToGuest, kGuest, 9, 0, 16, buffers[1], -1},
      {GrantCopySegment::Direction::kFromGuest, kGuest, 4242, 0, 16, buffers[2], -1},
      {GrantCopySegment::Direction::kFromGuest, kGuest, 10, 0, 16, buffers[3], -1},
  };
  ASSERT_TRUE(table_->Copy(segments).ok());
  EXPECT_EQ(segments[0].status, GNTST_okay);
  EXPECT_EQ(segments[1].status, GNTST_permission_denied);
  EXPECT_EQ(segments[2].status, GNTST_bad_gntref);
  EXPECT_EQ(segments[3].status, GNTST_okay);
  EXPECT_EQ(buffers[0][15], 0x11);
  EXPECT_EQ(buffers[3][0], 0x33);
}

TEST_F(XenGrantTableTest, SegmentsOverrunningTheirPageNeverReachTheKernel) {
  Grant(8, 0x77);
  uint8_t bad[200] = {}, good[8] = {};
  GrantCopySegment segments[] = {
      {GrantCopySegment::Direction::kFromGuest, kGuest, 8, 4000, 200, bad, -1},
      {GrantCopySegment::Direction::kFromGuest, kGuest, 8, 4088, 8, good, -1},
  };
  ASSERT_TRUE(table_->Copy(segments).ok());
  EXPECT_EQ(segments[0].status, GNTST_bad_copy_arg);
  EXPECT_EQ(segments[1].status, GNTST_okay);
  ASSERT_EQ(xen_.last_copy().size(), 1u);
  EXPECT_EQ(xen_.last_copy()[0].source.foreign.offset, 4088u);
  EXPECT_EQ(good[7], 0x77);
  EXPECT_EQ(bad[0], 0);
  EXPECT_EQ(counters_.copy_segments.load(), 1u);

  // A batch with nothing left to issue makes no call at all.
  GrantCopySegment only_bad[] = {{GrantCopySegment::Direction::kToGuest, kGuest, 8, 1, 4096, bad, -1}};
  ASSERT_TRUE(table_->Copy(only_bad).ok());
  EXPECT_EQ(only_bad[0].status, GNTST_bad_copy_arg);
  EXPECT_EQ(xen_.calls(XenCall::kCopy), 1);
}

TEST_F(XenGrantTableTest, FailedCopyCallNamesTheBatchAndMarksEverySegmentFailed) {
  Grant(8, 1);
  Grant(9, 2);
  uint8_t buffer[2][4] = {};
  GrantCopySegment segments[] = {
      {GrantCopySegment::Direction::kToGuest, kGuest, 9, 0, 4, buffer[0], -1},
      {GrantCopySegment::Direction::kFromGuest, kGuest, 8, 0, 4, buffer[1], -1},
  };
  xen_.FailCall(XenCall::kCopy, EFAULT);
  Status status = table_->Copy(segments);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "xengnttab_grant_copy of 2 segments (first d5 ref 9): Bad address");
  EXPECT_EQ(segments[0].status, GNTST_general_error);
  EXPECT_EQ(segments[1].status, GNTST_general_error);
}

TEST_F(XenGrantTableTest, SegmentWithoutLocalBufferIsRefusedBeforeTheLibrary) {
  GrantCopySegment segments[] = {{GrantCopySegment::Direction::kFromGuest, kGuest, 8, 0, 4, nullptr, -1}};
  Status status = table_->Copy(segments);
  EXPECT_EQ(status.code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(xen_.calls(XenCall::kCopy), 0);
}

// One thread is held inside the library with its batch while another thread copies a batch of its own: the
// first batch must come out intact (a scratch array shared between threads would have been overwritten).
TEST_F(XenGrantTableTest, ACopyOnAnotherThreadDoesNotDisturbABatchInFlight) {
  Grant(100, 0xaa);
  Grant(101, 0xbb);
  std::latch inside(1), other_done(1);
  xen_.SetCopyHook([&] {
    inside.count_down();
    other_done.wait();
  });
  uint8_t held_buffers[3][32] = {};
  GrantCopySegment held[3];
  for (int i = 0; i < 3; ++i)
    held[i] = {GrantCopySegment::Direction::kFromGuest,
               kGuest,
               100,
               static_cast<uint16_t>(i * 32),
               32,
               held_buffers[i],
               -1};
  Status held_status;
  std::thread holder([&] { held_status = table_->Copy(held); });
  inside.wait();
  uint8_t other_buffer[16] = {};
  GrantCopySegment other[] = {
      {GrantCopySegment::Direction::kFromGuest, kGuest, 101, 0, 16, other_buffer, -1}};
  EXPECT_TRUE(table_->Copy(other).ok());
  other_done.count_down();
  holder.join();

  ASSERT_TRUE(held_status.ok());
  EXPECT_EQ(xen_.last_copy().size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(held[i].status, GNTST_okay);
    EXPECT_EQ(held_buffers[i][0], 0xaa) << "segment " << i;
    EXPECT_EQ(held_buffers[i][31], 0xaa) << "segment " << i;
  }
  EXPECT_EQ(other_buffer[15], 0xbb);
}

// Many threads, batches of varying sizes (so each thread's scratch grows at its own pace): every byte
// lands where its own thread asked.
TEST_F(XenGrantTableTest, ConcurrentCopiesFromSeveralThreadsKeepTheirSegmentsApart) {
  constexpr int kThreads = 4;
  for (int t = 0; t < kThreads; ++t) Grant(static_cast<GrantRef>(100 + t), static_cast<uint8_t>(0x10 + t));
  std::vector<int> failures(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        const size_t count = 1 + (round * (t + 1)) % 40;
        std::vector<uint8_t> buffers(count * 64, 0);
        std::vector<GrantCopySegment> segments;
        for (size_t i = 0; i < count; ++i) {
          segments.push_back({GrantCopySegment::Direction::kFromGuest, kGuest, static_cast<GrantRef>(100 + t),
                              static_cast<uint16_t>(i * 64), 64, &buffers[i * 64], -1});
        }
        if (!table_->Copy(segments).ok()) ++failures[t];
        for (size_t i = 0; i < count; ++i) {
          if (segments[i].status != GNTST_okay) ++failures[t];
        }
        for (uint8_t byte : buffers) {
          if (byte != 0x10 + t) ++failures[t];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
  EXPECT_EQ(counters_.copy_calls.load(), 200u);
}

}  // namespace
}  // namespace blk
