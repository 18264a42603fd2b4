// Tests of ring/back_ring.cc against a ring in ordinary memory, with the test playing the frontend.
#include "ring/back_ring.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace blk {
namespace {

// A page-aligned ring and the frontend's side of ring.h, written out by hand.
class TestRing {
 public:
  TestRing(Abi abi, size_t pages, uint32_t start)
      : abi_(abi),
        pages_(pages),
        memory_(static_cast<uint8_t*>(std::aligned_alloc(kPageSize, pages * kPageSize))) {
    std::memset(memory_.get(), 0, pages * kPageSize);
    header()->req_prod = header()->rsp_prod = start;
    header()->req_event = header()->rsp_event = start + 1;
    req_prod_pvt_ = start;
    rsp_cons_ = start;
  }
  abi::SharedRingHeader* header() { return reinterpret_cast<abi::SharedRingHeader*>(memory_.get()); }
  void* shared() { return memory_.get(); }
  uint32_t slots() const { return RingSlots(abi_, pages_); }
  uint8_t* slot(uint32_t index) {
    return memory_.get() + sizeof(abi::SharedRingHeader) + (index & (slots() - 1)) * RingEntrySize(abi_);
  }
  void Produce(const Request& request) { EncodeRequest(abi_, request, slot(req_prod_pvt_++)); }
  void Publish() { header()->req_prod = req_prod_pvt_; }
  struct Answer {
    uint64_t id;
    uint8_t operation;
    int16_t status;
  };
  std::vector<Answer> Consume() {
    std::vector<Answer> answers;
    for (; rsp_cons_ != header()->rsp_prod; ++rsp_cons_) {
      const uint8_t* s = slot(rsp_cons_);
      Answer answer;
      std::memcpy(&answer.id, s, 8);
      answer.operation = s[8];
      std::memcpy(&answer.status, s + 10, 2);
      answers.push_back(answer);
    }
    return answers;
  }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  Abi abi_;
  size_t pages_;
  std::unique_ptr<uint8_t, Free> memory_;
  uint32_t req_prod_pvt_;
  uint32_t rsp_cons_;
};

Request Read(uint64_t id, uint64_t sector) {
  Request request;
  request.operation = BLKIF_OP_READ;
  request.id = id;
  request.sector_number = sector;
  request.nr_segments = 1;
  request.segments[0] = {7, 0, 7};
  return request;
}

TEST(BackRingTest, TakesPublishedRequestsOnlyAndInOrder) {
  TestRing front(Abi::kX86_64, 1, 0);
  BackRing back(front.shared(), 1, Abi::kX86_64);
  EXPECT_EQ(back.slots(), 32u);
  for (uint64_t i = 0; i < 5; ++i) front.Produce(Read(i, i * 8));
  std::vector<Request> out(16);
  ASSERT_EQ(*back.Take(out), 0u);  // produced but not published
  front.Publish();
  auto taken = back.Take(std::span(out).first(3));
  ASSERT_TRUE(taken.ok());
  ASSERT_EQ(*taken, 3u);
  EXPECT_EQ(out[2].id, 2u);
  EXPECT_EQ(back.outstanding(), 3u);
  ASSERT_EQ(*back.Take(out), 2u);
  EXPECT_EQ(out[1].sector_number, 32u);
}

TEST(BackRingTest, RequestIsPrivateOnceTaken) {
  TestRing front(Abi::kX86_64, 1, 0);
  BackRing back(front.shared(), 1, Abi::kX86_64);
  front.Produce(Read(1, 8));
  front.Publish();
  std::vector<Request> out(1);
  ASSERT_EQ(*back.Take(out), 1u);
  std::memset(front.slot(0), 0xFF, 112);  // the frontend rewrites the slot after the backend copied it
  EXPECT_EQ(out[0].operation, BLKIF_OP_READ);
  EXPECT_EQ(out[0].nr_segments, 1u);
  EXPECT_EQ(out[0].sector_number, 8u);
}

TEST(BackRingTest, ReqProdTooFarAheadIsABrokenFrontend) {
  TestRing front(Abi::kX86_64, 1, 0);
  BackRing back(front.shared(), 1, Abi::kX86_64);
  front.header()->req_prod = 33;
  std::vector<Request> out(64);
  auto taken = back.Take(out);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), Status::Code::kProtocolError);
  EXPECT_NE(taken.status().ToString().find("req_prod 33"), std::string::npos);
  front.header()->req_prod = 0xFFFFFFFF;  // a "negative" distance is just as broken
  EXPECT_FALSE(back.Take(out).ok());
}

TEST(BackRingTest, ExactlyAFullRingIsFineButNotOneMore) {
  TestRing front(Abi::kX86_64, 1, 0);
  BackRing back(front.shared(), 1, Abi::kX86_64);
  for (uint64_t i = 0; i < 32; ++i) front.Produce(Read(i, 0));
  front.Publish();
  std::vector<Request> out(64);
  ASSERT_EQ(*back.Take(out), 32u);
  // Nothing answered yet: one more request would overwrite an unanswered slot.
  front.Produce(Read(32, 0));
  front.Publish();
  EXPECT_FALSE(back.Take(out).ok());
}

TEST(BackRingTest, ReqProdMovingBackwardsIsABrokenFrontend) {
  TestRing front(Abi::kX86_64, 1, 0);
  BackRing back(front.shared(), 1, Abi::kX86_64);
  for (uint64_t i = 0; i < 10; ++i) front.Produce(Read(i, 0));
  front.Publish();
  std::vector<Request> out(64);
  ASSERT_EQ(*back.Take(out), 10u);
  front.header()->req_prod = 5;
  auto taken = back.Take(out);
  ASSERT_FALSE(taken.ok());
  EXPECT_NE(taken.status().ToString().find("moved back"), std::string::npos);
}

TEST(BackRingTest, ResponsesAreWrittenWholeWithZeroPadding) {
  for (Abi abi : {Abi::kX86_32, Abi::kX86_64}) {
    TestRing front(abi, 1, 0);
    BackRing back(front.shared(), 1, abi);
    front.Produce(Read(0xCAFEF00DDEADBEEFull, 0));
    front.Publish();
    std::vector<Request> out(1);
    ASSERT_EQ(*back.Take(out), 1u);
    std::memset(front.slot(0), 0xAA, RingEntrySize(abi));
    back.PutResponse(out[0].id, out[0].operation, BLKIF_RSP_ERROR);
    back.PushResponses();
    const uint8_t* s = front.slot(0);
    uint64_t id;
    std::memcpy(&id, s, 8);
    EXPECT_EQ(id, 0xCAFEF00DDEADBEEFull);
    EXPECT_EQ(s[8], BLKIF_OP_READ);
    EXPECT_EQ(s[9], 0) << "padding byte leaked";
    int16_t status;
    std::memcpy(&status, s + 10, 2);
    EXPECT_EQ(status, BLKIF_RSP_ERROR);
    for (size_t i = 12; i < ResponseSize(abi); ++i) EXPECT_EQ(s[i], 0) << "padding byte " << i << " leaked";
    // Beyond the response the slot is untouched (the backend writes only the response's bytes).
    EXPECT_EQ(s[ResponseSize(abi)], 0xAA);
  }
}

TEST(BackRingTest, NotifiesOnlyWhenTheFrontendAskedForIt) {
  TestRing front(Abi::kX86_64, 1, 0);
  BackRing back(front.shared(), 1, Abi::kX86_64);
  for (uint64_t i = 0; i < 4; ++i) front.Produce(Read(i, 0));
  front.Publish();
  std::vector<Request> out(4);
  ASSERT_EQ(*back.Take(out), 4u);
  EXPECT_FALSE(back.PushResponses());  // nothing to push, nothing to say
  front.header()->rsp_event = 1;       // wants a kick once response #0 exists
  back.PutResponse(0, BLKIF_OP_READ, 0);
  EXPECT_TRUE(back.PushResponses());
  back.PutResponse(1, BLKIF_OP_READ, 0);
  EXPECT_FALSE(back.PushResponses());  // rsp_event was already passed: the frontend is still busy reading
  front.header()->rsp_event = 4;
  back.PutResponse(2, BLKIF_OP_READ, 0);
  EXPECT_FALSE(back.PushResponses());
  back.PutResponse(3, BLKIF_OP_READ, 0);
  EXPECT_TRUE(back.PushResponses());
  EXPECT_EQ(front.Consume().size(), 4u);
}

TEST(BackRingTest, FinalCheckArmsReqEventAndSeesLateRequests) {
  TestRing front(Abi::kX86_64, 1, 100);
  BackRing back(front.shared(), 1, Abi::kX86_64);
  EXPECT_FALSE(back.FinalCheckForRequests());
  EXPECT_EQ(front.header()->req_event, 101u);
  front.Produce(Read(1, 0));
  front.Publish();
  EXPECT_TRUE(back.FinalCheckForRequests());
}

TEST(BackRingTest, IndicesWrapAroundTwoToTheThirtyTwo) {
  for (Abi abi : {Abi::kX86_32, Abi::kX86_64}) {
    TestRing front(abi, 2, 0xFFFFFF00u);
    BackRing back(front.shared(), 2, abi);
    ASSERT_EQ(back.slots(), 64u);
    std::vector<Request> out(64);
    uint64_t next_id = 0;
    uint64_t answered = 0;
    for (int round = 0; round < 20; ++round) {  // 20 * 50 requests cross 2^32 on the way
      for (int i = 0; i < 50; ++i) front.Produce(Read(next_id++, 8));
      front.Publish();
      auto taken = back.Take(out);
      ASSERT_TRUE(taken.ok()) << taken.status().ToString();
      ASSERT_EQ(*taken, 50u);
      for (size_t i = 0; i < *taken; ++i) back.PutResponse(out[i].id, out[i].operation, BLKIF_RSP_OKAY);
      back.PushResponses();
      for (const auto& answer : front.Consume()) EXPECT_EQ(answer.id, answered++);
    }
    EXPECT_EQ(answered, 1000u);
    EXPECT_LT(front.header()->rsp_prod, 0xFFFFFF00u);  // it did wrap
  }
}

TEST(BackRingTest, AttachesAtTheFrontendsCurrentIndex) {
  TestRing front(Abi::kX86_64, 1, 12345);
  BackRing back(front.shared(), 1, Abi::kX86_64);
  EXPECT_EQ(back.outstanding(), 0u);
  front.Produce(Read(1, 0));
  front.Publish();
  std::vector<Request> out(4);
  EXPECT_EQ(*back.Take(out), 1u);
}

}  // namespace
}  // namespace blk
