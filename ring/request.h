// A blkif request in private memory, decoded from one ring slot, and the rules that decide whether it may
// run.
//
// The ring consumer copies each slot out of shared memory before anything looks at it; DecodeRequest then
// reads that private copy in the frontend's ABI. ValidateRequest never touches shared memory, so a frontend
// rewriting the slot after the copy changes nothing (no double fetch, XSA-155).
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "ring/blkif_abi.h"

namespace blk {

struct RequestSegment {
  uint32_t gref;
  uint8_t first_sect;
  uint8_t last_sect;
};

struct Request {
  uint64_t id = 0;
  uint64_t sector_number = 0;    // 512-byte units
  uint64_t discard_sectors = 0;  // BLKIF_OP_DISCARD only
  uint8_t operation = 0;
  uint8_t indirect_op = 0;  // BLKIF_OP_INDIRECT only
  uint8_t discard_flag = 0;
  uint16_t nr_segments = 0;  // as the frontend wrote it; validated before use
  uint16_t handle = 0;
  std::array<RequestSegment, kMaxDirectSegments> segments{};
  std::array<uint32_t, kMaxIndirectPages> indirect_grefs{};
};

// Decodes the RequestSize(abi) bytes at `slot_copy`, which must already be private memory.
void DecodeRequest(Abi abi, const uint8_t* slot_copy, Request* out);
// Encodes `request` into `slot` in `abi`'s layout (used by frontends and tests), padding zeroed.
void EncodeRequest(Abi abi, const Request& request, uint8_t* slot);

// What the backend is able and willing to do with a disk; the validation rules read only this.
struct DiskLimits {
  uint64_t sectors = 0;               // disk size in 512-byte sectors
  uint32_t logical_block_size = 512;  // 512 or 4096: requests must be aligned to it
  bool read_only = false;
  bool flush = true;                   // feature-flush-cache advertised
  bool barrier = true;                 // feature-barrier advertised
  bool discard = false;                // feature-discard advertised
  bool discard_secure = false;         // discard-secure advertised (with discard)
  uint32_t max_indirect_segments = 0;  // feature-max-indirect-segments advertised; 0: not offered
};

// An indirect page holds this many segment descriptors, in one layout for every ABI.
inline constexpr unsigned kSegmentsPerIndirectPage = kPageSize / sizeof(abi::Segment);
// The most any frontend may ask for: 8 indirect pages.
inline constexpr unsigned kMaxIndirectSegments = kMaxIndirectPages * kSegmentsPerIndirectPage;
// The indirect pages a request of `segments` segments uses.
constexpr unsigned IndirectPages(unsigned segments) {
  return (segments + kSegmentsPerIndirectPage - 1) / kSegmentsPerIndirectPage;
}

enum class Verdict : uint8_t { kOk, kError, kNotSupported };

struct Validation {
  Verdict verdict = Verdict::kOk;
  const char* reason = nullptr;  // why not, for the log; a static string
  uint64_t sectors = 0;          // data sectors (512 B) the request moves, or a DISCARD covers, when kOk
  bool is_write = false;         // the request writes data, when kOk
};

// Checks every field of a decoded READ/WRITE/WRITE_BARRIER/FLUSH_DISKCACHE/DISCARD/INDIRECT request against
// `limits`. Never reads memory outside `request`. For INDIRECT only the header is checked (the operation, the
// segment count against what was offered): the segments live in the indirect pages, which the backend must
// first copy into private memory and hand to DecodeIndirectSegments.
Validation ValidateRequest(const Request& request, const DiskLimits& limits);

// Decodes the nr_segments descriptors of an INDIRECT request that passed ValidateRequest from `pages`, the
// private copy of its first IndirectPages(nr_segments) indirect pages, into `out` (at least nr_segments
// long), and checks them as the direct segments of a READ or WRITE are checked.
Validation DecodeIndirectSegments(const Request& request, std::span<const uint8_t> pages,
                                  const DiskLimits& limits, std::span<RequestSegment> out);

// The status a response carries for a verdict.
int16_t ResponseStatus(Verdict verdict);

}  // namespace blk
