// Fuzz target: one ring slot of frontend-written bytes, decoded in each ABI (x86_32, x86_64, native)
// (ring/request.h DecodeRequest) and validated (ValidateRequest) against random disk limits. Checks that what
// validation accepts is safe for the pipeline to act on (segments inside their page, the range inside the
// disk, no write to a read-only disk, alignment), and that encoding a decoded request and decoding it again
// changes nothing.
//
// Input: one byte of flags (bits 0 and 6: the protocol; read-only, flush, barrier, 4 KiB sectors, a large
// disk), the disk size, the slot, then (optional, zero when absent) a byte offering discard (bit 0) and
// discard-secure (bit 1), a 16-bit indirect segment maximum, and the bytes of the indirect pages an accepted
// INDIRECT request reads.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "ring/request.h"
#include "tests/fuzz/fuzz_input.h"

namespace blk {
namespace {

bool SameRequest(const Request& a, const Request& b) {
  if (a.id != b.id || a.sector_number != b.sector_number || a.discard_sectors != b.discard_sectors ||
      a.operation != b.operation || a.indirect_op != b.indirect_op || a.discard_flag != b.discard_flag ||
      a.nr_segments != b.nr_segments || a.handle != b.handle || a.indirect_grefs != b.indirect_grefs) {
    return false;
  }
  for (unsigned i = 0; i < kMaxDirectSegments; ++i) {
    if (a.segments[i].gref != b.segments[i].gref || a.segments[i].first_sect != b.segments[i].first_sect ||
        a.segments[i].last_sect != b.segments[i].last_sect) {
      return false;
    }
  }
  return true;
}

// A range of `sectors` from `start` that validation let through.
void CheckRange(uint64_t start, uint64_t sectors, const DiskLimits& limits) {
  FUZZ_CHECK(start <= limits.sectors);
  FUZZ_CHECK(sectors <= limits.sectors - start);
  uint64_t block = limits.logical_block_size >> kSectorShift;
  FUZZ_CHECK(start % block == 0 && sectors % block == 0);
}

void CheckAcceptedDiscard(const Request& request, const DiskLimits& limits, const Validation& validation) {
  FUZZ_CHECK(limits.discard && !limits.read_only);
  if (request.discard_flag & BLKIF_DISCARD_SECURE) FUZZ_CHECK(limits.discard_secure);
  FUZZ_CHECK(validation.sectors == request.discard_sectors && !validation.is_write);
  CheckRange(request.sector_number, request.discard_sectors, limits);
}

// An INDIRECT request whose header passed: its segments come from `pages`, as the pipeline will copy them.
void CheckIndirect(const Request& request, const DiskLimits& limits, const Validation& header,
                   std::span<const uint8_t> rest) {
  FUZZ_CHECK(limits.max_indirect_segments > 0);
  FUZZ_CHECK(request.indirect_op == BLKIF_OP_READ || request.indirect_op == BLKIF_OP_WRITE);
  FUZZ_CHECK(request.nr_segments >= 1 && request.nr_segments <= limits.max_indirect_segments);
  FUZZ_CHECK(header.is_write == (request.indirect_op == BLKIF_OP_WRITE));
  if (limits.read_only) FUZZ_CHECK(!header.is_write);
  // Exactly the pages the request names, so that ASan sees any read past them.
  std::vector<uint8_t> pages(IndirectPages(request.nr_segments) * kPageSize);
  std::memcpy(pages.data(), rest.data(), std::min(rest.size(), pages.size()));
  std::vector<RequestSegment> segments(request.nr_segments);
  Validation v = DecodeIndirectSegments(request, pages, limits, segments);
  if (v.verdict != Verdict::kOk) {
    FUZZ_CHECK(v.verdict == Verdict::kError && v.reason != nullptr);
    return;
  }
  uint64_t sectors = 0;
  for (const RequestSegment& segment : segments) {
    FUZZ_CHECK(segment.first_sect <= segment.last_sect && segment.last_sect < kSectorsPerPage);
    sectors += segment.last_sect - segment.first_sect + 1u;
  }
  FUZZ_CHECK(v.sectors == sectors && v.is_write == header.is_write);
  CheckRange(request.sector_number, sectors, limits);
}

void CheckAccepted(const Request& request, const DiskLimits& limits, const Validation& validation) {
  uint8_t op = request.operation;
  if (op == BLKIF_OP_DISCARD) return CheckAcceptedDiscard(request, limits, validation);
  FUZZ_CHECK(op == BLKIF_OP_READ || op == BLKIF_OP_WRITE || op == BLKIF_OP_WRITE_BARRIER ||
             op == BLKIF_OP_FLUSH_DISKCACHE);
  FUZZ_CHECK(request.nr_segments <= kMaxDirectSegments);
  if (op == BLKIF_OP_READ || op == BLKIF_OP_WRITE) FUZZ_CHECK(request.nr_segments >= 1);
  if (op == BLKIF_OP_WRITE_BARRIER) FUZZ_CHECK(limits.barrier);
  if (op == BLKIF_OP_FLUSH_DISKCACHE) FUZZ_CHECK(limits.flush);
  uint64_t sectors = 0;
  for (unsigned i = 0; i < request.nr_segments; ++i) {
    const RequestSegment& segment = request.segments[i];
    FUZZ_CHECK(segment.first_sect <= segment.last_sect);
    FUZZ_CHECK(segment.last_sect < kSectorsPerPage);
    sectors += segment.last_sect - segment.first_sect + 1u;
  }
  FUZZ_CHECK(validation.sectors == sectors);
  FUZZ_CHECK(sectors <= uint64_t{kMaxDirectSegments} * kSectorsPerPage);
  // The pipeline's slot holds the bytes in a uint32_t and a buffer of 11 pages.
  FUZZ_CHECK((sectors << kSectorShift) <= kMaxDirectSegments * kPageSize);
  if (sectors > 0) {
    FUZZ_CHECK(request.sector_number <= limits.sectors);
    FUZZ_CHECK(sectors <= limits.sectors - request.sector_number);
    uint64_t block = limits.logical_block_size >> kSectorShift;
    FUZZ_CHECK(request.sector_number % block == 0 && sectors % block == 0);
  }
  FUZZ_CHECK(validation.is_write == (op != BLKIF_OP_READ && sectors > 0));
  if (limits.read_only) FUZZ_CHECK(op == BLKIF_OP_READ);
  FUZZ_CHECK(validation.reason == nullptr);
}

}  // namespace
}  // namespace blk

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace blk;
  fuzz::FuzzInput input(data, size);
  uint8_t flags = input.U8();
  // The ABI as the frontend's `protocol` key names it: x86_64-abi, x86_32-abi, or native.
  static constexpr const char* kProtocols[] = {XEN_IO_PROTO_ABI_X86_64, XEN_IO_PROTO_ABI_X86_32,
                                               XEN_IO_PROTO_ABI_NATIVE, ""};
  std::optional<Abi> parsed = ParseProtocol(kProtocols[(flags & 1) | ((flags >> 5) & 2)]);
  FUZZ_CHECK(parsed.has_value());
  Abi abi = *parsed;
  DiskLimits limits;
  limits.read_only = flags & 2;
  limits.flush = flags & 4;
  limits.barrier = flags & 8;
  limits.logical_block_size = (flags & 16) ? 4096 : 512;
  limits.sectors = (flags & 32) ? input.U64() : input.U32();

  // Exactly one slot's bytes in a buffer of that size, so that ASan sees any read beyond the slot.
  std::vector<uint8_t> slot(RequestSize(abi));
  input.Fill(slot);
  uint8_t discard = input.U8();
  limits.discard = discard & 1;
  limits.discard_secure = discard & 2;
  limits.max_indirect_segments = input.U16() % (kMaxIndirectSegments + 1);
  std::span<const uint8_t> indirect_pages = input.Rest();
  Request request;
  DecodeRequest(abi, slot.data(), &request);
  Validation validation = ValidateRequest(request, limits);
  int16_t status = ResponseStatus(validation.verdict);
  FUZZ_CHECK(status == BLKIF_RSP_OKAY || status == BLKIF_RSP_ERROR || status == BLKIF_RSP_EOPNOTSUPP);
  if (validation.verdict == Verdict::kOk && request.operation == BLKIF_OP_INDIRECT) {
    CheckIndirect(request, limits, validation, indirect_pages);
  } else if (validation.verdict == Verdict::kOk) {
    CheckAccepted(request, limits, validation);
  } else {
    FUZZ_CHECK(validation.reason != nullptr && validation.reason[0] != '\0');
  }

  std::vector<uint8_t> encoded(RequestSize(abi));
  EncodeRequest(abi, request, encoded.data());
  Request again;
  DecodeRequest(abi, encoded.data(), &again);
  FUZZ_CHECK(SameRequest(request, again));
  Validation revalidated = ValidateRequest(again, limits);
  FUZZ_CHECK(revalidated.verdict == validation.verdict && revalidated.sectors == validation.sectors &&
             revalidated.is_write == validation.is_write);

  // The same bytes read in the other ABI: a frontend lying about its protocol gets garbage, never more.
  Abi other = abi == Abi::kX86_64 ? Abi::kX86_32 : Abi::kX86_64;
  std::vector<uint8_t> other_slot(RequestSize(other));
  std::memcpy(other_slot.data(), slot.data(), std::min(slot.size(), other_slot.size()));
  Request misread;
  DecodeRequest(other, other_slot.data(), &misread);
  Validation misvalidated = ValidateRequest(misread, limits);
  if (misvalidated.verdict == Verdict::kOk && misread.operation == BLKIF_OP_INDIRECT) {
    CheckIndirect(misread, limits, misvalidated, indirect_pages);
  } else if (misvalidated.verdict == Verdict::kOk) {
    CheckAccepted(misread, limits, misvalidated);
  }
  return 0;
}
