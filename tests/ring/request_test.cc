// Tests of ring/request.cc: decoding in both ABIs and every validation rule.
#include "ring/request.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <vector>

namespace blk {
namespace {

Request ReadRequest(uint64_t sector, unsigned segments) {
  Request request;
  request.operation = BLKIF_OP_READ;
  request.id = 0x1122334455667788ull;
  request.sector_number = sector;
  request.nr_segments = segments;
  for (unsigned i = 0; i < segments; ++i) request.segments[i] = {100 + i, 0, 7};
  return request;
}

DiskLimits Disk(uint64_t sectors) {
  DiskLimits limits;
  limits.sectors = sectors;
  return limits;
}

TEST(RequestCodecTest, RoundTripsEveryOperationInBothAbis) {
  for (Abi abi : {Abi::kX86_32, Abi::kX86_64}) {
    Request rw = ReadRequest(12345, 11);
    rw.handle = 0xBEEF;
    rw.segments[10] = {0xDEADBEEF, 3, 5};
    Request discard;
    discard.operation = BLKIF_OP_DISCARD;
    discard.discard_flag = BLKIF_DISCARD_SECURE;
    discard.id = 9;
    discard.sector_number = 1ull << 40;
    discard.discard_sectors = 77;
    Request indirect;
    indirect.operation = BLKIF_OP_INDIRECT;
    indirect.indirect_op = BLKIF_OP_WRITE;
    indirect.nr_segments = 300;
    indirect.id = 10;
    indirect.handle = 3;
    for (unsigned i = 0; i < kMaxIndirectPages; ++i) indirect.indirect_grefs[i] = 1000 + i;
    for (const Request& original : {rw, discard, indirect}) {
      uint8_t slot[112];
      std::memset(slot, 0xAA, sizeof(slot));
      EncodeRequest(abi, original, slot);
      Request decoded;
      DecodeRequest(abi, slot, &decoded);
      EXPECT_EQ(decoded.operation, original.operation);
      EXPECT_EQ(decoded.id, original.id);
      EXPECT_EQ(decoded.sector_number, original.sector_number);
      EXPECT_EQ(decoded.nr_segments, original.nr_segments);
      EXPECT_EQ(decoded.handle, original.handle);
      EXPECT_EQ(decoded.discard_sectors, original.discard_sectors);
      EXPECT_EQ(decoded.discard_flag, original.discard_flag);
      EXPECT_EQ(decoded.indirect_op, original.indirect_op);
      EXPECT_EQ(decoded.indirect_grefs, original.indirect_grefs);
      for (unsigned i = 0; i < original.nr_segments && i < kMaxDirectSegments; ++i) {
        EXPECT_EQ(decoded.segments[i].gref, original.segments[i].gref);
        EXPECT_EQ(decoded.segments[i].first_sect, original.segments[i].first_sect);
        EXPECT_EQ(decoded.segments[i].last_sect, original.segments[i].last_sect);
      }
    }
  }
}

TEST(RequestCodecTest, X86_32LayoutPacksIdAtOffsetFour) {
  Request request = ReadRequest(0x0102030405060708ull, 1);
  request.id = 0xA1A2A3A4A5A6A7A8ull;
  uint8_t slot[112] = {};
  EncodeRequest(Abi::kX86_32, request, slot);
  uint64_t id;
  uint64_t sector;
  std::memcpy(&id, slot + 4, 8);
  std::memcpy(&sector, slot + 12, 8);
  EXPECT_EQ(id, request.id);
  EXPECT_EQ(sector, request.sector_number);
  uint32_t gref;
  std::memcpy(&gref, slot + 20, 4);
  EXPECT_EQ(gref, 100u);
  // The same bytes read as x86_64 give a different request: the ABI matters.
  Request misread;
  DecodeRequest(Abi::kX86_64, slot, &misread);
  EXPECT_NE(misread.id, request.id);
}

TEST(ValidateTest, AcceptsGoodReadsAndWrites) {
  Validation v = ValidateRequest(ReadRequest(0, 11), Disk(1000));
  EXPECT_EQ(v.verdict, Verdict::kOk);
  EXPECT_EQ(v.sectors, 88u);
  EXPECT_FALSE(v.is_write);
  Request write = ReadRequest(1000 - 8, 1);
  write.operation = BLKIF_OP_WRITE;
  write.segments[0] = {5, 0, 7};
  v = ValidateRequest(write, Disk(1000));
  EXPECT_EQ(v.verdict, Verdict::kOk);
  EXPECT_TRUE(v.is_write);
  Request partial = ReadRequest(3, 2);
  partial.segments[0] = {1, 3, 3};
  partial.segments[1] = {2, 0, 0};
  v = ValidateRequest(partial, Disk(1000));
  EXPECT_EQ(v.verdict, Verdict::kOk);
  EXPECT_EQ(v.sectors, 2u);
}

struct BadCase {
  const char* name;
  void (*mutate)(Request&, DiskLimits&);
  Verdict verdict;
};

TEST(ValidateTest, RejectsEveryBadField) {
  const BadCase cases[] = {
      {"unknown operation", [](Request& r, DiskLimits&) { r.operation = 42; }, Verdict::kError},
      {"reserved operation", [](Request& r, DiskLimits&) { r.operation = BLKIF_OP_RESERVED_1; },
       Verdict::kError},
      {"no segments", [](Request& r, DiskLimits&) { r.nr_segments = 0; }, Verdict::kError},
      {"more than 11 segments", [](Request& r, DiskLimits&) { r.nr_segments = 12; }, Verdict::kError},
      {"255 segments", [](Request& r, DiskLimits&) { r.nr_segments = 255; }, Verdict::kError},
      {"last_sect beyond the page", [](Request& r, DiskLimits&) { r.segments[1].last_sect = 8; },
       Verdict::kError},
      {"first_sect after last_sect",
       [](Request& r, DiskLimits&) {
         r.segments[0].first_sect = 5;
         r.segments[0].last_sect = 4;
       },
       Verdict::kError},
      {"beyond the end", [](Request& r, DiskLimits& d) { r.sector_number = d.sectors - 1; }, Verdict::kError},
      {"start past the end", [](Request& r, DiskLimits& d) { r.sector_number = d.sectors + 1; },
       Verdict::kError},
      {"overflowing range", [](Request& r, DiskLimits&) { r.sector_number = ~0ull - 3; }, Verdict::kError},
      {"write to read-only",
       [](Request& r, DiskLimits& d) {
         r.operation = BLKIF_OP_WRITE;
         d.read_only = true;
       },
       Verdict::kError},
      {"flush on read-only",
       [](Request& r, DiskLimits& d) {
         r.operation = BLKIF_OP_FLUSH_DISKCACHE;
         d.read_only = true;
       },
       Verdict::kError},
      {"misaligned for 4k disk",
       [](Request& r, DiskLimits& d) {
         d.logical_block_size = 4096;
         r.sector_number = 4;
       },
       Verdict::kError},
      {"partial block on 4k disk",
       [](Request& r, DiskLimits& d) {
         d.logical_block_size = 4096;
         r.segments[1].last_sect = 3;
       },
       Verdict::kError},
      {"barrier not offered",
       [](Request& r, DiskLimits& d) {
         r.operation = BLKIF_OP_WRITE_BARRIER;
         d.barrier = false;
       },
       Verdict::kNotSupported},
      {"flush not offered",
       [](Request& r, DiskLimits& d) {
         r.operation = BLKIF_OP_FLUSH_DISKCACHE;
         d.flush = false;
       },
       Verdict::kNotSupported},
      {"discard not offered", [](Request& r, DiskLimits&) { r.operation = BLKIF_OP_DISCARD; },
       Verdict::kNotSupported},
      {"indirect not offered", [](Request& r, DiskLimits&) { r.operation = BLKIF_OP_INDIRECT; },
       Verdict::kNotSupported},
  };
  for (const BadCase& c : cases) {
    Request request = ReadRequest(8, 4);
    DiskLimits limits = Disk(1024);
    c.mutate(request, limits);
    Validation v = ValidateRequest(request, limits);
    EXPECT_EQ(v.verdict, c.verdict) << c.name;
    EXPECT_NE(v.reason, nullptr) << c.name;
  }
}

TEST(ValidateTest, FlushAndBarrierMayCarryNoData) {
  for (uint8_t op : {BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER}) {
    Request request = ReadRequest(0, 0);
    request.operation = op;
    Validation v = ValidateRequest(request, Disk(16));
    EXPECT_EQ(v.verdict, Verdict::kOk);
    EXPECT_EQ(v.sectors, 0u);
    request.nr_segments = 2;  // with data, the data is checked like a write
    v = ValidateRequest(request, Disk(16));
    EXPECT_EQ(v.verdict, Verdict::kOk);
    EXPECT_TRUE(v.is_write);
    request.sector_number = 15;  // two one-sector segments from 15 cross the end at 16
    EXPECT_EQ(ValidateRequest(request, Disk(16)).verdict, Verdict::kError);
  }
}

Request DiscardRequest(uint64_t sector, uint64_t sectors) {
  Request request;
  request.operation = BLKIF_OP_DISCARD;
  request.sector_number = sector;
  request.discard_sectors = sectors;
  return request;
}

TEST(ValidateTest, DiscardWhenOfferedCoversItsRangeAndMovesNoData) {
  DiskLimits limits = Disk(1024);
  limits.discard = true;
  for (auto [sector, sectors] : {std::pair<uint64_t, uint64_t>{0, 1024}, {1000, 24}, {8, 0}}) {
    Validation v = ValidateRequest(DiscardRequest(sector, sectors), limits);
    EXPECT_EQ(v.verdict, Verdict::kOk) << sector << "+" << sectors << ": " << (v.reason ? v.reason : "");
    EXPECT_EQ(v.sectors, sectors);
    EXPECT_FALSE(v.is_write);
  }
}

TEST(ValidateTest, BadDiscardsAreRefusedWithTheRightStatus) {
  struct Case {
    const char* name;
    Request request;
    std::function<void(DiskLimits&)> disk;
    Verdict verdict;
  } cases[] = {
      {"not offered", DiscardRequest(0, 8), [](DiskLimits& d) { d.discard = false; }, Verdict::kNotSupported},
      {"secure", [] { Request r = DiscardRequest(0, 8); r.discard_flag = BLKIF_DISCARD_SECURE; return r; }(),
       [](DiskLimits&) {}, Verdict::kNotSupported},
      {"read-only", DiscardRequest(0, 8), [](DiskLimits& d) { d.read_only = true; }, Verdict::kError},
      {"past the end", DiscardRequest(1020, 8), [](DiskLimits&) {}, Verdict::kError},
      {"start past the end", DiscardRequest(1025, 0), [](DiskLimits&) {}, Verdict::kError},
      {"overflowing", DiscardRequest(8, ~0ull - 4), [](DiskLimits&) {}, Verdict::kError},
      {"huge start", DiscardRequest(~0ull - 4, 8), [](DiskLimits&) {}, Verdict::kError},
      {"misaligned on a 4k disk", DiscardRequest(4, 8), [](DiskLimits& d) { d.logical_block_size = 4096; },
       Verdict::kError},
      {"partial block on a 4k disk", DiscardRequest(8, 4), [](DiskLimits& d) { d.logical_block_size = 4096; },
       Verdict::kError},
  };
  for (const Case& c : cases) {
    DiskLimits limits = Disk(1024);
    limits.discard = true;
    c.disk(limits);
    Validation v = ValidateRequest(c.request, limits);
    EXPECT_EQ(v.verdict, c.verdict) << c.name;
    EXPECT_NE(v.reason, nullptr) << c.name;
  }
}

TEST(ValidateTest, ResponseStatusPerVerdict) {
  EXPECT_EQ(ResponseStatus(Verdict::kOk), BLKIF_RSP_OKAY);
  EXPECT_EQ(ResponseStatus(Verdict::kError), BLKIF_RSP_ERROR);
  EXPECT_EQ(ResponseStatus(Verdict::kNotSupported), BLKIF_RSP_EOPNOTSUPP);
}

}  // namespace
}  // namespace blk
