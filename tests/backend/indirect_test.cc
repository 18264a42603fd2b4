// Indirect descriptors through the whole datapath: the userspace blkfront's INDIRECT requests served by the
// real pipeline, hand-made INDIRECT requests with broken indirect pages, and more indirect requests in flight
// than the ring has large buffers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <optional>
#include <vector>

#include "tests/backend/datapath_fixture.h"

namespace blk {
namespace {

constexpr uint32_t kOffered = 64;

class IndirectDatapathTest : public SteppedGuestTest {
 protected:
  void SetUp() override { CreateDisk("/var/tmp", "indirect_test"); }
  void Connect(uint32_t front_segments, uint32_t offered = kOffered, unsigned depth = 32) {
    BlkfrontConfig config;
    config.indirect_segments = front_segments;
    config.max_outstanding = depth;
    config.spare_pages = 512;  // for the hand-made requests' pages
    guest_ = std::make_unique<Guest>(sim_, path_, 1, config, false, *worker_, true, 0, ImageFormatHint::kRaw,
                                     true, offered);
  }
  // A hand-made INDIRECT request of `segments` full-page segments over freshly granted guest pages filled
  // with `fill`; `indirect_ref` receives the grant of its one indirect page.
  Request MakeIndirect(uint8_t op, uint64_t sector, unsigned segments, uint8_t fill, GrantRef* indirect_ref,
                       uint32_t* indirect_page = nullptr) {
    SimDomain& domain = front().domain();
    auto indirect_frame = domain.AllocPage();
    EXPECT_TRUE(indirect_frame.ok());
    auto* descriptors = reinterpret_cast<abi::Segment*>(domain.PageAddress(*indirect_frame));
    for (unsigned i = 0; i < segments; ++i) {
      auto frame = domain.AllocPage();
      EXPECT_TRUE(frame.ok());
      std::memset(domain.PageAddress(*frame), fill, kPageSize);
      auto ref = domain.GrantAccess(0, *frame, op == BLKIF_OP_WRITE);
      EXPECT_TRUE(ref.ok());
      descriptors[i] = abi::Segment{*ref, 0, 7, 0};
    }
    auto ref = domain.GrantAccess(0, *indirect_frame, true);
    EXPECT_TRUE(ref.ok());
    *indirect_ref = *ref;
    if (indirect_page != nullptr) *indirect_page = *indirect_frame;
    Request request;
    request.operation = BLKIF_OP_INDIRECT;
    request.indirect_op = op;
    request.sector_number = sector;
    request.nr_segments = static_cast<uint16_t>(segments);
    request.id = next_id_++;
    request.indirect_grefs[0] = *ref;
    return request;
  }
  // A good 4 KiB write, answered, then a read of it (blkif orders nothing in flight): the ring still serves.
  void ExpectRingServes(uint64_t sector) {
    Bytes data(4096, 0x3C), back(4096);
    ASSERT_TRUE(front().Submit({IoOp::kWrite, sector, 4096, data.data(), 900}).ok());
    ASSERT_TRUE(front().Push().ok());
    auto done = Step(1);
    ASSERT_EQ(done.size(), 1u);
    EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
    ASSERT_TRUE(front().Submit({IoOp::kRead, sector, 4096, back.data(), 901}).ok());
    ASSERT_TRUE(front().Push().ok());
    done = Step(1);
    ASSERT_EQ(done.size(), 1u);
    EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
    EXPECT_EQ(back, data);
  }

  uint64_t next_id_ = kRawIdBase;
};

TEST_F(IndirectDatapathTest, LargeWriteAndReadGoAsIndirectRequestsAndRoundTrip) {
  Connect(kOffered);
  Bytes data(kOffered * kPageSize), back(kOffered * kPageSize, 0);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + i / 4096);
  ASSERT_TRUE(front().Submit({IoOp::kWrite, 64, data.size(), data.data(), 1}).ok());
  ASSERT_TRUE(front().Push().ok());
  auto done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 64, back.size(), back.data(), 2}).ok());
  ASSERT_TRUE(front().Push().ok());
  done = Step(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(back, data);
  // One request each way: the frontend matched each response's operation (READ/WRITE) against its own.
  EXPECT_EQ(guest_->device->stats().wr_req.load(), 1u);
  EXPECT_EQ(guest_->device->stats().rd_req.load(), 1u);
  EXPECT_EQ(guest_->device->stats().wr_sect.load(), kOffered * 8u);
  EXPECT_TRUE(front().broken().ok()) << front().broken().ToString();
}

TEST_F(IndirectDatapathTest, ResponseToAnIndirectRequestNamesItsReadOrWrite) {
  Connect(0);
  GrantRef indirect_ref;
  Request request = MakeIndirect(BLKIF_OP_WRITE, 0, 20, 0xAB, &indirect_ref);
  PlaceRaw(request);
  ASSERT_TRUE(front().Push().ok());
  auto response = StepForRaw(request.id);
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, BLKIF_RSP_OKAY);
  EXPECT_EQ(response->operation, BLKIF_OP_WRITE);
}

TEST_F(IndirectDatapathTest, RevokedIndirectPageFailsOnlyThatRequest) {
  Connect(0);
  GrantRef indirect_ref;
  Request request = MakeIndirect(BLKIF_OP_WRITE, 0, 16, 0xEE, &indirect_ref);
  ASSERT_TRUE(front().domain().Revoke(indirect_ref).ok());
  PlaceRaw(request);
  ASSERT_TRUE(front().Push().ok());
  auto response = StepForRaw(request.id);
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, BLKIF_RSP_ERROR);
  EXPECT_EQ(response->operation, BLKIF_OP_WRITE);
  ExpectRingServes(1024);
  Bytes back(16 * kPageSize);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 0, back.size(), back.data(), 3}).ok());
  ASSERT_TRUE(front().Push().ok());
  ASSERT_EQ(Step(1).size(), 1u);
  EXPECT_EQ(back, Bytes(back.size(), 0)) << "a write with an unreadable indirect page reached the disk";
}

TEST_F(IndirectDatapathTest, BadSegmentInTheIndirectPageIsAnErrorAndNothingIsWritten) {
  Connect(0);
  GrantRef indirect_ref;
  uint32_t frame = 0;
  Request request = MakeIndirect(BLKIF_OP_WRITE, 0, 16, 0xEE, &indirect_ref, &frame);
  // The last descriptor runs past its page.
  reinterpret_cast<abi::Segment*>(front().domain().PageAddress(frame))[15].last_sect = 8;
  PlaceRaw(request);
  ASSERT_TRUE(front().Push().ok());
  auto response = StepForRaw(request.id);
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, BLKIF_RSP_ERROR);
  EXPECT_EQ(guest_->device->stats().bad_req.load(), 1u);
  ExpectRingServes(1024);
  Bytes back(16 * kPageSize);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 0, back.size(), back.data(), 3}).ok());
  ASSERT_TRUE(front().Push().ok());
  ASSERT_EQ(Step(1).size(), 1u);
  EXPECT_EQ(back, Bytes(back.size(), 0));
}

TEST_F(IndirectDatapathTest, MoreSegmentsThanOfferedIsAnErrorAndNotOfferedIsEopnotsupp) {
  Connect(0);
  GrantRef indirect_ref;
  Request request = MakeIndirect(BLKIF_OP_READ, 0, kOffered + 1, 0, &indirect_ref);
  PlaceRaw(request);
  ASSERT_TRUE(front().Push().ok());
  auto response = StepForRaw(request.id);
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, BLKIF_RSP_ERROR);
  EXPECT_EQ(response->operation, BLKIF_OP_READ);
  ExpectRingServes(1024);

  guest_.reset();
  Connect(0, /*offered=*/0);
  request = MakeIndirect(BLKIF_OP_READ, 0, 8, 0, &indirect_ref);
  PlaceRaw(request);
  ASSERT_TRUE(front().Push().ok());
  response = StepForRaw(request.id);
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, BLKIF_RSP_EOPNOTSUPP);
  EXPECT_EQ(response->operation, BLKIF_OP_READ);
  ExpectRingServes(1024);
}

TEST_F(IndirectDatapathTest, MoreIndirectRequestsThanLargeBuffersWaitAndAllComplete) {
  // 48 requests of 16 pages at once: the ring has 16 large buffers, so most of them must wait for one.
  constexpr unsigned kRequests = 48, kPages = 16;
  Connect(kOffered, kOffered, kRequests);
  std::vector<Bytes> data(kRequests, Bytes(kPages * kPageSize));
  for (unsigned r = 0; r < kRequests; ++r) {
    std::fill(data[r].begin(), data[r].end(), static_cast<uint8_t>(r + 1));
    ASSERT_TRUE(
        front().Submit({IoOp::kWrite, uint64_t{r} * kPages * 8, data[r].size(), data[r].data(), r}).ok());
  }
  ASSERT_TRUE(front().Push().ok());
  auto done = Step(kRequests);
  ASSERT_EQ(done.size(), kRequests);
  for (const IoCompletion& c : done) EXPECT_EQ(c.status, BLKIF_RSP_OKAY);
  std::vector<Bytes> back(kRequests, Bytes(kPages * kPageSize));
  for (unsigned r = 0; r < kRequests; ++r) {
    ASSERT_TRUE(
        front().Submit({IoOp::kRead, uint64_t{r} * kPages * 8, back[r].size(), back[r].data(), r}).ok());
  }
  ASSERT_TRUE(front().Push().ok());
  done = Step(kRequests);
  ASSERT_EQ(done.size(), kRequests);
  for (unsigned r = 0; r < kRequests; ++r) EXPECT_EQ(back[r], data[r]) << "request " << r;
}

TEST_F(IndirectDatapathTest, BadIndirectRequestsInOneBatchWithGoodOnesFailAlone) {
  Connect(kOffered);
  struct Bad {
    const char* what;
    Request request;
  };
  std::vector<Bad> bad;
  GrantRef ref;
  uint32_t frame = 0;
  Request revoked = MakeIndirect(BLKIF_OP_WRITE, 512, 16, 0xE1, &ref);
  ASSERT_TRUE(front().domain().Revoke(ref).ok());
  bad.push_back({"unreadable indirect page", revoked});
  bad.push_back({"more segments than offered", MakeIndirect(BLKIF_OP_WRITE, 1024, kOffered + 1, 0xE2, &ref)});
  Request flush_op = MakeIndirect(BLKIF_OP_WRITE, 1536, 8, 0xE3, &ref);
  flush_op.indirect_op = BLKIF_OP_FLUSH_DISKCACHE;
  bad.push_back({"indirect_op FLUSH", flush_op});
  Request junk_op = MakeIndirect(BLKIF_OP_WRITE, 1600, 8, 0xE4, &ref);
  junk_op.indirect_op = 99;
  bad.push_back({"indirect_op 99", junk_op});
  Request nested = MakeIndirect(BLKIF_OP_WRITE, 1664, 8, 0xE5, &ref);
  nested.indirect_op = BLKIF_OP_INDIRECT;
  bad.push_back({"indirect_op INDIRECT", nested});
  Request descriptor = MakeIndirect(BLKIF_OP_WRITE, 1728, 8, 0xE6, &ref, &frame);
  reinterpret_cast<abi::Segment*>(front().domain().PageAddress(frame))[3].first_sect = 9;
  bad.push_back({"first_sect beyond the page", descriptor});
  Request empty = MakeIndirect(BLKIF_OP_WRITE, 1792, 1, 0xE7, &ref);
  empty.nr_segments = 0;
  bad.push_back({"no segments", empty});
  for (const Bad& b : bad) PlaceRaw(b.request);
  // Good requests published in the same batch: an indirect write of 32 pages and a direct one of 4 KiB.
  Bytes big(32 * kPageSize), small(4096);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i / 512 + 1);
  std::fill(small.begin(), small.end(), 0x5A);
  ASSERT_TRUE(front().Queue({IoOp::kWrite, 0, big.size(), big.data(), 1}).ok());
  ASSERT_TRUE(front().Queue({IoOp::kWrite, 4096, small.size(), small.data(), 2}).ok());
  ASSERT_TRUE(front().Push().ok());
  auto done = Step(2);
  ASSERT_EQ(done.size(), 2u);
  for (const IoCompletion& c : done) EXPECT_EQ(c.status, BLKIF_RSP_OKAY);
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.what);
    auto response = StepForRaw(b.request.id);
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->status, BLKIF_RSP_ERROR);
  }
  EXPECT_EQ(guest_->device->stats().bad_req.load(), bad.size() - 1)
      << "all but the unreadable page are bad requests";
  EXPECT_FALSE(guest_->device->broken());
  EXPECT_TRUE(front().broken().ok()) << front().broken().ToString();
  // The good data is on disk; nothing of the bad requests is.
  Bytes big_back(big.size()), small_back(small.size());
  ASSERT_TRUE(front().Queue({IoOp::kRead, 0, big_back.size(), big_back.data(), 3}).ok());
  ASSERT_TRUE(front().Queue({IoOp::kRead, 4096, small_back.size(), small_back.data(), 4}).ok());
  ASSERT_TRUE(front().Push().ok());
  ASSERT_EQ(Step(2).size(), 2u);
  EXPECT_EQ(big_back, big);
  EXPECT_EQ(small_back, small);
  Bytes untouched(1792 * 512 + 4096 - 512 * 512);
  ASSERT_TRUE(front().Submit({IoOp::kRead, 512, untouched.size(), untouched.data(), 5}).ok());
  ASSERT_EQ(Step(1).size(), 1u);
  EXPECT_EQ(untouched, Bytes(untouched.size(), 0)) << "a refused indirect write reached the disk";
}

}  // namespace
}  // namespace blk
