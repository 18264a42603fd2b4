// Fuzz target: ring/back_ring.h's consumer over a ring in memory that a hostile frontend writes between the
// backend's steps: any req_prod, req_event or rsp_event, any slot bytes. A model of the indices says what
// each step must do. Checks that Take refuses a req_prod more than a ring ahead or moved back, takes exactly
// the requests published, each decoded from its own slot; that the backend writes nothing but a response's
// bytes (all of them defined, XSA-216), rsp_prod and req_event; and never touches memory outside the ring.
//
// Input: the ring's ABI, pages and starting index, then a script of frontend writes and backend steps.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ring/back_ring.h"
#include "tests/fuzz/fuzz_input.h"

namespace blk {
namespace {

enum Step : uint8_t {
  kPublishNear,  // frontend: req_prod a few slots from where the backend is
  kPublishAny,   // frontend: req_prod anything
  kWriteSlot,    // frontend: bytes into one slot
  kWriteEvents,  // frontend: req_event / rsp_event
  kTake,         // backend
  kPutResponse,  // backend
  kPush,         // backend
  kFinalCheck,   // backend
  kStepCount,
};

// A copy of a header field, read as the frontend would.
uint32_t Field(const std::vector<uint8_t>& ring, size_t offset) {
  uint32_t value;
  std::memcpy(&value, ring.data() + offset, sizeof(value));
  return value;
}
void SetField(std::vector<uint8_t>& ring, size_t offset, uint32_t value) {
  std::memcpy(ring.data() + offset, &value, sizeof(value));
}

constexpr size_t kReqProd = offsetof(abi::SharedRingHeader, req_prod);
constexpr size_t kReqEvent = offsetof(abi::SharedRingHeader, req_event);
constexpr size_t kRspProd = offsetof(abi::SharedRingHeader, rsp_prod);
constexpr size_t kRspEvent = offsetof(abi::SharedRingHeader, rsp_event);

// Bytes of the ring the backend changed since `before`, apart from the ranges it may write.
bool OnlyChanged(const std::vector<uint8_t>& before, const std::vector<uint8_t>& after, size_t allowed_at,
                 size_t allowed_bytes) {
  size_t end = allowed_at + allowed_bytes;
  return std::memcmp(before.data(), after.data(), allowed_at) == 0 &&
         std::memcmp(before.data() + end, after.data() + end, before.size() - end) == 0;
}

}  // namespace
}  // namespace blk

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blk;
  fuzz::FuzzInput input(data, size);
  uint8_t shape = input.U8();
  Abi abi = (shape & 1) ? Abi::kX86_32 : Abi::kX86_64;
  size_t pages = size_t{1} << ((shape >> 1) % 3);
  uint32_t start = input.U32();
  // The ring and nothing else, so that ASan sees a step past its end.
  std::vector<uint8_t> ring(pages * kPageSize);
  SetField(ring, kReqProd, start);
  SetField(ring, kRspProd, start);
  SetField(ring, kReqEvent, start + 1);
  SetField(ring, kRspEvent, start + 1);

  BackRing back(ring.data(), pages, abi);
  const uint32_t slots = back.slots();
  FUZZ_CHECK(slots == RingSlots(abi, pages));
  FUZZ_CHECK(sizeof(abi::SharedRingHeader) + size_t{slots} * RingEntrySize(abi) <= ring.size());
  uint32_t req_cons = start;     // the model
  uint32_t rsp_private = start;  // responses queued
  uint32_t rsp_published = start;
  std::vector<Request> taken(slots + 1);
  std::vector<Request> expected(slots + 1);
  std::vector<uint8_t> before;
  bool abandoned = false;

  for (int steps = 0; steps < 256 && !input.empty(); ++steps) {
    uint8_t step = input.U8() % kStepCount;
    before = ring;
    switch (step) {
      case kPublishNear:
        SetField(ring, kReqProd, rsp_private + input.U8() % (2 * slots + 2) - 1);
        break;
      case kPublishAny:
        SetField(ring, kReqProd, input.U32());
        break;
      case kWriteSlot: {
        uint32_t index = input.U8() % slots;
        size_t at = sizeof(abi::SharedRingHeader) + size_t{index} * RingEntrySize(abi);
        input.Fill(std::span(ring).subspan(at, RingEntrySize(abi)));
        break;
      }
      case kWriteEvents:
        SetField(ring, input.Bool() ? kReqEvent : kRspEvent, input.U32());
        break;
      case kTake: {
        if (abandoned) break;
        size_t want = input.U8() % (slots + 1);
        uint32_t prod = Field(ring, kReqProd);
        uint32_t ahead = prod - rsp_private;
        uint32_t outstanding = req_cons - rsp_private;
        size_t available = static_cast<uint32_t>(prod - req_cons);
        size_t count = std::min(available, want);
        bool refuse = ahead > slots || ahead < outstanding;
        if (!refuse) {
          for (size_t i = 0; i < count; ++i) {
            size_t at =
                sizeof(abi::SharedRingHeader) + size_t{(req_cons + i) & (slots - 1)} * RingEntrySize(abi);
            DecodeRequest(abi, ring.data() + at, &expected[i]);
          }
        }
        Result<size_t> got = back.Take(std::span(taken).first(want));
        FUZZ_CHECK(got.ok() == !refuse);
        FUZZ_CHECK(ring == before);  // taking reads only
        if (!got.ok()) {
          FUZZ_CHECK(got.status().code() == Status::Code::kProtocolError);
          abandoned = true;  // as the pipeline does: a broken ring is never read again
          break;
        }
        FUZZ_CHECK(*got == count);
        for (size_t i = 0; i < count; ++i) {
          FUZZ_CHECK(taken[i].id == expected[i].id && taken[i].operation == expected[i].operation &&
                     taken[i].sector_number == expected[i].sector_number &&
                     taken[i].nr_segments == expected[i].nr_segments);
        }
        req_cons += static_cast<uint32_t>(count);
        FUZZ_CHECK(back.outstanding() == req_cons - rsp_private);
        FUZZ_CHECK(back.outstanding() <= slots);
        break;
      }
      case kPutResponse: {
        if (back.outstanding() == 0) break;  // the pipeline answers only what it took
        uint64_t id = input.U64();
        uint8_t operation = input.U8();
        auto status = static_cast<int16_t>(input.U16());
        size_t at = sizeof(abi::SharedRingHeader) + size_t{rsp_private & (slots - 1)} * RingEntrySize(abi);
        back.PutResponse(id, operation, status);
        ++rsp_private;
        FUZZ_CHECK(OnlyChanged(before, ring, at, ResponseSize(abi)));
        // Every byte of the response is defined: the fields, and zeros in the padding (XSA-216).
        const uint8_t* response = ring.data() + at;
        FUZZ_CHECK(std::memcmp(response, &id, 8) == 0 && response[8] == operation && response[9] == 0);
        FUZZ_CHECK(std::memcmp(response + 10, &status, 2) == 0);
        for (size_t i = 12; i < ResponseSize(abi); ++i) FUZZ_CHECK(response[i] == 0);
        break;
      }
      case kPush: {
        uint32_t event = Field(ring, kRspEvent);
        bool notify = back.PushResponses();
        bool published = rsp_private != rsp_published;
        FUZZ_CHECK(OnlyChanged(before, ring, kRspProd, 4));
        FUZZ_CHECK(Field(ring, kRspProd) == (published ? rsp_private : Field(before, kRspProd)));
        FUZZ_CHECK(notify == (published && static_cast<uint32_t>(rsp_private - event) <
                                               static_cast<uint32_t>(rsp_private - rsp_published)));
        rsp_published = rsp_private;
        break;
      }
      case kFinalCheck: {
        bool more = back.FinalCheckForRequests();
        uint32_t prod = Field(ring, kReqProd);
        FUZZ_CHECK(more == (prod != req_cons));
        FUZZ_CHECK(back.HasUnconsumedRequests() == (prod != req_cons));
        FUZZ_CHECK(OnlyChanged(before, ring, kReqEvent, 4));
        if (Field(ring, kReqEvent) != Field(before, kReqEvent))
          FUZZ_CHECK(Field(ring, kReqEvent) == req_cons + 1);
        break;
      }
      default:
        break;
    }
  }
  return 0;
}
