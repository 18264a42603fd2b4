// Decoding and validation of blkif requests: the one place that interprets frontend-written request bytes.
#include "ring/request.h"

#include <cstring>
#include <type_traits>

namespace blk {
namespace {

template <typename Layout>
void DecodeFields(const uint8_t* slot, Request* out) {
  // The operation byte picks the layout; every layout shares it at offset 0.
  uint8_t operation = slot[0];
  *out = Request{};
  out->operation = operation;
  if (operation == BLKIF_OP_DISCARD) {
    typename Layout::DiscardRequest raw;
    std::memcpy(&raw, slot, sizeof(raw));
    out->discard_flag = raw.flag;
    out->handle = raw.handle;
    out->id = raw.id;
    out->sector_number = raw.sector_number;
    out->discard_sectors = raw.nr_sectors;
  } else if (operation == BLKIF_OP_INDIRECT) {
    typename Layout::IndirectRequest raw;
    std::memcpy(&raw, slot, sizeof(raw));
    out->indirect_op = raw.indirect_op;
    out->nr_segments = raw.nr_segments;
    out->handle = raw.handle;
    out->id = raw.id;
    out->sector_number = raw.sector_number;
    std::memcpy(out->indirect_grefs.data(), raw.indirect_grefs, sizeof(raw.indirect_grefs));
  } else {
    typename Layout::Request raw;
    std::memcpy(&raw, slot, sizeof(raw));
    out->nr_segments = raw.nr_segments;
    out->handle = raw.handle;
    out->id = raw.id;
    out->sector_number = raw.sector_number;
    for (unsigned i = 0; i < kMaxDirectSegments; ++i) {
      out->segments[i] = {raw.seg[i].gref, raw.seg[i].first_sect, raw.seg[i].last_sect};
    }
  }
}

template <typename Layout>
void EncodeFields(const Request& request, uint8_t* slot) {
  std::memset(slot, 0, sizeof(typename Layout::Request));
  if (request.operation == BLKIF_OP_DISCARD) {
    typename Layout::DiscardRequest raw{};
    raw.operation = request.operation;
    raw.flag = request.discard_flag;
    raw.handle = request.handle;
    raw.id = request.id;
    raw.sector_number = request.sector_number;
    raw.nr_sectors = request.discard_sectors;
    std::memcpy(slot, &raw, sizeof(raw));
  } else if (request.operation == BLKIF_OP_INDIRECT) {
    typename Layout::IndirectRequest raw{};
    raw.operation = request.operation;
    raw.indirect_op = request.indirect_op;
    raw.nr_segments = request.nr_segments;
    raw.handle = request.handle;
    raw.id = request.id;
    raw.sector_number = request.sector_number;
    std::memcpy(raw.indirect_grefs, request.indirect_grefs.data(), sizeof(raw.indirect_grefs));
    std::memcpy(slot, &raw, sizeof(raw));
  } else {
    typename Layout::Request raw{};
    raw.operation = request.operation;
    raw.nr_segments = static_cast<uint8_t>(request.nr_segments);
    raw.handle = request.handle;
    raw.id = request.id;
    raw.sector_number = request.sector_number;
    for (unsigned i = 0; i < kMaxDirectSegments; ++i) {
      raw.seg[i].gref = request.segments[i].gref;
      raw.seg[i].first_sect = request.segments[i].first_sect;
      raw.seg[i].last_sect = request.segments[i].last_sect;
    }
    std::memcpy(slot, &raw, sizeof(raw));
  }
}

Validation Reject(Verdict verdict, const char* reason) { return Validation{verdict, reason, 0, false}; }

// The data segments of a request starting at `sector_number`: each within its page, the whole range inside
// the disk and aligned to its logical block size.
Validation ValidateSegments(std::span<const RequestSegment> segments, uint64_t sector_number,
                            const DiskLimits& limits, bool is_write) {
  if (is_write && limits.read_only) return Reject(Verdict::kError, "write to a read-only disk");
  uint64_t sectors = 0;
  for (const RequestSegment& segment : segments) {
    if (segment.last_sect >= kSectorsPerPage) return Reject(Verdict::kError, "last_sect beyond the page");
    if (segment.first_sect > segment.last_sect) return Reject(Verdict::kError, "first_sect after last_sect");
    sectors += segment.last_sect - segment.first_sect + 1u;
  }
  // sectors <= 8 * 4096, so the sum cannot overflow unless sector_number is near 2^64.
  if (sector_number > limits.sectors || sectors > limits.sectors - sector_number) {
    return Reject(Verdict::kError, "sector range beyond the end of the disk");
  }
  uint64_t block_sectors = limits.logical_block_size >> kSectorShift;
  if (block_sectors > 1 && (sector_number % block_sectors != 0 || sectors % block_sectors != 0)) {
    return Reject(Verdict::kError, "not aligned to the logical block size");
  }
  return Validation{Verdict::kOk, nullptr, sectors, is_write};
}

// Data segments of a READ, WRITE, or of a FLUSH/BARRIER that carries data.
Validation ValidateData(const Request& request, const DiskLimits& limits, bool is_write, bool allow_empty) {
  if (request.nr_segments == 0) {
    if (!allow_empty) return Reject(Verdict::kError, "no segments");
    return Validation{Verdict::kOk, nullptr, 0, false};
  }
  if (request.nr_segments > kMaxDirectSegments) return Reject(Verdict::kError, "more than 11 segments");
  return ValidateSegments(std::span(request.segments.data(), request.nr_segments), request.sector_number,
                          limits, is_write);
}

Validation ValidateIndirectHeader(const Request& request, const DiskLimits& limits) {
  if (limits.max_indirect_segments == 0)
    return Reject(Verdict::kNotSupported, "indirect descriptors not offered");
  if (request.indirect_op != BLKIF_OP_READ && request.indirect_op != BLKIF_OP_WRITE)
    return Reject(Verdict::kError, "indirect operation is neither READ nor WRITE");
  if (request.nr_segments == 0) return Reject(Verdict::kError, "no segments");
  if (request.nr_segments > limits.max_indirect_segments)
    return Reject(Verdict::kError, "more indirect segments than offered");
  bool is_write = request.indirect_op == BLKIF_OP_WRITE;
  if (is_write && limits.read_only) return Reject(Verdict::kError, "write to a read-only disk");
  return Validation{Verdict::kOk, nullptr, 0, is_write};
}

Validation ValidateDiscard(const Request& request, const DiskLimits& limits) {
  if (!limits.discard) return Reject(Verdict::kNotSupported, "discard not offered");
  // discard-secure is offered only where the operator vouches for the storage (a block device).
  if ((request.discard_flag & BLKIF_DISCARD_SECURE) && !limits.discard_secure)
    return Reject(Verdict::kNotSupported, "secure discard not offered");
  if (limits.read_only) return Reject(Verdict::kError, "discard on a read-only disk");
  if (request.sector_number > limits.sectors ||
      request.discard_sectors > limits.sectors - request.sector_number)
    return Reject(Verdict::kError, "discard range beyond the end of the disk");
  uint64_t block_sectors = limits.logical_block_size >> kSectorShift;
  if (block_sectors > 1 &&
      (request.sector_number % block_sectors != 0 || request.discard_sectors % block_sectors != 0)) {
    return Reject(Verdict::kError, "discard not aligned to the logical block size");
  }
  return Validation{Verdict::kOk, nullptr, request.discard_sectors, false};
}

}  // namespace

void DecodeRequest(Abi abi, const uint8_t* slot_copy, Request* out) {
  if (abi == Abi::kX86_64) {
    DecodeFields<abi::x86_64::Types>(slot_copy, out);
  } else {
    DecodeFields<abi::x86_32::Types>(slot_copy, out);
  }
}

void EncodeRequest(Abi abi, const Request& request, uint8_t* slot) {
  if (abi == Abi::kX86_64) {
    EncodeFields<abi::x86_64::Types>(request, slot);
  } else {
    EncodeFields<abi::x86_32::Types>(request, slot);
  }
}

Validation ValidateRequest(const Request& request, const DiskLimits& limits) {
  switch (request.operation) {
    case BLKIF_OP_READ:
      return ValidateData(request, limits, false, false);
    case BLKIF_OP_WRITE:
      return ValidateData(request, limits, true, false);
    case BLKIF_OP_WRITE_BARRIER:
      if (!limits.barrier) return Reject(Verdict::kNotSupported, "barrier not offered");
      if (limits.read_only) return Reject(Verdict::kError, "barrier on a read-only disk");
      return ValidateData(request, limits, true, true);
    case BLKIF_OP_FLUSH_DISKCACHE:
      if (!limits.flush) return Reject(Verdict::kNotSupported, "flush not offered");
      if (limits.read_only) return Reject(Verdict::kError, "flush on a read-only disk");
      return ValidateData(request, limits, true, true);
    case BLKIF_OP_DISCARD:
      return ValidateDiscard(request, limits);
    case BLKIF_OP_INDIRECT:
      return ValidateIndirectHeader(request, limits);
    default:
      return Reject(Verdict::kError, "unknown operation");
  }
}

Validation DecodeIndirectSegments(const Request& request, std::span<const uint8_t> pages,
                                  const DiskLimits& limits, std::span<RequestSegment> out) {
  Validation header = ValidateIndirectHeader(request, limits);
  if (header.verdict != Verdict::kOk) return header;
  const size_t count = request.nr_segments;
  if (pages.size() < count * sizeof(abi::Segment) || out.size() < count)
    return Reject(Verdict::kError, "indirect pages missing");
  for (size_t i = 0; i < count; ++i) {
    abi::Segment raw;
    std::memcpy(&raw, pages.data() + i * sizeof(raw), sizeof(raw));
    out[i] = RequestSegment{raw.gref, raw.first_sect, raw.last_sect};
  }
  return ValidateSegments(out.first(count), request.sector_number, limits, header.is_write);
}

int16_t ResponseStatus(Verdict verdict) {
  switch (verdict) {
    case Verdict::kOk:
      return BLKIF_RSP_OKAY;
    case Verdict::kNotSupported:
      return BLKIF_RSP_EOPNOTSUPP;
    case Verdict::kError:
      break;
  }
  return BLKIF_RSP_ERROR;
}

}  // namespace blk
