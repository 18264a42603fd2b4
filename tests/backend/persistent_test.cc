// Persistent grants through the whole datapath: a frontend that reuses exactly as many grants as the ring's
// cache holds (everything mapped once, nothing copied after), one that uses many more (evictions, bounce
// copies, memory bounded, data right), and a grant used twice at once (refused).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "tests/backend/datapath_fixture.h"

namespace blk {
namespace {

// Page-aligned guest I/O buffers, so that a 44 KiB request is exactly 11 whole pages.
struct PageBuffer {
  explicit PageBuffer(size_t bytes)
      : size(bytes), data(static_cast<uint8_t*>(std::aligned_alloc(kPageSize, bytes))) {}
  ~PageBuffer() { std::free(data); }
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  size_t size;
  uint8_t* data;
};

constexpr size_t kRequestBytes = kMaxDirectSegments * kPageSize;  // 11 pages: one full direct request

class PersistentDatapathTest : public SteppedGuestTest {
 protected:
  void SetUp() override { CreateDisk("/dev/shm", "persistent_test"); }
  void Connect(size_t capacity, unsigned depth) {
    BlkfrontConfig config;
    config.persistent = true;
    config.max_outstanding = depth;
    guest_ = std::make_unique<Guest>(sim_, path_, 1, config, false, *worker_, true, 0, ImageFormatHint::kRaw,
                                     true, 0, capacity);
    ASSERT_TRUE(guest_->device && guest_->front);
  }
  HypervisorCounters& counters() { return sim_.counters(); }
  // Mappings the backend holds now: the ring's one page and its persistent grants.
  uint64_t LiveMappings() { return counters().map_calls.load() - counters().unmap_calls.load(); }
  void AfterStep() override { max_live_ = std::max(max_live_, LiveMappings()); }
  // `count` requests of 11 pages at once, request r at sector r * 88 + base, each filled from `seed`.
  void WriteThenReadBack(unsigned count, uint64_t base, uint8_t seed) {
    std::vector<std::unique_ptr<PageBuffer>> out, in;
    for (unsigned r = 0; r < count; ++r) {
      out.push_back(std::make_unique<PageBuffer>(kRequestBytes));
      in.push_back(std::make_unique<PageBuffer>(kRequestBytes));
      for (size_t i = 0; i < kRequestBytes; ++i)
        out[r]->data[i] = static_cast<uint8_t>(seed + r * 13 + i / 512);
      std::memset(in[r]->data, 0, kRequestBytes);
      ASSERT_TRUE(front().Queue({IoOp::kWrite, base + r * 88, kRequestBytes, out[r]->data, r}).ok());
    }
    ASSERT_TRUE(front().Push().ok());
    auto done = Step(count);
    ASSERT_EQ(done.size(), count);
    for (const IoCompletion& c : done) EXPECT_EQ(c.status, BLKIF_RSP_OKAY);
    for (unsigned r = 0; r < count; ++r)
      ASSERT_TRUE(front().Queue({IoOp::kRead, base + r * 88, kRequestBytes, in[r]->data, r}).ok());
    ASSERT_TRUE(front().Push().ok());
    done = Step(count);
    ASSERT_EQ(done.size(), count);
    for (const IoCompletion& c : done) EXPECT_EQ(c.status, BLKIF_RSP_OKAY);
    for (unsigned r = 0; r < count; ++r)
      EXPECT_EQ(std::memcmp(in[r]->data, out[r]->data, kRequestBytes), 0) << "request " << r;
  }

  uint64_t max_live_ = 0;
};

TEST_F(PersistentDatapathTest, AtTheBoundEveryGrantIsMappedOnceAndNothingIsCopied) {
  // Two requests of 11 pages in flight: the frontend's pool settles at 22 grants, exactly the bound.
  constexpr size_t kBound = 2 * kMaxDirectSegments;
  Connect(kBound, 2);
  WriteThenReadBack(2, 0, 1);
  ASSERT_EQ(front().persistent_pages(), kBound);
  EXPECT_EQ(LiveMappings(), kBound + 1) << "the ring and every persistent grant";
  uint64_t maps = counters().map_calls.load(), copies = counters().copy_segments.load();
  for (uint8_t round = 0; round < 5; ++round) WriteThenReadBack(2, 200 + round * 176u, round * 31u);
  EXPECT_EQ(counters().map_calls.load(), maps) << "a grant was mapped again";
  EXPECT_EQ(counters().copy_segments.load(), copies) << "data went by grant copy";
  EXPECT_EQ(front().persistent_pages(), kBound);
  EXPECT_LE(max_live_, kBound + 1);
  EXPECT_EQ(guest_->device->stats().io_errors.load(), 0u);
  guest_->device->Disconnect();
  EXPECT_EQ(counters().map_calls.load(), counters().unmap_calls.load())
      << "a persistent grant outlived its ring";
}

TEST_F(PersistentDatapathTest, BeyondTheBoundDataStaysRightAndMappingsStayBounded) {
  // Eight requests of 11 pages in flight against a cache of 8: more grants in one request than the cache
  // holds, and 88 in flight. The rest go by bounce buffer; evictions make room as requests finish.
  constexpr size_t kBound = 8;
  Connect(kBound, 8);
  for (uint8_t round = 0; round < 6; ++round) WriteThenReadBack(8, round * 704u, round * 17u);
  EXPECT_GE(front().persistent_pages(), 8 * kMaxDirectSegments);
  EXPECT_LE(max_live_, kBound + 1) << "more grants mapped than the bound (plus the ring)";
  EXPECT_GT(counters().copy_segments.load(), 0u) << "segments beyond the bound must go by copy";
  // Mapped more often than the bound holds: grants were evicted and others mapped in their place.
  EXPECT_GT(counters().map_calls.load(), kBound + 1);
  EXPECT_EQ(guest_->device->stats().io_errors.load(), 0u);
  EXPECT_TRUE(front().broken().ok()) << front().broken().ToString();
  guest_->device->Disconnect();
  EXPECT_EQ(counters().map_calls.load(), counters().unmap_calls.load());
  // And the file holds what the last round wrote.
  Bytes file = ReadDisk(path_);
  for (unsigned r = 0; r < 8; ++r) {
    const size_t at = (5 * 704u + r * 88) * 512;
    for (size_t i = 0; i < kRequestBytes; i += 512)
      ASSERT_EQ(file[at + i], static_cast<uint8_t>(5 * 17 + r * 13 + i / 512)) << "request " << r;
  }
}

TEST_F(PersistentDatapathTest, AGrantAlreadyInFlightIsRefusedTheSecondTime) {
  Connect(PersistentGrantCache::kDefaultCapacity, 4);
  SimDomain& domain = front().domain();
  auto frame = domain.AllocPage();
  ASSERT_TRUE(frame.ok());
  std::memset(domain.PageAddress(*frame), 0xAB, kPageSize);
  auto ref = domain.GrantAccess(0, *frame, false);
  ASSERT_TRUE(ref.ok());
  // Two writes from the same page, published together: both are taken in one round.
  Request first;
  first.operation = BLKIF_OP_WRITE;
  first.nr_segments = 1;
  first.sector_number = 0;
  first.id = kRawIdBase + 1;
  first.segments[0] = RequestSegment{*ref, 0, 7};
  Request second = first;
  second.sector_number = 8;
  second.id = kRawIdBase + 2;
  for (const Request& request : {first, second}) {
    uint8_t entry[sizeof(abi::x86_64::Request)];
    EncodeRequest(front().config().abi, request, entry);
    ASSERT_TRUE(front().PlaceRaw(std::span(entry, RequestSize(front().config().abi))).ok());
  }
  ASSERT_TRUE(front().Push().ok());
  std::optional<RawResponse> answers[2];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while ((!answers[0] || !answers[1]) && std::chrono::steady_clock::now() < deadline) {
    worker_->RunOnce(5);
    IoCompletion none[1];
    ASSERT_TRUE(front().Reap(none).ok());
    for (int i = 0; i < 2; ++i) {
      if (!answers[i]) answers[i] = front().TakeRawResponse(kRawIdBase + 1 + i);
    }
  }
  ASSERT_TRUE(answers[0] && answers[1]);
  EXPECT_EQ(answers[0]->status, BLKIF_RSP_OKAY);
  EXPECT_EQ(answers[1]->status, BLKIF_RSP_ERROR);
  // Once the first is answered, the grant is free for the next request.
  Request third = second;
  third.id = kRawIdBase + 3;
  uint8_t entry[sizeof(abi::x86_64::Request)];
  EncodeRequest(front().config().abi, third, entry);
  ASSERT_TRUE(front().PlaceRaw(std::span(entry, RequestSize(front().config().abi))).ok());
  ASSERT_TRUE(front().Push().ok());
  std::optional<RawResponse> answer;
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!answer && std::chrono::steady_clock::now() < deadline) {
    worker_->RunOnce(5);
    IoCompletion none[1];
    ASSERT_TRUE(front().Reap(none).ok());
    answer = front().TakeRawResponse(third.id);
  }
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->status, BLKIF_RSP_OKAY);
  EXPECT_EQ(counters().copy_segments.load(), 0u) << "the refused write went by copy instead";
  guest_->device->Disconnect();
  Bytes file = ReadDisk(path_);
  EXPECT_EQ(file[0], 0xAB);
  EXPECT_EQ(file[8 * 512], 0xAB) << "the third write (same sectors as the refused one)";
  EXPECT_EQ(counters().map_calls.load(), counters().unmap_calls.load());
}

// A guest whose I/O buffers are its granted pages: nothing goes through the frontend's pool, the backend maps
// each buffer page once, and the data is right both ways.
TEST_F(PersistentDatapathTest, IoInAGrantedBufferUsesItsOwnPagesWithoutThePool) {
  Connect(0, 4);
  constexpr unsigned kRequests = 4;
  auto buffer = front().AllocateGrantedBuffer(2 * kRequests * kRequestBytes);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  uint8_t* out = *buffer;
  uint8_t* in = *buffer + kRequests * kRequestBytes;
  for (size_t i = 0; i < kRequests * kRequestBytes; ++i) out[i] = static_cast<uint8_t>(i * 31 + i / 4096);
  std::memset(in, 0, kRequests * kRequestBytes);
  const uint64_t maps_before = counters().map_calls.load();
  for (unsigned r = 0; r < kRequests; ++r)
    ASSERT_TRUE(front().Queue({IoOp::kWrite, r * 88, kRequestBytes, out + r * kRequestBytes, r}).ok());
  ASSERT_TRUE(front().Push().ok());
  for (const IoCompletion& c : Step(kRequests)) EXPECT_EQ(c.status, BLKIF_RSP_OKAY);
  for (unsigned r = 0; r < kRequests; ++r)
    ASSERT_TRUE(front().Queue({IoOp::kRead, r * 88, kRequestBytes, in + r * kRequestBytes, r}).ok());
  ASSERT_TRUE(front().Push().ok());
  auto done = Step(kRequests);
  ASSERT_EQ(done.size(), kRequests);
  for (const IoCompletion& c : done) EXPECT_EQ(c.status, BLKIF_RSP_OKAY);
  EXPECT_EQ(std::memcmp(in, out, kRequests * kRequestBytes), 0) << "read back differs";
  EXPECT_EQ(front().persistent_pages(), 0u) << "the pool was used for pages the guest had granted";
  EXPECT_EQ(counters().map_calls.load() - maps_before, 2u * kRequests * kMaxDirectSegments)
      << "each buffer page is mapped once";
  EXPECT_EQ(ReadDisk(path_)[5], out[5]);
  // The same pages again: already mapped, nothing new.
  const uint64_t maps_after = counters().map_calls.load();
  for (unsigned r = 0; r < kRequests; ++r)
    ASSERT_TRUE(front().Queue({IoOp::kRead, r * 88, kRequestBytes, in + r * kRequestBytes, r}).ok());
  ASSERT_TRUE(front().Push().ok());
  EXPECT_EQ(Step(kRequests).size(), kRequests);
  EXPECT_EQ(counters().map_calls.load(), maps_after);
}

TEST_F(PersistentDatapathTest, AGrantedBufferNeedsPersistentGrants) {
  guest_ = std::make_unique<Guest>(sim_, path_, 1, BlkfrontConfig{}, false, *worker_);
  auto buffer = front().AllocateGrantedBuffer(kPageSize);
  EXPECT_EQ(buffer.status().code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace blk
