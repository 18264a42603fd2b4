// Tests of frontend/blkfront.cc against the hand-rolled backend of test_responder.h.
#include "frontend/blkfront.h"

#include <gtest/gtest.h>
#include <sys/epoll.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include "base/unique_fd.h"
#include "frontend/pattern.h"
#include "tests/frontend/test_responder.h"

namespace blk {
namespace {

using namespace std::chrono_literals;

constexpr size_t kDiskSectors = 4096;  // 2 MiB

// Page-aligned memory for I/O buffers; tests offset into it to start mid-page.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t bytes) : data_(static_cast<uint8_t*>(std::aligned_alloc(kPageSize, bytes))) {
    std::memset(data_.get(), 0, bytes);
  }
  uint8_t* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data_;
};

class BlkfrontTest : public ::testing::TestWithParam<Abi> {
 protected:
  void Start(BlkfrontConfig config = {}) {
    config.abi = GetParam();
    auto front = Blkfront::Create(sim_, config);
    ASSERT_TRUE(front.ok()) << front.status().ToString();
    front_ = std::move(front.value());
    back_ = std::make_unique<TestResponder>(sim_, *front_, kDiskSectors);
    ASSERT_TRUE(back_->Attach().ok());
    (void)back_->channel().Acknowledge();  // the pending event Xen sets on bind
  }

  // Reaps until `count` I/Os completed, serving in between; results by tag.
  std::map<uint64_t, int16_t> ServeAndReap(size_t count) {
    std::map<uint64_t, int16_t> done;
    IoCompletion completions[16];
    for (int round = 0; round < 1000 && done.size() < count; ++round) {
      back_->ServeAll();
      auto reaped = front_->Reap(completions);
      EXPECT_TRUE(reaped.ok()) << reaped.status().ToString();
      if (!reaped.ok()) break;
      for (size_t i = 0; i < *reaped; ++i) done[completions[i].tag] = completions[i].status;
    }
    return done;
  }

  SimHypervisor sim_;
  std::unique_ptr<Blkfront> front_;
  std::unique_ptr<TestResponder> back_;
};

TEST_P(BlkfrontTest, PublishesWhatBlkfrontWritesToXenstore) {
  Start({.ring_pages = 4, .start_index = 77});
  auto entries = front_->XenstoreEntries();
  std::map<std::string, std::string> keys(entries.begin(), entries.end());
  EXPECT_EQ(keys["ring-page-order"], "2");
  EXPECT_EQ(keys["ring-ref3"], std::to_string(front_->ring_refs()[3]));
  EXPECT_EQ(keys.count("ring-ref"), 0u);
  EXPECT_EQ(keys["event-channel"], std::to_string(front_->event_channel()));
  EXPECT_EQ(keys["protocol"], AbiName(GetParam()));
  EXPECT_EQ(front_->ring_slots(), RingSlots(GetParam(), 4));
  // SHARED_RING_INIT moved to the start index: events one past the producers, padding zero.
  const abi::SharedRingHeader& header = *reinterpret_cast<abi::SharedRingHeader*>(back_->ring_bytes());
  EXPECT_EQ(header.req_prod, 77u);
  EXPECT_EQ(header.rsp_prod, 77u);
  EXPECT_EQ(header.req_event, 78u);
  EXPECT_EQ(header.rsp_event, 78u);
  for (uint8_t byte : header.pad) EXPECT_EQ(byte, 0);
}

TEST_P(BlkfrontTest, SinglePageRingPublishesRingRef) {
  Start();
  auto entries = front_->XenstoreEntries();
  std::map<std::string, std::string> keys(entries.begin(), entries.end());
  EXPECT_EQ(keys["ring-ref"], std::to_string(front_->ring_refs()[0]));
  EXPECT_EQ(keys.count("ring-page-order"), 0u);
}

TEST_P(BlkfrontTest, WrittenDataReadsBackThroughTheRing) {
  Start();
  constexpr size_t kBytes = 20 * kPageSize;
  AlignedBuffer written(kBytes), read(kBytes);
  FillPattern({written.get(), kBytes}, 100, 7);
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 100, kBytes, written.get(), 1}).ok());
  EXPECT_EQ(ServeAndReap(1)[1], BLKIF_RSP_OKAY);
  EXPECT_FALSE(CheckPattern({back_->disk().data() + 100 * 512, kBytes}, 100, 7).has_value());
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 100, kBytes, read.get(), 2}).ok());
  EXPECT_EQ(ServeAndReap(1)[2], BLKIF_RSP_OKAY);
  auto mismatch = CheckPattern({read.get(), kBytes}, 100, 7);
  EXPECT_FALSE(mismatch.has_value()) << mismatch->sector << ": " << mismatch->reason;
  // Every data grant was ended and every data page freed.
  EXPECT_EQ(front_->domain().grants_in_use(), 1u);
  EXPECT_EQ(front_->outstanding(), 0u);
}

TEST_P(BlkfrontTest, SplitsIntoRequestsOfElevenSegments) {
  Start();
  constexpr size_t kBytes = 12 * kPageSize;  // 48 KiB: 11 pages, then 1
  AlignedBuffer buffer(kBytes);
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 1000, kBytes, buffer.get(), 5}).ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].nr_segments, 11);
  EXPECT_EQ(requests[0].sector, 1000u);
  EXPECT_EQ(requests[1].nr_segments, 1);
  EXPECT_EQ(requests[1].sector, 1000u + 11 * 8);
  EXPECT_NE(requests[0].id, requests[1].id);
  for (const ParsedRequest& request : requests) {
    EXPECT_EQ(request.operation, BLKIF_OP_WRITE);
    for (uint32_t i = 0; i < request.nr_segments; ++i) {
      EXPECT_EQ(request.seg[i].first_sect, 0);
      EXPECT_EQ(request.seg[i].last_sect, 7);
    }
  }
}

// With indirect descriptors a large write goes as few INDIRECT requests, its descriptors in read-only granted
// pages that a backend decodes with ring/request.h; the pages' grants end with the response.
TEST_P(BlkfrontTest, IndirectRequestsCarryTheirSegmentsInGrantedPages) {
  BlkfrontConfig config;
  config.indirect_segments = 600;  // two indirect pages per full request
  Start(config);
  constexpr size_t kPages = 700;  // 600 + 100
  AlignedBuffer buffer(kPages * kPageSize);
  FillPattern(std::span(buffer.get(), kPages * kPageSize), 64, 9);
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 64, kPages * kPageSize, buffer.get(), 3}).ok());
  DiskLimits limits;
  limits.sectors = 1 << 20;
  limits.max_indirect_segments = 600;
  const uint32_t prod = front_->shared_ring().req_prod;
  ASSERT_EQ(prod - back_->req_cons(), 2u);
  uint64_t sector = 64;
  size_t page = 0;
  std::vector<uint64_t> ids;
  for (uint32_t index = back_->req_cons(); index != prod; ++index) {
    const uint8_t* slot = back_->ring_bytes() + sizeof(abi::SharedRingHeader) +
                          size_t{index & (front_->ring_slots() - 1)} * RingEntrySize(GetParam());
    Request request;
    DecodeRequest(GetParam(), slot, &request);
    ASSERT_EQ(request.operation, BLKIF_OP_INDIRECT);
    EXPECT_EQ(request.indirect_op, BLKIF_OP_WRITE);
    EXPECT_EQ(request.sector_number, sector);
    ASSERT_EQ(ValidateRequest(request, limits).verdict, Verdict::kOk);
    // What a backend does: copy the indirect pages out (read-only grants allow that), then decode them.
    const uint32_t pages = IndirectPages(request.nr_segments);
    std::vector<uint8_t> indirect(pages * kPageSize);
    std::vector<GrantCopySegment> copies;
    for (uint32_t i = 0; i < pages; ++i)
      copies.push_back({GrantCopySegment::Direction::kFromGuest, front_->config().domid,
                        request.indirect_grefs[i], 0, kPageSize, indirect.data() + i * kPageSize, 0});
    ASSERT_TRUE(sim_.hypervisor().grants.Copy(copies).ok());
    std::vector<RequestSegment> segments(request.nr_segments);
    Validation v = DecodeIndirectSegments(request, indirect, limits, segments);
    ASSERT_EQ(v.verdict, Verdict::kOk) << v.reason;
    // Every segment's page holds the data at its place in the buffer.
    std::vector<uint8_t> data(kPageSize);
    for (const RequestSegment& segment : segments) {
      GrantCopySegment copy{GrantCopySegment::Direction::kFromGuest,
                            front_->config().domid,
                            segment.gref,
                            0,
                            kPageSize,
                            data.data(),
                            0};
      ASSERT_TRUE(sim_.hypervisor().grants.Copy(std::span(&copy, 1)).ok());
      ASSERT_EQ(std::memcmp(data.data(), buffer.get() + page * kPageSize, kPageSize), 0) << "page " << page;
      ++page;
    }
    sector += v.sectors;
    ids.push_back(request.id);
  }
  EXPECT_EQ(page, kPages);
  (void)back_->Consume();
  // A response names the indirect operation (READ or WRITE), as Linux's blkfront checks.
  for (uint64_t id : ids) back_->Respond(id, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
  back_->PushResponses();
  IoCompletion done[1];
  auto reaped = front_->Reap(done);
  ASSERT_TRUE(reaped.ok()) << reaped.status().ToString();  // every grant, indirect pages included, ended
  ASSERT_EQ(*reaped, 1u);
  EXPECT_EQ(done[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(front_->domain().grants_in_use(), front_->ring_refs().size());
}

TEST_P(BlkfrontTest, BufferStartingMidPageUsesPartialSegments) {
  Start();
  AlignedBuffer buffer(4 * kPageSize);
  uint8_t* start = buffer.get() + 1024;  // sectors 2..7 of its page
  FillPattern({start, 8192}, 40, 3);
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 40, 8192, start, 9}).ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 1u);
  ASSERT_EQ(requests[0].nr_segments, 3);
  EXPECT_EQ(requests[0].seg[0].first_sect, 2);
  EXPECT_EQ(requests[0].seg[0].last_sect, 7);
  EXPECT_EQ(requests[0].seg[1].first_sect, 0);
  EXPECT_EQ(requests[0].seg[1].last_sect, 7);
  EXPECT_EQ(requests[0].seg[2].first_sect, 0);
  EXPECT_EQ(requests[0].seg[2].last_sect, 1);
  back_->Respond(requests[0].id, requests[0].operation, back_->Execute(requests[0]));
  back_->PushResponses();
  IoCompletion completion[1];
  ASSERT_EQ(front_->Reap(completion).value(), 1u);
  EXPECT_FALSE(CheckPattern({back_->disk().data() + 40 * 512, 8192}, 40, 3).has_value());

  // Reading into a buffer ending mid-page lands exactly there and nowhere else.
  AlignedBuffer read(2 * kPageSize);
  std::memset(read.get(), 0xEE, 2 * kPageSize);
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 40, 3072, read.get() + 512, 10}).ok());
  EXPECT_EQ(ServeAndReap(1)[10], BLKIF_RSP_OKAY);
  EXPECT_EQ(read.get()[511], 0xEE);
  EXPECT_FALSE(CheckPattern({read.get() + 512, 3072}, 40, 3).has_value());
  EXPECT_EQ(read.get()[512 + 3072], 0xEE);
}

TEST_P(BlkfrontTest, GrantsEachRequestWithTheAccessItNeeds) {
  Start();
  AlignedBuffer buffer(2 * kPageSize);
  ASSERT_TRUE(front_->Queue({IoOp::kWrite, 0, kPageSize, buffer.get(), 1}).ok());
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 8, kPageSize, buffer.get() + kPageSize, 2}).ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 2u);
  const GrantRef write_ref = requests[0].seg[0].gref;
  const GrantRef read_ref = requests[1].seg[0].gref;
  const DomId guest = front_->config().domid;
  // A write's page is read-only to the backend; a read's page is writable.
  auto denied = sim_.grants().Map(guest, std::span(&write_ref, 1), true);
  EXPECT_EQ(denied.status().code(), Status::Code::kPermissionDenied);
  EXPECT_TRUE(sim_.grants().Map(guest, std::span(&write_ref, 1), false).ok());
  EXPECT_TRUE(sim_.grants().Map(guest, std::span(&read_ref, 1), true).ok());
  EXPECT_EQ(front_->domain().grants_in_use(), 3u);  // ring + two data pages
  for (const ParsedRequest& request : requests) back_->Respond(request.id, request.operation, BLKIF_RSP_OKAY);
  back_->PushResponses();
  IoCompletion completions[2];
  ASSERT_EQ(front_->Reap(completions).value(), 2u);
  EXPECT_EQ(front_->domain().grants_in_use(), 1u);
  EXPECT_FALSE(sim_.grants().Map(guest, std::span(&read_ref, 1), false).ok());  // ended
}

// Without persistent grants a buffer in guest memory goes on the ring as it is, as Linux's blkfront grants a
// bio's pages: no data page taken, no copy, each grant ended at the response.
TEST_P(BlkfrontTest, GuestBufferPagesAreGrantedPerRequestWithoutACopy) {
  Start();
  auto buffer = front_->AllocateGuestBuffer(3 * kPageSize);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  uint8_t* out = *buffer;
  uint8_t* in = *buffer + 2 * kPageSize;
  for (size_t i = 0; i < 2 * kPageSize; ++i) out[i] = static_cast<uint8_t>(i * 7 + i / kPageSize);
  const size_t free_pages = front_->domain().free_pages();
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 8, 2 * kPageSize, out, 1}).ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 1u);
  ASSERT_EQ(requests[0].nr_segments, 2u);
  EXPECT_EQ(front_->domain().free_pages(), free_pages) << "a data page was taken for a guest buffer";
  EXPECT_EQ(front_->domain().grants_in_use(), 3u);  // the ring and the buffer's two pages
  const DomId guest = front_->config().domid;
  const GrantRef second = requests[0].seg[1].gref;
  EXPECT_EQ(sim_.grants().Map(guest, std::span(&second, 1), true).status().code(),
            Status::Code::kPermissionDenied)
      << "a write's buffer page must be read-only to the backend";
  {
    auto mapping = sim_.grants().Map(guest, std::span(&second, 1), false);
    ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
    out[kPageSize + 5] ^= 0xFF;  // the grant is the buffer's own page: the backend sees the change
    EXPECT_EQ(static_cast<const uint8_t*>(mapping->addr())[5], out[kPageSize + 5]);
    out[kPageSize + 5] ^= 0xFF;
  }
  ASSERT_EQ(back_->Execute(requests[0]), BLKIF_RSP_OKAY);
  back_->Respond(requests[0].id, requests[0].operation, BLKIF_RSP_OKAY);
  back_->PushResponses();
  IoCompletion completions[1];
  ASSERT_EQ(front_->Reap(completions).value(), 1u);
  EXPECT_EQ(completions[0].status, BLKIF_RSP_OKAY);
  EXPECT_EQ(front_->domain().grants_in_use(), 1u) << "the buffer's grants outlived the response";
  EXPECT_EQ(std::memcmp(back_->disk().data() + 8 * 512, out, 2 * kPageSize), 0);

  std::memset(in, 0, kPageSize);
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 16, kPageSize, in, 2}).ok());
  EXPECT_EQ(front_->domain().free_pages(), free_pages);
  auto done = ServeAndReap(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[2], BLKIF_RSP_OKAY);
  EXPECT_EQ(std::memcmp(in, out + kPageSize, kPageSize), 0) << "the read did not land in the buffer";
  EXPECT_EQ(front_->domain().grants_in_use(), 1u);
  EXPECT_EQ(front_->domain().free_pages(), free_pages);
}

// With persistent grants, Linux copies a bio's data through its pool of granted pages, and so does a guest
// buffer here: the backend never sees the buffer's own page.
TEST_P(BlkfrontTest, GuestBufferWithPersistentGrantsIsCopiedThroughThePool) {
  BlkfrontConfig config;
  config.persistent = true;
  Start(config);
  auto buffer = front_->AllocateGuestBuffer(2 * kPageSize);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  uint8_t* out = *buffer;
  uint8_t* in = *buffer + kPageSize;
  for (size_t i = 0; i < kPageSize; ++i) out[i] = static_cast<uint8_t>(i * 13);
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 0, kPageSize, out, 1}).ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(front_->persistent_pages(), 1u);
  {
    const GrantRef ref = requests[0].seg[0].gref;
    auto mapping = sim_.grants().Map(front_->config().domid, std::span(&ref, 1), true);
    ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
    out[9] ^= 0xFF;  // a copy: the pool page keeps what was written at Submit
    EXPECT_EQ(static_cast<const uint8_t*>(mapping->addr())[9], static_cast<uint8_t>(out[9] ^ 0xFF));
    out[9] ^= 0xFF;
  }
  ASSERT_EQ(back_->Execute(requests[0]), BLKIF_RSP_OKAY);
  back_->Respond(requests[0].id, requests[0].operation, BLKIF_RSP_OKAY);
  back_->PushResponses();
  IoCompletion completions[1];
  ASSERT_EQ(front_->Reap(completions).value(), 1u);
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 0, kPageSize, in, 2}).ok());
  auto done = ServeAndReap(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(std::memcmp(in, out, kPageSize), 0);
  EXPECT_EQ(front_->persistent_pages(), 1u) << "the pool page was not reused";
}

TEST_P(BlkfrontTest, GuestBufferOfNothingOrBeyondTheDomainIsRefused) {
  Start();
  EXPECT_EQ(front_->AllocateGuestBuffer(0).status().code(), Status::Code::kInvalidArgument);
  EXPECT_FALSE(front_->AllocateGuestBuffer((front_->domain().pages() + 1) * kPageSize).ok());
  EXPECT_TRUE(front_->AllocateGuestBuffer(kPageSize).ok()) << "a failed allocation leaked the domain's pages";
}

TEST_P(BlkfrontTest, RequestBytesFollowTheAbi) {
  Start({.handle = 51712});
  AlignedBuffer buffer(kPageSize);
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 0x123456789ull, 1024, buffer.get() + 2048, 1}).ok());
  const uint8_t* slot = back_->ring_bytes() + sizeof(abi::SharedRingHeader);
  const bool wide = GetParam() == Abi::kX86_64;
  const size_t id_at = wide ? 8 : 4, sector_at = wide ? 16 : 12, seg_at = wide ? 24 : 20;
  uint64_t sector;
  std::memcpy(&sector, slot + sector_at, 8);
  EXPECT_EQ(slot[0], BLKIF_OP_READ);
  EXPECT_EQ(slot[1], 1);  // nr_segments
  uint16_t handle;
  std::memcpy(&handle, slot + 2, 2);
  EXPECT_EQ(handle, 51712);
  EXPECT_EQ(sector, 0x123456789ull);
  uint64_t id;
  std::memcpy(&id, slot + id_at, 8);
  EXPECT_LT(id, front_->ring_slots());
  abi::Segment seg;
  std::memcpy(&seg, slot + seg_at, sizeof(seg));
  EXPECT_EQ(seg.first_sect, 4);
  EXPECT_EQ(seg.last_sect, 5);
  EXPECT_EQ(front_->ring_slots(), 32u);
}

TEST_P(BlkfrontTest, NotifiesOnlyWhenTheBackendAsked) {
  Start();
  AlignedBuffer buffer(kPageSize);
  auto& notified = sim_.counters().frontend_notifications;
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 0, 512, buffer.get(), 1}).ok());
  EXPECT_EQ(notified.load(), 1u);  // req_event was one past the start
  // The backend has not looked yet: it will see these without a kick.
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 1, 512, buffer.get(), 2}).ok());
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 2, 512, buffer.get(), 3}).ok());
  EXPECT_EQ(notified.load(), 1u);
  EXPECT_EQ(front_->stats().publishes, 3u);
  EXPECT_EQ(front_->stats().notifications, 1u);
  // The backend consumed everything and re-armed req_event: the next push must notify.
  auto consumed = back_->Consume();
  ASSERT_EQ(consumed.size(), 3u);
  EXPECT_FALSE(back_->FinalCheckForRequests());
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 3, 512, buffer.get(), 4}).ok());
  EXPECT_EQ(notified.load(), 2u);

  // Responses: the frontend re-arms rsp_event when it reaps, so the backend notifies once per batch.
  const uint64_t before = sim_.counters().backend_notifications.load();
  for (const ParsedRequest& request : consumed) back_->Respond(request.id, request.operation, BLKIF_RSP_OKAY);
  EXPECT_TRUE(back_->PushResponses());
  EXPECT_EQ(sim_.counters().backend_notifications.load(), before + 1);
  IoCompletion completions[4];
  ASSERT_EQ(front_->Reap(completions).value(), 3u);
  // One request is still out: RING_FINAL_CHECK_FOR_RESPONSES asked for a kick on the very next response.
  EXPECT_EQ(front_->shared_ring().rsp_event, front_->rsp_cons() + 1);
  auto last = back_->Consume();
  ASSERT_EQ(last.size(), 1u);
  back_->Respond(last[0].id, last[0].operation, BLKIF_RSP_OKAY);
  EXPECT_TRUE(back_->PushResponses());
  EXPECT_EQ(sim_.counters().backend_notifications.load(), before + 2);
}

TEST_P(BlkfrontTest, WaitSleepsUntilTheBackendNotifies) {
  Start();
  AlignedBuffer buffer(kPageSize);
  IoCompletion completion[1];
  EXPECT_EQ(front_->Wait(completion, 10s).value(), 0u);  // nothing outstanding: returns at once
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 0, 512, buffer.get(), 4}).ok());
  EXPECT_EQ(front_->Wait(completion, 20ms).value(), 0u);  // nobody answers: times out
  std::thread backend([&] {
    std::this_thread::sleep_for(30ms);
    back_->ServeAll();
  });
  const auto start = std::chrono::steady_clock::now();
  auto reaped = front_->Wait(completion, 10s);
  backend.join();
  ASSERT_EQ(reaped.value(), 1u);
  EXPECT_EQ(completion[0].tag, 4u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST_P(BlkfrontTest, QueuesWhileTheRingIsFull) {
  Start({.max_outstanding = 64});
  AlignedBuffer buffer(kPageSize);
  for (uint64_t tag = 0; tag < 40; ++tag)
    ASSERT_TRUE(front_->Queue({IoOp::kWrite, tag, 512, buffer.get(), tag}).ok());
  ASSERT_TRUE(front_->Push().ok());
  EXPECT_EQ(front_->req_prod_pvt() - front_->rsp_cons(), 32u);
  EXPECT_GT(front_->stats().ring_full, 0u);
  auto first = back_->Consume();
  EXPECT_EQ(first.size(), 32u);
  for (const ParsedRequest& request : first) back_->Respond(request.id, request.operation, BLKIF_RSP_OKAY);
  back_->PushResponses();
  IoCompletion completions[64];
  ASSERT_EQ(front_->Reap(completions).value(), 32u);
  // Reaping freed the slots and pushed the 8 that waited.
  EXPECT_EQ(back_->Consume().size(), 8u);
  EXPECT_EQ(front_->outstanding(), 8u);
}

TEST_P(BlkfrontTest, IndicesWrapAroundTwoToTheThirtyTwo) {
  Start({.start_index = 0xFFFFFFF0u});
  AlignedBuffer buffer(2 * kPageSize);
  for (uint64_t round = 0; round < 10; ++round) {
    for (uint64_t i = 0; i < 8; ++i) {
      const uint64_t tag = round * 8 + i;
      FillPattern({buffer.get(), 1024}, tag * 2, round);
      ASSERT_TRUE(front_->Submit({IoOp::kWrite, tag * 2, 1024, buffer.get(), tag}).ok());
    }
    auto done = ServeAndReap(8);
    ASSERT_EQ(done.size(), 8u);
    for (auto& [tag, status] : done) EXPECT_EQ(status, BLKIF_RSP_OKAY) << tag;
  }
  EXPECT_EQ(front_->req_prod_pvt(), 0xFFFFFFF0u + 80);  // wrapped
  EXPECT_LT(front_->req_prod_pvt(), 100u);
  EXPECT_EQ(back_->req_cons(), front_->req_prod_pvt());
  EXPECT_FALSE(CheckPattern({back_->disk().data() + 79 * 2 * 512, 1024}, 79 * 2, 9).has_value());
}

TEST_P(BlkfrontTest, IoStatusIsTheWorstOfItsRequests) {
  Start();
  constexpr size_t kBytes = 16 * kPageSize;  // two requests
  AlignedBuffer buffer(kBytes);
  struct Case {
    int16_t first, second, expected;
  } cases[] = {
      {BLKIF_RSP_OKAY, BLKIF_RSP_OKAY, BLKIF_RSP_OKAY},
      {BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_ERROR},
      {BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY, BLKIF_RSP_EOPNOTSUPP},
      {BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR},
      {BLKIF_RSP_OKAY, 7, BLKIF_RSP_ERROR},  // unknown statuses are errors
  };
  uint64_t tag = 0;
  for (const Case& c : cases) {
    ASSERT_TRUE(front_->Submit({IoOp::kRead, 0, kBytes, buffer.get(), ++tag}).ok());
    auto requests = back_->Consume();
    ASSERT_EQ(requests.size(), 2u);
    // Answer in reverse order: completion waits for both regardless.
    back_->Respond(requests[1].id, requests[1].operation, c.second);
    back_->PushResponses();
    IoCompletion completion[1];
    ASSERT_EQ(front_->Reap(completion).value(), 0u);
    back_->Respond(requests[0].id, requests[0].operation, c.first);
    back_->PushResponses();
    ASSERT_EQ(front_->Reap(completion).value(), 1u);
    EXPECT_EQ(completion[0].tag, tag);
    EXPECT_EQ(completion[0].status, c.expected) << c.first << "," << c.second;
  }
}

TEST_P(BlkfrontTest, FlushAndBarrier) {
  Start();
  ASSERT_TRUE(front_->Submit({IoOp::kFlushDiskCache, 0, 0, nullptr, 1}).ok());
  AlignedBuffer buffer(kPageSize);
  FillPattern({buffer.get(), kPageSize}, 16, 1);
  ASSERT_TRUE(front_->Submit({IoOp::kWriteBarrier, 16, kPageSize, buffer.get(), 2}).ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].operation, BLKIF_OP_FLUSH_DISKCACHE);
  EXPECT_EQ(requests[0].nr_segments, 0);
  EXPECT_EQ(requests[1].operation, BLKIF_OP_WRITE_BARRIER);
  EXPECT_EQ(requests[1].nr_segments, 1);
  const GrantRef ref = requests[1].seg[0].gref;
  EXPECT_FALSE(
      sim_.grants().Map(front_->config().domid, std::span(&ref, 1), true).ok());  // data is read-only
  back_->Respond(requests[0].id, requests[0].operation, BLKIF_RSP_EOPNOTSUPP);
  back_->Respond(requests[1].id, requests[1].operation, back_->Execute(requests[1]));
  back_->PushResponses();
  IoCompletion completions[2];
  ASSERT_EQ(front_->Reap(completions).value(), 2u);
  EXPECT_EQ(completions[0].status, BLKIF_RSP_EOPNOTSUPP);
  EXPECT_EQ(completions[1].status, BLKIF_RSP_OKAY);
  EXPECT_FALSE(CheckPattern({back_->disk().data() + 16 * 512, kPageSize}, 16, 1).has_value());
}

TEST_P(BlkfrontTest, RefusesMalformedIo) {
  Start({.max_outstanding = 2});
  AlignedBuffer buffer(16 * kPageSize);
  EXPECT_EQ(front_->Queue({IoOp::kRead, 0, 100, buffer.get(), 1}).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(front_->Queue({IoOp::kRead, 0, 512, buffer.get() + 8, 1}).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(front_->Queue({IoOp::kRead, 0, 512, nullptr, 1}).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(front_->Queue({IoOp::kWrite, 0, 0, buffer.get(), 1}).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(front_->Queue({IoOp::kWriteBarrier, 0, 12 * kPageSize, buffer.get(), 1}).code(),
            Status::Code::kInvalidArgument);
  EXPECT_EQ(front_->Queue({static_cast<IoOp>(9), 0, 512, buffer.get(), 1}).code(),
            Status::Code::kInvalidArgument);
  EXPECT_TRUE(front_->Queue({IoOp::kRead, 0, 512, buffer.get(), 1}).ok());
  EXPECT_TRUE(front_->Queue({IoOp::kRead, 0, 512, buffer.get(), 2}).ok());
  EXPECT_EQ(front_->Queue({IoOp::kRead, 0, 512, buffer.get(), 3}).code(), Status::Code::kBusy);
  EXPECT_EQ(front_->stats().requests_pushed, 0u);  // nothing reaches the ring before Push
}

// A response whose id is not one of ours breaks the frontend for good, as in Linux's blkfront.
TEST_P(BlkfrontTest, BadResponsesBreakTheFrontend) {
  enum Bad { kIdOutOfRange, kIdNotInFlight, kWrongOperation, kTooManyResponses };
  for (Bad bad : {kIdOutOfRange, kIdNotInFlight, kWrongOperation, kTooManyResponses}) {
    back_.reset();
    front_.reset();
    Start({.domid = static_cast<DomId>(10 + bad)});  // a fresh guest per case
    AlignedBuffer buffer(kPageSize);
    ASSERT_TRUE(front_->Submit({IoOp::kRead, 0, 512, buffer.get(), 1}).ok());
    auto requests = back_->Consume();
    ASSERT_EQ(requests.size(), 1u);
    const uint64_t id = requests[0].id;
    switch (bad) {
      case kIdOutOfRange:
        back_->Respond(999, BLKIF_OP_READ, BLKIF_RSP_OKAY);
        break;
      case kIdNotInFlight:
        back_->Respond((id + 1) % 32, BLKIF_OP_READ, BLKIF_RSP_OKAY);
        break;
      case kWrongOperation:
        back_->Respond(id, BLKIF_OP_WRITE, BLKIF_RSP_OKAY);
        break;
      case kTooManyResponses:
        back_->PushResponses();
        reinterpret_cast<abi::SharedRingHeader*>(back_->ring_bytes())->rsp_prod += 33;
        break;
    }
    if (bad != kTooManyResponses) back_->PushResponses();
    IoCompletion completion[1];
    auto reaped = front_->Reap(completion);
    ASSERT_FALSE(reaped.ok()) << bad;
    EXPECT_EQ(reaped.status().code(), Status::Code::kProtocolError) << reaped.status().ToString();
    EXPECT_FALSE(front_->broken().ok());
    EXPECT_FALSE(front_->Submit({IoOp::kRead, 0, 512, buffer.get(), 2}).ok());
    EXPECT_FALSE(front_->Reap(completion).ok());
  }
}

TEST_P(BlkfrontTest, GrantStillMappedAtResponseBreaksTheFrontend) {
  Start();
  AlignedBuffer buffer(kPageSize);
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 0, kPageSize, buffer.get(), 1}).ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 1u);
  auto mapping = sim_.grants().Map(front_->config().domid, std::span(&requests[0].seg[0].gref, 1), true);
  ASSERT_TRUE(mapping.ok());
  back_->Respond(requests[0].id, requests[0].operation, BLKIF_RSP_OKAY);  // without unmapping first
  back_->PushResponses();
  IoCompletion completion[1];
  auto reaped = front_->Reap(completion);
  ASSERT_FALSE(reaped.ok());
  EXPECT_NE(reaped.status().message().find("still"), std::string::npos) << reaped.status().ToString();
}

TEST_P(BlkfrontTest, HostileRawRequestsAndIndices) {
  Start();
  const bool wide = GetParam() == Abi::kX86_64;
  std::vector<uint8_t> raw(RingEntrySize(GetParam()), 0);
  raw[0] = 0x77;  // no such operation
  raw[1] = 200;   // nr_segments way beyond 11
  const uint64_t id = 0xDEADBEEF12345678ull;
  std::memcpy(raw.data() + (wide ? 8 : 4), &id, sizeof(id));
  ASSERT_TRUE(front_->PlaceRaw(raw).ok());
  ASSERT_TRUE(front_->Push().ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].operation, 0x77);
  EXPECT_EQ(requests[0].nr_segments, 200);
  EXPECT_EQ(requests[0].id, id);
  back_->Respond(id, 0x77, BLKIF_RSP_ERROR);
  back_->PushResponses();
  IoCompletion completion[1];
  ASSERT_EQ(front_->Reap(completion).value(), 0u);
  EXPECT_TRUE(front_->broken().ok());
  auto response = front_->TakeRawResponse(id);
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, BLKIF_RSP_ERROR);
  EXPECT_EQ(response->operation, 0x77);
  EXPECT_FALSE(front_->TakeRawResponse(id).has_value());
  EXPECT_FALSE(front_->PlaceRaw(std::vector<uint8_t>(RingEntrySize(GetParam()) + 1)).ok());

  // Indices written straight into the shared page reach the backend as they are.
  front_->shared_ring().req_prod += 1000;
  ASSERT_TRUE(front_->NotifyBackend().ok());
  EXPECT_EQ(reinterpret_cast<abi::SharedRingHeader*>(back_->ring_bytes())->req_prod,
            front_->req_prod_pvt() + 1000);
}

// The backend in its own thread, woken by the event channel through epoll; the frontend waits on its fd.
TEST_P(BlkfrontTest, ConcurrentBackendThreadServesEverything) {
  Start({.ring_pages = 2, .max_outstanding = 16});
  std::atomic<bool> stop{false};
  std::thread backend([&] {
    UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    epoll_event event{};
    event.events = EPOLLIN;
    ASSERT_EQ(::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, back_->channel().fd(), &event), 0);
    while (!stop.load()) {
      epoll_event ready;
      if (::epoll_wait(epoll.get(), &ready, 1, 10) != 1) continue;
      ASSERT_TRUE(back_->channel().Acknowledge().ok());
      back_->ServeAll();
    }
  });
  constexpr size_t kIos = 200;
  constexpr size_t kBytes = 3 * kPageSize;
  AlignedBuffer buffers(16 * kBytes);
  size_t submitted = 0, completed = 0;
  IoCompletion completions[16];
  std::vector<uint64_t> free_buffers;
  for (uint64_t i = 0; i < 16; ++i) free_buffers.push_back(i);
  while (completed < kIos) {
    while (submitted < kIos && !free_buffers.empty()) {
      const uint64_t slot = free_buffers.back();
      free_buffers.pop_back();
      uint8_t* data = buffers.get() + slot * kBytes;
      const uint64_t sector = (submitted % 64) * 24;
      FillPattern({data, kBytes}, sector, submitted);
      ASSERT_TRUE(front_->Submit({IoOp::kWrite, sector, kBytes, data, slot}).ok());
      ++submitted;
    }
    auto reaped = front_->Wait(completions, 5000ms);
    ASSERT_TRUE(reaped.ok()) << reaped.status().ToString();
    ASSERT_GT(*reaped, 0u) << "no completion within 5 s";
    for (size_t i = 0; i < *reaped; ++i) {
      EXPECT_EQ(completions[i].status, BLKIF_RSP_OKAY);
      free_buffers.push_back(completions[i].tag);
    }
    completed += *reaped;
  }
  stop = true;
  backend.join();
  EXPECT_EQ(front_->outstanding(), 0u);
  EXPECT_GE(sim_.counters().copy_calls.load(), kIos);
  EXPECT_LE(sim_.counters().frontend_notifications.load(), kIos);
  EXPECT_EQ(front_->domain().grants_in_use(), 2u);
}

// The guest closes its frontend and opens a new one on the same domain, as after a backend restart.
TEST_P(BlkfrontTest, ReconnectsOnTheSameDomain) {
  Start({.ring_pages = 2});
  AlignedBuffer buffer(kPageSize);
  FillPattern({buffer.get(), kPageSize}, 0, 1);
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 0, kPageSize, buffer.get(), 1}).ok());
  ASSERT_EQ(ServeAndReap(1)[1], BLKIF_RSP_OKAY);
  std::vector<uint8_t> disk = back_->disk();
  SimDomain* domain = &front_->domain();
  const size_t free_before = domain->free_pages();
  back_.reset();  // the backend unmaps the ring and unbinds first
  front_.reset();
  EXPECT_EQ(domain->grants_in_use(), 0u);
  EXPECT_EQ(domain->free_pages(), free_before + 2);  // the ring's pages came back

  Start({.ring_pages = 4, .start_index = 1000});
  EXPECT_EQ(&front_->domain(), domain);
  back_->disk() = disk;
  std::memset(buffer.get(), 0, kPageSize);
  ASSERT_TRUE(front_->Submit({IoOp::kRead, 0, kPageSize, buffer.get(), 2}).ok());
  ASSERT_EQ(ServeAndReap(1)[2], BLKIF_RSP_OKAY);
  EXPECT_FALSE(CheckPattern({buffer.get(), kPageSize}, 0, 1).has_value());
}

// A hostile guest revokes a page it granted for an in-flight write: the backend's copy fails, the I/O fails,
// and the frontend itself carries on.
TEST_P(BlkfrontTest, GuestRevokingAnInFlightGrantFailsOnlyThatIo) {
  Start();
  AlignedBuffer buffer(2 * kPageSize);
  ASSERT_TRUE(front_->Queue({IoOp::kWrite, 0, kPageSize, buffer.get(), 1}).ok());
  ASSERT_TRUE(front_->Submit({IoOp::kWrite, 8, kPageSize, buffer.get() + kPageSize, 2}).ok());
  auto requests = back_->Consume();
  ASSERT_EQ(requests.size(), 2u);
  ASSERT_TRUE(front_->domain().Revoke(requests[0].seg[0].gref).ok());
  for (const ParsedRequest& request : requests) {
    back_->Respond(request.id, request.operation, back_->Execute(request));
  }
  back_->PushResponses();
  IoCompletion completions[2];
  ASSERT_EQ(front_->Reap(completions).value(), 2u);
  EXPECT_EQ(completions[0].status, BLKIF_RSP_ERROR);
  EXPECT_EQ(completions[1].status, BLKIF_RSP_OKAY);
  EXPECT_TRUE(front_->broken().ok());
  EXPECT_EQ(front_->domain().grants_in_use(), 1u);
}

INSTANTIATE_TEST_SUITE_P(BothAbis, BlkfrontTest, ::testing::Values(Abi::kX86_64, Abi::kX86_32),
                         [](const auto& info) { return info.param == Abi::kX86_64 ? "x86_64" : "x86_32"; });

TEST(BlkfrontCreateTest, RefusesBadConfigurations) {
  SimHypervisor sim;
  EXPECT_FALSE(Blkfront::Create(sim, {.ring_pages = 3}).ok());
  EXPECT_FALSE(Blkfront::Create(sim, {.ring_pages = 32}).ok());
  EXPECT_FALSE(Blkfront::Create(sim, {.ring_pages = 0}).ok());
  EXPECT_FALSE(Blkfront::Create(sim, {.max_outstanding = 0}).ok());
  EXPECT_FALSE(Blkfront::Create(sim, {.domid = 0}).ok());  // the backend's domain
  EXPECT_FALSE(Blkfront::Create(sim, {.indirect_segments = kMaxIndirectSegments + 1}).ok());
  EXPECT_TRUE(Blkfront::Create(sim, {.ring_pages = 16}).ok());
}

}  // namespace
}  // namespace blk
