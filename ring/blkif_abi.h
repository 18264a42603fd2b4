// The blkif wire format in the three ABIs a frontend may speak, and the geometry of a shared ring.
//
// Xen's <xen/io/blkif.h> defines the native layout only. A 32-bit x86 guest packs 64-bit fields on 4-byte
// boundaries, so its requests are 108 bytes instead of 112 and its responses 12 instead of 16; the frontend
// says which it uses with the `protocol` key. These structs spell each layout out so that the decoder never
// guesses, and the static_asserts pin every offset the decoder relies on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

// Xen's public headers need the fixed-width integer types declared before them.
#include <xen/grant_table.h>
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>
#include <xen/xen.h>

namespace blk {

inline constexpr size_t kPageSize = 4096;
inline constexpr unsigned kSectorShift = 9;  // blkif addresses the disk in 512-byte sectors, always
inline constexpr unsigned kSectorsPerPage = kPageSize >> kSectorShift;
inline constexpr unsigned kMaxDirectSegments = BLKIF_MAX_SEGMENTS_PER_REQUEST;
inline constexpr unsigned kMaxIndirectPages = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST;

enum class Abi : uint8_t { kX86_32, kX86_64 };
// The native ABI of this build; "native" from a frontend means the backend's own.
inline constexpr Abi kNativeAbi = sizeof(void*) == 8 ? Abi::kX86_64 : Abi::kX86_32;

// Parses the frontend's `protocol` value; a missing key means native. Unknown values yield nullopt.
std::optional<Abi> ParseProtocol(std::string_view protocol);
const char* AbiName(Abi abi);

namespace abi {

struct Segment {
  uint32_t gref;
  uint8_t first_sect;
  uint8_t last_sect;
  uint16_t pad;
};
static_assert(sizeof(Segment) == 8);

namespace x86_64 {
struct Request {
  uint8_t operation;
  uint8_t nr_segments;
  uint16_t handle;
  uint32_t pad;
  uint64_t id;
  uint64_t sector_number;
  Segment seg[kMaxDirectSegments];
};
struct DiscardRequest {
  uint8_t operation;
  uint8_t flag;
  uint16_t handle;
  uint32_t pad;
  uint64_t id;
  uint64_t sector_number;
  uint64_t nr_sectors;
};
struct IndirectRequest {
  uint8_t operation;
  uint8_t indirect_op;
  uint16_t nr_segments;
  uint32_t pad;
  uint64_t id;
  uint64_t sector_number;
  uint16_t handle;
  uint16_t pad1;
  uint32_t indirect_grefs[kMaxIndirectPages];
};
struct Response {
  uint64_t id;
  uint8_t operation;
  uint8_t pad;
  int16_t status;
  uint32_t pad2;
};
static_assert(sizeof(Request) == 112 && offsetof(Request, id) == 8 &&
              offsetof(Request, sector_number) == 16 && offsetof(Request, seg) == 24);
static_assert(sizeof(DiscardRequest) == 32 && offsetof(DiscardRequest, nr_sectors) == 24);
static_assert(sizeof(IndirectRequest) == 64 && offsetof(IndirectRequest, handle) == 24 &&
              offsetof(IndirectRequest, indirect_grefs) == 28);
static_assert(sizeof(Response) == 16 && offsetof(Response, operation) == 8 &&
              offsetof(Response, status) == 10);
// The layouts of this ABI as one type, for code templated on the ABI.
struct Types {
  using Request = x86_64::Request;
  using DiscardRequest = x86_64::DiscardRequest;
  using IndirectRequest = x86_64::IndirectRequest;
  using Response = x86_64::Response;
};
}  // namespace x86_64

namespace x86_32 {
#pragma pack(push, 4)
struct Request {
  uint8_t operation;
  uint8_t nr_segments;
  uint16_t handle;
  uint64_t id;
  uint64_t sector_number;
  Segment seg[kMaxDirectSegments];
};
struct DiscardRequest {
  uint8_t operation;
  uint8_t flag;
  uint16_t handle;
  uint64_t id;
  uint64_t sector_number;
  uint64_t nr_sectors;
};
struct IndirectRequest {
  uint8_t operation;
  uint8_t indirect_op;
  uint16_t nr_segments;
  uint64_t id;
  uint64_t sector_number;
  uint16_t handle;
  uint16_t pad1;
  uint32_t indirect_grefs[kMaxIndirectPages];
  uint64_t pad2;
};
struct Response {
  uint64_t id;
  uint8_t operation;
  uint8_t pad;
  int16_t status;
};
#pragma pack(pop)
static_assert(sizeof(Request) == 108 && offsetof(Request, id) == 4 &&
              offsetof(Request, sector_number) == 12 && offsetof(Request, seg) == 20);
static_assert(sizeof(DiscardRequest) == 28 && offsetof(DiscardRequest, nr_sectors) == 20);
static_assert(sizeof(IndirectRequest) == 64 && offsetof(IndirectRequest, handle) == 20 &&
              offsetof(IndirectRequest, indirect_grefs) == 24);
static_assert(sizeof(Response) == 12 && offsetof(Response, operation) == 8 &&
              offsetof(Response, status) == 10);
struct Types {
  using Request = x86_32::Request;
  using DiscardRequest = x86_32::DiscardRequest;
  using IndirectRequest = x86_32::IndirectRequest;
  using Response = x86_32::Response;
};
}  // namespace x86_32

// The native layout of Xen's header must be the x86_64 one on this (64-bit) build.
static_assert(sizeof(blkif_request) == sizeof(x86_64::Request));
static_assert(offsetof(blkif_request, seg) == offsetof(x86_64::Request, seg));
static_assert(sizeof(blkif_response) == sizeof(x86_64::Response));
static_assert(sizeof(blkif_request_indirect) == sizeof(x86_64::IndirectRequest));
static_assert(sizeof(blkif_request_discard) == sizeof(x86_64::DiscardRequest));

// The header of every shared ring (ring.h's `struct *_sring` before the entries): the four indices, then
// padding.
struct SharedRingHeader {
  uint32_t req_prod;
  uint32_t req_event;
  uint32_t rsp_prod;
  uint32_t rsp_event;
  uint8_t pad[48];
};
static_assert(sizeof(SharedRingHeader) == 64);
static_assert(offsetof(blkif_sring, ring) == sizeof(SharedRingHeader));

}  // namespace abi

// Bytes one ring slot takes: the union of a request and a response in that ABI.
constexpr size_t RingEntrySize(Abi abi) {
  return abi == Abi::kX86_64 ? sizeof(abi::x86_64::Request) : sizeof(abi::x86_32::Request);
}
constexpr size_t RequestSize(Abi abi) { return RingEntrySize(abi); }
constexpr size_t ResponseSize(Abi abi) {
  return abi == Abi::kX86_64 ? sizeof(abi::x86_64::Response) : sizeof(abi::x86_32::Response);
}

// Slots in a ring of `pages` pages: the largest power of two that fits after the header (ring.h's rule).
constexpr uint32_t RingSlots(Abi abi, size_t pages) {
  size_t fit = (pages * kPageSize - sizeof(abi::SharedRingHeader)) / RingEntrySize(abi);
  uint32_t slots = 1;
  while (slots * 2 <= fit) slots *= 2;
  return slots;
}
static_assert(RingSlots(Abi::kX86_64, 1) == 32 && RingSlots(Abi::kX86_32, 1) == 32);
static_assert(RingSlots(Abi::kX86_64, 16) == 512);

}  // namespace blk
