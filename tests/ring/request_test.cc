// Tests of ring/request.cc: decoding in both ABIs and every validation rule.
#include "ring/request.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <span>
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

Request SecureDiscardRequest(uint64_t sector, uint64_t sectors) {
  Request request = DiscardRequest(sector, sectors);
  request.discard_flag = BLKIF_DISCARD_SECURE;
  return request;
}

TEST(ValidateTest, SecureDiscardPassesOnlyWhereOffered) {
  DiskLimits limits = Disk(1024);
  limits.discard = true;
  Validation refused = ValidateRequest(SecureDiscardRequest(0, 8), limits);
  EXPECT_EQ(refused.verdict, Verdict::kNotSupported);
  ASSERT_NE(refused.reason, nullptr);
  EXPECT_STREQ(refused.reason, "secure discard not offered");
  limits.discard_secure = true;
  Validation passed = ValidateRequest(SecureDiscardRequest(1000, 24), limits);
  EXPECT_EQ(passed.verdict, Verdict::kOk) << (passed.reason ? passed.reason : "");
  EXPECT_EQ(passed.sectors, 24u);
  EXPECT_FALSE(passed.is_write);
  // Offering it changes nothing for a plain discard.
  EXPECT_EQ(ValidateRequest(DiscardRequest(0, 8), limits).verdict, Verdict::kOk);
}

// A bad discard, the disk it meets (changed from a 1024-sector disk that offers discard) and its verdict.
struct DiscardCase {
  const char* name;
  Request request;
  std::function<void(DiskLimits&)> disk;
  Verdict verdict;
};

void ExpectVerdicts(std::span<const DiscardCase> cases, bool secure_offered) {
  for (const DiscardCase& c : cases) {
    DiskLimits limits = Disk(1024);
    limits.discard = true;
    limits.discard_secure = secure_offered;
    c.disk(limits);
    Validation v = ValidateRequest(c.request, limits);
    EXPECT_EQ(v.verdict, c.verdict) << c.name;
    EXPECT_NE(v.reason, nullptr) << c.name;
  }
}

// With discard-secure offered, a secure discard meets every other rule of a discard.
TEST(ValidateTest, BadSecureDiscardsAreRefusedLikeAnyDiscard) {
  const DiscardCase cases[] = {
      {"discard not offered", SecureDiscardRequest(0, 8), [](DiskLimits& d) { d.discard = false; },
       Verdict::kNotSupported},
      {"read-only", SecureDiscardRequest(0, 8), [](DiskLimits& d) { d.read_only = true; }, Verdict::kError},
      {"past the end", SecureDiscardRequest(1020, 8), [](DiskLimits&) {}, Verdict::kError},
      {"overflowing", SecureDiscardRequest(8, ~0ull - 4), [](DiskLimits&) {}, Verdict::kError},
      {"misaligned on a 4k disk", SecureDiscardRequest(4, 8),
       [](DiskLimits& d) { d.logical_block_size = 4096; }, Verdict::kError},
  };
  ExpectVerdicts(cases, /*secure_offered=*/true);
}

TEST(ValidateTest, BadDiscardsAreRefusedWithTheRightStatus) {
  const DiscardCase cases[] = {
      {"not offered", DiscardRequest(0, 8), [](DiskLimits& d) { d.discard = false; }, Verdict::kNotSupported},
      {"secure, not offered",
       [] {
         Request r = DiscardRequest(0, 8);
         r.discard_flag = BLKIF_DISCARD_SECURE;
         return r;
       }(),
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
  ExpectVerdicts(cases, /*secure_offered=*/false);
}

// An INDIRECT request of `segments` full pages from `sector`, and its indirect pages as a frontend fills
// them.
struct Indirect {
  Indirect(uint8_t op, uint64_t sector, unsigned segments) {
    request.operation = BLKIF_OP_INDIRECT;
    request.indirect_op = op;
    request.sector_number = sector;
    request.nr_segments = static_cast<uint16_t>(segments);
    pages.assign(IndirectPages(segments) * kPageSize, 0xEE);  // junk past the last descriptor
    for (unsigned i = 0; i < segments; ++i) SetSegment(i, 1000 + i, 0, 7);
  }
  void SetSegment(unsigned i, uint32_t gref, uint8_t first, uint8_t last) {
    abi::Segment raw{gref, first, last, 0};
    std::memcpy(pages.data() + i * sizeof(raw), &raw, sizeof(raw));
  }
  Request request;
  std::vector<uint8_t> pages;
};

DiskLimits IndirectDisk(uint64_t sectors, uint32_t max_segments = 256) {
  DiskLimits limits = Disk(sectors);
  limits.max_indirect_segments = max_segments;
  return limits;
}

TEST(IndirectTest, PagesPerSegmentCount) {
  EXPECT_EQ(kSegmentsPerIndirectPage, 512u);
  EXPECT_EQ(IndirectPages(1), 1u);
  EXPECT_EQ(IndirectPages(512), 1u);
  EXPECT_EQ(IndirectPages(513), 2u);
  EXPECT_EQ(IndirectPages(kMaxIndirectSegments), kMaxIndirectPages);
}

TEST(IndirectTest, SegmentsAcrossPagesDecodeAndCoverTheirRange) {
  for (uint8_t op : {BLKIF_OP_READ, BLKIF_OP_WRITE}) {
    Indirect indirect(op, 64, 600);  // two indirect pages, the second partly used
    indirect.SetSegment(599, 77, 2, 5);
    DiskLimits limits = IndirectDisk(1 << 20, 1024);
    Validation header = ValidateRequest(indirect.request, limits);
    ASSERT_EQ(header.verdict, Verdict::kOk) << header.reason;
    EXPECT_EQ(header.is_write, op == BLKIF_OP_WRITE);
    std::vector<RequestSegment> segments(600);
    Validation v = DecodeIndirectSegments(indirect.request, indirect.pages, limits, segments);
    ASSERT_EQ(v.verdict, Verdict::kOk) << v.reason;
    EXPECT_EQ(v.sectors, 599u * 8 + 4);
    EXPECT_EQ(v.is_write, op == BLKIF_OP_WRITE);
    EXPECT_EQ(segments[0].gref, 1000u);
    EXPECT_EQ(segments[513].gref, 1513u);
    EXPECT_EQ(segments[599].gref, 77u);
    EXPECT_EQ(segments[599].first_sect, 2u);
    EXPECT_EQ(segments[599].last_sect, 5u);
  }
}

TEST(IndirectTest, BadHeadersAreRefusedBeforeAnyPageIsRead) {
  struct Case {
    const char* name;
    Indirect indirect;
    DiskLimits limits;
    Verdict verdict;
  } cases[] = {
      {"not offered", Indirect(BLKIF_OP_READ, 0, 8), Disk(1024), Verdict::kNotSupported},
      {"indirect flush", Indirect(BLKIF_OP_FLUSH_DISKCACHE, 0, 8), IndirectDisk(1024), Verdict::kError},
      {"indirect discard", Indirect(BLKIF_OP_DISCARD, 0, 8), IndirectDisk(1024), Verdict::kError},
      {"indirect indirect", Indirect(BLKIF_OP_INDIRECT, 0, 8), IndirectDisk(1024), Verdict::kError},
      {"no segments", Indirect(BLKIF_OP_READ, 0, 0), IndirectDisk(1024), Verdict::kError},
      {"more than offered", Indirect(BLKIF_OP_READ, 0, 257), IndirectDisk(1 << 20, 256), Verdict::kError},
      {"more than any frontend may", Indirect(BLKIF_OP_READ, 0, 4097), IndirectDisk(1 << 20, 4096),
       Verdict::kError},
      {"write to read-only", Indirect(BLKIF_OP_WRITE, 0, 8),
       [] {
         DiskLimits d = IndirectDisk(1024);
         d.read_only = true;
         return d;
       }(),
       Verdict::kError},
  };
  for (const Case& c : cases) {
    Validation v = ValidateRequest(c.indirect.request, c.limits);
    EXPECT_EQ(v.verdict, c.verdict) << c.name;
    EXPECT_NE(v.reason, nullptr) << c.name;
    std::vector<RequestSegment> segments(kMaxIndirectSegments + 1);
    EXPECT_EQ(DecodeIndirectSegments(c.indirect.request, c.indirect.pages, c.limits, segments).verdict,
              c.verdict)
        << c.name;
  }
}

TEST(IndirectTest, BadSegmentsInThePagesAreErrors) {
  struct Case {
    const char* name;
    std::function<void(Indirect&, DiskLimits&)> mutate;
  } cases[] = {
      {"last_sect beyond the page", [](Indirect& i, DiskLimits&) { i.SetSegment(100, 1, 0, 8); }},
      {"first after last", [](Indirect& i, DiskLimits&) { i.SetSegment(0, 1, 6, 5); }},
      {"last segment past the end of the disk", [](Indirect&, DiskLimits& d) { d.sectors = 256 * 8 - 1; }},
      {"start near 2^64", [](Indirect& i, DiskLimits&) { i.request.sector_number = ~0ull - 8; }},
      {"misaligned on a 4k disk",
       [](Indirect& i, DiskLimits& d) {
         d.logical_block_size = 4096;
         i.SetSegment(10, 1, 0, 3);
       }},
      {"pages too short", [](Indirect& i, DiskLimits&) { i.pages.resize(255 * sizeof(abi::Segment)); }},
  };
  for (const Case& c : cases) {
    Indirect indirect(BLKIF_OP_WRITE, 0, 256);
    DiskLimits limits = IndirectDisk(1 << 20);
    c.mutate(indirect, limits);
    std::vector<RequestSegment> segments(256);
    Validation v = DecodeIndirectSegments(indirect.request, indirect.pages, limits, segments);
    EXPECT_EQ(v.verdict, Verdict::kError) << c.name;
    EXPECT_NE(v.reason, nullptr) << c.name;
  }
  // An output span shorter than the segment count is refused, not overrun.
  Indirect indirect(BLKIF_OP_READ, 0, 16);
  std::vector<RequestSegment> too_few(15);
  EXPECT_EQ(DecodeIndirectSegments(indirect.request, indirect.pages, IndirectDisk(1024), too_few).verdict,
            Verdict::kError);
}

TEST(ValidateTest, ResponseStatusPerVerdict) {
  EXPECT_EQ(ResponseStatus(Verdict::kOk), BLKIF_RSP_OKAY);
  EXPECT_EQ(ResponseStatus(Verdict::kError), BLKIF_RSP_ERROR);
  EXPECT_EQ(ResponseStatus(Verdict::kNotSupported), BLKIF_RSP_EOPNOTSUPP);
}

}  // namespace
}  // namespace blk
